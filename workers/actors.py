"""Worker actors: ``file_transfer``, ``remote_executor``, ``evaluator``, ``case_scanner``,
``gpu_discovery``.

Thin callers of :mod:`workers.transfer`, :mod:`workers.executor`, :mod:`workers.evaluate`,
the scanner and GPU discovery.  At this boundary a database error propagates (Dramatiq
retries with backoff: the database may be restarting), as does the executor's
``RetryFollowing`` (a command it could not confirm stopped keeps its step and GPU).  Any
other unexpected error is logged with its traceback and reported to the conductor as a
failure of the step run, so it ends as a visible state with a reason instead of a
traceback in a log only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dramatiq
from django.db import DatabaseError, InterfaceError

from mqi_site.config import get_config
from mqi_site.messaging import (
    CONDUCTOR,
    EVALUATOR,
    FILE_TRANSFER,
    GPU_DISCOVERY,
    QUEUES,
    REMOTE_EXECUTOR,
    SCANNER,
    Command,
    ErrorKind,
    send,
)

log = logging.getLogger(__name__)

RETRIES = {"max_retries": 5, "min_backoff": 1_000, "max_backoff": 60_000}


def _guarded(
    worker: str,
    failure: str,
    command: str,
    payload: dict[str, Any],
    work: Callable,
    retried: tuple[type[Exception], ...] = (),
) -> None:
    try:
        work(command, payload)
    except (DatabaseError, InterfaceError, *retried):
        raise
    except Exception as exc:  # the worker boundary: report it, never lose the case
        log.exception("%s: unexpected error handling %s", worker, command)
        if "step_run_id" in payload and command != Command.CANCEL_COMMAND:
            send(
                CONDUCTOR,
                failure,
                {
                    "case_id": payload.get("case_id", ""),
                    "step_run_id": payload["step_run_id"],
                    "error_kind": ErrorKind.PERMANENT,
                    "error_message": f"internal error in {worker}: {type(exc).__name__}: {exc}",
                },
            )
        else:
            raise


@dramatiq.actor(actor_name=FILE_TRANSFER, queue_name=QUEUES[FILE_TRANSFER], **RETRIES)
def file_transfer(command: str, payload: dict[str, Any]) -> None:
    from workers import transfer

    _guarded(FILE_TRANSFER, Command.FILE_TRANSFER_FAILED, command, payload, transfer.handle)


@dramatiq.actor(actor_name=REMOTE_EXECUTOR, queue_name=QUEUES[REMOTE_EXECUTOR], **RETRIES)
def remote_executor(command: str, payload: dict[str, Any]) -> None:
    from workers import executor

    # RetryFollowing: a command may still be running; reporting a failure would free its GPU
    _guarded(
        REMOTE_EXECUTOR,
        Command.EXECUTION_FAILED,
        command,
        payload,
        executor.handle,
        retried=(executor.RetryFollowing,),
    )


# A gamma analysis of a large grid can take many minutes: Dramatiq's default limit of 10
# would interrupt it (the step run's own heartbeats keep the reconciler away meanwhile).
@dramatiq.actor(
    actor_name=EVALUATOR, queue_name=QUEUES[EVALUATOR], time_limit=3 * 3600 * 1000, **RETRIES
)
def evaluator(command: str, payload: dict[str, Any]) -> None:
    from workers import evaluate

    _guarded(EVALUATOR, Command.EVALUATION_FAILED, command, payload, evaluate.handle)


@dramatiq.actor(actor_name=SCANNER, queue_name=QUEUES[SCANNER], max_retries=0, time_limit=300_000)
def case_scanner(command: str, payload: dict[str, Any]) -> None:
    from workers.scanner.scan import scan_cases

    if command != Command.SCAN:
        raise ValueError(f"unknown case_scanner command {command!r}")
    scan_cases(get_config(), folders=payload.get("folders"))


@dramatiq.actor(actor_name=GPU_DISCOVERY, queue_name=QUEUES[GPU_DISCOVERY], max_retries=0)
def gpu_discovery(command: str, payload: dict[str, Any]) -> None:
    from workers.gpu_discovery.sync import sync_gpus
    from workers.probe import probe_hosts

    if command == Command.PROBE_HOSTS:
        probe_hosts(get_config())
        return

    if command != Command.SYNC_GPUS:
        raise ValueError(f"unknown gpu_discovery command {command!r}")
    sync_gpus(get_config())
