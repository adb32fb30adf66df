"""The conductor's decisions: one pure function, ``decide(state, event) -> Plan``.

Everything the conductor decides is here, in one place to read: which step comes next,
whether a failure is retried, when a case completes, fails or is cancelled, which step
runs hold a GPU, and what the case's history says about it.  Nothing here touches the
database, the broker or the clock; :mod:`conductor.transitions` loads a case's state,
calls :func:`decide`, and applies the plan in one transaction (sending messages only
after it commits).

A case moves through the steps of its workflow.  Each step is one *step run* (or one per
treatment beam for a step that fans out); a step run that needs a GPU and gets none waits
as PENDING, and a case whose active runs all wait is "waiting for a GPU".  Under the
``every_step`` policy a case keeps its GPU from its first step to its last (each step run
hands it to the next); under ``execute_steps`` only execute steps hold one.

A step that fans out (``fan_out: beams``) starts one step run per treatment beam, each on
a GPU of its own: the first takes over the GPU the case held (if it held one), the others
take free GPUs or wait in line, so a case never holds more GPUs than it has beams left
to run.  Each beam is retried on its own; the step is done when its last beam is, and
a beam that fails for good fails the case, cancelling the other beams.

A GPU server that cannot be reached is an outage, not a failure of the case: no attempt is
spent on it.  A case that has not run anything on that server yet starts again on another
one that is up; any other waits (WAITING_HOST, keeping its GPU) and goes on when the server
is back, unless the outage lasts longer than the server's ``max_outage_sec``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cases.statuses import CaseStatus, StepStatus
from mqi_site.config import StepSpec
from mqi_site.messaging import ErrorKind
from mqi_site.untrusted_text import has_unprintable, printable

# Re-sends of a silent step run before it counts as a (transient) failure.
MAX_REDRIVES = 5


class Refused(Exception):
    """The requested change does not apply to the case in its current state."""


# --- what the machine sees --------------------------------------------------------------


@dataclass(frozen=True)
class Beam:
    number: int
    name: str = ""


@dataclass(frozen=True)
class StepRun:
    """A step run of the case: the one an event is about, or one still active."""

    id: int
    name: str
    type: str
    attempt: int = 1
    beam: int = 0
    status: str = StepStatus.DISPATCHED
    gpu: int | None = None  # the GPU it holds now

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.beam)


@dataclass(frozen=True)
class CaseState:
    status: str
    step: str  # the case's current step (being run, waited for, failed, or last done)
    steps: tuple[StepSpec, ...] | None  # its workflow; None when no longer configured
    workflow: str = ""
    policy: str = "every_step"
    active: tuple[StepRun, ...] = ()  # step runs in flight or waiting for a GPU
    # step runs so far, by (step, beam): in the case's current run (the retry budget)
    # and in all its runs (attempt numbers)
    tries: Mapping[tuple[str, int], int] = field(default_factory=dict)
    attempts: Mapping[tuple[str, int], int] = field(default_factory=dict)
    beams: tuple[Beam, ...] = ()
    error_kind: str = ""
    run_number: int = 0  # the case's current run; 0 before its first
    host: str = ""  # the GPU server the current run is on ("" before its first step)
    host_up: bool = True
    elsewhere: bool = False  # another GPU server is up
    executed: bool = False  # an execute step of the current run was sent to its server
    backoff_base_sec: float = 2.0
    backoff_max_sec: float = 300.0

    @property
    def terminal(self) -> bool:
        return self.status in (CaseStatus.COMPLETED, CaseStatus.FAILED, CaseStatus.CANCELLED)

    def spec(self, name: str) -> StepSpec | None:
        return next((spec for spec in self.steps or () if spec.name == name), None)


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """The scanner found the case's folder; ``problems`` when it is invalid."""

    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Succeeded:
    run: StepRun


@dataclass(frozen=True)
class Failed:
    run: StepRun
    kind: str
    reason: str


@dataclass(frozen=True)
class Silent:
    """The reconciler: ``run`` is past its deadline without word from its worker."""

    run: StepRun
    redrives: int
    silent_sec: int
    force: bool = False  # at start-up every message is gone: send again, whatever the count


@dataclass(frozen=True)
class Restart:
    """An operator's retry (or re-run, ``from_start``), the folder just checked again.

    ``changed``: how the folder differs from what the case's current run uploaded ("" when
    it does not, or nothing was uploaded yet).
    """

    from_start: bool = False
    problems: tuple[str, ...] = ()
    changed: str = ""
    actor: str = ""


