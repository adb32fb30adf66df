"""What workers record about a step run while they work on it.

These are not decisions: they never move a case to another status.  Each is a single
conditional UPDATE that only touches a step run still in flight, so a late worker cannot
write over a cancelled or superseded run.  Marking a run running and its heartbeats come
after slow I/O (a command started over SSH, files moved, a poll), so they have the database
connection checked again first (:func:`mqi_site.database.recheck_connection`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from cases.models import ACTIVE_STEP_STATUSES, Case, WorkflowStep
from mqi_site.database import recheck_connection
from mqi_site.untrusted_text import storable


def _active(step_run_id: int):
    return WorkflowStep.objects.filter(pk=step_run_id, status__in=ACTIVE_STEP_STATUSES)


def step_run_is_active(step_run_id: int) -> bool:
    return _active(step_run_id).exists()


def active_step_run(step_run_id: int, *related: str) -> WorkflowStep | None:
    """The step run with ``related`` rows joined while it is dispatched or running; None
    once it has ended (a worker's message about it is then stale: cancelled, superseded)."""
    return _active(step_run_id).select_related(*related).first()


def step_run_mark_running(*, step_run_id: int, deadline_sec: float) -> datetime | None:
    """The worker has begun (or re-attached to) the step; None if it is no longer wanted.

    Returns the heartbeat time written, which a poll chain carries as its token (see
    :func:`step_run_heartbeat`).
    """
    recheck_connection()
    now = timezone.now()
    updated = _active(step_run_id).update(
        status=WorkflowStep.Status.RUNNING,
        heartbeat_at=now,
        deadline=now + timedelta(seconds=deadline_sec),
    )
    _active(step_run_id).filter(started_at__isnull=True).update(started_at=now)
    return now if updated == 1 else None


def step_run_keep_output(*, step_run_id: int, stdout_tail: str, stderr_tail: str) -> None:
    """What a step run's command had printed when it was stopped (a cancel): kept for the
    record, whatever the run's status now."""
    WorkflowStep.objects.filter(pk=step_run_id).update(
        stdout_tail=storable(stdout_tail), stderr_tail=storable(stderr_tail)
    )


def step_run_claim(*, step_run_id: int, deadline_sec: float) -> bool:
    """Take a dispatched step run for this worker; False if another worker already has it.

    A re-driven step run is dispatched again (see ``conductor.transitions.step_run_redrive``), so
    a worker that died holding it is replaced, while a duplicate of the message that
    arrives while a live worker works on it finds it running and is dropped.
    """
    now = timezone.now()
    updated = (
        _active(step_run_id)
        .filter(status=WorkflowStep.Status.DISPATCHED)
        .update(
            status=WorkflowStep.Status.RUNNING,
            heartbeat_at=now,
            deadline=now + timedelta(seconds=deadline_sec),
        )
    )
    _active(step_run_id).filter(started_at__isnull=True).update(started_at=now)
    return updated == 1


def step_run_heartbeat(
    *,
    step_run_id: int,
    deadline_sec: float,
    progress: int | None = None,
    span: tuple[int, int] = (0, 100),
    last_beat: datetime | None = None,
    tails: tuple[str, str] | None = None,
) -> datetime | None:
    """Push the step run's deadline forward, move its progress and the case's forward, and
    keep the command's latest ``(stdout, stderr)`` tails so the case page shows them live.

    ``progress`` is the run's own (0-100); the case's is its step's ``span`` (from the
    step's progress to the next step's) times the mean across the step's beams
    (:func:`step_progress`).  Returns the heartbeat time written, or None when the run is
    no longer in flight.  With ``last_beat`` it is a compare-and-swap: the beat happens
    only if the run's last heartbeat is still ``last_beat``.  A poll chain passes its token
    on from poll to poll, so a duplicated poll message, or a chain that a re-drive
    replaced, finds the token changed and ends instead of multiplying.
    """
    recheck_connection()
    now = timezone.now()
    run = _active(step_run_id).values("case_id", "run_id", "name").first()
    if run is None:
        return None
    runs = _active(step_run_id)
    if last_beat is not None:
        runs = runs.filter(heartbeat_at=last_beat)
    fields = {"heartbeat_at": now, "deadline": now + timedelta(seconds=deadline_sec)}
    if tails is not None:
        fields.update(stdout_tail=storable(tails[0]), stderr_tail=storable(tails[1]))
    if not runs.update(**fields):
        return None
    if progress is not None:
        _active(step_run_id).filter(progress__lt=progress).update(progress=min(100, progress))
        low, high = span
        case_progress = int(low + (high - low) * step_progress(**run) / 100)
        Case.objects.filter(
            Q(progress__lt=case_progress),
            pk=run["case_id"],
            status=Case.Status.PROCESSING,
            workflow_step=run["name"],
        ).update(progress=min(100, case_progress), updated_at=now)
    return now


def step_progress(*, case_id: int, run_id: int | None, name: str) -> float:
    """How far a step of a case's run is (%): the mean over its beams (one "beam" for a
    step that does not fan out) of each beam's latest step run, a succeeded one at 100."""
    latest: dict[int, float] = {}
    rows = (
        WorkflowStep.objects.filter(case_id=case_id, run_id=run_id, name=name)
        .order_by("beam_number", "-pk")
        .values_list("beam_number", "status", "progress")
    )
    for beam, status, progress in rows:
        if beam not in latest:
            latest[beam] = 100 if status == WorkflowStep.Status.SUCCEEDED else progress
    return sum(latest.values()) / len(latest) if latest else 0.0
