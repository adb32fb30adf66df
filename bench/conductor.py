"""Hop latency, conductor throughput and GPU handoff, through Redis and a real conductor.

The conductor is ``manage.py rundramatiq --processes P --threads 4 -Q conductor_queue``, a
process of its own, as in production.  The bench plays the workers: it enqueues an outcome
with the same ``messaging.send`` the workers use and watches the queue the next command
goes to with a blocking ``BLPOP`` on Dramatiq's Redis list (nothing else consumes it), so
"enqueued" is the moment Redis holds the message, seen within a fraction of a millisecond.
"""

from __future__ import annotations

import os
import random
import time

from dramatiq import Message

from bench import fixtures
from bench.infra import (
    PYTHON,
    Context,
    Outcome,
    Row,
    at_least,
    at_most,
    cpu_seconds,
    idle_cpu_percent,
    median,
    own_broker_id,
    percentile,
    process_env,
    queue_key,
    redis_client,
    reset_state,
    sample_config,
    use_config,
    wait_for_consumers,
)
from mqi_site.messaging import CONDUCTOR, QUEUES, REMOTE_EXECUTOR, Command, send

EXECUTOR_QUEUE = QUEUES[REMOTE_EXECUTOR]
TRANSFER_QUEUE = "file_transfer_queue"
CONDUCTOR_THREADS = int(os.environ.get("MQI_BENCH_CONDUCTOR_THREADS", "4"))
NOOP_QUEUE = "bench_noop"


class Watcher:
    """Sends an outcome and waits for the command the conductor enqueues because of it."""

    def __init__(self) -> None:
        self.client = redis_client()

    def hop(self, command: str, case_id: str, run_id: int, queue: str) -> tuple[float, dict]:
        """Milliseconds from the outcome's enqueue to the next command's, and that command."""
        key = queue_key(queue)
        start = time.perf_counter()
        send(CONDUCTOR, command, {"case_id": case_id, "step_run_id": run_id})
        popped = self.client.blpop([key], timeout=10)
        elapsed = (time.perf_counter() - start) * 1000
        if popped is None:
            raise TimeoutError(f"no command on {queue} 10 s after {command} for {case_id}")
        raw = self.client.hget(f"{key}.msgs", popped[1])
        self.client.hdel(f"{key}.msgs", popped[1])
        message = Message.decode(raw)
        return elapsed, {"command": message.args[0], **message.args[1]}


def _idle_pause() -> None:
    # Outcomes arrive at random moments in production; the conductor's consumer is idle
    # (waiting on its queue's doorbell) when one comes.
    time.sleep(random.uniform(0.03, 0.06))  # noqa: S311 (timing jitter, not security)


def _start_conductor(ctx: Context, worker_timeout_ms: int, processes: int = 1):
    conductor = ctx.processes.rundramatiq(
        f"conductor-{processes}p-{worker_timeout_ms}ms",
        [QUEUES[CONDUCTOR]],
        processes=processes,
        threads=CONDUCTOR_THREADS,
        worker_timeout_ms=worker_timeout_ms,
    )
    wait_for_consumers(processes, exclude=[own_broker_id()])
    return conductor


# --- hop latency ------------------------------------------------------------------------


def _hop_samples(ctx: Context, worker_timeout_ms: int, count: int) -> tuple[list[float], float]:
    """Hop latencies, and the conductor's idle CPU (% of a core) at this worker timeout."""
    reset_state()
    use_config(ctx.root / "config-hop.yaml", sample_config(ctx.root))
    warmup = 20
    cases = fixtures.cases_in_flight(count + warmup, step="upload_case_files", prefix="hop")
    conductor = _start_conductor(ctx, worker_timeout_ms)
    watcher = Watcher()
    samples = []
    try:
        idle = idle_cpu_percent(conductor, seconds=ctx.options.scaled(10, 3))
        for i, case in enumerate(cases):
            _idle_pause()
            ms, command = watcher.hop(
                Command.CASE_UPLOAD_COMPLETED, case.case_id, case.run_id, EXECUTOR_QUEUE
            )
            if command["case_id"] != case.case_id or command["command"] != "execute_command":
                raise AssertionError(f"unexpected command {command} after {case}")
            if i >= warmup:
                samples.append(ms)
    finally:
        ctx.processes.stop(conductor)
    return samples, idle


