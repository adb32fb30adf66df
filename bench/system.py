"""Cases through the production shape, and when each of their steps did what.

:class:`tests.harness.ProductionSystem` runs what ``docker-compose.yml`` runs (``rundramatiq``
conductor and workers processes, ``runscheduler``) on the bench's PostgreSQL database and
Redis db, with the bench's sshd as the GPU server and the stand-in interpreter and MOQUI
simulation as its commands.  Each case folder is a sample case (RTPLAN + machine logs)
with ``MQI_SLEEP_INTERPRETER`` / ``MQI_SLEEP_MOQUI`` files, so every command's length is
chosen per case (spread, so that the ends of commands fall anywhere between two polls).

What a case's timeline is made of comes from three clocks that all read this machine's
time: the case row (found = ``created_at``, completed = ``finished_at``), its step runs
(``dispatched_at`` by the conductor, ``started_at`` by the worker that takes it,
``finished_at`` by the conductor recording the outcome), and the files that the detached
command's wrapper writes in the run folder on the GPU server (``pgid`` just before the
command starts, ``exit_code`` as it ends: their mtimes are the command's own start and end).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.infra import DATABASE_URL, REDIS_URL, Context, reset_state
from cases.models import Case, WorkflowStep
from tests.harness import Batch, ProductionSystem, build_batch

THREADS = 8  # the workers process's threads in docker-compose.yml


@dataclass
class StepTiming:
    """One step run; times are seconds since the epoch."""

    name: str
    type: str
    gpu: int | None
    created: float  # a step run waiting for a GPU is created PENDING, dispatched when it gets one
    dispatched: float
    started: float
    finished: float
    command: tuple[float, float] | None = None  # the remote command's own start and end


@dataclass
class CaseTiming:
    case_id: str
    status: str
    found: float
    completed: float
    steps: list[StepTiming] = field(default_factory=list)

    @property
    def turnaround(self) -> float:
        return self.completed - self.found


@contextmanager
def production_system(
    ctx: Context, name: str, *, gpus: int, edit: Callable[[dict], None] | None = None
) -> Iterator[ProductionSystem]:
    """Conductor, workers and scheduler processes on one GPU server with ``gpus`` GPUs."""
    reset_state()
    system = ProductionSystem(
        ctx.root / name,
        database_url=DATABASE_URL,
        redis_url=REDIS_URL,
        hosts=[ctx.sshd],
        gpus_per_host=gpus,
        threads=THREADS,
        edit=edit,
    )
    system.start()
    try:
        yield system
        dead = system.dead_processes()
        if dead:
            raise RuntimeError(f"{', '.join(dead)} died during the run:\n{system.logs()}")
    finally:
        system.close()


def sleepy_cases(
    staging: Path,
    count: int,
    *,
    interpreter: tuple[float, float],
    moqui: tuple[float, float],
    beams: int = 2,
    seed: int = 3,
) -> Batch:
    """``count`` valid case folders of ``beams`` treatment beams whose commands sleep a
    seeded random time first (each beam's run the same time when the simulation fans out)."""
    _, batch = build_batch(staging, succeed=count, seed=seed, beams=beams)
    # (11 for the default seed: the lengths the figures so far were measured with)
    rng = random.Random(seed + 8)  # noqa: S311 (command lengths, not security)
    for case_id in batch.ids:
        folder = staging / case_id
        (folder / "MQI_SLEEP_INTERPRETER").write_text(f"{rng.uniform(*interpreter):.3f}\n")
        (folder / "MQI_SLEEP_MOQUI").write_text(f"{rng.uniform(*moqui):.3f}\n")
    return batch


def drop_one(system: ProductionSystem, staging: Path, case_id: str) -> None:
    os.rename(staging / case_id, system.watch_dir / case_id)


def wait_terminal(system: ProductionSystem, case_ids: list[str], timeout: float) -> None:
    wanted = set(case_ids)

    def done() -> bool:
        cases = system.cases()
        return all(c in cases and cases[c].status in ("COMPLETED", "FAILED") for c in wanted)

    system.wait_until(done, f"{len(wanted)} case(s) to end", timeout=timeout, poll=0.1)
    failed = [c for c, row in system.cases().items() if c in wanted and row.status != "COMPLETED"]
    if failed:
        raise AssertionError(f"cases did not complete: {failed}\n{system.logs()}")


def _command_times(system: ProductionSystem) -> dict[int, tuple[float, float]]:
    """Step run id -> (start, end) of its command, from the run folders' files."""
    times = {}
    for exit_code in system.upload_dir.rglob("exit_code"):
        run_dir = exit_code.parent
        step_run_id = int(run_dir.name.rsplit("-", 1)[1])
        times[step_run_id] = ((run_dir / "pgid").stat().st_mtime, exit_code.stat().st_mtime)
    return times


def timings(system: ProductionSystem, case_ids: list[str]) -> list[CaseTiming]:
    commands = _command_times(system)
    cases = {c.pk: c for c in Case.objects.filter(case_id__in=case_ids)}
    result = {
        pk: CaseTiming(c.case_id, c.status, c.created_at.timestamp(), c.finished_at.timestamp())
        for pk, c in cases.items()
    }
    for run in WorkflowStep.objects.filter(case__in=cases).order_by("id"):
        result[run.case_id].steps.append(
            StepTiming(
                name=run.name,
                type=run.type,
                gpu=run.gpu_id,
                created=run.created_at.timestamp(),
                dispatched=run.dispatched_at.timestamp(),
                started=run.started_at.timestamp(),
                finished=run.finished_at.timestamp(),
                command=commands.get(run.pk),
            )
        )
    return sorted(result.values(), key=lambda c: c.found)


def settle(seconds: float) -> None:
    """Let the processes finish starting (imports, first scans) before anything counts."""
    time.sleep(seconds)
