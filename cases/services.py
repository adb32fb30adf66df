"""What workers record about a step run while they work on it.

These are not decisions: they never move a case to another status.  Each is a single
conditional UPDATE that only touches a step run still in flight, so a late worker cannot
write over a cancelled or superseded run.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from cases.models import ACTIVE_STEP_STATUSES, Case, WorkflowStep


def _active(step_run_id: int):
    return WorkflowStep.objects.filter(pk=step_run_id, status__in=ACTIVE_STEP_STATUSES)


def step_run_is_active(step_run_id: int) -> bool:
    return _active(step_run_id).exists()


def step_run_mark_running(*, step_run_id: int, deadline_sec: float) -> bool:
    """The worker has begun (or re-attached to) the step; False if it is no longer wanted."""
    now = timezone.now()
    updated = _active(step_run_id).update(
        status=WorkflowStep.Status.RUNNING,
        heartbeat_at=now,
        deadline=now + timedelta(seconds=deadline_sec),
    )
    _active(step_run_id).filter(started_at__isnull=True).update(started_at=now)
    return updated == 1


def step_run_heartbeat(
    *, step_run_id: int, deadline_sec: float, case_progress: int | None = None
) -> bool:
    """Push the step run's deadline forward, and move the case's progress bar forward."""
    now = timezone.now()
    run = _active(step_run_id).values("case_id", "name").first()
    if run is None:
        return False
    _active(step_run_id).update(heartbeat_at=now, deadline=now + timedelta(seconds=deadline_sec))
    if case_progress is not None:
        Case.objects.filter(
            Q(progress__lt=case_progress),
            pk=run["case_id"],
            status=Case.Status.PROCESSING,
            workflow_step=run["name"],
        ).update(progress=min(100, case_progress), updated_at=now)
    return True
