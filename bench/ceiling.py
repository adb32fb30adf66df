"""The conductor's ceiling on this machine, in 4-step cases per day.

The conductor (``rundramatiq -Q conductor_queue``, 1 or 2 processes) starts on an empty
queue; then the bench plays scanner and workers in phases: N ``new_case_found`` at once,
and after the conductor has drained them, every command it enqueued (upload, execute,
download) answered at once with its success, until every case is COMPLETED: the five
transitions of each case.  Wall time and CPU time of the conductor's processes are summed
over the drains only, so start-up and the bench's own work in between do not count.
Reference: a no-op Dramatiq actor (``bench/noop.py``) draining as many messages the same
way in the same run.
"""

from __future__ import annotations

import time

from dramatiq import Message

from bench import fixtures
from bench.infra import (
    PYTHON,
    Context,
    Outcome,
    Row,
    at_least,
    cpu_seconds,
    own_broker_id,
    process_env,
    queue_key,
    redis_client,
    reset_state,
    sample_config,
    use_config,
    wait_for_consumers,
)
from cases.models import Case
from mqi_site.messaging import CONDUCTOR, QUEUES, STEP_ROUTES, Command

TARGET_PER_DAY = 1_000_000
THREADS = 4  # the conductor's threads in docker-compose.yml
NOOP_QUEUE = "bench_noop"
TRANSITIONS_PER_CASE = 5
SUCCESS_OF = {route.command: route.success for route in STEP_ROUTES.values()}
WORK_QUEUES = sorted({QUEUES[route.actor] for route in STEP_ROUTES.values()})


def _drain(
    queue: str, group: int, messages: list[tuple[str, dict]], actor: str
) -> tuple[float, float]:
    """Enqueue ``messages`` at once; wall and CPU seconds until ``queue`` is empty again.

    The wall clock starts when the first message has been taken: an idle consumer looks
    at its queue only every ``dramatiq_worker_timeout`` or so, a wait that a loaded
    conductor never has (that wait is part of the per-case overhead, not of the ceiling).
    """
    client = redis_client()
    key = f"{queue_key(queue)}.msgs"
    cpu = cpu_seconds(group)
    fixtures.bulk_enqueue(queue, actor, messages)
    deadline = time.monotonic() + 600
    start = None
    while left := client.hlen(key):
        if start is None and left < len(messages):
            start = time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queue}: {left} messages left after 600 s")
        time.sleep(0.002)
    end = time.monotonic()
    return end - (start or end), cpu_seconds(group) - cpu


def take_commands() -> list[tuple[str, dict]]:
    """Every command the conductor enqueued to the workers, as their success outcomes."""
    client = redis_client()
    outcomes = []
    for queue in WORK_QUEUES:
        key = queue_key(queue)
        for message_id in client.lrange(key, 0, -1):
            message = Message.decode(client.hget(f"{key}.msgs", message_id))
            command, payload = message.args
            step = {"case_id": payload["case_id"], "step_run_id": payload["step_run_id"]}
            outcomes.append((SUCCESS_OF[command], step))
        client.delete(key, f"{key}.msgs")
    return outcomes


def found_messages(count: int) -> list[tuple[str, dict]]:
    return [
        (
            Command.NEW_CASE_FOUND,
            {"case_id": f"c-{i:06d}", "source_path": f"/bench/c-{i:06d}", "problems": []},
        )
        for i in range(count)
    ]


