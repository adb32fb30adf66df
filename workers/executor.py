"""The remote executor: start a step's command detached on the case's GPU server, follow it
with short poll messages, and report the outcome to the conductor.

A long simulation never pins a worker thread: ``execute_command`` starts the command and
returns; ``poll_command`` messages, re-sent with a delay, read its progress and exit code
from files in the remote run folder, and :mod:`workers.doorbell` reports the command's end
the moment it comes.  The run folder is created atomically before the
start (see :mod:`workers.transports.detached`), so a duplicate or re-driven
``execute_command`` re-attaches instead of starting the command again, and a dropped SSH
connection only delays the next poll.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from django.db import DatabaseError, InterfaceError, connections
from django.utils import timezone
from dramatiq.errors import BrokerError
from redis.exceptions import RedisError

from cases.models import WorkflowStep
from cases.services import (
    active_step_run,
    step_run_heartbeat,
    step_run_keep_output,
    step_run_mark_running,
)
from mqi_site.config import Config, StepSpec, get_config
from mqi_site.messaging import CONDUCTOR, REMOTE_EXECUTOR, Command, ErrorKind, send
from workers import doorbell
from workers.hosts import ensure_remote_dir, host_environment, transport_for
from workers.transports import Transport, TransportError
from workers.transports.detached import (
    RunState,
    RunStatus,
    kill_group,
    poll,
    read_new_output,
    start_detached,
)

log = logging.getLogger(__name__)

# Polls start fast (the first is made by the start itself, so a short command is noticed
# within ~10 ms) and slow down to one every few seconds for long simulations.
FIRST_POLL_MS = 10
MAX_POLL_MS = 3000
# Consecutive polls that could not reach the host before the step counts as failed
# (transiently: the conductor's retry budget decides what happens next).
MAX_UNREACHABLE_POLLS = 100
# The last bytes of stdout and stderr a poll reads and stores: the case page shows them
# live, and they are what is kept of a command's output.
TAIL_BYTES = 64 * 1024
# Progress is read from the end of each new chunk of output: at most this many lines, each
# cut to this many characters, so whatever the command prints, one poll's matching stays
# short (the accepted patterns cost about the square of a line's length).
PROGRESS_LINES = 32
PROGRESS_LINE_CHARS = 1000
# More digits than this is no batch count: the line is ignored.
PROGRESS_MAX_DIGITS = 12


@dataclass(frozen=True)
class StepRun:
    """Everything the executor needs about one step run, read from the database."""

    id: int
    case_id: str
    step: StepSpec
    span: tuple[int, int]
    command: str
    host: str
    gpu_index: int | None
    case_dir: str
    output_dir: str
    started_at: Any
    heartbeat_at: datetime | None

    @property
    def run_dir(self) -> str:
        return remote_run_dir(self.case_dir, self.step.name, self.id)


def remote_run_dir(case_dir: str, step_name: str, step_run_id: int) -> str:
    """Where one step run's command, output and exit code live on the GPU server."""
    return posixpath.join(case_dir, ".mqi", "runs", f"{step_name}-{step_run_id}")


def load_step_run(step_run_id: int, config: Config) -> StepRun | None:
    run = active_step_run(step_run_id, "case", "gpu", "run")
    if run is None:
        return None
    case = run.case
    paths = config.run_paths(case.case_id, run.run.number, run.host)
    return StepRun(
        id=run.pk,
        case_id=case.case_id,
        step=config.step(case.workflow, run.name),
        span=config.progress_span(case.workflow, run.name),
        command=run.command,
        host=run.host,
        gpu_index=run.gpu.index if run.gpu else None,
        case_dir=paths.case_dir,
        output_dir=paths.output_for(run.beam_number),
        started_at=run.started_at,
        heartbeat_at=run.heartbeat_at,
    )


