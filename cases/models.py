"""QA cases and the history of every step run.

State changes are made by the conductor (``conductor.transitions``); this module only says what
a case and a step run are and which rules the data must keep.  The rules live in the
database as constraints so that no code path, admin edit or race can break them.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from cases.statuses import (  # re-exported: Case.Status, WorkflowStep.Status
    ACTIVE_CASE_STATUSES,
    ACTIVE_STEP_STATUSES,
    IN_FLIGHT_STEP_STATUSES,
    TERMINAL_CASE_STATUSES,
    CaseStatus,
    QAVerdict,
    StepStatus,
)

# The admin's default order (cases still moving first, then newest); an index matches it.
ACTIVE_FIRST = models.Case(
    models.When(status__in=ACTIVE_CASE_STATUSES, then=models.Value(0)),
    default=models.Value(1),
    output_field=models.IntegerField(),
)


class CaseQuerySet(models.QuerySet):
    def with_gpus(self) -> CaseQuerySet:
        """Fetch the GPUs each case's step runs hold in one more query (:attr:`Case.gpus`)."""
        in_flight = WorkflowStep.objects.filter(status__in=IN_FLIGHT_STEP_STATUSES)
        return self.prefetch_related(
            models.Prefetch(
                "steps", queryset=in_flight.select_related("held_gpu"), to_attr="runs_in_flight"
            )
        )


