"""The probe: tries the GPU servers known to be down, and says when one is back.

A server goes DOWN when something could not reach it (a worker, GPU discovery); this is
what brings it back without an operator: every ``conductor.host_probe_interval_sec`` it
runs ``true`` there (one connection, one command) and reports the answer to the conductor,
which sends the waiting step runs on.
"""

from __future__ import annotations

import logging

from gpus.services import hosts_down
from mqi_site.config import Config
from mqi_site.messaging import CONDUCTOR, Command, send
from workers.hosts import transport_for
from workers.transports import TransportError

log = logging.getLogger(__name__)


def probe_hosts(config: Config) -> dict[str, bool]:
    """Try every configured host that is down; ``{host: reachable now}``."""
    seen = {}
    for name in hosts_down():
        spec = config.hosts.get(name)
        if spec is None:
            continue  # no longer configured
        try:
            transport_for(name).run("true", timeout=spec.connect_timeout_sec + 5)
        except TransportError as exc:
            seen[name] = False
            send(CONDUCTOR, Command.HOST_UNREACHABLE, {"host": name, "error": str(exc)})
            continue
        seen[name] = True
        log.info("probe: %s can be reached again", name)
        send(CONDUCTOR, Command.HOST_REACHABLE, {"host": name})
    return seen
