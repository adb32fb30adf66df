"""Cases, step runs and GPUs written straight into the database, in bulk.

A benchmark that measures one transition starts from the state just before it, so the
rows are made here rather than by running the workflow up to that point.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone
from dramatiq import Message

from bench.infra import queue_key, redis_client
from cases.models import Case, WorkflowStep
from gpus.models import GPUResource

STEP_TYPES = {
    "upload_case_files": "upload",
    "run_interpreter": "execute",
    "run_moqui_sim": "execute",
    "download_results": "download",
}


@dataclass(frozen=True)
class InFlight:
    """A case whose step ``step`` is in flight as step run ``run_id``."""

    pk: int
    case_id: str
    run_id: int
    step: str


def gpus(count: int, *, host: str = "gpu1", first_index: int = 0) -> list[GPUResource]:
    return GPUResource.objects.bulk_create(
        GPUResource(host=host, index=first_index + i, uuid=f"GPU-{host}-{first_index + i}")
        for i in range(count)
    )


def cases_in_flight(
    count: int,
    *,
    step: str,
    prefix: str,
    host: str = "gpu1",
    with_gpu: bool = True,
    first_gpu_index: int = 0,
) -> list[InFlight]:
    """``count`` PROCESSING cases with a dispatched run of ``step``, each holding a GPU."""
    now = timezone.now()
    cases = Case.objects.bulk_create(
        Case(
            case_id=f"{prefix}-{i:06d}",
            source_path=f"/bench/incoming/{prefix}-{i:06d}",
            workflow="default_qa",
            status=Case.Status.PROCESSING,
            workflow_step=step,
            progress=10,
            host=host,
        )
        for i in range(count)
    )
    held: list[GPUResource | None] = [None] * count
    if with_gpu:
        held = GPUResource.objects.bulk_create(
            GPUResource(
                host=host,
                index=first_gpu_index + i,
                uuid=f"GPU-{host}-{first_gpu_index + i}",
                status=GPUResource.Status.RESERVED,
                reserved_by=case,
                reserved_at=now,
            )
            for i, case in enumerate(cases)
        )
    runs = WorkflowStep.objects.bulk_create(
        WorkflowStep(
            case=case,
            name=step,
            type=STEP_TYPES[step],
            attempt=1,
            status=WorkflowStep.Status.RUNNING,
            gpu=gpu,
            host=host,
            dispatched_at=now,
            started_at=now,
            heartbeat_at=now,
            deadline=now + timedelta(hours=1),
        )
        for case, gpu in zip(cases, held, strict=True)
    )
    return [
        InFlight(case.pk, case.case_id, run.pk, step) for case, run in zip(cases, runs, strict=True)
    ]


def waiting_cases(count: int, *, step: str, prefix: str, host: str = "gpu1") -> list[str]:
    """``count`` cases waiting for a GPU before ``step``, oldest first."""
    start = timezone.now() - timedelta(hours=1)
    cases = Case.objects.bulk_create(
        Case(
            case_id=f"{prefix}-{i:06d}",
            source_path=f"/bench/incoming/{prefix}-{i:06d}",
            workflow="default_qa",
            status=Case.Status.PENDING_RESOURCE,
            workflow_step=step,
            progress=10,
            host=host,
        )
        for i in range(count)
    )
    # auto_now_add stamps them all within microseconds; spread them out, oldest first
    for i, case in enumerate(cases):
        case.created_at = start + timedelta(seconds=i)
    Case.objects.bulk_update(cases, ["created_at"])
    return [case.case_id for case in cases]


def bulk_enqueue(queue: str, actor: str, payloads: list[tuple[str, dict]]) -> None:
    """Put many messages on ``queue`` at once, as the Redis broker's enqueue would."""
    client = redis_client()
    key = queue_key(queue)
    pipe = client.pipeline(transaction=False)
    for command, payload in payloads:
        redis_id = str(uuid.uuid4())
        message = Message(
            queue_name=queue,
            actor_name=actor,
            args=(command, payload),
            kwargs={},
            options={"redis_message_id": redis_id},
        )
        pipe.hset(f"{key}.msgs", redis_id, message.encode())
        pipe.rpush(key, redis_id)
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
