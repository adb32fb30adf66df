"""Fault (d): the GPU server's sshd dies mid-transfer and mid-command, and comes back later.

Transfers fail transiently and are retried (resuming verified files) with a backoff that
outlasts the outage; detached commands keep running without their connection and are
re-attached, never started again.
"""

from __future__ import annotations

import time

import pytest

from tests.harness import standard_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def retries_outlast_the_outage(config: dict) -> None:
    # 5 attempts 1, 2, 4, 4 s apart: a transfer gives up only after ~11 s without sshd
    config["retries"] = {"backoff_base_sec": 1, "backoff_max_sec": 4}
    for step in config["workflows"]["default_qa"]:
        step["max_attempts"] = 5


def test_sshd_killed_mid_transfer_and_mid_command_loses_nothing(production, tmp_path):
    system = production(
        hosts=1, gpus_per_host=3, moqui_batch_sec=0.5, edit=retries_outlast_the_outage
    )
    (sshd,) = system.hosts
    staging, batch = standard_batch(tmp_path, seed=6)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    hit = []
    for step, down_sec in (("upload_case_files", 3), ("run_moqui_sim", 5), ("download_results", 2)):
        system.wait_for_step(step)
        hit.append(", ".join(f"{name} {n}" for name, n in sorted(system.in_flight().items())))
        sshd.kill()  # listener and every connection: a crashed sshd
        time.sleep(down_sec)
        sshd.start()

    figures = system.finish(
        "(d) sshd killed mid-transfer and mid-command",
        batch,
        started=started,
        faults="3 x sshd kill -9 for 2-5 s, mid " + "; ".join(hit),
    )
    assert figures.problems == []
