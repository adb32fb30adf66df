"""Free loopback ports for the servers the tests start (sshd, Redis, PostgreSQL, web).

Each pytest-xdist worker takes its ports from a range of its own, below Linux's ephemeral
range (32768-60999, where the kernel picks ports for outgoing connections): a port that a
test has let go for a while (an sshd killed for a minute, to be started again on the same
port) can then never be handed to a test running beside it on the other worker.
"""

from __future__ import annotations

import os
import random
import socket

FIRST_PORT = 20000
PORTS_PER_WORKER = 2000  # six workers fit below 32768


def free_port() -> int:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    low = FIRST_PORT + worker * PORTS_PER_WORKER
    for port in random.sample(range(low, low + PORTS_PER_WORKER), 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken (or just let go by a test of this worker)
            return port
    raise RuntimeError(f"no free loopback port in {low}-{low + PORTS_PER_WORKER - 1}")
