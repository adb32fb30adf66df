"""The transport for a host named in config.yaml.

SSH connections are cached per host per worker thread inside the ssh transport; this
module only maps a host's configuration to its transport.  The local transport runs the
configured commands with ``MQI_PROJECT_DIR`` set to this project and the interpreter that
runs MQI Communicator first on ``PATH`` (so ``python`` in a template is that interpreter).
"""

from __future__ import annotations

import os
import shlex
import sys
from functools import cache
from pathlib import Path

from django.conf import settings

from mqi_site.config import HostSpec, get_config
from workers.transports import LocalTransport, SSHTarget, SSHTransport, Transport


def ssh_target(name: str, spec: HostSpec) -> SSHTarget:
    return SSHTarget(
        name=name,
        hostname=spec.hostname,
        port=spec.port,
        username=spec.username,
        key_file=spec.key_file,
        known_hosts_file=spec.known_hosts_file,
        connect_timeout_sec=spec.connect_timeout_sec,
        keepalive_sec=spec.keepalive_sec,
    )


def local_environment() -> dict[str, str]:
    interpreter_dir = str(Path(sys.executable).parent)
    return {
        "MQI_PROJECT_DIR": str(settings.BASE_DIR),
        "PATH": os.pathsep.join([interpreter_dir, os.environ.get("PATH", "/usr/bin:/bin")]),
    }


def host_environment(name: str) -> dict[str, str]:
    """Variables the configured commands of host ``name`` may rely on."""
    return local_environment() if get_config().hosts[name].transport == "local" else {}


def with_host_environment(name: str, script: str) -> str:
    """``script`` preceded by exports of :func:`host_environment`, values quoted."""
    exports = "".join(
        f"export {key}={shlex.quote(value)}\n" for key, value in host_environment(name).items()
    )
    return exports + script


@cache
def _transport(name: str, config_source: str) -> Transport:
    spec = get_config().hosts[name]
    if spec.transport == "local":
        return LocalTransport()
    return SSHTransport(ssh_target(name, spec))


def transport_for(name: str) -> Transport:
    """The transport for host ``name`` of the active configuration."""
    return _transport(name, get_config().source)


def ensure_remote_dir(transport: Transport, path: str) -> None:
    """``mkdir -p`` through the transport's one-level ``mkdir``.

    The levels it creates (the upload and results folders, a case's output folder) are
    readable by the transfer user only: their names are case ids, their contents patient
    data. Existing levels keep their mode.
    """
    existing = transport.stat(path)
    if existing is not None and existing.is_dir:
        return  # the usual case after a case's first step: one round trip, not two per level
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        level = "/" + "/".join(parts[:depth])
        existing = transport.stat(level)  # a link to a folder is fine on the way
        if existing is None or not existing.is_dir:
            transport.mkdir(level, private=True)
