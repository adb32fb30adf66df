"""Dramatiq's Redis broker with a doorbell: an idle consumer wakes when a message arrives.

Dramatiq's Redis consumer looks at an empty queue, sleeps up to ``dramatiq_worker_timeout``
and looks again.  Every message that finds its consumer idle (most of them: outcomes and
commands come one at a time) waits on average half that sleep before anyone sees it, and
every idle consumer polls Redis all day.  Here every push onto a queue also rings the
queue's doorbell (a Redis list holding at most one token), and a consumer that found its
queue empty blocks on the doorbell (``BLPOP``) instead of sleeping: it wakes at once for a
new message, or after :data:`IDLE_LOOK_MS` to look anyway.

The ring is part of Dramatiq's own dispatch script (:func:`dispatch_script`), so it costs no
extra round trip and is atomic with the push: an enqueue, the messages a stopping consumer
puts back and those Dramatiq's maintenance takes back from a dead worker all ring.  A token
rung between a consumer's empty look and its wait stays in the list, so no wake-up is lost;
a stale token costs one extra look.  Delay queues keep Dramatiq's polling: their messages
become due by the clock, not by a push.
"""

from __future__ import annotations

import threading
from importlib import resources

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed

# The longest an idle consumer goes without looking at its queue.  Below redis-py's socket
# timeout (5 s), and well below Dramatiq's heartbeat timeout (60 s): each look also tells
# Redis this worker is alive.
IDLE_LOOK_MS = 1000

# Dramatiq's dispatch script pushes a message id onto a queue with this line (enqueue,
# requeue, maintenance); each push is followed by a ring.  The doorbell is defined right
# after the queue's key.
_PUSH = 'redis.call("rpush", queue_full_name, message_id)'
_QUEUE_KEY = 'local queue_full_name = namespace .. ":" .. queue_name\n'
_RING = """\
local doorbell = queue_full_name .. ".doorbell"
local function ring()
    if queue_name == queue_canonical_name then  -- delay queues have no doorbell
        redis.call("lpush", doorbell, 1)
        redis.call("ltrim", doorbell, 0, 0)
    end
end
"""


def dispatch_script() -> str:
    """Dramatiq's ``dispatch.lua`` with a ring after every push onto a queue."""
    source = (resources.files("dramatiq.brokers") / "redis" / "dispatch.lua").read_text()
    if source.count(_QUEUE_KEY) != 1 or _PUSH not in source:
        raise RuntimeError(
            "dramatiq's redis/dispatch.lua no longer has the lines the doorbell hooks into; "
            "mqi_site/broker.py must follow this Dramatiq release"
        )
    return source.replace(_QUEUE_KEY, _QUEUE_KEY + _RING).replace(_PUSH, _PUSH + " ring()")


class DoorbellRedisBroker(RedisBroker):
    def __init__(self, **options):
        super().__init__(**options)
        self.scripts["dispatch"] = self.client.register_script(dispatch_script())

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> _RedisConsumer:
        if queue_name == dq_name(queue_name):
            return _RedisConsumer(self, queue_name, prefetch, timeout)
        return _DoorbellConsumer(self, queue_name, prefetch, timeout)

    def doorbell(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.doorbell"

    def ring(self, queue_name: str) -> None:
        """Wake an idle consumer of the queue (pushes ring by themselves; this is for
        anything else, such as a consumer being stopped)."""
        key = self.doorbell(queue_name)
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(key, 1)
        pipe.ltrim(key, 0, 0)
        pipe.execute()


class _DoorbellConsumer(_RedisConsumer):
    """Dramatiq's consumer, waiting on the doorbell (or for an ack) instead of sleeping."""

    def __init__(self, broker: DoorbellRedisBroker, queue_name: str, prefetch: int, timeout: int):
        # Dramatiq's own idle sleep is made zero; the waits below replace it.
        super().__init__(broker, queue_name, prefetch, 0)
        self.idle_timeout_ms = timeout
        self.doorbell = broker.doorbell(queue_name)
        self.settled = threading.Event()  # a message in hand was acked or rejected

    def __next__(self):
        self.settled.clear()
        if not self.message_cache and self.outstanding_message_count > self.prefetch // 2:
            # More than half of prefetch in hand: with Dramatiq's prefetch (twice the
            # worker threads) every thread has work, so fetch when half are done, several
            # messages in one round trip, not one per ack.
            self.settled.wait(self.idle_timeout_ms / 1000)
            return None
        can_fetch = not self.message_cache and self.outstanding_message_count < self.prefetch
        message = super().__next__()
        if message is None:
            if can_fetch:  # the queue was empty
                self._wait_for_doorbell()
            else:  # as many messages in hand as prefetch allows: wait until one is done
                self.settled.wait(self.idle_timeout_ms / 1000)
        return message

    def _wait_for_doorbell(self) -> None:
        try:
            self.broker.client.blpop([self.doorbell], timeout=IDLE_LOOK_MS / 1000)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise ConnectionClosed(error) from None

    def ack(self, message) -> None:
        try:
            super().ack(message)
        finally:
            self.settled.set()

    def nack(self, message) -> None:
        try:
            super().nack(message)
        finally:
            self.settled.set()
