"""Faults (e) and (f): the broker loses every message, the database restarts.

Both run against private instances started by the test, never the machine's own services.
(e) Redis is flushed and restarted mid-run: every queued, delayed and unacknowledged message
is gone; the scheduler takes the lead again and the reconciler re-drives each case from the
database.  (f) PostgreSQL restarts mid-run (a fast shutdown, then a crash-like immediate
one): handlers that meet the database going down fail and Dramatiq retries them; once it is
back, no worker thread trips over a connection the restart closed (Django checks a kept
connection before each message uses it).
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import redis

from tests.harness import LogRecord, standard_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_redis_flushed_and_restarted_mid_run_loses_no_case(production, private_redis, tmp_path):
    system = production(hosts=1, gpus_per_host=3, redis_url=private_redis.url)
    staging, batch = standard_batch(tmp_path, seed=7)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    for finished in (4, 11):
        system.wait_until(lambda n=finished: system.finished() >= n, f"{finished} cases finished")
        redis.Redis.from_url(private_redis.url).flushall()  # the private instance only
        private_redis.kill()
        time.sleep(2)
        private_redis.start()

    figures = system.finish(
        "(e) Redis flushed and restarted",
        batch,
        started=started,
        faults="2 x FLUSHALL + redis-server killed for 2 s, after 4 and 11 cases",
    )
    assert figures.problems == []


def test_postgres_restarted_mid_run_loses_no_case(production, private_postgres, tmp_path):
    system = production(hosts=1, gpus_per_host=3, database_url=private_postgres.url)
    system.migrate()
    staging, batch = standard_batch(tmp_path, seed=8)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    outages: list[tuple[datetime, datetime]] = []
    for finished, mode in ((4, "fast"), (11, "immediate")):
        system.wait_until(lambda n=finished: system.finished() >= n, f"{finished} cases finished")
        going_down = datetime.now()
        private_postgres.restart(mode=mode)
        outages.append((going_down, datetime.now()))

    figures = system.finish(
        "(f) PostgreSQL restarted",
        batch,
        started=started,
        faults="pg_ctl restart -m fast after 4 cases, -m immediate after 11",
    )
    assert figures.problems == []
    stale = [record.text for record in system.errors() if stale_connection(record, outages)]
    assert stale == []


# What psycopg2 says when a query is sent on a connection the server has closed; a new
# connection refused while the server goes down says "connection to server at ... failed".
CLOSED_CONNECTION = (
    "server closed the connection unexpectedly",
    "terminating connection due to",
    "connection already closed",
)
FAILED_CONNECT = "connection to server at"


def stale_connection(record: LogRecord, outages: list[tuple[datetime, datetime]]) -> bool:
    """An error about a closed connection while the database was up: the connection was
    opened before a restart and used after it.  While it goes down, a query in flight
    fails for the same reason, rightly."""
    if any(begin <= record.at <= end for begin, end in outages):
        return False
    return any(
        text in line and FAILED_CONNECT not in line
        for line in record.text.splitlines()
        for text in CLOSED_CONNECTION
    )
