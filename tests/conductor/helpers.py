"""Small builders for conductor tests: GPUs, registered cases, and playing a worker."""

from __future__ import annotations

from typing import Any

from cases.models import Case, WorkflowStep
from conductor import state
from gpus.models import GPUResource
from mqi_site.messaging import STEP_ROUTES, ErrorKind


def make_gpus(count: int, host: str = "local") -> list[GPUResource]:
    return [
        GPUResource.objects.create(host=host, index=i, uuid=f"GPU-{host}-{i}", name="Test GPU")
        for i in range(count)
    ]


def register(case_id: str, **kwargs: Any) -> Case:
    case = state.case_register(case_id=case_id, source_path=f"/incoming/{case_id}", **kwargs)
    assert case is not None
    case.refresh_from_db()
    return case


def active_run(case: Case) -> WorkflowStep | None:
    return case.steps.filter(status__in=WorkflowStep.ACTIVE).first()


def succeed(run: WorkflowStep, **outcome: Any) -> bool:
    route = STEP_ROUTES[run.type]
    return state.step_run_succeeded(
        step_run_id=run.pk,
        command=route.success,
        outcome={"case_id": run.case.case_id, "step_run_id": run.pk, **outcome},
    )


def fail(run: WorkflowStep, kind: str = ErrorKind.PERMANENT, message: str = "boom", **outcome):
    route = STEP_ROUTES[run.type]
    return state.step_run_failed(
        step_run_id=run.pk,
        command=route.failure,
        outcome={
            "case_id": run.case.case_id,
            "step_run_id": run.pk,
            "error_kind": kind,
            "error_message": message,
            **outcome,
        },
    )


def run_to_completion(case: Case) -> Case:
    while (run := active_run(case)) is not None:
        succeed(run)
        case.refresh_from_db()
    return case