def hop_latency(ctx: Context) -> Outcome:
    out = Outcome()
    chosen = ctx.options.worker_timeout_ms
    count = ctx.options.scaled(400, 100)
    samples, idle = _hop_samples(ctx, chosen, count)
    p50, p99 = median(samples), percentile(samples, 99)
    detail = f"n={len(samples)}, p95 {percentile(samples, 95):.1f}, max {max(samples):.1f}"
    out.rows += [
        Row(
            "hop latency",
            f"p50 (worker_timeout {chosen} ms)",
            p50,
            "ms",
            "≤ 10",
            at_most(p50, 10),
            detail,
        ),
        Row(
            "hop latency", f"p99 (worker_timeout {chosen} ms)", p99, "ms", "≤ 50", at_most(p99, 50)
        ),
        _idle_row(chosen, idle),
    ]
    for other in (5, 10):
        if other == chosen:
            continue
        extra, idle = _hop_samples(ctx, other, ctx.options.scaled(150, 50))
        out.rows.append(
            Row(
                "hop latency",
                f"p50 / p99 (worker_timeout {other} ms)",
                median(extra),
                "ms",
                "",
                None,
                f"p99 {percentile(extra, 99):.1f} ms, n={len(extra)}",
            )
        )
        out.rows.append(_idle_row(other, idle))
    out.notes.append(
        "Hop latency: `case_upload_completed` enqueued by the bench (as a transfer worker "
        "would) → `execute_command` of the next step on `remote_executor_queue`, observed with "
        "BLPOP. Conductor: `manage.py rundramatiq --processes 1 --threads 4 -Q "
        "conductor_queue` (its own process), PostgreSQL and Redis on 127.0.0.1. A random "
        "30-60 ms pause before each outcome lets the consumer go idle (waiting on its queue's "
        "doorbell, `mqi_site/broker.py`), as between real outcomes; 20 warm-up hops dropped. "
        "`dramatiq_worker_timeout` now only paces the delay queue and idle worker threads; "
        "the rows at other values show that. Idle CPU: the conductor's processes "
        "(`rundramatiq` and its worker) over 10 s with no message, before the hops."
    )
    return out


def _idle_row(worker_timeout_ms: int, percent: float) -> Row:
    return Row(
        "hop latency",
        f"idle conductor CPU (worker_timeout {worker_timeout_ms} ms)",
        percent,
        "% core",
        "",
        None,
        "its queue waits on the doorbell; the delay queue is polled",
    )


# --- throughput -----------------------------------------------------------------------


def _drain_rate(queue: str, total: int, timeout: float, group: int) -> tuple[float, float]:
    """Messages/s of ``queue`` between 10 % and 90 % processed, and the CPU milliseconds
    per message that process group ``group`` (the consumer) used over the same stretch."""
    client = redis_client()
    key = f"{queue_key(queue)}.msgs"
    marks: dict[int, tuple[float, float]] = {}  # messages done -> (time, CPU seconds)
    deadline = time.monotonic() + timeout
    low, high = int(total * 0.1), int(total * 0.9)
    while time.monotonic() < deadline:
        done = total - client.hlen(key)
        for mark in (low, high):
            if done >= mark and mark not in marks:
                marks[mark] = (time.monotonic(), cpu_seconds(group))
        if done >= total:
            (start, cpu_start), (end, cpu_end) = marks[low], marks[high]
            return (high - low) / (end - start), 1000 * (cpu_end - cpu_start) / (high - low)
        time.sleep(0.005)
    raise TimeoutError(f"{queue}: {total - client.hlen(key)} of {total} done in {timeout:g} s")


def _listed(values: list[float]) -> str:
    return ", ".join(f"{value:,.0f}" for value in values)