def _conductor(ctx: Context, processes: int, count: int) -> tuple[float, float]:
    """Wall and CPU seconds of the conductor for ``count`` whole cases."""
    reset_state()
    use_config(ctx.root / "config-ceiling.yaml", sample_config(ctx.root))
    fixtures.gpus(count)  # every case gets a GPU at once: nothing waits
    conductor = ctx.processes.rundramatiq(
        f"ceiling-{processes}p", [QUEUES[CONDUCTOR]], processes=processes, threads=THREADS
    )
    wall = cpu = 0.0
    try:
        wait_for_consumers(processes, exclude=[own_broker_id()])
        messages = found_messages(count)
        while messages:
            phase_wall, phase_cpu = _drain(QUEUES[CONDUCTOR], conductor.pid, messages, CONDUCTOR)
            wall, cpu = wall + phase_wall, cpu + phase_cpu
            messages = take_commands()
    finally:
        ctx.processes.stop(conductor)
    completed = Case.objects.filter(status=Case.Status.COMPLETED).count()
    if completed != count:
        raise AssertionError(f"{completed} of {count} cases completed")
    return wall, cpu


def _noop(ctx: Context, processes: int, count: int) -> tuple[float, float]:
    redis_client().flushdb()
    argv = [PYTHON, "-m", "dramatiq", "bench.noop", "--processes", str(processes)]
    argv += ["--threads", str(THREADS), "-Q", NOOP_QUEUE]
    noop = ctx.processes.start(
        f"noop-{processes}p", argv, process_env(ctx.options.worker_timeout_ms)
    )
    try:
        wait_for_consumers(processes, exclude=[own_broker_id()])
        payload = {"case_id": "c", "step_run_id": 1}
        return _drain(
            NOOP_QUEUE, noop.pid, [(Command.CASE_UPLOAD_COMPLETED, payload)] * count, NOOP_QUEUE
        )
    finally:
        ctx.processes.stop(noop)


def _rows(
    processes: int, count: int, wall: float, cpu: float, noop: tuple[float, float]
) -> list[Row]:
    label = f"{processes} process{'es' if processes > 1 else ''}"
    per_day = 86400 * count / wall
    noop_wall, noop_cpu = noop
    messages = count * TRANSITIONS_PER_CASE
    return [
        Row(
            "ceiling",
            f"4-step cases per day, conductor with {label}",
            per_day,
            "/day",
            "≥ 1,000,000",
            at_least(per_day, TARGET_PER_DAY),
            f"{count} cases ({messages} transitions) in {wall:.1f} s of drains",
        ),
        Row(
            "ceiling",
            f"  conductor CPU per case, {label}",
            1000 * cpu / count,
            "ms",
            detail=f"{1000 * cpu / messages:.2f} ms per transition; PostgreSQL's and Redis's "
            "own CPU not included",
        ),
        Row(
            "ceiling",
            f"  no-op actor (reference), {label}",
            messages / noop_wall,
            "msgs/s",
            detail=f"{1000 * noop_cpu / messages:.2f} ms CPU per message; the conductor: "
            f"{messages / wall:.0f} transitions/s",
        ),
    ]


def run(ctx: Context) -> Outcome:
    count = ctx.options.scaled(500, 100)
    rows = []
    for processes in (1, 2):
        wall, cpu = _conductor(ctx, processes, count)
        noop = _noop(ctx, processes, count * TRANSITIONS_PER_CASE)
        rows += _rows(processes, count, wall, cpu, noop)
    note = (
        f"Ceiling: {count} cases, each with its GPU free, through all "
        f"{TRANSITIONS_PER_CASE} transitions of a 4-step case (found → upload → interpreter → "
        "MOQUI → download → completed), each the full production transaction with its "
        f"command enqueued after commit. Conductor: `rundramatiq --processes 1|2 --threads "
        f"{THREADS} -Q conductor_queue`, started and connected before the clock runs; the "
        "bench enqueues each phase's messages at once (a phase: every `new_case_found`, "
        "then every command's success outcome) and times from the first message taken "
        "(Redis `HLEN` of the queue's message hash) until the queue is empty; cases "
        "per day = 86,400 x cases / summed drain time. CPU: user + system time of the "
        "conductor's process group over the drains. Reference: a no-op Dramatiq actor "
        "(`bench/noop.py`, same Redis, same process and thread counts), as many messages "
        "drained the same way."
    )
    return Outcome(rows, [note])
