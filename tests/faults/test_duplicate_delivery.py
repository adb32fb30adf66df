"""Fault (c): every message is delivered twice, and outcomes arrive out of order.

The child processes run with :class:`tests.faults.duplicate_delivery.DeliverTwice`: each
message is enqueued a second time with the same id, and the copy of every outcome comes
late, after the outcomes that followed it.  Handlers are idempotent per step run: a
duplicate ``new_case_found`` creates nothing, a duplicate command re-attaches or skips
verified files, a late or repeated outcome is recorded and changes nothing.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import standard_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def ignored_outcomes(system) -> int:
    return system.db.query("SELECT count(*) FROM cases_caseevent WHERE kind = 'ignored_outcome'")[
        0
    ][0]


def test_every_message_twice_and_outcomes_reordered_change_no_outcome(production, tmp_path):
    system = production(
        hosts=2, gpus_per_host=2, settings_module="tests.faults.settings_duplicates"
    )
    staging, batch = standard_batch(tmp_path, seed=4)
    started = time.monotonic()
    system.start()

    system.drop(staging, batch)
    figures = system.finish(
        "(c) every message twice, outcomes reordered",
        batch,
        started=started,
        faults="each message delivered twice; the copy of each outcome 0.2-2.5 s late",
    )

    assert figures.problems == []
    assert ignored_outcomes(system) > len(batch)  # the duplicates did arrive, and were ignored