@dataclass(frozen=True)
class Cancel:
    actor: str = ""


@dataclass(frozen=True)
class Stalled:
    """The reconciler: the case is active but has no step run at all (a repair)."""


@dataclass(frozen=True)
class HostDown:
    """The case's GPU server was found unreachable (by a worker, discovery or the probe)."""

    reason: str


@dataclass(frozen=True)
class HostBack:
    """The case's GPU server can be reached again."""


@dataclass(frozen=True)
class HostGone:
    """The case's GPU server has been down longer than its ``max_outage_sec``."""

    since: str
    limit_sec: float
    reason: str


Event = (
    Found
    | Succeeded
    | Failed
    | Silent
    | Restart
    | Cancel
    | Stalled
    | HostDown
    | HostBack
    | HostGone
)


# --- what the machine decides ------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """A new step run.  ``gpu``: it needs one; ``inherit``: the run whose GPU it takes."""

    step: StepSpec
    attempt: int
    beam: Beam | None = None
    gpu: bool = False
    inherit: int | None = None
    delay_ms: int = 0


@dataclass(frozen=True)
class Finish:
    run: int
    status: str
    error_kind: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class Note:
    """A line of the case's history."""

    kind: str
    message: str
    run: int | None = None
    actor: str = ""


@dataclass
class Plan:
    """What to change.  ``status`` None: PROCESSING, or PENDING_RESOURCE while every active
    step run waits for a GPU (see :func:`status_of`)."""

    status: str | None = None
    step: str | None = None
    progress: int | None = None
    error: tuple[str, str] | None = None  # (kind, message); ("", "") clears it
    new_run: str = ""  # start a new run of the case, for this reason
    finish: list[Finish] = field(default_factory=list)
    start: list[Start] = field(default_factory=list)
    release: list[int] = field(default_factory=list)  # step runs whose GPUs go free
    kill: list[int] = field(default_factory=list)  # execute runs whose processes must die
    redrive: list[int] = field(default_factory=list)  # step runs whose command is re-sent
    wait_host: list[int] = field(default_factory=list)  # step runs that wait for their server
    notes: list[Note] = field(default_factory=list)

    @property
    def said(self) -> str:
        return self.notes[-1].message if self.notes else ""


def decide(state: CaseState, event: Event) -> Plan:
    """The plan for ``event`` on a case in ``state``; raises :class:`Refused` for an
    operator's request that does not apply."""
    match event:
        case Found():
            return _found(state, event)
        case Succeeded():
            return _succeeded(state, event)
        case Failed():
            return _failed(state, event)
        case Silent():
            return _silent(state, event)
        case Restart():
            return _restart(state, event)
        case Cancel():
            return _cancel(state, event)
        case Stalled():
            return _stalled(state)
        case HostDown():
            return _host_down(state, event)
        case HostBack():
            return _host_back(state)
        case HostGone():
            return _host_gone(state, event)
    raise TypeError(f"unknown event {event!r}")


def status_of(active: Sequence[str]) -> str:
    """The status of a running case from its active step runs' statuses."""
    if active and all(status == StepStatus.PENDING for status in active):
        return CaseStatus.PENDING_RESOURCE
    return CaseStatus.PROCESSING


# Step types that run on this side, on the downloaded results: they need no GPU (under
# either policy) and no GPU server.
LOCAL_STEP_TYPES = frozenset({"evaluate"})


def needs_gpu(spec: StepSpec, policy: str) -> bool:
    if spec.type in LOCAL_STEP_TYPES:
        return False
    return policy == "every_step" or spec.type == "execute"


def should_retry(*, error_kind: str, tries: int, max_attempts: int) -> bool:
    """Only transient errors are retried, and only while the step's budget lasts."""
    return error_kind == ErrorKind.TRANSIENT and tries < max_attempts


def backoff_ms(tries: int, *, base_sec: float, max_sec: float) -> int:
    """Delay before the next attempt: base * 2^(tries-1), capped at max."""
    return int(min(max_sec, base_sec * 2 ** max(0, tries - 1)) * 1000)


def invalid_folder_message(problems: Sequence[str]) -> str:
    return "invalid case folder: " + "; ".join(problems)


# --- the decisions -----------------------------------------------------------------------