def handle(command: str, payload: dict[str, Any]) -> None:
    handlers = {
        Command.EXECUTE_COMMAND: execute,
        Command.POLL_COMMAND: follow,
        Command.CANCEL_COMMAND: cancel,
    }
    handlers[command](payload)


def _report(run: StepRun, command: str, **outcome: Any) -> None:
    send(CONDUCTOR, command, {"case_id": run.case_id, "step_run_id": run.id, **outcome})


def _fail(run: StepRun, kind: str, message: str, status: RunStatus | None = None) -> None:
    log.warning("%s failed (%s): %s", run.step.name, kind, message)
    tails = {}
    if status is not None:
        tails = {
            "exit_code": status.exit_code,
            "stdout_tail": status.stdout_tail[-TAIL_BYTES:],
            "stderr_tail": status.stderr_tail[-TAIL_BYTES:],
        }
    _report(run, Command.EXECUTION_FAILED, error_kind=kind, error_message=message, **tails)


def _poll_delay_ms(polls: int) -> int:
    return min(MAX_POLL_MS, FIRST_POLL_MS * 2**polls)


def _poll_again(run: StepRun, *, offset: int, polls: int, unreachable: int, beat: datetime) -> None:
    delay = _poll_delay_ms(polls)
    payload = _poll_payload(run, offset=offset, polls=polls, unreachable=unreachable, beat=beat)
    send(REMOTE_EXECUTOR, Command.POLL_COMMAND, payload, delay_ms=delay)


def _poll_payload(
    run: StepRun, *, offset: int, polls: int, unreachable: int, beat: datetime
) -> dict[str, Any]:
    return {
        "case_id": run.case_id,
        "step_run_id": run.id,
        "offset": offset,
        "polls": polls + 1,
        "unreachable": unreachable,
        # the chain's token: only the poll that finds it unchanged goes on (see follow)
        "beat": beat.isoformat(),
    }


def _grace_sec(config: Config) -> float:
    # Each poll pushes the step run's deadline this far; past it the reconciler re-drives.
    return config.conductor.dispatch_grace_sec


def _environment(run: StepRun) -> dict[str, str]:
    env = {"MQI_CASE_ID": run.case_id, "MQI_STEP": run.step.name, "MQI_STEP_RUN": str(run.id)}
    if run.gpu_index is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(run.gpu_index)
    return {**host_environment(run.host), **env}


class RetryFollowing(Exception):
    """Following a command failed before its process group was confirmed gone.

    The step run must not be reported finished (the conductor would hand its GPU to another
    case while the command still runs on it): the message is tried again instead, by
    Dramatiq's retries and, past them, by the reconciler's re-drive.
    """


# Failures of the services around the worker, not of the command: the message is retried.
_SERVICE_ERRORS = (BrokerError, RedisError)


@contextmanager
def _stopped_before_failing(run: StepRun, transport: Transport) -> Iterator[None]:
    """Let an unexpected error out (to be reported as the step's failure, which frees its
    GPU) only once the step's process group is confirmed gone; else keep the step."""
    try:
        yield
    except (DatabaseError, InterfaceError, RetryFollowing):
        raise  # the actor boundary lets these through to Dramatiq's retries
    except _SERVICE_ERRORS as exc:
        raise RetryFollowing(f"{run.step.name} of {run.case_id}: {exc}") from exc
    except Exception as exc:
        # an internal error, or output this code cannot read: the step fails, but first
        # its command must be gone (the actor boundary logs the error and reports it)
        if not _confirmed_stopped(run, transport):
            raise RetryFollowing(
                f"{run.step.name} of {run.case_id}: {type(exc).__name__}: {exc}, and its "
                "process group could not be confirmed gone; will look again"
            ) from exc
        log.error("%s of %s: process group stopped after an error", run.step.name, run.case_id)
        raise


def _confirmed_stopped(run: StepRun, transport: Transport) -> bool:
    try:
        kill_group(transport, run.run_dir)
        return poll(transport, run.run_dir, tail_bytes=0).state != RunState.RUNNING
    except Exception:  # whatever went wrong, nothing is confirmed
        log.warning("%s: could not stop %s", run.step.name, run.run_dir, exc_info=True)
        return False


