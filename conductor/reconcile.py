"""The reconciler: finds work the messages lost and drives it again.

The database is the source of truth and messages are hints; this pass makes the system
converge whatever was lost (a flushed broker, a killed worker, a restarted process):

1. step runs past their deadline are re-sent (the workers are idempotent per step run);
2. running cases with no step in flight are advanced;
3. GPUs booked by a step run that ended are released, with a history entry;
4. step runs waiting for a GPU are given free ones, even if the release event that
   should have woken them was lost.

It runs periodically (``conductor.reconcile_interval_sec``) and at start-up.

"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db.models import Exists, OuterRef
from django.utils import timezone

from cases.models import ACTIVE_STEP_STATUSES, IN_FLIGHT_STEP_STATUSES, Case, WorkflowStep
from conductor import transitions

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    redriven: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    advanced: list[str] = field(default_factory=list)
    gpus_repaired: int = 0
    waiting_started: int = 0

    def __bool__(self) -> bool:
        return bool(self.redriven or self.failed or self.advanced or self.gpus_repaired) or bool(
            self.waiting_started
        )

    def summary(self) -> str:
        return (
            f"re-driven {len(self.redriven)}, failed {len(self.failed)}, "
            f"advanced {len(self.advanced)}, GPUs repaired {self.gpus_repaired}, "
            f"waiting cases started {self.waiting_started}"
        )


def overdue_step_runs(*, everything: bool = False):
    runs = WorkflowStep.objects.filter(status__in=IN_FLIGHT_STEP_STATUSES)
    if not everything:
        runs = runs.filter(deadline__lt=timezone.now())
    return runs.select_related("case")


def stalled_cases():
    """Active cases with no step run at all in flight or waiting: nothing will move them
    but us (a repair; every transition starts the next step run in its own transaction)."""
    active = WorkflowStep.objects.filter(case=OuterRef("pk"), status__in=ACTIVE_STEP_STATUSES)
    return Case.objects.filter(status__in=Case.ACTIVE).exclude(Exists(active))


def reconcile(*, startup: bool = False) -> ReconcileReport:
    """One pass.  ``startup`` re-drives every step run in flight at once, not only the
    overdue ones: after a restart on the in-memory broker, every message is gone."""
    report = ReconcileReport()
    for run in overdue_step_runs(everything=startup):
        outcome = transitions.step_run_redrive(step_run_id=run.pk, force=startup)
        if outcome == "redriven":
            report.redriven.append(str(run))
        elif outcome == "failed":
            report.failed.append(str(run))
    for case in stalled_cases():
        transitions.advance_workflow(case.pk, skip_locked=True)
        report.advanced.append(case.case_id)
    report.failed += transitions.host_outages()
    report.gpus_repaired = transitions.gpu_repair_bookings()
    report.waiting_started = transitions.advance_waiting()
    if report:
        log.warning("reconcile: %s", report.summary())
    return report
