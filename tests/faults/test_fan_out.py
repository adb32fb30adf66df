"""Faults during a fan-out: workers killed with SIGKILL, and the GPU server's sshd down,
while several beams of several cases are simulated at once.  Nothing is lost, no beam
runs twice (each case's simulation starts exactly once per beam), no GPU stays booked."""

from __future__ import annotations

import time

import pytest

from tests.harness import build_batch, fan_out_beams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

OUTAGE_SEC = 12


def fan_out_system(production, tmp_path):
    system = production(
        hosts=1, gpus_per_host=4, moqui_batches=6, moqui_batch_sec=0.4, edit=fan_out_beams
    )
    staging, batch = build_batch(tmp_path / "staging", succeed=4, beams=3, moqui_starts=3)
    return system, staging, batch


def beams_in_flight(system, count: int = 2) -> None:
    system.wait_until(
        lambda: system.in_flight().get("run_moqui_sim", 0) >= count,
        f"{count} beams in flight",
        timeout=60,
        poll=0.05,
    )


def test_workers_killed_during_a_fan_out_lose_nothing_and_run_no_beam_twice(production, tmp_path):
    system, staging, batch = fan_out_system(production, tmp_path)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    hit = []
    for _ in range(2):
        beams_in_flight(system)
        hit.append(system.in_flight().get("run_moqui_sim", 0))
        system.kill("workers")
        time.sleep(1)
        system.start("workers")

    figures = system.finish(
        "(g) workers kill -9 during a fan-out",
        batch,
        started=started,
        faults="2 x kill -9 of the workers with "
        + " and ".join(str(n) for n in hit)
        + " beams in flight",
        timeout=90,
    )
    assert figures.problems == []


def test_an_sshd_outage_during_a_fan_out_pauses_the_beams_and_loses_nothing(production, tmp_path):
    system, staging, batch = fan_out_system(production, tmp_path)
    (sshd,) = system.hosts
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    beams_in_flight(system, 3)
    hit = system.in_flight().get("run_moqui_sim", 0)
    sshd.kill()
    time.sleep(OUTAGE_SEC)
    sshd.start()

    figures = system.finish(
        "(g2) sshd down during a fan-out",
        batch,
        started=started,
        faults=f"sshd killed for {OUTAGE_SEC} s with {hit} beams in flight",
        timeout=90,
    )
    assert figures.problems == []
    spent = [
        run
        for run in system.step_runs()
        if run[3] == "FAILED" and run[4] not in ("permanent", "unreachable")
    ]
    assert spent == []  # an outage costs no attempt
    assert system.events("waiting_for_host"), "the outage was never felt"
