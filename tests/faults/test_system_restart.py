"""Fault (b): the whole system (conductor, workers, scheduler) stops mid-run and starts again.

First a clean stop (SIGTERM, as ``docker compose stop`` sends), then a crash of everything
(SIGKILL).  Whatever was in flight is picked up after the start: messages still in Redis are
handled, lost ones are re-driven, remote commands are re-attached.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import standard_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_the_whole_system_stopped_and_killed_mid_run_finishes_every_case_once(production, tmp_path):
    system = production(hosts=1, gpus_per_host=3)
    staging, batch = standard_batch(tmp_path, seed=5)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    system.wait_until(lambda: system.finished() >= 5, "5 cases finished")
    system.stop()  # SIGTERM: messages in hand are finished, the rest wait in Redis
    time.sleep(2)
    system.start()
    system.wait_until(lambda: system.finished() >= 12, "12 cases finished")
    system.kill()  # SIGKILL of every process: a power cut of the worker machine
    time.sleep(2)
    system.start()

    figures = system.finish(
        "(b) whole system stopped and restarted",
        batch,
        started=started,
        faults="all 3 processes SIGTERM + start after 5 cases, SIGKILL + start after 12",
    )
    assert figures.problems == []
