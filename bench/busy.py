"""GPU busy share while cases wait for a GPU, through the production shape.

More cases than GPUs are dropped at once (:mod:`bench.system`), so a line of cases waits.
A case waits while one of its step runs is PENDING (created without a GPU, dispatched when
one frees up); a GPU is busy while a command runs on it (its wrapper's start and end
files).  The busy share is busy GPU time / (GPUs x time during which a case waited).

The bench's commands last seconds, a clinic's minutes (interpreter) to an hour (MOQUI),
while what a GPU loses between two cases is a fixed time: the poll that sees the command
end, the hops, the next case's command start.  So the row with the target takes that loss
per case, as measured here, against the clinic's GPU work per case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import system
from bench.infra import Context, Outcome, Row, at_least

GPUS = 2
CLINIC_GPU_MINUTES = 3 + 40  # interpreter + MOQUI of a typical case
TARGET = 98.0
INTERPRETER_SEC = (0.5, 1.5)
MOQUI_SEC = (2.0, 5.0)


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(intervals: list[tuple[float, float]], windows: list[tuple[float, float]]) -> float:
    return sum(
        max(0.0, min(end, w_end) - max(start, w_start))
        for start, end in intervals
        for w_start, w_end in windows
    )


@dataclass
class Share:
    """How the GPUs were used while cases waited for one."""

    gpus: int
    busy: float  # GPU seconds of commands running while a case waited
    waited: float  # seconds during which at least one case waited
    handoffs: int  # step runs that got a GPU after waiting for one
    served: int  # cases with such a step run

    @property
    def share(self) -> float:
        return self.busy / (self.gpus * self.waited)

    @property
    def lost(self) -> float:
        """GPU seconds idle while a case waited."""
        return self.gpus * self.waited - self.busy


def measure(cases: list[system.CaseTiming], gpus: int) -> Share:
    steps = [s for c in cases for s in c.steps]
    waits = _union([(s.created, s.dispatched) for s in steps if _waited(s)])
    return Share(
        gpus=gpus,
        busy=_busy_per_gpu(steps, waits),
        waited=sum(end - start for start, end in waits),
        handoffs=sum(1 for s in steps if _waited(s)),
        served=sum(1 for c in cases if any(_waited(s) for s in c.steps)),
    )


def at_clinic_lengths(lost_per_case: float) -> float:
    """Busy share (%) if each case brought the clinic's GPU work and lost what it lost here."""
    work = CLINIC_GPU_MINUTES * 60
    return 100 * work / (work + lost_per_case)


def _waited(step: system.StepTiming) -> bool:
    return step.dispatched - step.created > 0.001


def _busy_per_gpu(steps: list[system.StepTiming], waits: list[tuple[float, float]]) -> float:
    gpus = {s.gpu for s in steps if s.gpu is not None}
    return sum(
        _overlap(_union([s.command for s in steps if s.gpu == gpu and s.command]), waits)
        for gpu in gpus
    )


def backlog(
    ctx: Context, name: str, staging: Path, case_ids: list[str], edit: Callable[[dict], None]
) -> list[system.CaseTiming]:
    """Drop every case of ``staging`` at once on one server with ``GPUS`` GPUs; their timings."""
    with system.production_system(ctx, name, gpus=GPUS, edit=edit) as running:
        system.settle(5)
        for case_id in case_ids:
            system.drop_one(running, staging, case_id)
        system.wait_terminal(running, case_ids, timeout=40 * len(case_ids))
        return system.timings(running, case_ids)


def _policy(ctx: Context, policy: str, count: int) -> Share:
    staging = ctx.root / f"busy-{policy}-staging"
    batch = system.sleepy_cases(staging, count, interpreter=INTERPRETER_SEC, moqui=MOQUI_SEC)

    def edit(config: dict) -> None:
        config["conductor"]["gpu_policy"] = policy

    return measure(backlog(ctx, f"busy-{policy}", staging, batch.ids, edit), GPUS)


def run(ctx: Context) -> Outcome:
    count = ctx.options.scaled(10, 4)
    rows = []
    for policy in ("execute_steps", "every_step"):
        measured = _policy(ctx, policy, count)
        handoffs = measured.handoffs
        lost = measured.lost / max(handoffs, 1)
        clinic = at_clinic_lengths(lost)
        target = policy == "execute_steps"
        rows += [
            Row(
                "busy",
                f"GPU busy share while cases wait, {policy}, at clinic step lengths",
                clinic,
                "%",
                "≥ 98" if target else "",
                at_least(clinic, TARGET) if target else None,
                f"{CLINIC_GPU_MINUTES} min of GPU work per case, {lost:.2f} s lost per case",
            ),
            Row(
                "busy",
                f"  GPU seconds lost per case served, {policy}",
                lost,
                "s",
                detail=f"{handoffs} cases got a GPU while others waited",
            ),
            Row(
                "busy",
                f"  busy share measured with the bench's short commands, {policy}",
                100 * measured.share,
                "%",
                detail=f"cases waited during {measured.waited:.1f} s",
            ),
        ]
    note = (
        f"Busy: {count} sample cases dropped at once on one GPU server with {GPUS} GPUs, "
        "through the production shape (as for the overhead), commands sleeping "
        f"{INTERPRETER_SEC[0]:g}-{INTERPRETER_SEC[1]:g} s (interpreter) and "
        f"{MOQUI_SEC[0]:g}-{MOQUI_SEC[1]:g} s (MOQUI) first. A case waits while a step run "
        "of it is PENDING (`created_at` → `dispatched_at`); a GPU is busy while a command "
        "runs on it (the run folder's `pgid` → `exit_code` mtimes). GPU time lost per case = "
        "(GPUs x waiting time - busy GPU time) / cases that got a GPU while others waited. "
        f"At clinic lengths ({CLINIC_GPU_MINUTES} min of GPU work per case) the share is "
        "work / (work + loss per case): the loss is a fixed time per handoff, not a fraction "
        "of the commands' length. `execute_steps` holds a GPU only through the execute "
        "steps (the target); `every_step` also through upload and download (information; its "
        "clinic figure counts the bench's small transfers only, a real upload holds the GPU "
        "for minutes)."
    )
    return Outcome(rows, [note])