class Case(models.Model):
    Status = CaseStatus
    QAVerdict = QAVerdict

    TERMINAL = TERMINAL_CASE_STATUSES
    ACTIVE = ACTIVE_CASE_STATUSES

    case_id = models.CharField(max_length=255, unique=True, help_text="The case folder's name.")
    source_path = models.TextField(help_text="The case folder in the watched directory.")
    # Who and what, from the RTPLAN (cases.identity); empty when no plan could be read.
    patient_id = models.CharField(max_length=64, blank=True, db_index=True)
    patient_name = models.CharField(max_length=255, blank=True)
    plan_label = models.CharField(max_length=64, blank=True)
    plan_date = models.DateField(null=True, blank=True)
    treatment_machine = models.CharField(max_length=128, blank=True, db_index=True)
    beam_count = models.PositiveSmallIntegerField(default=0, help_text="Treatment beams.")
    beams = models.JSONField(default=list, blank=True, help_text='[{"number": 1, "name": ...}]')
    # The folder as it was last checked (found, or re-checked by a retry): cases.manifest.
    manifest = models.JSONField(default=list, blank=True)
    manifest_checked_at = models.DateTimeField(null=True, blank=True)
    # Whether the delivery logs were matched against the plan: cases.folder.LogCheck.
    log_check = models.CharField(max_length=10, blank=True)
    # The run the case is on (or last ran); earlier runs and their results are kept.
    current_run = models.ForeignKey(
        "CaseRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    workflow = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    # The step being run, waited for (PENDING_RESOURCE), that failed, or the last one done.
    workflow_step = models.CharField(max_length=64, blank=True)
    progress = models.PositiveSmallIntegerField(default=0)
    priority = models.IntegerField(default=0, help_text="Higher runs first when GPUs are scarce.")
    # The GPU server the case was uploaded to; set by its first step.
    host = models.CharField(max_length=64, blank=True)
    error_kind = models.CharField(max_length=20, blank=True)
    error_message = models.TextField(blank=True)
    # The gamma verdict of the current run's evaluate step (QAResult); "" until it has one.
    qa_verdict = models.CharField(
        "QA", max_length=16, choices=QAVerdict.choices, blank=True, default="", db_index=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When its first step run was sent to a worker: the time before it was spent waiting.
    first_dispatched_at = models.DateTimeField(null=True, blank=True)

    objects = CaseQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The waiting line: PENDING_RESOURCE cases by priority, then age.
            models.Index(fields=["status", "-priority", "created_at"], name="cases_case_queue_idx"),
            models.Index(fields=["-created_at"], name="cases_case_created_idx"),
            models.Index(
                ACTIVE_FIRST,
                models.F("created_at").desc(),
                models.F("id").desc(),
                name="cases_case_active_first_idx",
            ),
            models.Index(fields=["status", "-finished_at"], name="cases_case_finished_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=CaseStatus.values),
                name="cases_case_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(progress__gte=0, progress__lte=100),
                name="cases_case_progress_0_100",
            ),
            models.CheckConstraint(
                condition=Q(qa_verdict__in=QAVerdict.values),
                name="cases_case_qa_verdict_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.case_id

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def progress_caption(self) -> str:
        """ "Done" for a completed case; else its progress and the step it is at."""
        if self.status == self.Status.COMPLETED:
            return "Done"
        return f"{self.progress}% {self.workflow_step}".strip()

    @property
    def waited(self):
        """How long the case waited before its first step was sent (None: not yet)."""
        if self.first_dispatched_at is None:
            return None
        return self.first_dispatched_at - self.created_at

    @property
    def run_time(self):
        """From its first dispatch to its end (None until both are known)."""
        if self.first_dispatched_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.first_dispatched_at

    @property
    def qa_result(self) -> QAResult | None:
        """The gamma analysis of the current run (the newest, if it was evaluated twice)."""
        if self.current_run_id is None:
            return None
        results = QAResult.objects.filter(run_id=self.current_run_id).prefetch_related("criteria")
        return results.order_by("-pk").first()

    def qa_said(self) -> str:
        """The QA verdict in words, with the pass rates: for the CLI and the mail."""
        result = self.qa_result
        if result is not None:
            return result.describe()
        return "not evaluated" + ("" if self.is_terminal else " yet")

    @property
    def gpus(self) -> list:
        """The GPUs the case's step runs hold now (prefetched by ``with_gpus()``)."""
        runs = getattr(self, "runs_in_flight", None)
        if runs is None:
            in_flight = self.steps.filter(status__in=IN_FLIGHT_STEP_STATUSES)
            runs = in_flight.select_related("held_gpu")
        # a missing reverse one-to-one raises RelatedObjectDoesNotExist, an AttributeError
        return [gpu for run in runs if (gpu := getattr(run, "held_gpu", None)) is not None]


class CaseRun(models.Model):
    """One pass of a case through its workflow, from the upload on, in folders of its own.

    A case gets a new run when it starts and when it is re-run from the start (or retried
    after its folder changed).  Each run has its own remote case and output folders and
    its own local results folder, so nothing of an earlier run can reach its commands or
    mix with its results.  ``manifest`` is the folder exactly as this run uploaded it.
    """

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    reason = models.CharField(max_length=255, blank=True, help_text="Why this run started.")
    host = models.CharField(max_length=64, blank=True)
    manifest = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    uploaded_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["case", "number"]
        constraints = [
            models.UniqueConstraint(fields=["case", "number"], name="cases_caserun_unique_number"),
        ]

    def __str__(self) -> str:
        return f"{self.case.case_id} run {self.number}"

    @property
    def folder_name(self) -> str:
        """This run's folder under the case's remote and local folders."""
        return f"run-{self.number}"


class ResultFile(models.Model):
    """A file a run downloaded, as verified on arrival."""

    run = models.ForeignKey(CaseRun, on_delete=models.CASCADE, related_name="result_files")
    path = models.CharField(max_length=1024, help_text="Relative to the run's results folder.")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["run", "path"]
        constraints = [
            models.UniqueConstraint(fields=["run", "path"], name="cases_resultfile_unique_path"),
        ]

    def __str__(self) -> str:
        return self.path


class WorkflowStep(models.Model):
    """One attempt of one step for one case (a *step run*); messages carry its id.

    A step that fans out over the plan's beams has one step run per beam
    (``beam_number``; 0 for a step that does not fan out).  A step run that needs a GPU
    and has none waits as PENDING; it holds its GPU (``GPUResource.step_run``) while it is
    in flight, and hands it on or releases it when it ends.
    """

    Status = StepStatus

    ACTIVE = ACTIVE_STEP_STATUSES
    IN_FLIGHT = IN_FLIGHT_STEP_STATUSES

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="steps")
    run = models.ForeignKey(
        CaseRun, null=True, blank=True, on_delete=models.CASCADE, related_name="steps"
    )
    name = models.CharField(max_length=64)
    type = models.CharField(max_length=20)
    beam_number = models.PositiveIntegerField(default=0, help_text="0: not fanned out.")
    beam_name = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # How far this run's command says it is (its progress_pattern), 0-100; the case's
    # progress is taken across the beams of a step that fans out (cases.services).
    progress = models.PositiveSmallIntegerField(default=0)
    # The GPU it ran on (kept for the record; the live booking is GPUResource.step_run).
    gpu = models.ForeignKey(
        "gpus.GPUResource", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    host = models.CharField(max_length=64, blank=True)
    command = models.TextField(blank=True, help_text="The rendered remote command.")
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Past this the reconciler re-drives the step run (lost message, dead worker).
    deadline = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    stdout_tail = models.TextField(blank=True)
    stderr_tail = models.TextField(blank=True)
    error_kind = models.CharField(max_length=20, blank=True)
    error_message = models.TextField(blank=True)

    class Meta:
        ordering = ["case", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=StepStatus.values),
                name="cases_workflowstep_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(progress__gte=0, progress__lte=100),
                name="cases_workflowstep_progress_0_100",
            ),
            models.UniqueConstraint(
                fields=["case", "name", "beam_number", "attempt"],
                name="cases_workflowstep_unique_attempt",
            ),
            # At most one step run per step and beam of a case is active: outcomes for any
            # other are stale.
            models.UniqueConstraint(
                fields=["case", "name", "beam_number"],
                condition=Q(status__in=ACTIVE_STEP_STATUSES),
                name="cases_workflowstep_one_active_per_beam",
            ),
        ]
        indexes = [
            models.Index(
                fields=["deadline"],
                condition=Q(status__in=ACTIVE_STEP_STATUSES),
                name="cases_workflowstep_active_idx",
            ),
        ]

    def __str__(self) -> str:
        beam = f"[beam {self.beam_number}]" if self.beam_number else ""
        return f"{self.case.case_id}:{self.name}{beam}#{self.attempt}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def label(self) -> str:
        """The step, and the beam for a step that fans out: ``run_moqui_sim · beam 2 (B2)``."""
        if not self.beam_number:
            return self.name
        named = f" ({self.beam_name})" if self.beam_name else ""
        return f"{self.name} · beam {self.beam_number}{named}"

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        if self.dispatched_at and self.finished_at:
            return self.finished_at - self.dispatched_at
        return None


class QAResult(models.Model):
    """The gamma analysis an evaluate step run made of its run's results.

    Written by the evaluate worker (a measurement, not a decision); the conductor copies
    the verdict to ``Case.qa_verdict`` when the step run succeeds.  ``reference_files``
    are the planning system's doses (case folder), ``evaluated_files`` MOQUI's (results
    folder), each ``{"path", "sha256"}`` as read.
    """

    Verdict = QAVerdict

    run = models.ForeignKey(CaseRun, on_delete=models.CASCADE, related_name="qa_results")
    step_run = models.OneToOneField(
        WorkflowStep, on_delete=models.CASCADE, related_name="qa_result"
    )
    verdict = models.CharField(max_length=16, choices=QAVerdict.choices)
    note = models.TextField(blank=True, help_text="Why it was not evaluated, in words.")
    pass_rate_pct = models.FloatField(null=True, blank=True, help_text="The threshold.")
    low_dose_cutoff_pct = models.FloatField(null=True, blank=True)
    normalisation_gy = models.FloatField(null=True, blank=True)
    reference_files = models.JSONField(default=list, blank=True)
    evaluated_files = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(verdict__in=[v for v in QAVerdict.values if v]),
                name="cases_qaresult_verdict_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run} {self.get_verdict_display()}"

    def describe(self) -> str:
        """One line for the history, the CLI and the mail."""
        if self.verdict == QAVerdict.NOT_EVALUATED:
            return f"not evaluated: {self.note}"
        rates = ", ".join(criterion.describe() for criterion in self.criteria.all())
        return f"{self.get_verdict_display()} (pass rate >= {self.pass_rate_pct:g}%): {rates}"


class QACriterion(models.Model):
    """One gamma criterion's pass rate, and its gamma map as drawn (PNG)."""

    result = models.ForeignKey(QAResult, on_delete=models.CASCADE, related_name="criteria")
    dose_pct = models.FloatField()
    distance_mm = models.FloatField()
    pass_rate_pct = models.FloatField()
    points_evaluated = models.PositiveIntegerField()
    points_passed = models.PositiveIntegerField()
    points_outside = models.PositiveIntegerField(help_text="Outside MOQUI's grid: failed.")
    passed = models.BooleanField()
    gamma_png = models.BinaryField(blank=True, editable=False)

    class Meta:
        ordering = ["result", "id"]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        return f"{self.dose_pct:g}%/{self.distance_mm:g}mm"

    def describe(self) -> str:
        return f"gamma {self.label} {self.pass_rate_pct:.1f}%"


class CaseEvent(models.Model):
    """A line of a case's history that is not a step run: created, failed, retried, ..."""

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    message = models.TextField(blank=True)
    step_run = models.ForeignKey(
        WorkflowStep, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.CharField(max_length=150, blank=True, help_text="Who caused it.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when the notification mail for this event went out: at most one mail per event.
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["case", "id"]

    def __str__(self) -> str:
        return f"{self.case.case_id} {self.kind}"
