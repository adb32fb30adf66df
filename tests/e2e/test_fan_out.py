"""A plan's beams simulated in parallel, in the production shape: conductor, workers and
scheduler as processes on PostgreSQL, Redis and an sshd GPU server."""

from __future__ import annotations

import os
import time

import pytest

from tests.harness import build_batch, fan_out_beams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

BATCHES, BATCH_SEC = 6, 0.5  # each beam's simulation runs ~3 s


def run_one_three_beam_case(production, tmp_path, gpus: int):
    system = production(
        hosts=1,
        gpus_per_host=gpus,
        moqui_batches=BATCHES,
        moqui_batch_sec=BATCH_SEC,
        edit=fan_out_beams,
    )
    staging, batch = build_batch(tmp_path / "staging", succeed=1, beams=3, moqui_starts=3)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)
    system.wait_all_terminal(batch, timeout=120)
    wall_sec = time.monotonic() - started
    system.stop()
    figures = system.check(f"fan-out on {gpus} GPUs", batch, wall_sec=wall_sec)
    assert figures.problems == []
    return system


def overlap(one, other) -> bool:
    return one[1] < other[2] and other[1] < one[2]


def test_three_beams_with_four_free_gpus_are_simulated_at_the_same_time(production, tmp_path):
    system = run_one_three_beam_case(production, tmp_path, gpus=4)

    runs = system.intervals("run_moqui_sim")
    assert sorted(beam for beam, *_ in runs) == [1, 2, 3]
    assert all(overlap(a, b) for a in runs for b in runs if a is not b), runs
    gpus = system.db.query(
        "SELECT DISTINCT gpu_id FROM cases_workflowstep WHERE name = 'run_moqui_sim'"
    )
    assert len(gpus) == 3
    results = system.db.query("SELECT path FROM cases_resultfile ORDER BY path")
    assert {"beam-1/RTDOSE.dcm", "beam-2/RTDOSE.dcm", "beam-3/RTDOSE.dcm"} <= {
        path for (path,) in results
    }


def test_with_one_free_gpu_the_beams_are_simulated_one_after_another(production, tmp_path):
    system = run_one_three_beam_case(production, tmp_path, gpus=1)

    runs = system.intervals("run_moqui_sim")
    assert [beam for beam, *_ in runs] == [1, 2, 3]
    assert not any(overlap(a, b) for a in runs for b in runs if a is not b), runs


def test_a_beam_that_fails_for_good_fails_the_case_and_stops_the_other_beams(production, tmp_path):
    system = production(
        hosts=1, gpus_per_host=4, moqui_batches=40, moqui_batch_sec=0.5, edit=fan_out_beams
    )
    staging, batch = build_batch(tmp_path / "staging", succeed=1, beams=3, moqui_starts=3)
    (case_id,) = batch.ids
    (staging / case_id / "MQI_FAIL_MOQUI_BEAM_2").write_text("5 beam 2: spot map rejected\n")
    system.start()
    system.drop(staging, batch)
    system.wait_all_terminal(batch, timeout=120)

    case = system.cases()[case_id]
    assert case.status == "FAILED"
    assert "beam 2" in case.error_message and "spot map rejected" in case.error_message
    beams = system.db.query(
        "SELECT beam_number, status, gpu_id FROM cases_workflowstep"
        " WHERE name = 'run_moqui_sim' ORDER BY beam_number"
    )
    assert [(beam, status) for beam, status, _ in beams] == [
        (1, "CANCELLED"),
        (2, "FAILED"),
        (3, "CANCELLED"),
    ]
    assert system.db.query("SELECT count(*) FROM gpus_gpuresource WHERE step_run_id IS NOT NULL")[
        0
    ] == (0,)
    # the other beams' simulations (20 s each) were killed, not left to run on their GPUs
    run_dirs = sorted(system.upload_dir.glob(f"{case_id}/run-1/.mqi/runs/run_moqui_sim-*"))
    assert len(run_dirs) == 3
    system.wait_until(
        lambda: all(not group_alive(int((run / "pgid").read_text())) for run in run_dirs),
        "every beam's process group gone",
        timeout=30,
    )
    outputs = system.download_dir / case_id / "run-1"
    assert not list(outputs.glob("beam-*/RTDOSE.dcm")), "a beam ran to its end"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
