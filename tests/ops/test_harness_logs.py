"""The harness reads the processes' logs record by record, tracebacks included, so a test
can tell which errors they logged and when."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.harness import log_records

pytestmark = pytest.mark.pure


LOG = """\
 * Running dramatiq: "dramatiq django_dramatiq.setup ..."
2026-11-29 22:01:41,148 ERROR dramatiq.worker.WorkerThread [case='c' run=4]: Failed to process
Traceback (most recent call last):
  File "cases/services.py", line 79, in step_run_heartbeat
django.db.utils.OperationalError: server closed the connection unexpectedly
2026-11-29 22:01:42,001 INFO conductor.state [case='c' run=5]: case c: completed
[2026-11-29 22:01:43,500] [PID 7] [MainThread] [dramatiq.MainProcess] [CRITICAL] Worker died
"""


def test_each_record_keeps_its_level_time_and_traceback():
    records = list(log_records("workers", LOG))

    assert [(r.level, r.at) for r in records] == [
        ("ERROR", datetime(2026, 11, 29, 22, 1, 41, 148000)),
        ("INFO", datetime(2026, 11, 29, 22, 1, 42, 1000)),
        ("CRITICAL", datetime(2026, 11, 29, 22, 1, 43, 500000)),
    ]
    assert records[0].text.endswith("OperationalError: server closed the connection unexpectedly")
    assert {r.process for r in records} == {"workers"}
