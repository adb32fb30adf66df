"""Fault (a): the workers process is killed with SIGKILL at random moments and restarted.

Messages it held are never acknowledged; transfers stop half-written; commands it started
keep running on the GPU server.  The reconciler re-drives every step run past its deadline,
the executor re-attaches instead of starting again, and transfers resume.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import pytest

from tests.harness import standard_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# One seed in every test run (the fault group is the suite's longest path: each seed is about
# a minute); bin/reliability records three for docs/reliability.md.
SEEDS = [int(seed) for seed in os.environ.get("MQI_FAULT_SEEDS", "1").split(",")]


@pytest.mark.parametrize("seed", SEEDS)
def test_workers_killed_at_random_moments_lose_nothing_and_run_nothing_twice(
    production, tmp_path, seed
):
    rng = random.Random(seed)
    system = production(hosts=1, gpus_per_host=3)
    staging, batch = standard_batch(tmp_path, seed)
    started = time.monotonic()
    system.start()
    system.drop(staging, batch)

    hit: Counter[str] = Counter()
    for _ in range(3):
        time.sleep(rng.uniform(1.5, 5))
        hit.update(system.in_flight())
        system.kill("workers")
        time.sleep(rng.uniform(0, 2))
        system.start("workers")

    figures = system.finish(
        f"(a) workers kill -9, seed {seed}",
        batch,
        started=started,
        faults="3 x kill -9 of the workers, with step runs in flight: "
        + ", ".join(f"{step} {n}" for step, n in sorted(hit.items())),
    )
    assert figures.problems == []
