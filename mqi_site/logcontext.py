"""Case id and step run on every log line written while a message about a case is handled.

``CaseLogContext`` (a Dramatiq middleware) reads them from the message payload;
``CaseContextFilter`` (a logging filter) adds them to each record as ``%(case_context)s``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

_context: ContextVar[str] = ContextVar("mqi_case_context", default="")


def describe(payload: Any) -> str:
    if not isinstance(payload, dict) or "case_id" not in payload:
        return ""
    text = f" [case={payload['case_id']!r}"
    if "step_run_id" in payload:
        text += f" run={payload['step_run_id']}"
    return text + "]"


@contextmanager
def case_context(case_id: str, step: str | int | None = None):
    payload: dict[str, Any] = {"case_id": case_id}
    if step is not None:
        payload["step_run_id"] = step
    token = _context.set(describe(payload))
    try:
        yield
    finally:
        _context.reset(token)


class CaseContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.case_context = _context.get()
        return True


class CaseLogContext(Middleware):
    """Set the log context from ``(command, payload)`` for the duration of a message.

    Each worker thread handles one message at a time, so the thread's own context is set
    before and cleared after (nothing is stored on the message, which may be re-enqueued).
    """

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        args = message.args
        _context.set(describe(args[1] if len(args) > 1 else None))

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        _context.set("")

    after_skip_message = after_process_message