def _found(state: CaseState, event: Found) -> Plan:
    if event.problems:
        message = invalid_folder_message(event.problems)
        return _end(
            state, CaseStatus.FAILED, ErrorKind.INVALID_INPUT, message, Note("failed", message)
        )
    if state.steps is None:
        return _unconfigured(state)
    fans_out = any(spec.fan_out for spec in state.steps)
    if fans_out and (problem := fan_out_problem(state.beams)):
        # refused before anything runs, rather than when the case reaches that step
        message = invalid_folder_message([problem])
        return _end(
            state, CaseStatus.FAILED, ErrorKind.INVALID_INPUT, message, Note("failed", message)
        )
    plan = _begin(state, state.steps[0])
    plan.new_run = "found in the watch directory"
    return plan


def _succeeded(state: CaseState, event: Succeeded) -> Plan:
    run = event.run
    finish = Finish(run.id, StepStatus.SUCCEEDED)
    if any(other.name == run.name and other.id != run.id for other in state.active):
        # a beam of a step that fans out: the step is done when its last beam is
        return Plan(finish=[finish], release=_held([run]))
    if state.steps is None:
        return _unconfigured(state, finish=[finish])
    names = [spec.name for spec in state.steps]
    if run.name not in names:
        return _gone(state, run.name, finish=[finish])
    position = names.index(run.name)
    if position + 1 == len(state.steps):
        note = Note("completed", "all steps succeeded")
        return _end(state, CaseStatus.COMPLETED, note=note, ended=finish)
    following = state.steps[position + 1]
    keep = run.gpu is not None and needs_gpu(following, state.policy)
    plan = _begin(state, following, inherit=run.id if keep else None)
    if plan.status is not None:  # the next step cannot start (see _begin)
        kind, message = plan.error or ("", "")
        return _end(state, plan.status, kind, message, plan.notes[0], ended=finish)
    plan.finish.append(finish)
    plan.release += [] if keep else _held([run])
    return plan


def _failed(state: CaseState, event: Failed) -> Plan:
    run = event.run
    if event.kind == ErrorKind.UNREACHABLE:
        return _unreachable(state, run, event.reason)
    spec = state.spec(run.name)
    tries = state.tries.get(run.key, run.attempt)
    finish = Finish(run.id, StepStatus.FAILED, event.kind, event.reason)
    if spec is not None and should_retry(
        error_kind=event.kind, tries=tries, max_attempts=spec.max_attempts
    ):
        delay = backoff_ms(tries, base_sec=state.backoff_base_sec, max_sec=state.backoff_max_sec)
        beam = next((b for b in state.beams if b.number == run.beam), None) if run.beam else None
        start = Start(
            spec,
            attempt=state.attempts.get(run.key, run.attempt) + 1,
            beam=beam,
            gpu=run.gpu is not None or needs_gpu(spec, state.policy),
            inherit=run.id if run.gpu is not None else None,
            delay_ms=delay,
        )
        said = (
            f"{_named(run)} attempt {tries} failed ({event.reason}); "
            f"attempt {tries + 1} of {spec.max_attempts} in {delay / 1000:g} s"
        )
        return Plan(finish=[finish], start=[start], notes=[Note("retry_scheduled", said, run.id)])
    reason = event.reason
    if event.kind == ErrorKind.TRANSIENT:
        reason = f"gave up after {tries} attempts: {reason}"
    message = f"{_named(run)} failed: {reason}"
    note = Note("failed", message, run.id)
    plan = _end(state, CaseStatus.FAILED, event.kind, message, note, ended=finish)
    plan.finish[1:] = [_sibling_cancelled(other, run) for other in plan.finish[1:]]
    return plan


def _silent(state: CaseState, event: Silent) -> Plan:
    run = event.run
    if event.redrives >= MAX_REDRIVES and not event.force:
        reason = f"no word from the worker for {event.silent_sec} s after {event.redrives} re-sends"
        return _failed(state, Failed(run, ErrorKind.TRANSIENT, reason))
    said = (
        f"{run.name} attempt {run.attempt}: no word for {event.silent_sec} s, "
        f"command sent again ({event.redrives + 1}/{MAX_REDRIVES})"
    )
    return Plan(redrive=[run.id], notes=[Note("redriven", said, run.id)])