def execute(payload: dict[str, Any]) -> None:
    """Start the step's command, or re-attach to it if it was started before."""
    config = get_config()
    run = load_step_run(payload["step_run_id"], config)
    if run is None:
        return  # cancelled or superseded: nothing to start
    transport = transport_for(run.host)
    with _stopped_before_failing(run, transport):
        _execute(run, transport, payload, config)


def _execute(run: StepRun, transport: Transport, payload: dict[str, Any], config: Config) -> None:
    try:
        if transport.stat(run.case_dir) is None:
            _fail(
                run,
                ErrorKind.PERMANENT,
                f"the case folder {run.case_dir} is missing on {run.host}; "
                "re-run the case from the start to upload it again",
            )
            return
        ensure_remote_dir(transport, run.output_dir)
        started = start_detached(
            transport,
            run.run_dir,
            cwd=run.case_dir,
            command=run.command,
            env=_environment(run),
        )
    except TransportError as exc:
        if exc.permanent:
            _fail(run, ErrorKind.PERMANENT, str(exc))
            return
        if exc.unreachable:
            # The server is down: the step waits for it (keeping its GPU) and is sent
            # again when it is back; that delivery re-attaches if the command had started.
            _fail(run, ErrorKind.UNREACHABLE, str(exc))
            return
        # The connection may have dropped after the command started (or this re-drive meets
        # a host that is down while the command runs): a new attempt could run it twice.
        # Poll instead, as for any unreachable host; a poll that finds no trace of the
        # command fails this attempt (transiently), so the retry starts it exactly once.
        log.warning("%s: cannot reach %s (%s); will look again", run.step.name, run.host, exc)
        beat = step_run_mark_running(step_run_id=run.id, deadline_sec=_grace_sec(config))
        if beat is not None:
            _poll_again(
                run, offset=int(payload.get("offset", 0)), polls=0, unreachable=1, beat=beat
            )
        return
    log.debug("%s %s on %s", run.step.name, "started" if started else "re-attached", run.host)
    beat = step_run_mark_running(step_run_id=run.id, deadline_sec=_grace_sec(config))
    if beat is None:
        # Cancelled between our look and the start: the cancel found nothing to kill.
        kill_group(transport, run.run_dir)
        return
    # A new poll chain; one left from an earlier delivery finds its token changed and ends.
    # Its first look is made here: a short command's end is then seen without a trip
    # through the broker's delay queue, which is paced by dramatiq_worker_timeout.
    time.sleep(FIRST_POLL_MS / 1000)
    offset = int(payload.get("offset", 0))
    _follow(run, transport, _poll_payload(run, offset=offset, polls=0, unreachable=0, beat=beat))


def _progress(run: StepRun, lines: list[str]) -> int | None:
    """The step run's progress (%) the latest readable progress line says; None if there is
    none.

    A line that matches but cannot be read as a count (absurd numbers, a zero total) is
    ignored like any other line: progress is a display, never a reason to stop following.
    """
    if not run.step.progress_pattern:
        return None
    pattern = re.compile(run.step.progress_pattern)
    for line in reversed(lines[-PROGRESS_LINES:]):
        match = pattern.search(line[:PROGRESS_LINE_CHARS])
        fraction = _fraction(match["done"], match["total"]) if match else None
        if fraction is not None:
            return int(100 * fraction)
    return None


def _fraction(done: str | None, total: str | None) -> float | None:
    counts = (done or "", total or "")
    if not all(c.isdecimal() and len(c) <= PROGRESS_MAX_DIGITS for c in counts):
        return None
    done_count, total_count = map(int, counts)
    return min(1.0, done_count / total_count) if total_count > 0 else None


