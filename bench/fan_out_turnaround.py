"""Beams in parallel: a three-beam case's turnaround with three free GPUs against one.

One case at a time, its simulation fanned out (``fan_out: beams``), through the production
shape (:mod:`bench.system`).  With three GPUs the beams run at once; with one GPU they run
one after another on the GPU the case holds.  Every beam's command sleeps the same time
first, so the simulation is three times as long on one GPU, while the upload, the
interpreter and the download are the same: the ratio of the turnarounds is a third plus
the fixed part's share.  The MOQUI stage alone (the first beam run created → the last
beam's outcome recorded) shows what fan-out buys without the fixed part.
"""

from __future__ import annotations

from bench import system
from bench.infra import Context, Outcome, Row, at_most, median
from tests.harness import fan_out_beams

BEAMS = 3
INTERPRETER_SEC = 0.5
BEAM_SEC = 6.0  # each beam's sleep before the stand-in simulates it
TARGET = 0.45  # a third, plus the fixed part's share


def _cases(ctx: Context, gpus: int, count: int) -> list[system.CaseTiming]:
    staging = ctx.root / f"fan-out-{gpus}-staging"
    lengths = {"interpreter": (INTERPRETER_SEC,) * 2, "moqui": (BEAM_SEC,) * 2}
    batch = system.sleepy_cases(staging, count, beams=BEAMS, **lengths)
    with system.production_system(
        ctx, f"fan-out-{gpus}-gpus", gpus=gpus, edit=fan_out_beams
    ) as running:
        system.settle(5)
        for case_id in batch.ids:
            system.drop_one(running, staging, case_id)
            system.wait_terminal(running, [case_id], timeout=120)
        return system.timings(running, batch.ids)


def _beams(case: system.CaseTiming) -> list[system.StepTiming]:
    beams = [s for s in case.steps if s.name == "run_moqui_sim"]
    if len(beams) != BEAMS:
        raise AssertionError(f"{case.case_id}: {len(beams)} beam runs, expected {BEAMS}")
    return beams


def _moqui_stage(case: system.CaseTiming) -> float:
    beams = _beams(case)
    return max(s.finished for s in beams) - min(s.created for s in beams)


def _gpus_used(cases: list[system.CaseTiming]) -> str:
    """How many GPUs each case's beams ran on (3 with three free GPUs, if fan-out works)."""
    return ", ".join(str(len({s.gpu for s in _beams(c)})) for c in cases)


def run(ctx: Context) -> Outcome:
    count = ctx.options.scaled(3, 1)
    runs = {gpus: _cases(ctx, gpus, count) for gpus in (BEAMS, 1)}
    turnaround = {g: median([c.turnaround for c in cases]) for g, cases in runs.items()}
    stage = {g: median([_moqui_stage(c) for c in cases]) for g, cases in runs.items()}
    ratio = turnaround[BEAMS] / turnaround[1]
    commands = [s.command[1] - s.command[0] for c in runs[1] for s in _beams(c) if s.command]
    rows = [
        Row(
            "fan-out turnaround",
            f"{BEAMS}-beam case turnaround, {BEAMS} GPUs / 1 GPU",
            ratio,
            "x",
            f"≤ {TARGET:g}",
            at_most(ratio, TARGET),
            f"p50 of {count}; ideal {1 / BEAMS:.2f} plus the fixed part's share",
        ),
    ]
    for gpus, cases in runs.items():
        spread = ", ".join(f"{c.turnaround:.2f}" for c in cases)
        detail = f"{spread}; beams ran on {_gpus_used(cases)} GPU(s)"
        rows.append(
            Row(
                "fan-out turnaround",
                f"  turnaround, {gpus} GPU(s), p50",
                turnaround[gpus],
                "s",
                detail=detail,
            )
        )
    rows += [
        Row(
            "fan-out turnaround",
            f"  MOQUI stage alone, {BEAMS} GPUs / 1 GPU",
            stage[BEAMS] / stage[1],
            "x",
            detail=f"p50 {stage[BEAMS]:.2f} s on {BEAMS} GPUs, {stage[1]:.2f} s on 1 GPU",
        ),
        Row(
            "fan-out turnaround",
            "  one beam's command, p50",
            median(commands),
            "s",
            detail=f"its sleep {BEAM_SEC:g} s + the stand-in's simulation of one beam",
        ),
    ]
    note = (
        f"Fan-out turnaround: {count} sample cases of {BEAMS} beams, one at a time, through "
        "the production shape (as for the overhead), the simulation step with `fan_out: "
        "beams` (`--beam {beam_number}`), default `gpu_policy` (`every_step`); the "
        f"interpreter sleeps {INTERPRETER_SEC:g} s and every beam's run {BEAM_SEC:g} s "
        f"first. Once with {BEAMS} GPUs, once with 1, each on a fresh system. Turnaround = "
        "case `created_at` → `finished_at`; MOQUI stage = the first beam run's `created_at` "
        "(the interpreter's outcome recorded) → the last beam run's `finished_at`."
    )
    return Outcome(rows, [note])
