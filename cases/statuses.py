"""The statuses of cases and step runs.

Kept apart from the models so that the conductor's pure decisions (:mod:`conductor.machine`)
can use them without Django's model machinery.
"""

from __future__ import annotations

from django.db.models import TextChoices


class CaseStatus(TextChoices):
    NEW = "NEW"
    PENDING_RESOURCE = "PENDING_RESOURCE", "Waiting for a GPU"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class StepStatus(TextChoices):
    PENDING = "PENDING", "Waiting for a GPU"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    # its GPU server cannot be reached: it keeps its GPU and goes on when the server is back
    WAITING_HOST = "WAITING_HOST", "Waiting for its GPU server"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ACTIVE_STEP_STATUSES = (
    StepStatus.PENDING,
    StepStatus.DISPATCHED,
    StepStatus.RUNNING,
    StepStatus.WAITING_HOST,
)
# In flight: sent to a worker (a PENDING run waits for a GPU and has not been sent).
IN_FLIGHT_STEP_STATUSES = (StepStatus.DISPATCHED, StepStatus.RUNNING)
ACTIVE_CASE_STATUSES = (CaseStatus.NEW, CaseStatus.PENDING_RESOURCE, CaseStatus.PROCESSING)
TERMINAL_CASE_STATUSES = (CaseStatus.COMPLETED, CaseStatus.FAILED, CaseStatus.CANCELLED)


class QAVerdict(TextChoices):
    """The gamma verdict of a case's current run ("" while it has none)."""

    NONE = "", "no verdict yet"
    PASSED = "PASSED", "QA passed"
    FAILED = "FAILED", "QA failed"
    NOT_EVALUATED = "NOT_EVALUATED", "not evaluated"