def follow(payload: dict[str, Any]) -> None:
    """One look at a running command: progress, timeout, and its end."""
    run = load_step_run(payload["step_run_id"], get_config())
    if run is None:
        return  # cancelled (the cancel message kills it) or already reported
    transport = transport_for(run.host)
    with _stopped_before_failing(run, transport):
        if payload.get("doorbell"):
            _answer_doorbell(run, transport)
        else:
            _follow(run, transport, payload)


def _doorbell_rang(case_id: str, step_run_id: int) -> None:
    """The command ended: report it from the doorbell's thread, saving a trip through the
    broker; if that fails, a worker thread answers it as a message, with Dramatiq's retries."""
    payload = {"case_id": case_id, "step_run_id": step_run_id, "doorbell": True}
    try:
        follow(payload)
    except Exception as exc:  # noqa: BLE001 - handed on, not dropped
        log.info(
            "step run %s: answering the doorbell failed (%s); sent to a worker", step_run_id, exc
        )
        send(REMOTE_EXECUTOR, Command.POLL_COMMAND, payload)
    finally:
        connections.close_all()  # this thread's own: it is not a worker thread


def _answer_doorbell(run: StepRun, transport: Transport) -> None:
    """The doorbell rang: report the command's end now instead of at the next poll.

    The heartbeat's compare-and-swap against the run's current one makes this poll the
    chain's last: the chain's next poll finds its token changed and ends, so the end is
    reported once.  If a poll beat in between, that poll goes on and reports the end.
    """
    try:
        status = poll(transport, run.run_dir, tail_bytes=TAIL_BYTES)
    except TransportError as exc:
        log.debug("%s: doorbell poll failed (%s); the polls go on", run.step.name, exc)
        return
    if status.state == RunState.RUNNING or run.heartbeat_at is None:
        return  # the wait ran out, or the chain has not started: the polls go on
    if status.kill_requested:
        return  # killed at its timeout or cancel: whoever killed it reports why
    beat = step_run_heartbeat(
        step_run_id=run.id,
        deadline_sec=_grace_sec(get_config()),
        last_beat=run.heartbeat_at,
        tails=(status.stdout_tail[-TAIL_BYTES:], status.stderr_tail[-TAIL_BYTES:]),
    )
    if beat is not None:
        _report_end(run, status)


def _follow(run: StepRun, transport: Transport, payload: dict[str, Any]) -> None:
    config = get_config()
    offset = int(payload.get("offset", 0))
    polls = int(payload.get("polls", 0))
    unreachable = int(payload.get("unreachable", 0))
    last_beat = datetime.fromisoformat(payload["beat"]) if payload.get("beat") else None
    try:
        status = poll(transport, run.run_dir, tail_bytes=TAIL_BYTES)
        chunk = (
            read_new_output(transport, run.run_dir, offset) if run.step.progress_pattern else None
        )
    except TransportError as exc:
        if exc.unreachable:
            # the command goes on without us; the step waits for the server and
            # re-attaches when it is back
            _fail(run, ErrorKind.UNREACHABLE, f"lost touch with the command: {exc}")
            return
        if exc.permanent or unreachable + 1 >= MAX_UNREACHABLE_POLLS:
            kind = ErrorKind.PERMANENT if exc.permanent else ErrorKind.TRANSIENT
            _fail(run, kind, f"lost track of the command: {exc}")
            return
        log.warning("%s: cannot reach %s (%s); will look again", run.step.name, run.host, exc)
        beat = step_run_heartbeat(
            step_run_id=run.id, deadline_sec=_grace_sec(config), last_beat=last_beat
        )
        if beat is not None:
            _poll_again(run, offset=offset, polls=polls, unreachable=unreachable + 1, beat=beat)
        return
    progress = None
    if chunk is not None:
        offset = chunk.next_offset
        progress = _progress(run, chunk.lines)
    beat = step_run_heartbeat(
        step_run_id=run.id,
        deadline_sec=_grace_sec(config),
        progress=progress,
        span=run.span,
        last_beat=last_beat,
        tails=(status.stdout_tail[-TAIL_BYTES:], status.stderr_tail[-TAIL_BYTES:]),
    )
    if beat is None:
        return  # cancelled while we looked, or a duplicate poll: another one goes on
    if status.state != RunState.RUNNING:
        _report_end(run, status)
    elif _timed_out(run):
        _timeout(run, transport, beat)
    else:
        doorbell.arm(
            key=run.id,
            host=run.host,
            run_dir=run.run_dir,
            on_end=partial(_doorbell_rang, run.case_id, run.id),
        )
        _poll_again(run, offset=offset, polls=polls, unreachable=0, beat=beat)


