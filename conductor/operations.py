"""What operators do to cases, from the admin or the management commands.

Retry and re-run check the case folder again with the scanner's rules before anything
starts (the check reads files, so it happens here, before the conductor's transaction):
a folder that is still invalid keeps the case FAILED with the current reasons, and a
folder that changed since the case's run uploaded it starts a new run from the upload.
"""

from __future__ import annotations

import time
from pathlib import Path

from cases.folder import FolderState, check_case_folder, folder_facts
from cases.models import Case
from conductor import state
from conductor.state import CaseStateError
from mqi_site.config import get_config

RESTARTABLE = (Case.Status.FAILED, Case.Status.CANCELLED)


def case_retry(*, case_pk: int, from_start: bool = False, actor: str = "") -> tuple[Case, str]:
    """Check the folder again, then restart the case (see :func:`state.case_restart`).

    Returns the case and what was done, in words.  Raises :class:`CaseStateError` when the
    case cannot be restarted, including when its folder is still invalid (the case then
    carries the current reasons).
    """
    case = Case.objects.get(pk=case_pk)
    if case.status not in RESTARTABLE:
        raise CaseStateError(
            f"case {case.case_id} is {case.status}; only FAILED or CANCELLED cases can be retried"
        )
    facts = check_folder(case)
    case, said = state.case_restart(
        case_pk=case_pk, facts=facts, from_start=from_start, actor=actor
    )
    if facts.problems:
        raise CaseStateError(
            f"case {case.case_id} was not restarted: its folder was checked again: {said} "
            "(fix the folder in the watch directory, then try again)"
        )
    return case, said


def check_folder(case: Case) -> state.FolderFacts:
    """The scanner's verdict on the case's folder as it is now."""
    path = Path(case.source_path)
    if not path.is_dir():
        return state.FolderFacts(
            problems=[f"the case folder {path} is gone from the watch directory"]
        )
    check = check_case_folder(path, get_config().scanner, now=time.time())
    facts = folder_facts(check)
    problems = list(check.verdict.reasons)
    if check.verdict.state == FolderState.INCOMPLETE:
        problems = problems or [_incomplete_reason()]
    return state.FolderFacts(
        problems=problems if check.verdict.state != FolderState.READY_VALID else [],
        plan=facts["plan"],
        log_check=facts["log_check"],
        manifest=facts["manifest"],
    )


def _incomplete_reason() -> str:
    marker = get_config().scanner.ready_marker
    if marker:
        return f"the folder is not complete: it has no {marker} file (put it back when it is)"
    return "the folder is still changing; try again once nothing is written to it"
