"""Idle consumers wake on the doorbell, not on a timer (real Redis, real Dramatiq workers).

The doorbell consumer's periodic look, the only other way it would find a new message, is
set to 4 s here (below redis-py's 5 s socket timeout), twice the tests' patience, so a
message that arrives within that patience arrived because the doorbell rang.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq import Message, Worker
from dramatiq.common import dq_name
from redis.backoff import NoBackoff
from redis.retry import Retry

from mqi_site import broker as doorbell
from tests.brokers import redis_broker_swapped_in

LOOK_MS = 4_000
PATIENCE_SEC = 2


@pytest.fixture
def broker(monkeypatch) -> Iterator[doorbell.DoorbellRedisBroker]:
    monkeypatch.setattr(doorbell, "IDLE_LOOK_MS", LOOK_MS)
    with redis_broker_swapped_in() as redis_broker:
        yield redis_broker


def start_worker(broker, actor, threads: int = 2) -> Worker:
    worker = Worker(broker, queues={actor.queue_name}, worker_threads=threads, worker_timeout=100)
    worker.start()
    return worker


def stop(worker: Worker, broker) -> None:
    # a consumer waiting on its doorbell notices the stop when it next wakes: wake it
    for queue, consumer in worker.consumers.items():
        consumer.stop()
        broker.ring(queue)
    worker.stop(timeout=10_000)


def send_and_process_all(broker, actor, done: threading.Semaphore, *, count: int, threads: int):
    """Send ``count`` messages, then run a worker until ``done`` was released for each."""
    for n in range(count):
        actor.send(n)
    worker = start_worker(broker, actor, threads=threads)
    try:
        for n in range(count):
            assert done.acquire(timeout=PATIENCE_SEC), f"only {n} of {count} messages processed"
    finally:
        stop(worker, broker)


def wait_until_blocked_on_doorbell(broker) -> None:
    """Until a client of this Redis database waits in BLPOP: the consumer found its queue
    empty and went to its doorbell."""
    client = redis.Redis(connection_pool=broker.client.connection_pool)
    db = broker.client.connection_pool.connection_kwargs["db"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        clients = client.client_list()
        if any(c["cmd"] == "blpop" and int(c["db"]) == db for c in clients):
            return
        time.sleep(0.01)
    raise AssertionError("no consumer went to wait on its doorbell")


def test_an_idle_consumer_wakes_when_a_message_arrives(broker):
    seen: list[int] = []
    arrived = threading.Event()

    @dramatiq.actor(queue_name="doorbell_test", broker=broker)
    def note(n: int) -> None:
        seen.append(n)
        arrived.set()

    worker = start_worker(broker, note)
    try:
        for n in range(3):
            arrived.clear()
            wait_until_blocked_on_doorbell(broker)
            note.send(n)
            assert arrived.wait(timeout=PATIENCE_SEC), f"message {n} was not delivered"
    finally:
        stop(worker, broker)

    assert seen == [0, 1, 2]


def test_a_consumer_with_its_hands_full_takes_more_as_soon_as_one_is_done(broker):
    """More messages than prefetch allows in hand: the rest come as acks free the slots."""
    done = threading.Semaphore(0)

    @dramatiq.actor(queue_name="doorbell_burst", broker=broker)
    def work(n: int) -> None:
        done.release()

    # queued before the worker starts: no bell rings for them
    send_and_process_all(broker, work, done, count=40, threads=1)  # prefetch 2


def test_messages_a_stopping_consumer_puts_back_wake_an_idle_one(broker):
    """Dramatiq's requeue (a worker shutting down with messages in hand) rings too: the push
    and its ring are one script in Redis."""
    broker.declare_queue("doorbell_requeue")
    broker.enqueue(Message("doorbell_requeue", "nothing", (), {}, {}))
    leaving = broker.consume("doorbell_requeue", timeout=100)
    in_hand = next(leaving)
    assert in_hand is not None

    staying = broker.consume("doorbell_requeue", timeout=100)
    received: list = []

    def take() -> None:
        deadline = time.monotonic() + LOOK_MS / 1000
        while time.monotonic() < deadline:  # the first look eats the enqueue's token
            message = next(staying)
            if message is not None:
                received.append(message)
                return

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    wait_until_blocked_on_doorbell(broker)
    leaving.requeue([in_hand])
    taker.join(timeout=PATIENCE_SEC)

    assert [m.message_id for m in received] == [in_hand.message_id]


def test_a_busy_consumer_fetches_several_messages_per_round_trip(broker):
    """With more than half of prefetch in hand the consumer waits for acks and then fetches
    the free half in one call, instead of one message per ack."""
    fetches: list[int] = []
    fetch = broker._dispatch("fetch")

    def counted_fetch(queue_name, count):
        if queue_name == "doorbell_busy":  # not its delay queue
            fetches.append(count)
        return fetch(queue_name, count)

    broker.do_fetch = counted_fetch  # Dramatiq's consumer calls broker.do_fetch
    done = threading.Semaphore(0)

    @dramatiq.actor(queue_name="doorbell_busy", broker=broker)
    def work(n: int) -> None:
        time.sleep(0.002)  # as a transition waits on the database
        done.release()

    send_and_process_all(broker, work, done, count=400, threads=4)  # prefetch 8

    assert min(fetches) >= 4, f"fetches asked for fewer than half of prefetch: {fetches}"
    assert len(fetches) <= 400 / 4 + 5


def test_the_doorbell_holds_at_most_one_token(broker):
    @dramatiq.actor(queue_name="doorbell_tokens", broker=broker)
    def nothing() -> None:
        pass

    for _ in range(5):
        nothing.send()
    nothing.send_with_options(delay=60_000)  # a delay queue has no doorbell

    client = redis.Redis(connection_pool=broker.client.connection_pool)
    assert client.llen(broker.doorbell("doorbell_tokens")) == 1
    assert not client.exists(broker.doorbell(dq_name("doorbell_tokens")))


def test_a_lost_connection_while_waiting_ends_in_connection_closed(broker):
    consumer = broker.consume("doorbell_lost", timeout=100)
    broker.client.connection_pool.disconnect()
    # nothing listens there; no retries
    broker.client = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))

    with pytest.raises(dramatiq.errors.ConnectionClosed):
        next(consumer)
