"""What operators do to cases, from the admin or the management commands.

Retry and re-run check the case folder again with the scanner's rules before anything
starts (the check reads files, so it happens here, before the conductor's transaction):
a folder that is still invalid keeps the case FAILED with the current reasons, and a
folder that changed since the case's run uploaded it starts a new run from the upload.
Cancel and priority are the conductor's too; the admin and the commands only call these.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.db import transaction

from cases import manifest as manifests
from cases.folder import FolderState, check_case_folder, folder_facts
from cases.models import Case, CaseEvent, WorkflowStep
from conductor import transitions
from conductor.transitions import CaseStateError, FolderFacts
from gpus.models import GPUResource
from mqi_site.config import get_config

RESTARTABLE = (Case.Status.FAILED, Case.Status.CANCELLED)


def case_retry(*, case_pk: int, from_start: bool = False, actor: str = "") -> tuple[Case, str]:
    """Check the folder again, then restart the case (see ``transitions.case_restart``).

    Returns the case and what was done, in words.  Raises :class:`CaseStateError` when the
    case cannot be restarted, including when its folder is still invalid (the case then
    carries the current reasons).
    """
    case = Case.objects.select_related("current_run").get(pk=case_pk)
    if case.status not in RESTARTABLE:
        raise CaseStateError(
            f"case {case.case_id} is {case.status}; only FAILED or CANCELLED cases can be retried"
        )
    facts = check_folder(case)
    run = case.current_run
    changed = ""
    if not facts.problems and run is not None and run.uploaded_at is not None:
        changed = manifests.diff(run.manifest, list(facts.manifest)).describe_if_any()
    case, said = transitions.case_restart(
        case_pk=case_pk, facts=facts, changed=changed, from_start=from_start, actor=actor
    )
    if facts.problems:
        raise CaseStateError(
            f"case {case.case_id} was not restarted: {said} "
            "(fix the folder in the watch directory, then try again)"
        )
    return case, said


def case_cancel(*, case_pk: int, actor: str = "") -> Case:
    """Kill the case's remote process groups, release its GPUs, mark it CANCELLED."""
    return transitions.case_cancel(case_pk=case_pk, actor=actor)


def case_cancel_preview(*, case_pk: int) -> list[str]:
    """What cancelling the case would do, in words, one line each; decided by the cancel's
    own code (``transitions.case_cancel_plan``).  Raises :class:`CaseStateError` when the
    cancel would be refused."""
    plan = transitions.case_cancel_plan(case_pk=case_pk)
    runs = WorkflowStep.objects.in_bulk([finish.run for finish in plan.finish])
    gpus = {gpu.step_run_id: gpu for gpu in GPUResource.objects.filter(step_run__in=plan.release)}
    lines = []
    for finish in plan.finish:
        run = runs[finish.run]
        where = f" on GPU {gpus[run.pk]}" if run.pk in gpus else ""
        what = "kills its command" if run.pk in plan.kill else "stops it"
        lines.append(f"{run} ({run.get_status_display()}{where}): {what}")
    lines += [f"GPU {gpu} is released" for gpu in gpus.values()]
    lines.append(f"the case becomes {plan.status}")
    return lines


def case_change_priority(*, case_pk: int, by: int, actor: str = "") -> Case:
    """Raise (``by`` > 0) or lower the priority relative to its value under the lock."""
    with transaction.atomic():
        case = transitions.lock_case(case_pk)
        return _set_priority(case, case.priority + by, actor)


def case_set_priority(*, case_pk: int, priority: int, actor: str = "") -> Case:
    with transaction.atomic():
        return _set_priority(transitions.lock_case(case_pk), priority, actor)


def check_folder(case: Case) -> FolderFacts:
    """The scanner's verdict on the case's folder as it is now."""
    path = Path(case.source_path)
    if not path.is_dir():
        return FolderFacts(problems=[f"the case folder {path} is gone from the watch directory"])
    check = check_case_folder(path, get_config().scanner, now=time.time())
    found = folder_facts(check)
    problems: list[str] = []
    if check.verdict.state == FolderState.INCOMPLETE:
        problems = list(check.verdict.reasons) or [_incomplete_reason()]
    elif check.verdict.state == FolderState.READY_INVALID:
        problems = list(check.verdict.reasons)
    return FolderFacts(
        problems=problems,
        plan=found["plan"],
        log_check=found["log_check"],
        manifest=found["manifest"],
    )


def _set_priority(case: Case, priority: int, actor: str) -> Case:
    if case.is_terminal:
        raise CaseStateError(f"case {case.case_id} is {case.status}; priority no longer matters")
    CaseEvent.objects.create(
        case=case, kind="priority", message=f"priority {case.priority} -> {priority}", actor=actor
    )
    case.priority = priority
    case.save(update_fields=["priority", "updated_at"])
    return case


def _incomplete_reason() -> str:
    marker = get_config().scanner.ready_marker
    if marker:
        return f"the folder is not complete: it has no {marker} file (put it back when it is)"
    return "the folder is still changing; try again once nothing is written to it"
