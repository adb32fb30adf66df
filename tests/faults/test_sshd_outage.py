"""Fault (d): a GPU server cannot be reached for a minute while cases are on it.

An outage of a server is not a failure of its cases.  With one server, every step that
meets the outage waits for it (keeping its GPU) and goes on when the probe finds it back:
transfers resume, detached commands are re-attached, no attempt is spent and nothing runs
twice.  With two servers, the cases that had run nothing yet on the one that went down
start again on the other; the others wait for it.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import standard_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

OUTAGE_SEC = 60


def overlapping_steps(config: dict) -> None:
    # uploads and downloads hold no GPU: transfers and commands are in flight together
    config["conductor"]["gpu_policy"] = "execute_steps"


def no_attempt_spent(system) -> list[str]:
    """Step runs that failed for something other than what their case was built to fail
    with: an outage must cost none."""
    return [
        f"{case_id}: {name}#{attempt} {status} ({kind})"
        for case_id, name, attempt, status, kind, _ in system.step_runs()
        if status == "FAILED" and kind not in ("permanent", "unreachable")
    ]


def test_a_server_down_for_a_minute_pauses_its_cases_and_loses_nothing(production, tmp_path):
    system = production(hosts=1, gpus_per_host=3, moqui_batch_sec=0.5, edit=overlapping_steps)
    (sshd,) = system.hosts
    staging, batch = standard_batch(tmp_path, seed=6)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    def commands_and_transfers() -> bool:
        running = system.in_flight()
        transfers = running.get("upload_case_files", 0) + running.get("download_results", 0)
        commands = running.get("run_interpreter", 0) + running.get("run_moqui_sim", 0)
        return transfers > 0 and commands > 0

    system.wait_until(commands_and_transfers, "transfers and commands in flight together")
    hit = ", ".join(f"{name} {n}" for name, n in sorted(system.in_flight().items()))
    sshd.kill()  # listener and every connection: a crashed server
    time.sleep(OUTAGE_SEC)
    sshd.start()

    figures = system.finish(
        "(d) sshd down for a minute",
        batch,
        started=started,
        faults=f"sshd killed for {OUTAGE_SEC} s, mid {hit}",
        timeout=240,
    )
    assert figures.problems == []
    assert no_attempt_spent(system) == []
    assert system.events("waiting_for_host"), "the outage was never felt"
    assert system.events("host_back")
    assert not [run for run in system.step_runs() if run[2] > 1 and run[4] != "permanent"]


def test_cases_that_have_not_started_move_to_the_server_that_is_up(production, tmp_path):
    system = production(hosts=2, gpus_per_host=2, moqui_batch_sec=0.5)
    down = system.hosts[0]
    staging, batch = standard_batch(tmp_path, seed=9)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    def uploading_to_the_server_that_goes_down() -> bool:
        (count,) = system.db.query(
            "SELECT count(*) FROM cases_workflowstep WHERE name = 'upload_case_files'"
            " AND status IN ('DISPATCHED', 'RUNNING') AND host = %s",
            ("gpu1",),
        )[0]
        return count > 0

    # The first cases go to both servers at once.  Those on gpu1 have run nothing there
    # while their upload is on its way (an idle worker takes up to dramatiq_worker_timeout
    # to fetch it): gpu1 goes down then, so they can only move.
    system.wait_until(uploading_to_the_server_that_goes_down, "an upload to gpu1", poll=0.02)
    down.kill()
    time.sleep(OUTAGE_SEC)
    down.start()

    figures = system.finish(
        "(d2) one of two servers down for a minute",
        batch,
        started=started,
        faults=f"sshd of gpu1 killed for {OUTAGE_SEC} s mid-upload of the first cases",
        timeout=240,
    )
    assert figures.problems == []
    assert no_attempt_spent(system) == []
    moved = system.events("moved")
    assert moved, "no case moved to the server that was up"
    assert all("gpu1 cannot be reached" in message for _, message in moved)
    hosts_of_moved = {
        host
        for case_id, name, *_, host in system.step_runs()
        if case_id in {case_id for case_id, _ in moved} and name == "run_interpreter"
    }
    assert hosts_of_moved == {"gpu2"}