def _report_end(run: StepRun, status: RunStatus) -> None:
    """Report a command that is no longer running: its exit code decides the outcome."""
    if status.state == RunState.EXITED and status.exit_code == 0:
        _report(
            run,
            Command.EXECUTION_SUCCEEDED,
            exit_code=0,
            stdout_tail=status.stdout_tail[-TAIL_BYTES:],
            stderr_tail=status.stderr_tail[-TAIL_BYTES:],
        )
    elif status.state == RunState.EXITED:
        _fail(run, ErrorKind.PERMANENT, _exit_reason(run, status), status)
    elif status.state == RunState.VANISHED:
        _fail(
            run,
            ErrorKind.TRANSIENT,
            "the command disappeared without an exit code (killed, or the host restarted)",
            status,
        )
    else:  # MISSING: the start never happened (e.g. its folder was removed)
        _fail(run, ErrorKind.TRANSIENT, f"no trace of the command in {run.run_dir}")


def _timed_out(run: StepRun) -> bool:
    return (
        run.started_at is not None
        and (timezone.now() - run.started_at).total_seconds() > run.step.timeout_sec
    )


def _timeout(run: StepRun, transport: Transport, beat: datetime) -> None:
    try:
        kill_group(transport, run.run_dir)
    except TransportError as exc:
        log.warning("%s: timeout kill failed (%s); will try again", run.step.name, exc)
        _poll_again(run, offset=0, polls=10, unreachable=0, beat=beat)
        return
    status = poll(transport, run.run_dir, tail_bytes=TAIL_BYTES)
    _fail(
        run,
        ErrorKind.TIMEOUT,
        f"ran longer than its timeout of {run.step.timeout_sec:g} s; its process group was killed",
        status,
    )


def _exit_reason(run: StepRun, status: RunStatus) -> str:
    output = status.stderr_tail.strip() or status.stdout_tail.strip()
    last = output.splitlines()[-1:] if output else []
    detail = f": {last[0][:300]}" if last else ""
    return f"exited with code {status.exit_code}{detail}"


def cancel(payload: dict[str, Any]) -> None:
    """Kill the step run's process group (the conductor already marked the case)."""
    row = (
        WorkflowStep.objects.select_related("case", "run").filter(pk=payload["step_run_id"]).first()
    )
    if row is None or row.status != WorkflowStep.Status.CANCELLED:
        return
    case_dir = get_config().run_paths(row.case.case_id, row.run.number, row.host).case_dir
    run_dir = remote_run_dir(case_dir, row.name, row.pk)
    transport = transport_for(row.host)
    try:
        killed = kill_group(transport, run_dir)
        # what it had printed until then stays with the cancelled run
        status = poll(transport, run_dir, tail_bytes=TAIL_BYTES)
    except TransportError as exc:
        if exc.permanent:
            log.error("cancel of %s could not kill %s: %s", row, run_dir, exc)
            return
        raise  # transient: the actor's retries try again
    if status.state != RunState.MISSING:
        step_run_keep_output(
            step_run_id=row.pk, stdout_tail=status.stdout_tail, stderr_tail=status.stderr_tail
        )
    log.info("cancelled %s: %s", row, "process group killed" if killed else "nothing was running")
