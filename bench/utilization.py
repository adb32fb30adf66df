"""GPU utilization over a simulated day: 100 cases, 4 GPUs, both GPU policies.

The conductor is the real one (its own process, PostgreSQL, Redis).  The workers are
simulated in the bench process: they take the commands off Redis the moment they are
enqueued, "work" for the step's scaled duration and report success, so what is measured
is the scheduling itself: GPU reservation, the waiting line, hand-offs and the policy.
(What a real worker adds per step is the step-overhead benchmark.)
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from dataclasses import dataclass, field

from dramatiq import Message

from bench.infra import (
    Context,
    Outcome,
    Row,
    at_least,
    own_broker_id,
    queue_key,
    redis_client,
    reset_state,
    sample_config,
    use_config,
    wait_for_consumers,
    wait_until,
)
from cases.models import Case, CaseEvent, WorkflowStep
from gpus.models import GPUResource
from mqi_site.messaging import CONDUCTOR, QUEUES, STEP_ROUTES, Command, send

GPUS = 4
SCALE = 1000  # real durations / simulated ones
REAL_MINUTES = {
    "upload_case_files": 2,
    "run_interpreter": 3,
    "run_moqui_sim": 40,
    "download_results": 1,
}
JITTER = 0.25  # each step of each case within ±25 % of its typical duration
COMMAND_TO_STEP_TYPE = {route.command: kind for kind, route in STEP_ROUTES.items()}


@dataclass(order=True)
class _Due:
    at: float
    command: str = field(compare=False)
    payload: dict = field(compare=False)


class SimulatedWorkers:
    """Takes step commands off Redis and reports each done after its scaled duration."""

    def __init__(self, durations: dict[str, dict[str, float]]) -> None:
        self.durations = durations  # case id -> step name -> seconds
        self.busy: list[tuple[float, float]] = []  # (start, end) wall clock, execute steps
        self._due: list[_Due] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._take, daemon=True),
            threading.Thread(target=self._report, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _take(self) -> None:
        client = redis_client()
        keys = [queue_key("file_transfer_queue"), queue_key("remote_executor_queue")]
        while not self._stop.is_set():
            popped = client.blpop(keys, timeout=1)
            if popped is None:
                continue
            key, message_id = popped[0].decode(), popped[1]
            message = Message.decode(client.hget(f"{key}.msgs", message_id))
            client.hdel(f"{key}.msgs", message_id)
            command, payload = message.args
            started = time.time()
            step = WorkflowStep.objects.filter(pk=payload["step_run_id"]).values_list(
                "name", flat=True
            )[0]
            seconds = self.durations[payload["case_id"]][step]
            route = STEP_ROUTES[COMMAND_TO_STEP_TYPE[command]]
            if COMMAND_TO_STEP_TYPE[command] == "execute":
                self.busy.append((started, started + seconds))
            with self._lock:
                heapq.heappush(
                    self._due,
                    _Due(time.monotonic() + seconds, route.success, dict(payload)),
                )
                self._lock.notify_all()

    def _report(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not self._stop.is_set() and (
                    not self._due or self._due[0].at > time.monotonic()
                ):
                    wait = self._due[0].at - time.monotonic() if self._due else 1.0
                    self._lock.wait(timeout=max(0.0, wait))
                if self._stop.is_set():
                    return
                due = heapq.heappop(self._due)
            send(CONDUCTOR, due.command, due.payload)


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(intervals: list[tuple[float, float]], windows: list[tuple[float, float]]) -> float:
    total = 0.0
    for start, end in intervals:
        for w_start, w_end in windows:
            total += max(0.0, min(end, w_end) - max(start, w_start))
    return total


def _waiting_windows() -> list[tuple[float, float]]:
    """When at least one case waited for a GPU: from its ``waiting_for_gpu`` event to the
    dispatch of the step run that got it a GPU."""
    windows = []
    for event in CaseEvent.objects.filter(kind="waiting_for_gpu").order_by("id"):
        next_run = (
            WorkflowStep.objects.filter(case_id=event.case_id, dispatched_at__gt=event.created_at)
            .order_by("dispatched_at")
            .values_list("dispatched_at", flat=True)
            .first()
        )
        if next_run is None:
            raise AssertionError(f"case {event.case_id} never got its GPU")
        windows.append((event.created_at.timestamp(), next_run.timestamp()))
    return _union(windows)


@dataclass
class DayResult:
    utilization: float
    makespan: float
    ideal: float
    waiting: float


def simulate_day(
    ctx: Context, policy: str, cases: int, *, beams: dict[str, int] | None = None
) -> DayResult:
    """``beams``: case id -> its plan's beams, the simulation fanned out over them (each
    beam taking its share of the plan's simulation time)."""
    reset_state()
    config = sample_config(ctx.root, conductor__gpu_policy=policy)
    if beams is not None:
        config["workflows"]["default_qa"][2]["fan_out"] = "beams"
    use_config(ctx.root / f"config-day-{policy}.yaml", config)
    GPUResource.objects.bulk_create(GPUResource(host="gpu1", index=i) for i in range(GPUS))
    rng = random.Random(42)  # noqa: S311 (durations, not security)
    names = list(beams) if beams is not None else [f"day-{i:03d}" for i in range(cases)]
    count = {case_id: (beams or {}).get(case_id, 1) for case_id in names}
    durations = {
        case_id: {
            step: minutes * 60 / SCALE * rng.uniform(1 - JITTER, 1 + JITTER)
            for step, minutes in REAL_MINUTES.items()
        }
        for case_id in names
    }
    for case_id, steps in durations.items():
        steps["run_moqui_sim"] /= count[case_id]  # per beam
    workers = SimulatedWorkers(durations)
    workers.start()
    conductor = ctx.processes.rundramatiq(
        f"day-{policy}", [QUEUES[CONDUCTOR]], worker_timeout_ms=ctx.options.worker_timeout_ms
    )
    wait_for_consumers(1, exclude=[own_broker_id()])
    started = time.time()
    try:
        for case_id in durations:
            plan = {"beams": [{"number": n, "name": f"B{n}"} for n in range(1, count[case_id] + 1)]}
            send(
                CONDUCTOR,
                Command.NEW_CASE_FOUND,
                {
                    "case_id": case_id,
                    "source_path": f"/bench/{case_id}",
                    "problems": [],
                    "plan": plan,
                },
            )
        gpu_work = sum(
            d["run_interpreter"] + d["run_moqui_sim"] * count[c] for c, d in durations.items()
        )
        all_work = sum(
            sum(d.values()) + d["run_moqui_sim"] * (count[c] - 1) for c, d in durations.items()
        )
        wait_until(
            lambda: Case.objects.filter(status=Case.Status.COMPLETED).count() == cases,
            timeout=3 * all_work / GPUS + 60,
            interval=0.2,
            what=f"{cases} cases to complete",
        )
        finished = time.time()
    finally:
        ctx.processes.stop(conductor)
        workers.stop()
    windows = _waiting_windows()
    waited = sum(end - start for start, end in windows)
    busy = _overlap(workers.busy, windows)
    return DayResult(
        utilization=busy / (GPUS * waited),
        makespan=finished - started,
        ideal=(gpu_work if policy == "execute_steps" else all_work) / GPUS,
        waiting=waited,
    )