def _restart(state: CaseState, event: Restart) -> Plan:
    if state.status not in (CaseStatus.FAILED, CaseStatus.CANCELLED):
        raise Refused(f"is {state.status}; only FAILED or CANCELLED cases can be retried")
    if state.steps is None:
        raise Refused(f"cannot run again: workflow {state.workflow!r} is not configured any more")
    if event.problems:
        message = invalid_folder_message(event.problems)
        note = Note("recheck_failed", f"the folder was checked again: {message}", actor=event.actor)
        return Plan(error=(ErrorKind.INVALID_INPUT, message), notes=[note])
    again = state.run_number and state.step and not event.from_start and not event.changed
    if again and state.error_kind != ErrorKind.INVALID_INPUT:
        spec = state.spec(state.step)
        if spec is None:
            raise Refused(
                f"cannot be retried: step {state.step!r} is not in workflow {state.workflow!r} "
                "any more; re-run from the start"
            )
        plan = _begin(state, spec)
        plan.notes.insert(0, Note("retried", f"retrying from {spec.name}", actor=event.actor))
    elif again:  # its upload met a folder changed after its check: that is where it failed
        plan = _begin(state, state.steps[0])
        plan.notes.insert(
            0, Note("retried", f"retrying from {state.steps[0].name}", actor=event.actor)
        )
    else:
        why = (
            f"the folder changed since run {state.run_number} was uploaded ({event.changed}); "
            "starting again from the upload"
            if event.changed
            else f"re-run from the start by {event.actor or 'an operator'}"
        )
        plan = _begin(state, state.steps[0])
        plan.new_run = why
        said = f"re-running from the start as run {state.run_number + 1} ({why})"
        plan.notes.insert(0, Note("replayed", said, actor=event.actor))
    if plan.status is None:  # else it could not start (see _begin)
        plan.error = ("", "")
    return plan


def _cancel(state: CaseState, event: Cancel) -> Plan:
    if state.terminal:
        raise Refused(f"is already {state.status}; nothing to cancel")
    message = f"cancelled by {event.actor or 'an operator'}"
    note = Note("cancelled", message, state.active[0].id if state.active else None, event.actor)
    plan = _end(state, CaseStatus.CANCELLED, ErrorKind.CANCELLED, message, note)
    plan.finish = [Finish(f.run, f.status, ErrorKind.CANCELLED, message) for f in plan.finish]
    return plan


def _stalled(state: CaseState) -> Plan:
    if state.steps is None:
        return _unconfigured(state)
    spec = state.spec(state.step) if state.step else state.steps[0]
    if spec is None:
        return _gone(state, state.step)
    plan = _begin(state, spec)
    if state.status == CaseStatus.NEW:
        plan.new_run = "found in the watch directory"
    plan.notes.insert(0, Note("stalled", f"nothing was running for {spec.name}; started it again"))
    return plan


def _unreachable(state: CaseState, run: StepRun, reason: str) -> Plan:
    if _movable(state):
        return _move(
            state, reason, ended=Finish(run.id, StepStatus.FAILED, ErrorKind.UNREACHABLE, reason)
        )
    said = (
        f"{_named(run)}: {state.host or 'its GPU server'} cannot be reached ({reason}); "
        "it waits for the server and goes on when it is back (no attempt spent)"
    )
    return Plan(wait_host=[run.id], notes=[Note("waiting_for_host", said, run.id)])


def _host_down(state: CaseState, event: HostDown) -> Plan:
    if state.terminal or not _movable(state):
        return Plan()  # its step runs find out for themselves, and wait
    return _move(state, event.reason)


def _host_back(state: CaseState) -> Plan:
    waiting = [run for run in state.active if run.status == StepStatus.WAITING_HOST]
    if not waiting:
        return Plan()
    said = f"{state.host} can be reached again: " + ", ".join(
        f"{_named(run)} goes on" for run in waiting
    )
    return Plan(redrive=[run.id for run in waiting], notes=[Note("host_back", said)])


def _host_gone(state: CaseState, event: HostGone) -> Plan:
    if state.terminal or _only_here(state):
        return Plan()
    message = (
        f"GPU server {state.host} has been unreachable since {event.since}, longer than its "
        f"hosts.{state.host}.max_outage_sec ({event.limit_sec:g} s); last error: {event.reason}"
    )
    return _end(state, CaseStatus.FAILED, ErrorKind.UNREACHABLE, message, Note("failed", message))


def _only_here(state: CaseState) -> bool:
    """Every active step run runs on this side (an evaluation): no outage can hold it up."""
    return bool(state.active) and all(run.type in LOCAL_STEP_TYPES for run in state.active)


def _movable(state: CaseState) -> bool:
    """Nothing of the current run has run on its server (an upload can always be done
    again elsewhere), and another server is up to take it."""
    return state.elsewhere and not state.executed and state.steps is not None


