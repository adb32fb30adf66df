"""The message contracts between the conductor and the workers.

Both sides import this module and never each other: it owns the queue names, the actor
names, the envelope ``(command, payload)``, which step type is dispatched to which worker,
and the send-after-commit helper.  Sending builds a :class:`dramatiq.Message` by name, so a
process only needs the *receiving* actors declared, not the sending side's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import dramatiq
from django.db import transaction

CONDUCTOR = "conductor"
REMOTE_EXECUTOR = "remote_executor"
FILE_TRANSFER = "file_transfer"
SCANNER = "case_scanner"
GPU_DISCOVERY = "gpu_discovery"
NOTIFIER = "notifier"
EVALUATOR = "evaluator"

QUEUES = {
    CONDUCTOR: "conductor_queue",
    REMOTE_EXECUTOR: "remote_executor_queue",
    FILE_TRANSFER: "file_transfer_queue",
    SCANNER: "scanner_queue",
    GPU_DISCOVERY: "scanner_queue",
    NOTIFIER: "notifications_queue",
    # its own queue: a gamma analysis takes a CPU for seconds to minutes, and must not
    # hold up transfers or the polls of running simulations
    EVALUATOR: "evaluation_queue",
}


class Command:
    """Commands of the envelope, grouped by the actor that receives them."""

    # -> conductor
    NEW_CASE_FOUND = "new_case_found"
    CASE_UPLOAD_COMPLETED = "case_upload_completed"
    EXECUTION_SUCCEEDED = "execution_succeeded"
    EXECUTION_FAILED = "execution_failed"
    RESULTS_DOWNLOAD_COMPLETED = "results_download_completed"
    FILE_TRANSFER_FAILED = "file_transfer_failed"
    EVALUATION_COMPLETED = "evaluation_completed"
    EVALUATION_FAILED = "evaluation_failed"
    RECONCILE = "reconcile"  # periodic trigger
    HOST_UNREACHABLE = "host_unreachable"  # from GPU discovery and the host probe
    HOST_REACHABLE = "host_reachable"
    # -> case_scanner / gpu_discovery (periodic triggers and file events)
    SCAN = "scan"
    SYNC_GPUS = "sync_gpus"
    PROBE_HOSTS = "probe_hosts"  # look at the GPU servers known to be down
    # -> file_transfer
    UPLOAD_CASE = "upload_case"
    DOWNLOAD_RESULTS = "download_results"
    # -> remote_executor
    EXECUTE_COMMAND = "execute_command"
    POLL_COMMAND = "poll_command"
    CANCEL_COMMAND = "cancel_command"
    # -> evaluator
    EVALUATE_RESULTS = "evaluate_results"
    # -> notifier
    NOTIFY = "notify"


@dataclass(frozen=True)
class Route:
    """How a step type is dispatched and how its success is reported back."""

    actor: str
    command: str
    success: str
    failure: str


# The step-type registry: adding a step *type* is one entry here (plus the worker that
# handles its command); adding a step of an existing type is a config-only change.
STEP_ROUTES: dict[str, Route] = {
    "upload": Route(
        FILE_TRANSFER,
        Command.UPLOAD_CASE,
        Command.CASE_UPLOAD_COMPLETED,
        Command.FILE_TRANSFER_FAILED,
    ),
    "execute": Route(
        REMOTE_EXECUTOR,
        Command.EXECUTE_COMMAND,
        Command.EXECUTION_SUCCEEDED,
        Command.EXECUTION_FAILED,
    ),
    "download": Route(
        FILE_TRANSFER,
        Command.DOWNLOAD_RESULTS,
        Command.RESULTS_DOWNLOAD_COMPLETED,
        Command.FILE_TRANSFER_FAILED,
    ),
    "evaluate": Route(
        EVALUATOR,
        Command.EVALUATE_RESULTS,
        Command.EVALUATION_COMPLETED,
        Command.EVALUATION_FAILED,
    ),
}


class ErrorKind:
    """Why a step failed; decides whether the conductor may try again."""

    TRANSIENT = "transient"  # network, SSH, broker: worth another attempt
    PERMANENT = "permanent"  # non-zero exit, missing input: retrying will not help
    TIMEOUT = "timeout"  # the step ran past its configured timeout
    INVALID_INPUT = "invalid_input"  # the case folder failed validation
    CANCELLED = "cancelled"
    # the GPU server could not be reached (refused, timed out, connection dropped): not
    # the case's fault, so it costs no attempt; the step waits for the server
    UNREACHABLE = "unreachable"


def send(actor: str, command: str, payload: dict[str, Any], *, delay_ms: int | None = None) -> None:
    """Enqueue ``(command, payload)`` for ``actor`` now."""
    message = dramatiq.Message(
        queue_name=QUEUES[actor],
        actor_name=actor,
        args=(command, payload),
        kwargs={},
        options={},
    )
    dramatiq.get_broker().enqueue(message, delay=delay_ms)


def send_on_commit(
    actor: str, command: str, payload: dict[str, Any], *, delay_ms: int | None = None
) -> None:
    """Enqueue once the current transaction commits, so no worker sees uncommitted state.

    Outside a transaction this sends immediately (Django's ``on_commit`` semantics).
    """
    transaction.on_commit(partial(send, actor, command, payload, delay_ms=delay_ms))
