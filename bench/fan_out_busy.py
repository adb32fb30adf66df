"""GPU busy share while cases wait, a backlog of one-, two- and three-beam cases fanned out.

The method of :mod:`bench.busy` (its measure and its clinic conversion), with the
simulation step fanned out over beams (``fan_out: beams``) under ``execute_steps``: a
case's first beam keeps the interpreter's GPU, its other beams queue for GPUs in the same
line as every other step run, so a case now hands GPUs over once per beam.  The clinic's
GPU work per case is the same (a plan's simulation split among its beams), so the loss per
case served is what counts against it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from bench import busy, system
from bench.infra import Context, Outcome, Row, at_least
from tests.harness import fan_out_beams

POLICY = "execute_steps"


def _mixed_backlog(staging: Path, per_kind: int) -> list[str]:
    """``per_kind`` cases each of 1, 2 and 3 beams in ``staging``, in a seeded shuffled order."""
    ids = []
    for beams in (1, 2, 3):
        kind = staging / f"{beams}-beam"
        batch = system.sleepy_cases(
            kind,
            per_kind,
            interpreter=busy.INTERPRETER_SEC,
            moqui=busy.MOQUI_SEC,
            beams=beams,
            seed=beams,
        )
        for case_id in batch.ids:
            os.rename(kind / case_id, staging / f"{beams}b-{case_id}")
            ids.append(f"{beams}b-{case_id}")
    random.Random(5).shuffle(ids)  # noqa: S311 (an arrival order, not security)
    return ids


def _edit(config: dict) -> None:
    config["conductor"]["gpu_policy"] = POLICY
    fan_out_beams(config)


def run(ctx: Context) -> Outcome:
    per_kind = ctx.options.scaled(3, 1)
    staging = ctx.root / "fan-out-busy-staging"
    ids = _mixed_backlog(staging, per_kind)
    measured = busy.measure(busy.backlog(ctx, "fan-out-busy", staging, ids, _edit), busy.GPUS)
    per_case = measured.lost / max(measured.served, 1)
    per_handoff = measured.lost / max(measured.handoffs, 1)
    clinic = busy.at_clinic_lengths(per_case)
    rows = [
        Row(
            "fan-out busy",
            f"GPU busy share while cases wait, 1-3-beam backlog fanned out, {POLICY}, "
            "at clinic step lengths",
            clinic,
            "%",
            f"≥ {busy.TARGET:g}",
            at_least(clinic, busy.TARGET),
            f"{busy.CLINIC_GPU_MINUTES} min of GPU work per case, {per_case:.2f} s lost per case",
        ),
        Row(
            "fan-out busy",
            "  GPU seconds lost per case served",
            per_case,
            "s",
            detail=f"{measured.served} cases got a GPU while others waited, "
            f"{measured.handoffs} step runs ({measured.handoffs / max(measured.served, 1):.1f} "
            "per case)",
        ),
        Row(
            "fan-out busy",
            "  GPU seconds lost per handoff (a step run that waited)",
            per_handoff,
            "s",
        ),
        Row(
            "fan-out busy",
            "  busy share measured with the bench's short commands",
            100 * measured.share,
            "%",
            detail=f"cases waited during {measured.waited:.1f} s",
        ),
    ]
    note = (
        f"Fan-out busy: {3 * per_kind} sample cases, {per_kind} each of 1, 2 and 3 beams "
        f"(seeded order), dropped at once on one GPU server with {busy.GPUS} GPUs, through the "
        f"production shape, `gpu_policy: {POLICY}`, the simulation with `fan_out: beams`; "
        f"the interpreter sleeps {busy.INTERPRETER_SEC[0]:g}-{busy.INTERPRETER_SEC[1]:g} s "
        f"and each beam's run {busy.MOQUI_SEC[0]:g}-{busy.MOQUI_SEC[1]:g} s first. Measured "
        "as for busy (waiting = a step run PENDING, busy = a command running); GPU time lost "
        "per case = (GPUs x waiting time - busy GPU time) / cases with a step run that "
        "waited, and at clinic lengths the share is work / (work + loss per case) with the "
        f"same {busy.CLINIC_GPU_MINUTES} min of GPU work per case, now split among its beams."
    )
    return Outcome(rows, [note])
