"""The ``conductor`` actor on ``conductor_queue``: ``conductor.send(command, payload)``.

It only translates a message into a call of :mod:`conductor.transitions`; every decision
is made by :mod:`conductor.machine`.  Database errors propagate so Dramatiq's Retries
middleware tries again with backoff (the handlers are idempotent); a malformed message is
logged and dropped, since no retry can fix it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dramatiq

from conductor import notifications, reconcile, transitions
from mqi_site.messaging import CONDUCTOR, NOTIFIER, QUEUES, Command

log = logging.getLogger(__name__)


class MalformedMessage(Exception):
    """A message the conductor cannot act on; retrying would not help."""


def _require(payload: dict[str, Any], key: str, kind: type) -> Any:
    value = payload.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedMessage(f"payload key {key!r} missing or not {kind.__name__}: {payload!r}")
    return value


def _new_case_found(command: str, payload: dict[str, Any]) -> None:
    transitions.case_register(
        case_id=_require(payload, "case_id", str),
        source_path=_require(payload, "source_path", str),
        workflow_name=payload.get("workflow"),
        facts=folder_facts(payload),
    )


def folder_facts(payload: dict[str, Any]) -> transitions.FolderFacts:
    """The folder check a ``new_case_found`` message carries (see cases.folder)."""
    plan = payload.get("plan")
    manifest = payload.get("manifest") or []
    if plan is not None and not isinstance(plan, dict):
        raise MalformedMessage(f"payload key 'plan' is not a mapping: {plan!r}")
    if not isinstance(manifest, list) or not all(_is_entry(entry) for entry in manifest):
        raise MalformedMessage("payload key 'manifest' is not a list of {path, size, sha256}")
    return transitions.FolderFacts(
        problems=[str(problem) for problem in payload.get("problems") or []],
        plan=plan,
        log_check=str(payload.get("log_check") or ""),
        manifest=manifest,
    )


def _is_entry(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
    )


def _step_succeeded(command: str, payload: dict[str, Any]) -> None:
    step_run_id = _require(payload, "step_run_id", int)
    transitions.step_run_succeeded(step_run_id=step_run_id, command=command, outcome=payload)


def _step_failed(command: str, payload: dict[str, Any]) -> None:
    step_run_id = _require(payload, "step_run_id", int)
    transitions.step_run_failed(step_run_id=step_run_id, command=command, outcome=payload)


def _host_unreachable(command: str, payload: dict[str, Any]) -> None:
    transitions.host_unreachable(
        host=_require(payload, "host", str), error=str(payload.get("error") or "")
    )


def _host_reachable(command: str, payload: dict[str, Any]) -> None:
    transitions.host_reachable(host=_require(payload, "host", str))


def _reconcile(command: str, payload: dict[str, Any]) -> None:
    reconcile.reconcile(startup=bool(payload.get("startup")))


HANDLERS: dict[str, Callable[[str, dict[str, Any]], None]] = {
    Command.NEW_CASE_FOUND: _new_case_found,
    Command.CASE_UPLOAD_COMPLETED: _step_succeeded,
    Command.EXECUTION_SUCCEEDED: _step_succeeded,
    Command.RESULTS_DOWNLOAD_COMPLETED: _step_succeeded,
    Command.EXECUTION_FAILED: _step_failed,
    Command.FILE_TRANSFER_FAILED: _step_failed,
    Command.EVALUATION_COMPLETED: _step_succeeded,
    Command.EVALUATION_FAILED: _step_failed,
    Command.RECONCILE: _reconcile,
    Command.HOST_UNREACHABLE: _host_unreachable,
    Command.HOST_REACHABLE: _host_reachable,
}


@dramatiq.actor(
    actor_name=CONDUCTOR,
    queue_name=QUEUES[CONDUCTOR],
    max_retries=20,
    min_backoff=500,
    max_backoff=60_000,
    time_limit=120_000,
    throws=(MalformedMessage,),
)
def conductor(command: str, payload: dict[str, Any]) -> None:
    handler = HANDLERS.get(command)
    if handler is None:
        raise MalformedMessage(f"unknown conductor command {command!r}")
    handler(command, payload)


@dramatiq.actor(
    actor_name=NOTIFIER,
    queue_name=QUEUES[NOTIFIER],
    max_retries=10,
    min_backoff=5_000,
    max_backoff=600_000,
    throws=(MalformedMessage,),
)
def notifier(command: str, payload: dict[str, Any]) -> None:
    if command != Command.NOTIFY:
        raise MalformedMessage(f"unknown notifier command {command!r}")
    notifications.notify_case_event(_require(payload, "event_id", int))