def _move(state: CaseState, reason: str, *, ended: Finish | None = None) -> Plan:
    """Start again, in a new run, on a server that is up."""
    why = (
        f"{state.host or 'its GPU server'} cannot be reached ({reason}); starting again on "
        "another GPU server"
    )
    assert state.steps is not None
    plan = _begin(state, state.steps[0])
    others = [run for run in state.active if ended is None or run.id != ended.run]
    plan.finish = [*([ended] if ended else [])] + [
        Finish(run.id, StepStatus.CANCELLED, ErrorKind.UNREACHABLE, why) for run in others
    ]
    plan.release = _held(state.active)
    plan.new_run = why
    plan.notes.append(Note("moved", f"run {state.run_number + 1}: {why}"))
    return plan


# --- building blocks ---------------------------------------------------------------------


def _begin(state: CaseState, spec: StepSpec, *, inherit: int | None = None) -> Plan:
    """Start ``spec``: its step run, or one per treatment beam for a step that fans out,
    each holding a GPU if it needs one.  ``inherit``: the step run whose GPU the (first)
    run takes over; the other beams take free GPUs, or wait in line for one."""
    beams: tuple[Beam | None, ...] = (None,)
    if spec.fan_out == "beams":
        problem = fan_out_problem(state.beams)
        if problem:
            message = f"{spec.name} cannot fan out over the plan's beams: {problem}"
            return _end(
                state, CaseStatus.FAILED, ErrorKind.PERMANENT, message, Note("failed", message)
            )
        beams = state.beams
    starts = [
        Start(
            spec,
            attempt=state.attempts.get((spec.name, beam.number if beam else 0), 0) + 1,
            beam=beam,
            gpu=needs_gpu(spec, state.policy),
            inherit=inherit if position == 0 else None,
        )
        for position, beam in enumerate(beams)
    ]
    return Plan(step=spec.name, progress=spec.progress, start=starts)


def fan_out_problem(beams: Sequence[Beam]) -> str:
    """Why a step cannot fan out over ``beams`` ("" when it can).  A beam's name is free
    text from the plan; it reaches a command line (quoted), where a control character
    could still forge what an operator reads in the timeline and the logs."""
    if not beams:
        return "the plan has no treatment beams"
    for beam in beams:
        if has_unprintable(beam.name):
            return f"the name of beam {beam.number} ({printable(beam.name)}) has control characters"
    return ""


def _end(
    state: CaseState,
    status: str,
    error_kind: str = "",
    message: str = "",
    note: Note | None = None,
    *,
    ended: Finish | None = None,
) -> Plan:
    """A terminal status: every GPU goes free, and every active step run ends: ``ended``
    (the run the event was about) as it says, the others cancelled (their processes
    killed)."""
    others = [run for run in state.active if ended is None or run.id != ended.run]
    return Plan(
        status=status,
        error=(error_kind, message),
        finish=[*([ended] if ended else [])]
        + [Finish(run.id, StepStatus.CANCELLED, ErrorKind.CANCELLED, message) for run in others],
        release=_held(state.active),
        kill=[
            run.id for run in others if run.type == "execute" and run.status != StepStatus.PENDING
        ],
        notes=[note] if note else [],
    )


def _sibling_cancelled(finish: Finish, failed: StepRun) -> Finish:
    return Finish(
        finish.run,
        StepStatus.CANCELLED,
        ErrorKind.CANCELLED,
        f"cancelled: {_named(failed)} failed",
    )


def _unconfigured(state: CaseState, finish: list[Finish] | None = None) -> Plan:
    message = f"workflow {state.workflow!r} is not configured (not in config.yaml)"
    plan = _end(state, CaseStatus.FAILED, ErrorKind.PERMANENT, message, Note("failed", message))
    plan.finish = [*(finish or []), *plan.finish]
    return plan


def _gone(state: CaseState, step: str, finish: list[Finish] | None = None) -> Plan:
    message = f"step {step!r} is not in workflow {state.workflow!r} any more"
    plan = _end(state, CaseStatus.FAILED, ErrorKind.PERMANENT, message, Note("failed", message))
    plan.finish = [*(finish or []), *plan.finish]
    return plan


def _held(runs: Sequence[StepRun]) -> list[int]:
    return [run.id for run in runs if run.gpu is not None]


def _named(run: StepRun) -> str:
    return f"{run.name} (beam {run.beam})" if run.beam else run.name
