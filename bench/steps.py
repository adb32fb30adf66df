"""Step overhead: what a step costs beyond its remote command, over a real sshd.

A workflow of execute steps whose commands do nothing (``true``) runs through the whole
production path: the conductor process, Redis, an executor process (``rundramatiq -Q
remote_executor_queue --threads 8``), SSH to a real sshd (stat, folder, detached start,
polls), the outcome back to the conductor.  A step's time is ``finished_at - dispatched_at``
of its step run: from the conductor creating it to the conductor recording its outcome.
"""

from __future__ import annotations

from bench.infra import (
    Context,
    Outcome,
    Row,
    at_most,
    median,
    own_broker_id,
    percentile,
    reset_state,
    sample_config,
    ssh_host,
    use_config,
    wait_for_consumers,
    wait_until,
)
from cases.models import Case, WorkflowStep
from gpus.models import GPUResource
from mqi_site.messaging import CONDUCTOR, QUEUES, REMOTE_EXECUTOR, Command, send
from workers.executor import FIRST_POLL_MS, MAX_POLL_MS

NOOP_STEPS = 4
SLEEP_SEC = 1.0


def _config(ctx: Context) -> dict:
    noop = [
        {"name": f"noop_{i}", "type": "execute", "progress": 10 + 20 * i} for i in range(NOOP_STEPS)
    ]
    sleepy = [{"name": f"sleep_{i}", "type": "execute", "progress": 10 + 40 * i} for i in range(2)]
    commands = {step["name"]: "true" for step in noop}
    commands.update({step["name"]: f"sleep {SLEEP_SEC:g}" for step in sleepy})
    config = sample_config(ctx.root, hosts={"gpu1": ssh_host(ctx.sshd)})
    config["workflows"].update(noop=noop, sleepy=sleepy)
    config["remote_commands"].update(commands)
    return config


def _run_case(case_id: str, workflow: str, source: str, steps: int) -> list[tuple[float, float]]:
    send(
        CONDUCTOR,
        Command.NEW_CASE_FOUND,
        {"case_id": case_id, "source_path": source, "workflow": workflow, "problems": []},
    )

    def done() -> bool:
        status = Case.objects.filter(case_id=case_id).values_list("status", flat=True).first()
        if status in (Case.Status.FAILED, Case.Status.CANCELLED):
            raise AssertionError(f"{case_id} ended {status}")
        return status == Case.Status.COMPLETED

    wait_until(done, timeout=60, interval=0.01, what=f"{case_id} to complete")
    runs = list(WorkflowStep.objects.filter(case__case_id=case_id).order_by("id"))
    if len(runs) != steps:
        raise AssertionError(f"{case_id}: {len(runs)} step runs, expected {steps}")
    return [
        (
            (r.finished_at - r.dispatched_at).total_seconds(),
            (r.started_at - r.dispatched_at).total_seconds(),
        )
        for r in runs
    ]


def step_overhead(ctx: Context) -> Outcome:
    out = Outcome()
    reset_state()
    config = _config(ctx)
    use_config(ctx.root / "config-steps.yaml", config)
    upload_dir = ctx.root / "hpc" / "upload"
    GPUResource.objects.bulk_create(GPUResource(host="gpu1", index=i) for i in range(4))
    conductor = ctx.processes.rundramatiq(
        "steps-conductor", [QUEUES[CONDUCTOR]], worker_timeout_ms=ctx.options.worker_timeout_ms
    )
    executor = ctx.processes.rundramatiq(
        "steps-executor",
        [QUEUES[REMOTE_EXECUTOR]],
        threads=8,
        worker_timeout_ms=ctx.options.worker_timeout_ms,
    )
    wait_for_consumers(2, exclude=[own_broker_id()])
    warmup, cases = 6, ctx.options.scaled(30, 8)
    noop: list[tuple[float, float]] = []
    sleepy: list[tuple[float, float]] = []
    try:
        for i in range(warmup + cases):
            case_id = f"noop-{i:04d}"
            (upload_dir / case_id).mkdir(parents=True)
            seconds = _run_case(case_id, "noop", str(upload_dir / case_id), NOOP_STEPS)
            if i >= warmup:
                noop.extend(seconds)
        for i in range(ctx.options.scaled(5, 2)):
            case_id = f"sleepy-{i:04d}"
            (upload_dir / case_id).mkdir(parents=True)
            sleepy.extend(_run_case(case_id, "sleepy", str(upload_dir / case_id), 2))
    finally:
        ctx.processes.stop(executor)
        ctx.processes.stop(conductor)
    ms = [whole * 1000 for whole, _ in noop]
    to_start = [start * 1000 for _, start in noop]
    p50 = median(ms)
    out.rows += [
        Row(
            "step overhead",
            "per no-op step, p50",
            p50,
            "ms",
            "≤ 100",
            at_most(p50, 100),
            f"n={len(ms)} steps, p95 {percentile(ms, 95):.0f}, max {max(ms):.0f}",
        ),
        Row(
            "step overhead",
            "  of which dispatch → command started, p50",
            median(to_start),
            "ms",
            "",
            None,
            "conductor hop, executor: stat, output folder, detached start",
        ),
        Row(
            "step overhead",
            f"per {SLEEP_SEC:g} s step, p50 beyond the command",
            median([whole * 1000 - SLEEP_SEC * 1000 for whole, _ in sleepy]),
            "ms",
            "",
            None,
            f"n={len(sleepy)}; polls back off "
            f"({FIRST_POLL_MS} ms doubling, at most {MAX_POLL_MS} ms)",
        ),
    ]
    out.notes.append(
        f"Step overhead: cases of {NOOP_STEPS} execute steps whose command is `true`, one case "
        "at a time, through the conductor process, Redis, an executor process "
        "(`rundramatiq -Q remote_executor_queue --threads 8`) and a real sshd (root's "
        "`.bashrc` on this machine runs `pyenv init`); a step is `finished_at - dispatched_at` "
        "of its step run, so it includes both hops through the conductor, the executor's SSH "
        "work (stat, output folder, detached start, polls) and the poll delay. "
        f"{warmup} warm-up cases dropped (SSH connections of the executor's threads). The "
        f"second row runs `sleep {SLEEP_SEC:g}` steps: there the poll back-off decides."
    )
    return out
