"""The reference for conductor throughput: a Dramatiq actor that does nothing.

Run by the bench as ``python -m dramatiq bench.noop`` on the same Redis (``REDIS_URL``),
with Dramatiq's default middleware and no Django, so it shows what the broker and
Dramatiq's own machinery cost per message on this machine.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))


@dramatiq.actor(actor_name="bench_noop", queue_name="bench_noop", max_retries=0)
def bench_noop(command: str, payload: dict[str, Any]) -> None:
    """Accepts the conductor's message shape and does nothing with it."""
