"""The production shape end to end: conductor, workers and scheduler as separate processes
on PostgreSQL, Redis and two sshd GPU servers, with a batch dropped into the watched folder."""

from __future__ import annotations

import time

import pytest

from tests.harness import build_batch, record_figures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_every_case_of_a_batch_ends_right_with_every_gpu_free(production, tmp_path):
    system = production(hosts=2, gpus_per_host=2)
    staging, batch = build_batch(
        tmp_path / "staging", succeed=18, fail_interpreter=2, fail_moqui=1, invalid=True
    )
    started = time.monotonic()
    system.start()

    system.drop(staging, batch)
    system.wait_all_terminal(batch, timeout=180)
    wall_sec = time.monotonic() - started
    system.stop()

    figures = system.check("production (no fault)", batch, wall_sec=wall_sec)
    record_figures(figures)
    print(f"{len(batch)} cases on 4 GPUs in {wall_sec:.1f} s")
    assert figures.problems == []
    assert (figures.lost, figures.leaked_gpus, figures.run_twice) == (0, 0, 0)
