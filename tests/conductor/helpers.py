"""Small builders for conductor tests: GPUs, registered cases, and playing a worker."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cases import manifest as manifests
from cases.folder import FolderState, check_case_folder, folder_facts
from cases.models import Case, WorkflowStep
from conductor import transitions
from gpus.models import GPUResource
from mqi_site.config import get_config
from mqi_site.messaging import STEP_ROUTES, ErrorKind


def held_gpu(case: Case) -> GPUResource | None:
    """The one GPU the case's step runs hold, or None (a test of one GPU per case)."""
    gpus = Case.objects.get(pk=case.pk).gpus
    assert len(gpus) <= 1, gpus
    return gpus[0] if gpus else None


def holder(gpu: GPUResource) -> Case | None:
    """The case whose step run holds ``gpu`` now."""
    gpu = GPUResource.objects.select_related("step_run__case").get(pk=gpu.pk)
    return gpu.step_run.case if gpu.step_run else None


def make_gpus(count: int, host: str = "local") -> list[GPUResource]:
    return [
        GPUResource.objects.create(host=host, index=i, uuid=f"GPU-{host}-{i}", name="Test GPU")
        for i in range(count)
    ]


# What a checked folder looks like to the conductor (cases.folder.check_case_folder).
FOLDER = [{"path": "RP.plan.dcm", "size": 4, "sha256": "0" * 64}]
PLAN = {
    "patient_id": "QA0001",
    "patient_name": "QA^Case0001",
    "plan_label": "QA0001 PBS",
    "plan_date": "2025-01-02",
    "treatment_machine": "PBS-G1",
    "beams": [{"number": 1, "name": "B1 G090"}, {"number": 2, "name": "B2 G270"}],
}


THREE_BEAMS = [
    {"number": 1, "name": "B1 G090"},
    {"number": 2, "name": "B2 G270"},
    {"number": 3, "name": "B3 G180"},
]


def fan_out_simulation(raw: dict) -> None:
    """A config edit (``use_config``): run_moqui_sim runs once per treatment beam."""
    raw["workflows"]["default_qa"][2]["fan_out"] = "beams"
    raw["remote_commands"]["run_moqui_sim"] = (
        "moquisim --gpu {gpu_id} --beam {beam_number} --beam-name {beam_name} "
        "--input-dir {run_output_dir} --output-dir {output_dir}"
    )


def register_beams(case_id: str, beams: list[dict] = THREE_BEAMS, priority: int = 0) -> Case:
    """A case whose plan has ``beams``, registered and started."""
    found = transitions.FolderFacts(
        plan={**PLAN, "beams": beams}, log_check="passed", manifest=FOLDER
    )
    case = transitions.case_register(case_id=case_id, source_path=f"/in/{case_id}", facts=found)
    assert case is not None
    Case.objects.filter(pk=case.pk).update(priority=priority)
    return case


def facts(problems: Sequence[str] = (), manifest: list[dict] = FOLDER) -> transitions.FolderFacts:
    if problems:
        return transitions.FolderFacts(problems=problems)
    return transitions.FolderFacts(plan=PLAN, log_check="passed", manifest=manifest)


def register(case_id: str, problems: Sequence[str] = (), **kwargs: Any) -> Case:
    case = transitions.case_register(
        case_id=case_id, source_path=f"/incoming/{case_id}", facts=facts(problems), **kwargs
    )
    assert case is not None
    case.refresh_from_db()
    return case


def register_sample(case_id: str, *, without: Sequence[str] = (), **switches: str) -> Case:
    """A case registered from a real sample folder in the configured watch directory, as
    the scanner would (so that a retry can check the folder again); ``without``: files
    taken out of the sample first."""
    from tests.workers.conftest import make_case

    folder = make_case(Path(get_config().scanner.watch_dir), case_id, switches=switches)
    for name in without:
        (folder / name).unlink()
    check = check_case_folder(folder, get_config().scanner, now=time.time())
    assert check.verdict.state == FolderState.READY_VALID, check.verdict.reasons
    found = folder_facts(check)
    case = transitions.case_register(
        case_id=case_id,
        source_path=str(folder),
        facts=transitions.FolderFacts(
            plan=found["plan"], log_check=found["log_check"], manifest=found["manifest"]
        ),
    )
    assert case is not None
    case.refresh_from_db()
    return case


def retry(
    case: Case,
    *,
    from_start: bool = False,
    actor: str = "",
    problems: Sequence[str] = (),
    manifest: list[dict] = FOLDER,
) -> Case:
    """An operator's retry after the folder was checked again (as it was, by default)."""
    run = Case.objects.get(pk=case.pk).current_run
    changed = ""
    if run is not None and run.uploaded_at is not None:
        changed = manifests.diff(run.manifest, manifest).describe_if_any()
    restarted, _ = transitions.case_restart(
        case_pk=case.pk,
        facts=facts(problems, manifest),
        changed=changed,
        from_start=from_start,
        actor=actor,
    )
    return restarted


def active_run(case: Case) -> WorkflowStep | None:
    return case.steps.filter(status__in=WorkflowStep.ACTIVE).first()


def succeed(run: WorkflowStep, **outcome: Any) -> bool:
    route = STEP_ROUTES[run.type]
    return transitions.step_run_succeeded(
        step_run_id=run.pk,
        command=route.success,
        outcome={"case_id": run.case.case_id, "step_run_id": run.pk, **outcome},
    )


def fail(run: WorkflowStep, kind: str = ErrorKind.PERMANENT, message: str = "boom", **outcome):
    route = STEP_ROUTES[run.type]
    return transitions.step_run_failed(
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
