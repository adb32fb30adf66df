"""The conductor's transactional layer: load a case, let the machine decide, apply the plan.

Each public function runs in one ``transaction.atomic()``: it locks the case row first
(always the case before its step runs and GPUs, so transactions never wait on each other
in a cycle), builds the :class:`~conductor.machine.CaseState` the pure decisions need,
calls :func:`conductor.machine.decide`, writes what the plan says together with its
history rows, and sends the commands only after the commit (``send_on_commit``), so no
worker can see state that might still roll back.

Outcome messages carry the id of the step run they report on.  An outcome for a step run
that is no longer in flight (a duplicate, or one overtaken by a retry or a cancel) is
recorded as a ``CaseEvent`` and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from cases.identity import PlanIdentity
from cases.models import Case, CaseEvent, CaseRun, QAResult, ResultFile, WorkflowStep
from conductor import machine, notifications
from conductor.machine import Refused
from conductor.render import render_command
from gpus.models import GPUResource
from gpus.services import (
    free_gpu_exists,
    free_gpus,
    gpus_held,
    hand_over,
    host_is_up,
    host_mark_down,
    host_mark_up,
    hosts_down,
    release_gpus,
    reserve_gpu,
)
from mqi_site.config import Config, case_id_path_problem, get_config
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


class CaseStateError(Exception):
    """The requested change does not apply to the case in its current state."""


@dataclass(frozen=True)
class FolderFacts:
    """What checking a case folder found (``cases.folder.check_case_folder``)."""

    problems: Sequence[str] = ()
    plan: dict[str, Any] | None = None  # cases.identity.PlanIdentity.as_payload()
    log_check: str = ""
    manifest: Sequence[dict[str, Any]] = ()


# --- entry points for messages --------------------------------------------------------


def case_register(
    *,
    case_id: str,
    source_path: str,
    workflow_name: str | None = None,
    facts: FolderFacts = FolderFacts(),
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
                _note(
                    case,
                    machine.Note(
                        "duplicate_case_id",
                        f"another folder with the same case id was found at {source_path}; "
                        "it was not started (rename it to run it as its own case)",
                    ),
                )
            return None
        _note(case, machine.Note("created", f"found at {source_path}"))
        _record_folder(case, facts)
        problems = list(facts.problems)
        path_problem = case_id_path_problem(case_id)
        if path_problem:  # only a forged or garbled message carries such an id
            problems.append(path_problem)
        _decide_and_apply(case, machine.Found(tuple(problems)), config)
    return case


def step_run_succeeded(*, step_run_id: int, command: str, outcome: dict[str, Any]) -> bool:
    """Handle a success message for a step run; returns False when it was stale."""
    config = get_config()
    with transaction.atomic():
        locked = _lock_current_run(step_run_id, command)
        if locked is None:
            return False
        case, run = locked
        _record_outcome(run, outcome)
        _record_transfer(case, run, outcome)
        log.info("case %s: step done: %s", case.case_id, run)  # before the next one starts
        _record_verdict(case, run)
        _decide_and_apply(case, machine.Succeeded(_view(run)), config)
    return True


def step_run_failed(*, step_run_id: int, command: str, outcome: dict[str, Any]) -> bool:
    """Handle a failure message: retry a transient error within budget, else fail the case."""
    config = get_config()
    kind = outcome.get("error_kind") or ErrorKind.PERMANENT
    reason = storable(
        outcome.get("error_message") or "the worker reported a failure without a reason"
    )
    with transaction.atomic():
        locked = _lock_current_run(step_run_id, command)
        if locked is None:
            return False
        case, run = locked
        _record_outcome(run, outcome)
        if kind == ErrorKind.UNREACHABLE and host_mark_down(run.host, reason):
            transaction.on_commit(lambda host=run.host, why=reason: _host_went_down(host, why))
        _decide_and_apply(case, machine.Failed(_view(run), kind, reason), config)
    return True


def step_run_redrive(*, step_run_id: int, force: bool = False) -> str:
    """Re-send the command of a step run past its deadline (lost message, dead worker).

    Workers are idempotent for a given step run (the executor re-attaches to a command that
    is still running; transfers skip what is already verified), so re-sending is safe.
    Returns what was done: ``"redriven"``, ``"failed"`` or ``"skipped"``.
    """
    config = get_config()
    with transaction.atomic():
        case_pk = WorkflowStep.objects.filter(pk=step_run_id).values_list("case_id", flat=True)
        case = _lock_case(case_pk[0])
        run = WorkflowStep.objects.get(pk=step_run_id)
        now = timezone.now()
        overdue = force or run.deadline is None or run.deadline <= now
        if run.status not in WorkflowStep.IN_FLIGHT or case.is_terminal or not overdue:
            return "skipped"
        silent = now - (run.heartbeat_at or run.dispatched_at or run.created_at)
        redrives = CaseEvent.objects.filter(step_run=run, kind="redriven").count()
        event = machine.Silent(_view(run), redrives, int(silent.total_seconds()), force)
        plan = _decide_and_apply(case, event, config)
    return "redriven" if plan.redrive else "failed"


def advance_workflow(case_pk: int, *, skip_locked: bool = False) -> str | None:
    """Repair a case that is active but has no step run at all (the reconciler's pass).

    Returns the case's status afterwards, or None when ``skip_locked`` and another
    transaction holds the case.
    """
    config = get_config()
    with transaction.atomic():
        case = _lock_case(case_pk, skip_locked=skip_locked)
        if case is None:
            return None
        if case.is_terminal or case.steps.filter(status__in=WorkflowStep.ACTIVE).exists():
            return case.status
        _decide_and_apply(case, machine.Stalled(), config)
        return case.status


# The waiting line: step runs waiting for a GPU get one in this order (highest priority,
# then the oldest case).  The overview shows the queue in the same order.
WAITING_ORDER = ("-case__priority", "case__created_at", "case_id", "pk")


def waiting_step_runs():
    """The step runs waiting for a GPU, first in line first."""
    return WorkflowStep.objects.filter(status=WorkflowStep.Status.PENDING).order_by(*WAITING_ORDER)


def advance_waiting(*, limit: int = 200) -> int:
    """Give free GPUs to step runs waiting for one: highest priority, then oldest case first.

    Called after every release and by the reconciler (so a lost wake-up costs at most one
    reconcile interval).  Each step run is started in its own transaction; cases another
    transaction holds are skipped: that one looks again after its commit when the case
    still has a waiting step run (see ``_apply``).  Returns how many started.
    """
    started = 0
    waiting = waiting_step_runs().values_list("pk", "case_id", "case__host")[:limit]
    for run_pk, case_pk, host in list(waiting):
        if not free_gpu_exists():
            break
        if host and not free_gpu_exists(host):
            continue
        if _start_waiting(run_pk, case_pk):
            started += 1
    return started


def host_unreachable(*, host: str, error: str) -> None:
    """GPU discovery or the probe could not reach ``host``: no GPU of it is handed out, and
    the cases that have run nothing there yet start again on a server that is up."""
    with transaction.atomic():
        went_down = host_mark_down(host, error)
    if went_down:
        _host_went_down(host, error)


def host_reachable(*, host: str) -> None:
    """``host`` can be reached again: the step runs waiting for it go on, and its free GPUs
    go to the step runs waiting for one."""
    with transaction.atomic():
        host_mark_up(host)
    config = get_config()
    waiting = WorkflowStep.objects.filter(status=WorkflowStep.Status.WAITING_HOST, host=host)
    for case_pk in waiting.values_list("case_id", flat=True).distinct():
        with transaction.atomic():
            _decide_and_apply(_lock_case(case_pk), machine.HostBack(), config)
    advance_waiting()


def host_outages(*, now=None) -> list[str]:
    """Fail the cases that wait for a server down longer than its ``max_outage_sec``; and
    send on the step runs waiting for a server that is up again (a lost message).  Returns
    the case ids failed."""
    config = get_config()
    now = now or timezone.now()
    failed = []
    down = hosts_down()
    for host in down.values():
        spec = config.hosts.get(host.name)
        limit = spec.max_outage_sec if spec is not None else 0
        if now - host.down_since <= timedelta(seconds=limit):
            continue
        event = machine.HostGone(
            timezone.localtime(host.down_since).isoformat(timespec="seconds"),
            limit,
            host.last_error,
        )
        for case_pk in Case.objects.filter(status__in=Case.ACTIVE, host=host.name).values_list(
            "pk", flat=True
        ):
            with transaction.atomic():
                case = _lock_case(case_pk)
                _decide_and_apply(case, event, config)
                failed += [case.case_id] if case.status == Case.Status.FAILED else []
    stranded = WorkflowStep.objects.filter(status=WorkflowStep.Status.WAITING_HOST).exclude(
        host__in=list(down)
    )
    for case_pk in stranded.values_list("case_id", flat=True).distinct():
        with transaction.atomic():
            _decide_and_apply(_lock_case(case_pk), machine.HostBack(), config)
    return failed


def _host_went_down(host: str, reason: str) -> None:
    config = get_config()
    for case_pk in Case.objects.filter(status__in=Case.ACTIVE, host=host).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            case = _lock_case(case_pk)
            if case.host == host:
                _decide_and_apply(case, machine.HostDown(reason), config)


def gpu_repair_bookings() -> int:
    """Release GPUs booked by a step run that is not active (a booking nothing explains)."""
    repaired = 0
    stale = GPUResource.objects.filter(step_run__isnull=False).exclude(
        step_run__status__in=WorkflowStep.ACTIVE
    )
    for gpu_pk, case_pk, run_pk in stale.values_list("pk", "step_run__case_id", "step_run_id"):
        with transaction.atomic():
            case = _lock_case(case_pk)
            if not release_gpus(step_runs=[run_pk]):
                continue  # released since we looked
            gpu = GPUResource.objects.get(pk=gpu_pk)
            _note(
                case,
                machine.Note(
                    "gpu_repaired", f"GPU {gpu} was still booked by a step run that ended"
                ),
            )
            transaction.on_commit(_advance_waiting_after_release)
            repaired += 1
    return repaired


# --- operator actions (conductor.operations calls these) --------------------------------


def case_restart(
    *,
    case_pk: int,
    facts: FolderFacts,
    changed: str = "",
    from_start: bool = False,
    actor: str = "",
) -> tuple[Case, str]:
    """Run a failed or cancelled case again, its folder just checked again (``facts``).

    ``changed``: how the folder differs from what the case's current run uploaded.
    Returns the case and what was done, in words.
    """
    config = get_config()
    with transaction.atomic():
        case = _lock_case(case_pk)
        _record_folder(case, facts)
        event = machine.Restart(from_start, tuple(facts.problems), changed, actor)
        plan = _decide_and_apply(case, event, config)
    return case, plan.said


def case_cancel(*, case_pk: int, actor: str = "") -> Case:
    """Cancel a case: stop its remote process groups, release its GPUs, mark CANCELLED."""
    with transaction.atomic():
        case = _lock_case(case_pk)
        _decide_and_apply(case, machine.Cancel(actor), get_config())
    return case


def case_cancel_plan(*, case_pk: int) -> machine.Plan:
    """What :func:`case_cancel` would do now: the same decision, nothing applied (for a
    confirmation page or a dry run).  Raises :class:`CaseStateError` as the cancel would."""
    return _decide(Case.objects.get(pk=case_pk), machine.Cancel(), get_config())


def lock_case(case_pk: int) -> Case:
    """The case row, locked for the rest of the caller's transaction."""
    return _lock_case(case_pk)


# --- loading ------------------------------------------------------------------------------


def _lock_case(case_pk: int, *, skip_locked: bool = False) -> Case | None:
    cases = Case.objects.select_for_update(skip_locked=skip_locked, of=("self",))
    case = cases.filter(pk=case_pk).first()
    if case is None and not skip_locked:
        raise Case.DoesNotExist(f"no case with pk {case_pk}")
    return case


def _lock_current_run(step_run_id: int, command: str) -> tuple[Case, WorkflowStep] | None:
    """Lock the case of a step run and return both, if the run is in flight; record and
    drop the outcome if not."""
    case_pk = WorkflowStep.objects.filter(pk=step_run_id).values_list("case_id", flat=True).first()
    if case_pk is None:
        log.warning("outcome %s for unknown step run %s ignored", command, step_run_id)
        return None
    case = _lock_case(case_pk)
    run = WorkflowStep.objects.get(pk=step_run_id)
    route = STEP_ROUTES.get(run.type)
    expected = route is not None and command in (route.success, route.failure)
    if run.status not in WorkflowStep.IN_FLIGHT or case.is_terminal or not expected:
        why = "of the wrong kind" if not expected else f"for a step run that is {run.status}"
        _note(case, machine.Note("ignored_outcome", f"{command} {why}; nothing changed", run.pk))
        log.info("case %s: stale %s for %s ignored", case.case_id, command, run)
        return None
    return case, run


def _state(case: Case, config: Config) -> machine.CaseState:
    steps = config.workflows.get(case.workflow)
    active = list(case.steps.filter(status__in=WorkflowStep.ACTIVE).order_by("pk"))
    held = gpus_held(run.pk for run in active)
    counts = case.steps.values("name", "beam_number").annotate(
        last=Max("attempt"), tries=Count("pk")
    )
    tries = {}
    for row in counts.filter(run_id=case.current_run_id) if case.current_run_id else []:
        tries[(row["name"], row["beam_number"])] = row["tries"]
    attempts = {(row["name"], row["beam_number"]): row["last"] for row in counts}
    down = hosts_down()
    executed = (
        bool(case.current_run_id)
        and case.steps.filter(
            run_id=case.current_run_id, type="execute", dispatched_at__isnull=False
        ).exists()
    )
    return machine.CaseState(
        status=case.status,
        step=case.workflow_step,
        steps=tuple(steps) if steps is not None else None,
        workflow=case.workflow,
        policy=config.conductor.gpu_policy,
        active=tuple(_view(run, held.get(run.pk)) for run in active),
        tries=tries,
        attempts=attempts,
        beams=tuple(machine.Beam(b["number"], b.get("name", "")) for b in case.beams),
        error_kind=case.error_kind,
        run_number=case.current_run.number if case.current_run_id else 0,
        host=case.host,
        host_up=case.host not in down,
        elsewhere=any(name not in down for name in config.hosts if name != case.host),
        executed=executed,
        backoff_base_sec=config.retries.backoff_base_sec,
        backoff_max_sec=config.retries.backoff_max_sec,
    )


def _view(run: WorkflowStep, gpu: int | None = None) -> machine.StepRun:
    if gpu is None and run.status in WorkflowStep.ACTIVE:
        gpu = gpus_held([run.pk]).get(run.pk)
    return machine.StepRun(
        id=run.pk,
        name=run.name,
        type=run.type,
        attempt=run.attempt,
        beam=run.beam_number,
        status=run.status,
        gpu=gpu,
    )


# --- applying a plan ----------------------------------------------------------------------


def _decide(case: Case, event: machine.Event, config: Config) -> machine.Plan:
    try:
        return machine.decide(_state(case, config), event)
    except Refused as exc:
        raise CaseStateError(f"case {case.case_id} {exc}") from None


def _decide_and_apply(case: Case, event: machine.Event, config: Config) -> machine.Plan:
    plan = _decide(case, event, config)
    _apply(case, plan, config)
    return plan


def _apply(case: Case, plan: machine.Plan, config: Config) -> None:
    now = timezone.now()
    for finish in plan.finish:
        WorkflowStep.objects.filter(pk=finish.run, status__in=WorkflowStep.ACTIVE).update(
            status=finish.status,
            finished_at=now,
            error_kind=finish.error_kind,
            error_message=finish.error_message,
        )
    if plan.new_run:
        _new_run(case, plan.new_run)
    kept = {start.inherit for start in plan.start if start.inherit is not None}
    released = release_gpus(step_runs=[run for run in plan.release if run not in kept])
    started = [_start(case, start, config, now) for start in plan.start]
    for run in started:
        if run.status == WorkflowStep.Status.PENDING:
            plan.notes.append(
                machine.Note("waiting_for_gpu", f"{run} waits for a free GPU", run.pk)
            )
    for run_pk in plan.redrive:
        _redrive(case, run_pk, config, now)
    for run_pk in plan.wait_host:
        WorkflowStep.objects.filter(pk=run_pk, status__in=WorkflowStep.IN_FLIGHT).update(
            status=WorkflowStep.Status.WAITING_HOST, deadline=None
        )
    for run_pk in plan.kill:
        send_on_commit(
            REMOTE_EXECUTOR,
            Command.CANCEL_COMMAND,
            {"case_id": case.case_id, "step_run_id": run_pk},
        )
    _move_case(case, plan, now)
    for note in plan.notes:
        _note(case, note)
    if any(gpu.status == GPUResource.Status.AVAILABLE for gpu in released):
        transaction.on_commit(_advance_waiting_after_release)
    if case.steps.filter(status=WorkflowStep.Status.PENDING).exists():
        # Lost wake-up guards: a GPU released after our look but before our commit would
        # find no waiting step run; and advance_waiting skips a case this transaction
        # holds, though the step runs it skipped may be other beams than the one this
        # transaction is about.  Either way: look once more after the commit.
        transaction.on_commit(_advance_waiting_if_gpu_free)


def _move_case(case: Case, plan: machine.Plan, now) -> None:
    if plan.step is not None:
        case.workflow_step = plan.step
    if plan.progress is not None:
        case.progress = plan.progress
    if plan.error is not None:
        case.error_kind, case.error_message = plan.error
    if plan.status is not None:
        case.status = plan.status
    elif not case.is_terminal or plan.start:
        statuses = case.steps.filter(status__in=WorkflowStep.ACTIVE).values_list(
            "status", flat=True
        )
        case.status = machine.status_of(list(statuses))
    if case.is_terminal:
        case.finished_at = case.finished_at or now
        if case.status == Case.Status.COMPLETED:
            case.progress = 100
        if case.current_run_id is not None:
            CaseRun.objects.filter(pk=case.current_run_id).update(finished_at=now)
    elif plan.start:
        case.finished_at = None
    case.save()


def _start(case: Case, start: machine.Start, config: Config, now) -> WorkflowStep:
    """Create a step run; it is sent now unless it needs a GPU and none is free."""
    run = WorkflowStep.objects.create(
        case=case,
        run=case.current_run,
        name=start.step.name,
        type=start.step.type,
        beam_number=start.beam.number if start.beam else 0,
        beam_name=start.beam.name if start.beam else "",
        attempt=start.attempt,
        status=WorkflowStep.Status.PENDING,
        host=case.host,
    )
    gpu = None
    if start.inherit is not None:
        gpu = hand_over(from_run=start.inherit, to_run=run)
    if gpu is None and start.gpu:
        gpu = reserve_gpu(step_run=run, host=case.host or None)
        if gpu is None:
            return run  # waits as PENDING; advance_waiting starts it
    _dispatch(case, run, gpu, config, now, delay_ms=start.delay_ms)
    return run


def _start_waiting(run_pk: int, case_pk: int) -> bool:
    config = get_config()
    with transaction.atomic():
        case = _lock_case(case_pk, skip_locked=True)
        if case is None or case.is_terminal:
            return False
        run = WorkflowStep.objects.filter(pk=run_pk, status=WorkflowStep.Status.PENDING).first()
        if run is None:
            return False
        gpu = reserve_gpu(step_run=run, host=case.host or None)
        if gpu is None:
            return False
        _dispatch(case, run, gpu, config, timezone.now())
        if case.status != Case.Status.PROCESSING:
            case.status = Case.Status.PROCESSING
            case.save(update_fields=["status", "updated_at"])
    return True


def _dispatch(
    case: Case, run: WorkflowStep, gpu: GPUResource | None, config: Config, now, delay_ms: int = 0
) -> None:
    if not case.host:
        case.host = gpu.host if gpu is not None else _pick_host(config)
        case.save(update_fields=["host", "updated_at"])
        CaseRun.objects.filter(pk=case.current_run_id).update(host=case.host)
    if case.first_dispatched_at is None:
        # the case's duration counts from here; before it, it waited (for a GPU, a server)
        case.first_dispatched_at = now
        case.save(update_fields=["first_dispatched_at", "updated_at"])
    run.host = case.host
    run.gpu = gpu
    if gpu is None and run.type not in machine.LOCAL_STEP_TYPES and not host_is_up(case.host):
        # bound to a server that is down: it waits, and goes on when the server is back
        run.status = WorkflowStep.Status.WAITING_HOST
        run.save(update_fields=["host", "gpu", "status"])
        return
    run.status = WorkflowStep.Status.DISPATCHED
    run.command = render_command(case, run, gpu, config)
    run.dispatched_at = now
    run.deadline = now + timedelta(
        seconds=config.conductor.dispatch_grace_sec, milliseconds=delay_ms
    )
    run.save(update_fields=["host", "gpu", "status", "command", "dispatched_at", "deadline"])
    route = STEP_ROUTES[run.type]
    payload = {"case_id": case.case_id, "step_run_id": run.pk}
    send_on_commit(route.actor, route.command, payload, delay_ms=delay_ms or None)
    log.info("case %s: step started: %s on %s", case.case_id, run, gpu or case.host)


def _pick_host(config: Config) -> str:
    """For a run that starts without a GPU: the server that is up with the most free GPUs."""
    down = hosts_down()
    up = [name for name in config.hosts if name not in down]
    if not up:
        return config.default_host
    return max(up, key=lambda name: free_gpus(name).count())


def _redrive(case: Case, run_pk: int, config: Config, now) -> None:
    # Dispatched again: the next worker to get the command may claim it (a transfer
    # refuses a run another live worker holds; this one's worker went silent).
    run = WorkflowStep.objects.get(pk=run_pk)
    resend = (*WorkflowStep.IN_FLIGHT, WorkflowStep.Status.WAITING_HOST)
    WorkflowStep.objects.filter(pk=run_pk, status__in=resend).update(
        status=WorkflowStep.Status.DISPATCHED,
        deadline=now + timedelta(seconds=config.conductor.dispatch_grace_sec),
    )
    route = STEP_ROUTES[run.type]
    send_on_commit(route.actor, route.command, {"case_id": case.case_id, "step_run_id": run_pk})


def _new_run(case: Case, reason: str) -> CaseRun:
    """A fresh run: new remote and local folders; its first step picks its host again."""
    last = case.runs.order_by("-number").values_list("number", flat=True).first() or 0
    run = CaseRun.objects.create(case=case, number=last + 1, reason=reason[:255])
    case.current_run = run
    case.host = ""
    case.qa_verdict = Case.QAVerdict.NONE  # the new run's results are not evaluated yet
    return run


def _record_outcome(run: WorkflowStep, outcome: dict[str, Any]) -> None:
    """What the worker reported about the run (its end is the plan's).  What a command
    printed may hold NUL bytes, which PostgreSQL's text type refuses."""
    fields: dict[str, Any] = {}
    if "exit_code" in outcome:
        fields["exit_code"] = outcome["exit_code"]
    for key in ("stdout_tail", "stderr_tail"):
        if key in outcome:
            fields[key] = storable(outcome[key] or "")
    if fields:
        WorkflowStep.objects.filter(pk=run.pk).update(**fields)


def _record_transfer(case: Case, step_run: WorkflowStep, outcome: dict[str, Any]) -> None:
    """An upload fixes the run's manifest; a download lists the run's result files."""
    run = case.current_run
    if run is None or step_run.run_id != run.pk:
        return
    if step_run.type == "upload":
        run.manifest = case.manifest
        run.uploaded_at = timezone.now()
        run.host = step_run.host
        run.save(update_fields=["manifest", "uploaded_at", "host"])
    elif step_run.type == "download":
        files = outcome.get("files") or []
        ResultFile.objects.filter(run=run).delete()
        ResultFile.objects.bulk_create(
            ResultFile(run=run, path=f["path"], size=f["size"], sha256=f["sha256"]) for f in files
        )


def _record_verdict(case: Case, step_run: WorkflowStep) -> None:
    """An evaluate step run's QA verdict (its worker stored the QAResult) becomes the
    case's, when it is about the case's current run; a failed QA is mailed."""
    result = QAResult.objects.filter(step_run=step_run).first()
    if result is None or step_run.run_id != case.current_run_id:
        return
    case.qa_verdict = result.verdict
    kind = {
        QAResult.Verdict.PASSED: "qa_passed",
        QAResult.Verdict.FAILED: "qa_failed",
    }.get(result.verdict, "qa_not_evaluated")
    _note(case, machine.Note(kind, result.describe(), step_run.pk))


def _record_folder(case: Case, facts: FolderFacts) -> None:
    """What the latest check of the folder found: identity, log check, manifest."""
    identity = PlanIdentity.from_payload(facts.plan)
    case.patient_id = identity.patient_id[:64]
    case.patient_name = identity.patient_name[:255]
    case.plan_label = identity.plan_label[:64]
    case.plan_date = identity.plan_date
    case.treatment_machine = identity.treatment_machine[:128]
    case.beams = [{"number": beam.number, "name": beam.name} for beam in identity.beams]
    case.beam_count = len(identity.beams)
    case.log_check = facts.log_check
    case.manifest = list(facts.manifest)
    case.manifest_checked_at = timezone.now()
    case.save()


def _note(case: Case, note: machine.Note) -> CaseEvent:
    event = CaseEvent.objects.create(
        case=case, kind=note.kind, message=note.message, step_run_id=note.run, actor=note.actor
    )
    log.info("case %s: %s: %s", case.case_id, note.kind, note.message)
    if notifications.wants_notification(note.kind):
        send_on_commit(NOTIFIER, Command.NOTIFY, {"case_id": case.case_id, "event_id": event.pk})
    return event


def _advance_waiting_after_release() -> None:
    advance_waiting()


def _advance_waiting_if_gpu_free() -> None:
    if free_gpu_exists():
        advance_waiting()
