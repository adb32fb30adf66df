"""A real Redis broker for tests, swapped in for the in-memory one with every actor on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
import redis
from django.conf import settings
from django_dramatiq.utils import load_middleware
from dramatiq.brokers.redis import RedisBroker


def test_redis_url() -> str:
    url = os.environ.get("MQI_TEST_REDIS_URL")
    if not url:
        raise RuntimeError("MQI_TEST_REDIS_URL is not set: run the suite with bin/test")
    return url


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