def _listed_ms(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def _conductor_rate(ctx: Context, processes: int, count: int) -> tuple[float, float]:
    reset_state()
    use_config(ctx.root / "config-throughput.yaml", sample_config(ctx.root))
    cases = fixtures.cases_in_flight(count, step="upload_case_files", prefix="tp")
    fixtures.bulk_enqueue(
        QUEUES[CONDUCTOR],
        CONDUCTOR,
        fixtures.outcome_messages(cases, Command.CASE_UPLOAD_COMPLETED),
    )
    conductor = ctx.processes.rundramatiq(
        f"conductor-throughput-{processes}p",
        [QUEUES[CONDUCTOR]],
        processes=processes,
        threads=CONDUCTOR_THREADS,
        worker_timeout_ms=ctx.options.worker_timeout_ms,
    )
    try:
        rate, cpu_ms = _drain_rate(QUEUES[CONDUCTOR], count, timeout=300, group=conductor.pid)
    finally:
        ctx.processes.stop(conductor)
    commands = redis_client().llen(queue_key(EXECUTOR_QUEUE))
    if commands != count:
        raise AssertionError(f"{count} transitions expected, {commands} commands enqueued")
    return rate, cpu_ms


def _noop_rate(ctx: Context, processes: int, count: int) -> tuple[float, float]:
    redis_client().flushdb()
    fixtures.bulk_enqueue(
        NOOP_QUEUE,
        NOOP_QUEUE,
        [
            (Command.CASE_UPLOAD_COMPLETED, {"case_id": f"n{i}", "step_run_id": i})
            for i in range(count)
        ],
    )
    argv = [
        PYTHON,
        "-m",
        "dramatiq",
        "bench.noop",
        "--processes",
        str(processes),
        "--threads",
        str(CONDUCTOR_THREADS),
        "-Q",
        NOOP_QUEUE,
    ]
    env = process_env(ctx.options.worker_timeout_ms)
    noop = ctx.processes.start(f"noop-{processes}p", argv, env)
    try:
        return _drain_rate(NOOP_QUEUE, count, timeout=300, group=noop.pid)
    finally:
        ctx.processes.stop(noop)


def throughput(ctx: Context) -> Outcome:
    out = Outcome()
    count = ctx.options.scaled(2000, 800)
    noop_count = ctx.options.scaled(12000, 8000)
    rounds = ctx.options.scaled(5, 1)
    for processes in (1, 2):
        # rounds alternate conductor and reference, so a busy spell of the machine lands
        # on both; the ratio is taken per round
        rates, references, cpu, reference_cpu = [], [], [], []
        for _ in range(rounds):
            rate, cpu_ms = _conductor_rate(ctx, processes, count)
            reference, reference_cpu_ms = _noop_rate(ctx, processes, noop_count)
            rates.append(rate)
            cpu.append(cpu_ms)
            references.append(reference)
            reference_cpu.append(reference_cpu_ms)
        ratio = median([r / n for r, n in zip(rates, references, strict=True)])
        label = f"{processes} process{'es' if processes > 1 else ''}"
        out.rows += [
            Row(
                "conductor throughput",
                f"transitions/s, {label}",
                median(rates),
                "/s",
                "≥ 500",
                at_least(median(rates), 500),
                f"median of {_listed(rates)} /s; {count} transitions each",
            ),
            Row(
                "conductor throughput",
                f"no-op actor msgs/s, {label} (reference)",
                median(references),
                "/s",
                "",
                None,
                f"median of {_listed(references)} /s; {noop_count} messages each",
            ),
            Row(
                "conductor throughput",
                f"ratio to no-op, {label}",
                ratio,
                "x",
                "≥ 0.2",
                at_least(ratio, 0.2),
                "median of the rounds' ratios",
            ),
            Row(
                "conductor throughput",
                f"CPU per transition, {label}",
                median(cpu),
                "ms",
                "",
                None,
                f"median of {_listed_ms(cpu)} ms; no-op actor {median(reference_cpu):.2f} ms "
                "per message",
            ),
        ]
    out.notes.append(
        "Conductor throughput: N cases each with an upload in flight; N "
        "`case_upload_completed` messages are put on `conductor_queue` before the conductor "
        f"starts (`rundramatiq --processes 1|2 --threads {CONDUCTOR_THREADS}`); the rate is "
        "taken between 10 % and 90 % acknowledged (Redis `HLEN` of the queue's message hash), "
        "so start-up and tail do not count; five rounds (single runs swing by 20-40 % on "
        "this shared machine), each conductor run followed by its reference, medians "
        "reported. Every transition is the full production one: lock "
        "case and step run, finish the run, create the next run with its rendered command, "
        "`execute_command` enqueued after commit. Reference: a no-op Dramatiq actor "
        "(`bench/noop.py`, Dramatiq's default middleware, same Redis, same process and thread "
        "counts, same message shape), measured the same way in the same run. CPU per "
        "transition: user + system time of the conductor's processes over the same 10-90 % "
        "stretch, divided by the transitions in it (less sensitive to the machine's other "
        "load than the rate; PostgreSQL's and Redis's own CPU not included)."
    )
    return out


# --- GPU handoff -----------------------------------------------------------------------


def _handoff_execute_steps(ctx: Context, count: int) -> list[float]:
    """execute_steps: a simulation ends → its GPU goes to the oldest waiting case, whose
    ``execute_command`` (run_interpreter) is the command measured."""
    reset_state()
    use_config(
        ctx.root / "config-handoff.yaml",
        sample_config(ctx.root, conductor__gpu_policy="execute_steps"),
    )
    running = fixtures.cases_in_flight(4, step="run_moqui_sim", prefix="run")
    waiting = fixtures.waiting_cases(count, step="run_interpreter", prefix="wait")
    conductor = _start_conductor(ctx, ctx.options.worker_timeout_ms)
    watcher = Watcher()
    handoffs = []
    try:
        for expected in waiting:
            done = running.pop(0)
            _idle_pause()
            ms, command = watcher.hop(
                Command.EXECUTION_SUCCEEDED, done.case_id, done.run_id, EXECUTOR_QUEUE
            )
            if command["case_id"] != expected:
                raise AssertionError(f"GPU went to {command['case_id']}, not the oldest {expected}")
            handoffs.append(ms)
            # the new holder runs its interpreter, then its simulation (keeping the GPU)
            _idle_pause()
            _, command = watcher.hop(
                Command.EXECUTION_SUCCEEDED, expected, command["step_run_id"], EXECUTOR_QUEUE
            )
            running.append(fixtures.InFlight(0, expected, command["step_run_id"], "run_moqui_sim"))
    finally:
        ctx.processes.stop(conductor)
    return handoffs


def _handoff_every_step(ctx: Context, count: int) -> list[float]:
    """every_step: a download ends → the case completes and releases its GPU → the oldest
    waiting case starts its upload (``upload_case``)."""
    reset_state()
    use_config(ctx.root / "config-handoff-every.yaml", sample_config(ctx.root))
    running = fixtures.cases_in_flight(4, step="download_results", prefix="run")
    waiting = fixtures.waiting_cases(count, step="upload_case_files", prefix="wait")
    conductor = _start_conductor(ctx, ctx.options.worker_timeout_ms)
    watcher = Watcher()
    handoffs = []
    path = [
        (Command.CASE_UPLOAD_COMPLETED, EXECUTOR_QUEUE),
        (Command.EXECUTION_SUCCEEDED, EXECUTOR_QUEUE),
        (Command.EXECUTION_SUCCEEDED, TRANSFER_QUEUE),
    ]
    try:
        for expected in waiting:
            done = running.pop(0)
            _idle_pause()
            ms, command = watcher.hop(
                Command.RESULTS_DOWNLOAD_COMPLETED, done.case_id, done.run_id, TRANSFER_QUEUE
            )
            if command["case_id"] != expected:
                raise AssertionError(f"GPU went to {command['case_id']}, not the oldest {expected}")
            handoffs.append(ms)
            for outcome, queue in path:  # upload, interpreter, simulation: on to the download
                _, command = watcher.hop(outcome, expected, command["step_run_id"], queue)
            running.append(fixtures.InFlight(0, expected, command["step_run_id"], "download"))
    finally:
        ctx.processes.stop(conductor)
    return handoffs


def gpu_handoff(ctx: Context) -> Outcome:
    out = Outcome()
    count = ctx.options.scaled(200, 60)
    handoffs = _handoff_execute_steps(ctx, count)
    p50, p99 = median(handoffs), percentile(handoffs, 99)
    out.rows += [
        Row(
            "GPU handoff",
            "p50 (execute_steps)",
            p50,
            "ms",
            "≤ 10",
            at_most(p50, 10),
            f"n={len(handoffs)}, p95 {percentile(handoffs, 95):.1f}, max {max(handoffs):.1f}",
        ),
        Row("GPU handoff", "p99 (execute_steps)", p99, "ms", "≤ 50", at_most(p99, 50)),
    ]
    every = _handoff_every_step(ctx, ctx.options.scaled(100, 30))
    out.rows.append(
        Row(
            "GPU handoff",
            "p50 / p99 (every_step → upload_case)",
            median(every),
            "ms",
            "",
            None,
            f"p99 {percentile(every, 99):.1f} ms, n={len(every)}",
        )
    )
    out.notes.append(
        "GPU handoff: 4 GPUs, all held by cases running MOQUI, and a line of cases waiting "
        "for a GPU. The clock starts when `execution_succeeded` of a simulation is enqueued "
        "(so it includes that case's own transition, in which the GPU is released) and stops "
        "when the oldest waiting case's `execute_command` is in Redis (checked: always the "
        "oldest). `gpu_policy: execute_steps`, since with `every_step` a waiting case's next "
        "command is its upload; that variant (download done → case completed → GPU released → "
        "next case's `upload_case`) is the last row."
    )
    return out
