"""A Dramatiq middleware for fault tests: every message is delivered twice.

Loaded by :mod:`tests.faults.settings_duplicates` in the child processes.  Each message
enqueued for immediate delivery is enqueued once more with the same message id (what a
broker's redelivery looks like to a handler).  The copy of an outcome sent to the conductor
comes 0.2-2.5 s late, so it arrives after outcomes that followed it: outcomes are reordered.

A delayed message (a poll, a retry) is copied when it moves from the delay queue to its
queue, so it too is delivered exactly twice.
"""

from __future__ import annotations

import dataclasses
import random

from dramatiq import Middleware
from dramatiq.common import q_name

from mqi_site.messaging import STEP_ROUTES

OUTCOMES = {route.success for route in STEP_ROUTES.values()} | {
    route.failure for route in STEP_ROUTES.values()
}
COPY = "mqi_copy"


class DeliverTwice(Middleware):
    def after_enqueue(self, broker, message, delay):
        if message.options.get(COPY) or delay is not None:
            return
        options = {k: v for k, v in message.options.items() if k not in ("eta", "redis_message_id")}
        copy = dataclasses.replace(
            message, queue_name=q_name(message.queue_name), options={**options, COPY: True}
        )
        late = message.args and message.args[0] in OUTCOMES
        broker.enqueue(copy, delay=random.randint(200, 2500) if late else None)