def gpu_utilization(ctx: Context) -> Outcome:
    out = Outcome()
    cases = ctx.options.scaled(100, 30)
    for policy in ("every_step", "execute_steps"):
        day = simulate_day(ctx, policy, cases)
        out.rows.append(
            Row(
                "GPU utilization",
                f"busy share while cases wait, {policy}",
                day.utilization * 100,
                "%",
                "≥ 95",
                at_least(day.utilization * 100, 95),
                f"{cases} cases in {day.makespan:.1f} s (≈ {day.makespan * SCALE / 3600:.1f} h "
                f"real); cases waited during {day.waiting:.1f} s; GPU-bound minimum "
                f"{day.ideal:.1f} s",
            )
        )
    minutes = ", ".join(f"{step} {m} min" for step, m in REAL_MINUTES.items())
    out.notes.append(
        f"GPU utilization: {cases} cases arrive at once (a day's batch), {GPUS} GPUs, step "
        f"durations {minutes}, each ±{JITTER:.0%} at random (seeded), all divided by {SCALE}. "
        "Real conductor process; simulated workers in the bench take each command off Redis "
        "as soon as it is enqueued and report success after the step's duration. GPU busy = "
        "an execute step running on it; the share is busy GPU-time / (GPUs x time during "
        "which at least one case waited for a GPU). `every_step` holds the GPU through "
        "upload and download too; `execute_steps` only through the interpreter and MOQUI "
        "(`conductor.gpu_policy`). Orchestration latency is not scaled down with the steps, "
        f"so at real durations the loss it causes is {SCALE}x smaller than measured here."
    )
    return out
