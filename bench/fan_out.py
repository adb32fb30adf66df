"""Fan-out over beams: a plan's turnaround with its beams in parallel, and GPU busy share.

1. Turnaround: one case of three beams, its simulation fanned out (``fan_out: beams``),
   through the production path (conductor process, Redis, an executor process, a real
   sshd): with three free GPUs its beams run at once, with one GPU one after another.
   The ratio of the two turnarounds is what fan-out buys (ideally a third).
2. GPU busy share under a mixed backlog: cases of one, two and three beams arriving at
   once, the simulation fanned out, on the scheduling bench of ``bench.utilization``
   (real conductor process, simulated workers).
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.infra import (
    Context,
    Outcome,
    Row,
    at_most,
    median,
    own_broker_id,
    reset_state,
    sample_config,
    ssh_host,
    use_config,
    wait_for_consumers,
    wait_until,
)
from bench.utilization import GPUS, SCALE, simulate_day
from cases.models import Case, WorkflowStep
from gpus.models import GPUResource
from mqi_site.config import get_config
from mqi_site.messaging import CONDUCTOR, QUEUES, REMOTE_EXECUTOR, Command, send

BEAM_SEC = 4.0  # each beam's simulation (the whole plan's takes three times as long)
BEAMS = [{"number": n, "name": f"B{n}"} for n in (1, 2, 3)]


def _config(ctx: Context, gpus: int) -> dict:
    steps = [
        {"name": "run_interpreter", "type": "execute", "progress": 10},
        {"name": "run_moqui_sim", "type": "execute", "progress": 30, "fan_out": "beams"},
    ]
    config = sample_config(ctx.root, hosts={"gpu1": ssh_host(ctx.sshd, gpus)})
    config["workflows"]["beams"] = steps
    config["remote_commands"].update(
        run_interpreter="true",
        run_moqui_sim=f"sleep {BEAM_SEC:g} && true {{beam_number}} {{output_dir}}",
    )
    return config


def _turnaround(ctx: Context, case_id: str) -> float:
    paths = get_config().run_paths(case_id, 1, "gpu1")
    Path(paths.case_dir).mkdir(parents=True)  # what its upload would have left
    plan = {"patient_id": "QA-B", "beams": BEAMS}
    send(
        CONDUCTOR,
        Command.NEW_CASE_FOUND,
        {
            "case_id": case_id,
            "source_path": paths.case_dir,
            "workflow": "beams",
            "problems": [],
            "plan": plan,
        },
    )

    def done() -> bool:
        status = Case.objects.filter(case_id=case_id).values_list("status", flat=True).first()
        if status in (Case.Status.FAILED, Case.Status.CANCELLED):
            raise AssertionError(f"{case_id} ended {status}")
        return status == Case.Status.COMPLETED

    wait_until(done, timeout=120, interval=0.05, what=f"{case_id} to complete")
    case = Case.objects.get(case_id=case_id)
    beams = WorkflowStep.objects.filter(case=case, name="run_moqui_sim").count()
    if beams != len(BEAMS):
        raise AssertionError(f"{case_id}: {beams} beam runs, expected {len(BEAMS)}")
    return (case.finished_at - case.created_at).total_seconds()


def _turnarounds(ctx: Context, gpus: int, cases: int) -> list[float]:
    reset_state()
    use_config(ctx.root / f"config-fan-out-{gpus}.yaml", _config(ctx, gpus))
    GPUResource.objects.bulk_create(GPUResource(host="gpu1", index=i) for i in range(gpus))
    conductor = ctx.processes.rundramatiq(
        f"fan-out-conductor-{gpus}",
        [QUEUES[CONDUCTOR]],
        worker_timeout_ms=ctx.options.worker_timeout_ms,
    )
    executor = ctx.processes.rundramatiq(
        f"fan-out-executor-{gpus}",
        [QUEUES[REMOTE_EXECUTOR]],
        threads=8,
        worker_timeout_ms=ctx.options.worker_timeout_ms,
    )
    try:
        wait_for_consumers(2, exclude=[own_broker_id()])
        return [_turnaround(ctx, f"fan-{gpus}-{i}") for i in range(cases)]
    finally:
        ctx.processes.stop(executor)
        ctx.processes.stop(conductor)


def _mixed_backlog(cases: int) -> dict[str, int]:
    rng = random.Random(7)  # noqa: S311 (a backlog, not security)
    return {f"mixed-{i:03d}": rng.choice((1, 2, 3)) for i in range(cases)}


def fan_out(ctx: Context) -> Outcome:
    out = Outcome()
    rounds = ctx.options.scaled(3, 1)
    parallel = median(_turnarounds(ctx, 3, rounds))
    serial = median(_turnarounds(ctx, 1, rounds))
    ratio = parallel / serial
    out.rows += [
        Row(
            "fan-out",
            "3-beam case turnaround, 3 GPUs / 1 GPU",
            ratio,
            "x",
            "≤ 0.45",
            at_most(ratio, 0.45),
            f"median of {rounds}: {parallel:.2f} s on 3 GPUs, {serial:.2f} s on 1 GPU; "
            f"each beam {BEAM_SEC:g} s (ideal {1 / 3:.2f} plus overhead)",
        )
    ]
    backlog = _mixed_backlog(ctx.options.scaled(100, 30))
    for policy in ("every_step", "execute_steps"):
        day = simulate_day(ctx, policy, len(backlog), beams=backlog)
        out.rows.append(
            Row(
                "fan-out",
                f"GPU busy share while cases wait, mixed backlog, {policy}",
                day.utilization * 100,
                "%",
                "≥ 90",
                day.utilization * 100 >= 90,
                f"{len(backlog)} cases of 1-3 beams in {day.makespan:.1f} s "
                f"(≈ {day.makespan * SCALE / 3600:.1f} h real); GPU-bound minimum "
                f"{day.ideal:.1f} s",
            )
        )
    out.notes.append(
        "Fan-out: (1) one case of three beams at a time, `fan_out: beams` on its simulation "
        f"(`sleep {BEAM_SEC:g}` per beam, after a `true` interpreter), through the conductor "
        "process, Redis, an executor process and a real sshd; turnaround = the case's "
        "`finished_at - created_at`, with 3 GPUs and with 1 (the beams then run one after "
        f"another). (2) The GPU utilization bench ({GPUS} GPUs, simulated workers) with a "
        "backlog of cases of 1, 2 or 3 beams (seeded), the simulation fanned out, each beam "
        "taking its share of the plan's simulation time."
    )
    return out
