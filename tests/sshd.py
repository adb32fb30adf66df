"""A real OpenSSH ``sshd`` on a free loopback port, for transport tests.

Each server gets throw-away keys (an ed25519 host key and an ed25519 client key, both made
with ``ssh-keygen``), a ``known_hosts`` file holding the host key as ``[127.0.0.1]:PORT``,
and runs as the current user in the foreground (``sshd -D -e``) with its log in the
server's directory. ``kill()`` SIGKILLs the listener and every per-connection ``sshd``
process, which is what a crashed or rebooted server looks like to a client; ``start()``
brings it back on the same port with the same keys.

Use from a ``conftest.py``::

    # the repository's top-level conftest.py loads this module as a plugin
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port
from workers.transports.base import SSHTarget

SSHD_PATH = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT_SEC = 10.0


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mqi-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _require_openssh() -> None:
    if not os.access(SSHD_PATH, os.X_OK) or shutil.which("ssh-keygen") is None:
        pytest.fail(
            f"OpenSSH server is required for transport tests but {SSHD_PATH} or ssh-keygen is "
            "missing; install it with `apt-get install -y openssh-server`",
            pytrace=False,
        )


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (read from /proc, so no ``ps`` parsing)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we were looking
        # the command name is in parentheses and may contain spaces; ppid follows it
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _is_sshd(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == SSHD_PATH
    except OSError:
        return False


class SSHServer:
    """One sshd instance; keys, config and log live in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.host_key = directory / "host_ed25519"
        self.client_key = directory / "client_ed25519"
        self.known_hosts = directory / "known_hosts"
        self.authorized_keys = directory / "authorized_keys"
        self.config = directory / "sshd_config"
        self.log = directory / "sshd.log"
        self._process: subprocess.Popen[bytes] | None = None
        _keygen(self.host_key)
        _keygen(self.client_key)
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.config.write_text(
            "\n".join(
                [
                    f"ListenAddress 127.0.0.1:{self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {directory / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )

    @property
    def target(self) -> SSHTarget:
        return SSHTarget(
            name=f"test-sshd-{self.port}",
            hostname="127.0.0.1",
            port=self.port,
            username=getpass.getuser(),
            key_file=str(self.client_key),
            known_hosts_file=str(self.known_hosts),
            connect_timeout_sec=5.0,
            keepalive_sec=5,
        )

    def host_config(self, **extra: Any) -> dict[str, Any]:
        """A ``hosts.<name>`` entry of ``config.yaml`` that reaches this server."""
        target = self.target
        return {
            "transport": "ssh",
            "hostname": target.hostname,
            "port": target.port,
            "username": target.username,
            "key_file": target.key_file,
            "known_hosts_file": target.known_hosts_file,
            **extra,
        }

    def openssh_options(self) -> list[str]:
        """Options for OpenSSH clients (``ssh``, ``sftp``) to reach this server."""
        return [
            "-i",
            str(self.client_key),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"Port={self.port}",
        ]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start (or restart) on the same port with the same keys; return once it listens."""
        if self.running:
            return
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [SSHD_PATH, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SEC
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self._process.returncode}: {self.log_text()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)  # bounded wait for the listener to bind
        raise RuntimeError(f"sshd did not listen on port {self.port}: {self.log_text()}")

    def kill(self) -> None:
        """SIGKILL the listener and every per-connection sshd, as if the server died.

        Commands started through the server keep running, like on a real host whose sshd
        crashed; only sshd processes are killed.
        """
        self._signal_all(signal.SIGKILL)

    def stop(self) -> None:
        """Stop the listener and every connection it serves (SIGTERM)."""
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        # list the whole tree before signalling: children of a dead listener get re-parented
        pids = [self._process.pid] + [p for p in _children(self._process.pid) if _is_sshd(p)]
        for pid in pids:
            # one may have exited on its own between listing and signalling
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="session")
def sshd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], SSHServer]]:
    """Make as many independent, started sshd servers as a test needs."""
    _require_openssh()
    servers: list[SSHServer] = []

    def make() -> SSHServer:
        server = SSHServer(tmp_path_factory.mktemp("sshd"))
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sshd_server(sshd_factory: Callable[[], SSHServer]) -> Iterator[SSHServer]:
    """A fresh, running sshd for one test; stopped afterwards."""
    server = sshd_factory()
    yield server
    server.stop()
