"""The conductor's state machine: every change of a case's state happens here.

Each public function runs in one ``transaction.atomic()``: it locks the case row first
(always the case before its GPU or step rows, so transactions never wait on each other in a
cycle), decides with the pure functions of :mod:`conductor.workflow`, writes the new state
and a history row together, and sends the next command only after the commit
(``send_on_commit``), so no worker can see state that might still roll back.

Outcome messages carry the id of the step run they report on.  An outcome for a step run
that is no longer in flight (a duplicate, or one overtaken by a retry or a cancel) is
recorded as a ``CaseEvent`` and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from functools import cache
from typing import Any

from django.db import transaction
from django.utils import timezone

from cases.models import Case, CaseEvent, WorkflowStep
from conductor import notifications, retry, workflow
from gpus.models import GPUResource
from gpus.services import free_gpu_exists, gpu_held_by, release_gpu, reserve_gpu
from mqi_site import rows
from mqi_site.config import Config, StepSpec, case_id_path_problem, get_config
from mqi_site.messaging import (
    NOTIFIER,
    REMOTE_EXECUTOR,
    STEP_ROUTES,
    Command,
    ErrorKind,
    send_on_commit,
)
from mqi_site.untrusted_text import storable

log = logging.getLogger(__name__)

# How long a dispatched step run may go without word from its worker before the
# reconciler re-drives it (``conductor.dispatch_grace_sec``; this is its default).  Workers
# push the deadline forward while they work.
DISPATCH_GRACE = timedelta(seconds=120)
# Re-sends of a silent step run before it counts as a (transient) failure.
MAX_REDRIVES = 5


def dispatch_grace(config: Config) -> timedelta:
    return timedelta(seconds=config.conductor.dispatch_grace_sec)


class CaseStateError(Exception):
    """The requested change does not apply to the case in its current state."""


# --- entry points for messages --------------------------------------------------------


def case_register(
    *,
    case_id: str,
    source_path: str,
    workflow_name: str | None = None,
    problems: Sequence[str] = (),
) -> Case | None:
    """Handle ``new_case_found``: create the case once and start it, or fail it if invalid.

    Returns the new case, or None when a case with this id already exists (a duplicate
    message, a re-scan after a restart, or a second folder with the same name).
    """
    config = get_config()
    name = workflow_name or config.scanner.workflow
    with transaction.atomic():
        case, created = Case.objects.get_or_create(
            case_id=case_id, defaults={"source_path": source_path, "workflow": name}
        )
        if not created:
            if case.source_path != source_path:
                _event(
                    case,
                    "duplicate_case_id",
                    f"another folder with the same case id was found at {source_path}; "
                    "it was not started (rename it to run it as its own case)",
                )
            return None
        _event(case, "created", f"found at {source_path}")
        path_problem = case_id_path_problem(case_id)
        if path_problem:  # only a forged or garbled message carries such an id
            problems = [*problems, path_problem]
        if problems:
            _fail(case, ErrorKind.INVALID_INPUT, "invalid case folder: " + "; ".join(problems))
        elif name not in config.workflows:
            _fail(case, ErrorKind.PERMANENT, f"workflow {name!r} is not in {config.source}")
        else:
            _advance_locked(case, config)
    return case


def advance_workflow(case_pk: int, *, skip_locked: bool = False) -> str | None:
    """Move a case on: start its next step, wait for a GPU, or complete it.

    Safe to call any number of times: a case with a step in flight is left alone.  Returns
    the case's status afterwards, or None when ``skip_locked`` and another transaction
    holds the case.
    """
    config = get_config()
    with transaction.atomic():
        case = _lock_case(case_pk, skip_locked=skip_locked)
        if case is None:
            return None
        _advance_locked(case, config)
        return case.status


def step_run_succeeded(*, step_run_id: int, command: str, outcome: dict[str, Any]) -> bool:
    """Handle a success message for a step run; returns False when it was stale."""
    config = get_config()
    with transaction.atomic():
        locked = _lock_current_run(step_run_id, command, outcome)
        if locked is None:
            return False
        case, run = locked
        _finish_run(run, WorkflowStep.Status.SUCCEEDED, outcome)
        # the run just finished was the case's one active run (a database constraint)
        _advance_locked(case, config, finished=run)
    return True


def step_run_failed(*, step_run_id: int, command: str, outcome: dict[str, Any]) -> bool:
    """Handle a failure message: retry a transient error within budget, else fail the case."""
    config = get_config()
    error_kind = outcome.get("error_kind") or ErrorKind.PERMANENT
    reason = storable(
        outcome.get("error_message") or "the worker reported a failure without a reason"
    )
    with transaction.atomic():
        locked = _lock_current_run(step_run_id, command, outcome)
        if locked is None:
            return False
        case, run = locked
        _finish_run(run, WorkflowStep.Status.FAILED, outcome)
        _retry_or_fail(case, run, config, error_kind, reason)
    return True


def step_run_redrive(*, step_run_id: int, force: bool = False) -> str:
    """Re-send the command of a step run past its deadline (lost message, dead worker).

    Workers are idempotent for a given step run (the executor re-attaches to a command that
    is still running; transfers skip what is already verified), so re-sending is safe.  A
    run re-driven ``MAX_REDRIVES`` times without word is treated as a transient failure.
    Returns what was done: ``"redriven"``, ``"failed"`` or ``"skipped"``.
    """
    config = get_config()
    with transaction.atomic():
        case_pk = WorkflowStep.objects.filter(pk=step_run_id).values_list("case_id", flat=True)[0]
        case = _lock_case(case_pk)
        run = WorkflowStep.objects.select_for_update().get(pk=step_run_id)
        now = timezone.now()
        overdue = force or run.deadline is None or run.deadline <= now
        if not run.is_active or case.status != Case.Status.PROCESSING or not overdue:
            return "skipped"
        silent_for = now - (run.heartbeat_at or run.dispatched_at or run.created_at)
        redrives = CaseEvent.objects.filter(step_run=run, kind="redriven").count()
        if redrives >= MAX_REDRIVES and not force:
            reason = (
                f"no word from the worker for {int(silent_for.total_seconds())} s "
                f"after {redrives} re-sends"
            )
            _finish_run(
                run,
                WorkflowStep.Status.FAILED,
                {"error_kind": ErrorKind.TRANSIENT, "error_message": reason},
            )
            _retry_or_fail(case, run, config, ErrorKind.TRANSIENT, reason)
            return "failed"
        # Dispatched again: the next worker to get the command may claim it (a transfer
        # refuses a run another live worker holds; this one's worker went silent).
        run.status = WorkflowStep.Status.DISPATCHED
        run.deadline = now + dispatch_grace(config)
        run.save(update_fields=["status", "deadline"])
        _event(
            case,
            "redriven",
            f"{run.name} attempt {run.attempt}: no word for {int(silent_for.total_seconds())} s, "
            f"command sent again ({redrives + 1}/{MAX_REDRIVES})",
            run=run,
        )
        route = STEP_ROUTES[run.type]
        send_on_commit(route.actor, route.command, {"case_id": case.case_id, "step_run_id": run.pk})
    return "redriven"


def gpu_repair_bookings() -> int:
    """Release GPUs booked by a case that is not running (a booking state can't explain)."""
    repaired = 0
    stale = GPUResource.objects.filter(status=GPUResource.Status.RESERVED).exclude(
        reserved_by__status=Case.Status.PROCESSING
    )
    for case_pk in stale.values_list("reserved_by", flat=True):
        with transaction.atomic():
            case = _lock_case(case_pk)
            if case.status == Case.Status.PROCESSING:
                continue  # it moved on since we looked
            gpu = release_gpu(case=case)
            if gpu is None:
                continue
            _event(case, "gpu_repaired", f"GPU {gpu} was still booked by this {case.status} case")
            transaction.on_commit(_advance_waiting_after_release)
            repaired += 1
    return repaired


# --- operator actions (admin and management commands call these) ----------------------


def case_cancel(*, case_pk: int, actor: str = "") -> Case:
    """Cancel a case: stop its remote process group, release its GPU, mark CANCELLED."""
    with transaction.atomic():
        case = _lock_case(case_pk)
        if case.is_terminal:
            raise CaseStateError(f"case {case.case_id} is already {case.status}; nothing to cancel")
        run = _active_run(case)
        if run is not None:
            run.status = WorkflowStep.Status.CANCELLED
            run.finished_at = timezone.now()
            run.error_kind = ErrorKind.CANCELLED
            run.error_message = f"cancelled by {actor or 'an operator'}"
            run.save()
            if run.type == "execute":
                # The executor kills the whole remote process group (idempotent if the
                # command never started or already ended).
                send_on_commit(
                    REMOTE_EXECUTOR,
                    Command.CANCEL_COMMAND,
                    {"case_id": case.case_id, "step_run_id": run.pk},
                )
        _end(
            case,
            Case.Status.CANCELLED,
            ErrorKind.CANCELLED,
            f"cancelled by {actor or 'an operator'}",
        )
        _event(case, "cancelled", case.error_message, run=run, actor=actor)
    return case


def case_retry(*, case_pk: int, from_start: bool = False, actor: str = "") -> Case:
    """Run a failed or cancelled case again, from the step that failed or from the start."""
    config = get_config()
    with transaction.atomic():
        case = _lock_case(case_pk)
        if case.status not in (Case.Status.FAILED, Case.Status.CANCELLED):
            raise CaseStateError(
                f"case {case.case_id} is {case.status}; only FAILED or CANCELLED cases can be "
                "retried"
            )
        if case.error_kind == ErrorKind.INVALID_INPUT and not from_start:
            # An invalid folder never started a step; a retry re-validates nothing, so the
            # honest retry is from the start after the folder was fixed.
            from_start = True
        steps = config.workflows.get(case.workflow)
        if steps is None:
            raise CaseStateError(f"workflow {case.workflow!r} is not configured any more")
        if from_start or not case.workflow_step:
            spec = workflow.first_step(steps)
        else:
            spec = _step_spec(config, case, case.workflow_step)
            if spec is None:
                raise CaseStateError(
                    f"step {case.workflow_step!r} is not in workflow {case.workflow!r} any more; "
                    "re-run from the start"
                )
        _event(
            case,
            "replayed" if from_start else "retried",
            f"{'re-run from the start' if from_start else 'retry from ' + spec.name}",
            actor=actor,
        )
        case.error_kind = ""
        case.error_message = ""
        case.finished_at = None
        if from_start:
            case.progress = 0
        _start_or_wait(case, spec, config)
    return case


def case_set_priority(*, case_pk: int, priority: int, actor: str = "") -> Case:
    with transaction.atomic():
        case = _lock_case(case_pk)
        return _priority(case, priority, actor)


def case_change_priority(*, case_pk: int, by: int, actor: str = "") -> Case:
    """Raise (``by`` > 0) or lower the priority relative to its value under the lock."""
    with transaction.atomic():
        case = _lock_case(case_pk)
        return _priority(case, case.priority + by, actor)


def _priority(case: Case, priority: int, actor: str) -> Case:
    if case.is_terminal:
        raise CaseStateError(f"case {case.case_id} is {case.status}; priority no longer matters")
    _event(case, "priority", f"priority {case.priority} -> {priority}", actor=actor)
    case.priority = priority
    case.save(update_fields=["priority", "updated_at"])
    return case


def gpu_start_maintenance(*, gpu_pk: int, actor: str = "") -> GPUResource:
    """Take a GPU out of service; a reserved one is drained (finishes its case first)."""
    with transaction.atomic():
        gpu = GPUResource.objects.select_for_update().get(pk=gpu_pk)
        if gpu.status == GPUResource.Status.RESERVED:
            gpu.drain_requested = True
            log.info("GPU %s: drain requested by %s", gpu, actor or "an operator")
        elif gpu.status == GPUResource.Status.MAINTENANCE:
            raise CaseStateError(f"GPU {gpu} is already in maintenance")
        else:
            gpu.status = GPUResource.Status.MAINTENANCE
            log.info("GPU %s: maintenance started by %s", gpu, actor or "an operator")
        gpu.save()
    return gpu


def gpu_end_maintenance(*, gpu_pk: int, actor: str = "") -> GPUResource:
    """Put a GPU back in service (or cancel a pending drain) and hand it to a waiting case."""
    with transaction.atomic():
        gpu = GPUResource.objects.select_for_update().get(pk=gpu_pk)
        if gpu.status == GPUResource.Status.MAINTENANCE:
            gpu.status = GPUResource.Status.AVAILABLE
            transaction.on_commit(_advance_waiting_after_release)
        elif gpu.drain_requested:
            gpu.drain_requested = False
        else:
            raise CaseStateError(f"GPU {gpu} is {gpu.status}, not in maintenance")
        gpu.save()
        log.info("GPU %s: back in service (%s)", gpu, actor or "an operator")
    return gpu


def advance_waiting_cases(*, limit: int = 200) -> int:
    """Give free GPUs to waiting cases, highest priority then oldest first.

    Called after every release and by the reconciler (so a lost wake-up costs at most one
    reconcile interval).  Each case is advanced in its own transaction; cases another
    transaction holds are skipped, it is already moving them.  Returns how many started.
    """
    started = 0
    waiting = (
        Case.objects.filter(status=Case.Status.PENDING_RESOURCE)
        .order_by("-priority", "created_at", "pk")
        .values_list("pk", "host")[:limit]
    )
    for case_pk, host in list(waiting):
        if not free_gpu_exists():
            break
        if host and not free_gpu_exists(host):
            continue
        if advance_workflow(case_pk, skip_locked=True) == Case.Status.PROCESSING:
            started += 1
    return started


# --- internals ------------------------------------------------------------------------


# The statements of the hot path (a step run's outcome -> the next command) are written
# here and run through :mod:`mqi_site.rows`: the ORM's query building cost more than
# PostgreSQL took to run them.  Everything else goes through the ORM.


@cache
def _case_sql(where: str) -> str:
    return f"SELECT {rows.select_list(Case)} FROM cases_case WHERE {where}"


@cache
def _run_with_gpu_sql() -> str:
    return (
        f"SELECT {rows.select_list(WorkflowStep, 'r')}, {rows.select_list(GPUResource, 'g')} "
        "FROM cases_workflowstep r LEFT JOIN gpus_gpuresource g ON g.id = r.gpu_id "
        f"WHERE r.id = %s{rows.for_update(of='r')}"
    )


# a new step run's attempt number, worked out in its INSERT
_NEXT_ATTEMPT = (
    "COALESCE((SELECT MAX(attempt) FROM cases_workflowstep WHERE case_id = %s AND name = %s), 0)"
    " + 1"
)
# the order of advance_waiting_cases; the host the GPU is on, or any
_FIRST_WAITING = (
    "status = %s AND (host = '' OR host = %s) ORDER BY priority DESC, created_at, id LIMIT 1"
)


def _run_with_gpu(step_run_id: int) -> WorkflowStep:
    row = rows.fetch_row(_run_with_gpu_sql(), [step_run_id])
    width = rows.width(WorkflowStep)
    run = rows.from_row(WorkflowStep, row[:width])
    run.gpu = None if run.gpu_id is None else rows.from_row(GPUResource, row[width:])
    return run


def _lock_case(case_pk: int, *, skip_locked: bool = False) -> Case | None:
    lock = rows.for_update(skip_locked=skip_locked)
    case = rows.fetch(Case, _case_sql("id = %s") + lock, [case_pk])
    if case is None and not skip_locked:
        raise Case.DoesNotExist(f"no case with pk {case_pk}")
    return case


def _lock_current_run(
    step_run_id: int, command: str, outcome: dict[str, Any]
) -> tuple[Case, WorkflowStep] | None:
    """Lock the case and its step run if the run is in flight; record and drop it if not."""
    # One statement finds and locks the case (only the case: runs are locked after it)
    of_run = "id = (SELECT case_id FROM cases_workflowstep WHERE id = %s)"
    case = rows.fetch(Case, _case_sql(of_run) + rows.for_update(), [step_run_id])
    if case is None:
        log.warning("outcome %s for unknown step run %s ignored", command, step_run_id)
        return None
    # the run's GPU comes along, read after the case lock was taken (see _held_gpu)
    run = _run_with_gpu(step_run_id)
    route = STEP_ROUTES.get(run.type)
    expected = route is not None and command in (route.success, route.failure)
    if not run.is_active or case.status != Case.Status.PROCESSING or not expected:
        why = "of the wrong kind" if not expected else f"for a step run that is {run.status}"
        _event(case, "ignored_outcome", f"{command} {why}; nothing changed", run=run)
        log.info("case %s: stale %s for %s ignored", case.case_id, command, run)
        return None
    return case, run


def _finish_run(run: WorkflowStep, status: str, outcome: dict[str, Any]) -> None:
    run.status = status
    run.finished_at = timezone.now()
    run.exit_code = outcome.get("exit_code", run.exit_code)
    # what a command printed may hold NUL bytes, which PostgreSQL's text type refuses
    run.stdout_tail = storable(outcome.get("stdout_tail", run.stdout_tail) or "")
    run.stderr_tail = storable(outcome.get("stderr_tail", run.stderr_tail) or "")
    if status == WorkflowStep.Status.FAILED:
        run.error_kind = outcome.get("error_kind") or ErrorKind.PERMANENT
        run.error_message = storable(outcome.get("error_message") or "")
    rows.update(run, _FINISH_FIELDS)


_FINISH_FIELDS = [
    "status",
    "finished_at",
    "exit_code",
    "stdout_tail",
    "stderr_tail",
    "error_kind",
    "error_message",
]
# what moving a case to a step (or making it wait for one) changes; a retry also clears
# the error and the end time before it moves the case
_MOVE_FIELDS = [
    "status",
    "workflow_step",
    "progress",
    "host",
    "error_kind",
    "error_message",
    "finished_at",
    "updated_at",
]


def _active_run(case: Case) -> WorkflowStep | None:
    return case.steps.filter(status__in=WorkflowStep.ACTIVE).select_for_update().first()


def _step_spec(config: Config, case: Case, name: str) -> StepSpec | None:
    try:
        return workflow.step_named(config.workflows[case.workflow], name)
    except (KeyError, ValueError):
        return None


def _advance_locked(case: Case, config: Config, *, finished: WorkflowStep | None = None) -> None:
    """``finished``: the step run the caller just finished, the case's only active one."""
    if case.is_terminal:
        return
    steps = config.workflows.get(case.workflow)
    if steps is None:
        _fail(case, ErrorKind.PERMANENT, f"workflow {case.workflow!r} is not in {config.source}")
        return
    try:
        if case.status == Case.Status.NEW:
            spec = workflow.first_step(steps)
        elif case.status == Case.Status.PENDING_RESOURCE:
            spec = workflow.step_named(steps, case.workflow_step)
        elif finished is None and _active_run(case) is not None:
            return  # a step is in flight; its outcome will move the case on
        else:
            spec = workflow.next_step(steps, case.workflow_step)
    except ValueError:
        _fail(
            case,
            ErrorKind.PERMANENT,
            f"step {case.workflow_step!r} is not in workflow {case.workflow!r} any more",
        )
        return
    if finished is not None:
        held = _held_gpu(case, finished)
    elif case.status in (Case.Status.NEW, Case.Status.PENDING_RESOURCE):
        held = None  # a case waits for a GPU only while it holds none
    else:
        held = _LOOK_UP
    if spec is None:
        _end(case, Case.Status.COMPLETED, held=held)
        _event(case, "completed", "all steps succeeded")
        return
    _start_or_wait(case, spec, config, gpu=held)


_LOOK_UP: Any = object()  # the case's GPU is not known yet: look it up


def _held_gpu(case: Case, finished: WorkflowStep) -> GPUResource | None:
    """The GPU ``case`` holds, known without a query from the step run it just finished.

    Bookings change only in this module, with the case locked, when a step starts
    (:func:`_start_or_wait`) or the case ends; none of that happens while a step run is in
    flight. So the case still holds the GPU the run was dispatched with, if any (its row
    was read after the case lock was taken, so ``reserved_by`` is current).
    """
    gpu = finished.gpu
    return gpu if gpu is not None and gpu.reserved_by_id == case.pk else None


def _start_or_wait(case: Case, spec: StepSpec, config: Config, gpu: Any = _LOOK_UP) -> None:
    """Start ``spec`` for the case (with a GPU when it needs one), or make it wait for one.

    ``gpu``: the GPU the case holds (None: none), when the caller knows it.
    """
    if gpu is _LOOK_UP:
        gpu = gpu_held_by(case)
    if workflow.needs_gpu(spec, config.conductor.gpu_policy):
        gpu = gpu or reserve_gpu(case=case, host=case.host or None)
        if gpu is None:
            became_waiting = case.status != Case.Status.PENDING_RESOURCE
            case.status = Case.Status.PENDING_RESOURCE
            case.workflow_step = spec.name
            rows.update(case, _MOVE_FIELDS)
            if became_waiting:
                _event(case, "waiting_for_gpu", f"{spec.name} waits for a free GPU")
                # A GPU released after our look but before our commit would find no
                # waiting case: look once more after the commit (lost wake-up guard).
                transaction.on_commit(_wake_if_gpu_free)
            return
    elif gpu is not None:
        _hand_over(release_gpu(case=case, held=gpu), config)
        gpu = None
    if not case.host:
        case.host = gpu.host if gpu is not None else config.default_host
    case.status = Case.Status.PROCESSING
    case.workflow_step = spec.name
    case.progress = spec.progress
    rows.update(case, _MOVE_FIELDS)
    _dispatch(case, spec, gpu, config)


def _dispatch(
    case: Case, spec: StepSpec, gpu: GPUResource | None, config: Config, delay_ms: int | None = None
) -> WorkflowStep:
    route = STEP_ROUTES[spec.type]
    now = timezone.now()
    run = WorkflowStep(
        case=case,
        name=spec.name,
        type=spec.type,
        status=WorkflowStep.Status.DISPATCHED,
        gpu=gpu,
        host=case.host,
        command=_render(case, spec, gpu, config),
        dispatched_at=now,
        deadline=now + dispatch_grace(config) + timedelta(milliseconds=delay_ms or 0),
    )
    # numbered in the INSERT itself (the case is locked: no other attempt can be inserted);
    # deferred afterwards: read from the database if anyone asks
    rows.insert(run, computed={"attempt": (_NEXT_ATTEMPT, [case.pk, spec.name])})
    send_on_commit(
        route.actor,
        route.command,
        {"case_id": case.case_id, "step_run_id": run.pk},
        delay_ms=delay_ms,
    )
    return run


def _render(case: Case, spec: StepSpec, gpu: GPUResource | None, config: Config) -> str:
    if spec.type != "execute":
        return ""
    return workflow.render_command(
        config.remote_commands[spec.name],
        {
            "case_id": case.case_id,
            "gpu_id": gpu.index if gpu is not None else "",
            "gpu_uuid": gpu.uuid if gpu is not None else "",
            "case_dir": config.remote_case_dir(case.case_id),
            "output_dir": config.remote_output_dir(case.case_id),
            "host": case.host,
            "step": spec.name,
        },
    )


def _retry_or_fail(
    case: Case, run: WorkflowStep, config: Config, error_kind: str, reason: str
) -> None:
    """After a failed attempt: another attempt with backoff if the policy allows, else fail."""
    spec = _step_spec(config, case, run.name)
    if spec is not None and retry.should_retry(
        error_kind=error_kind, attempt=run.attempt, max_attempts=spec.max_attempts
    ):
        delay = retry.backoff_ms(
            run.attempt,
            base_sec=config.retries.backoff_base_sec,
            max_sec=config.retries.backoff_max_sec,
        )
        _event(
            case,
            "retry_scheduled",
            f"{run.name} attempt {run.attempt} failed ({reason}); "
            f"attempt {run.attempt + 1} of {spec.max_attempts} in {delay / 1000:g} s",
            run=run,
        )
        _dispatch(case, spec, gpu_held_by(case), config, delay_ms=delay)
        return
    if error_kind == ErrorKind.TRANSIENT:
        reason = f"gave up after {run.attempt} attempts: {reason}"
    _fail(case, error_kind, f"{run.name} failed: {reason}", run=run)


def _fail(case: Case, error_kind: str, message: str, run: WorkflowStep | None = None) -> None:
    _end(case, Case.Status.FAILED, error_kind, message)
    _event(case, "failed", message, run=run)


def _end(
    case: Case, status: str, error_kind: str = "", message: str = "", held: Any = _LOOK_UP
) -> None:
    """Terminal status and GPU release in the same transaction: no GPU outlives its case.

    ``held``: the GPU the case holds (None: none), when the caller knows it.
    """
    case.status = status
    case.error_kind = error_kind
    case.error_message = message
    case.finished_at = timezone.now()
    if status == Case.Status.COMPLETED:
        case.progress = 100
    rows.update(case, _MOVE_FIELDS)
    if held is None:
        released = None  # it holds none
    else:
        released = release_gpu(case=case, held=None if held is _LOOK_UP else held)
    if released is not None:
        _hand_over(released, get_config())


def _event(
    case: Case, kind: str, message: str, *, run: WorkflowStep | None = None, actor: str = ""
) -> CaseEvent:
    event = CaseEvent(case=case, kind=kind, message=message, step_run=run, actor=actor)
    rows.insert(event)
    log.info("case %s: %s: %s", case.case_id, kind, message)
    if notifications.wants_notification(kind):
        send_on_commit(NOTIFIER, Command.NOTIFY, {"case_id": case.case_id, "event_id": event.pk})
    return event


def _hand_over(gpu: GPUResource | None, config: Config) -> None:
    """Give a GPU released in this transaction to the first waiting case, in this transaction.

    The next case's command then leaves with the commit that freed the GPU, instead of after
    another round of queries and a transaction of its own.  The waiting case is locked with
    SKIP LOCKED (never waited for, so no lock-order deadlock with the case already held);
    when none can be taken here, every waiting case is looked at after the commit.
    """
    if gpu is not None and gpu.status == GPUResource.Status.AVAILABLE:
        first = rows.fetch(
            Case,
            _case_sql(_FIRST_WAITING) + rows.for_update(skip_locked=True),
            [Case.Status.PENDING_RESOURCE, gpu.host],
        )
        if first is not None:
            _advance_locked(first, config)
            if first.status == Case.Status.PROCESSING:
                return
    transaction.on_commit(_advance_waiting_after_release)


def _advance_waiting_after_release() -> None:
    advance_waiting_cases()


def _wake_if_gpu_free() -> None:
    if free_gpu_exists():
        advance_waiting_cases()
