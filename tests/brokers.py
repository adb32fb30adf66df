"""A real Redis broker for tests, swapped in for the in-memory one with every actor on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import dramatiq
import redis
from django.conf import settings
from django_dramatiq.utils import load_middleware
from dramatiq.brokers.redis import RedisBroker


def test_redis_url() -> str:
    """The test Redis db; each pytest-xdist worker has its own, counting down from the
    configured one (gw0: db 15, gw1: db 14 with the default), as each has its own
    PostgreSQL test database."""
    url = os.environ.get("MQI_TEST_REDIS_URL")
    if not url:
        raise RuntimeError("MQI_TEST_REDIS_URL is not set: run the suite with bin/test")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    db = int(redis.connection.parse_url(url).get("db", 0)) - worker
    assert db >= 0, f"{url}: too few Redis databases below it for {worker + 1} workers"
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


test_redis_url.__test__ = False  # not a test, despite the name


@contextmanager
def redis_broker_swapped_in() -> Iterator[RedisBroker]:
    url = test_redis_url()
    redis.Redis.from_url(url).flushdb()
    middleware = [load_middleware(path) for path in settings.DRAMATIQ_MIDDLEWARE]
    broker = RedisBroker(url=url, middleware=middleware)
    previous = dramatiq.get_broker()
    actors = [previous.get_actor(name) for name in previous.get_declared_actors()]
    for actor in actors:
        actor.broker = broker
        broker.declare_actor(actor)
    dramatiq.set_broker(broker)
    try:
        yield broker
    finally:
        for actor in actors:
            actor.broker = previous
        dramatiq.set_broker(previous)
        broker.close()
        redis.Redis.from_url(url).flushdb()
