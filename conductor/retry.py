"""Retry policy for transient step failures: pure functions, no side effects."""

from __future__ import annotations

from mqi_site.messaging import ErrorKind


def should_retry(*, error_kind: str, attempt: int, max_attempts: int) -> bool:
    """Only transient errors are retried, and only while the step's budget lasts."""
    return error_kind == ErrorKind.TRANSIENT and attempt < max_attempts


def backoff_ms(attempt: int, *, base_sec: float, max_sec: float) -> int:
    """Delay before attempt ``attempt + 1``: base * 2^(attempt-1), capped at max."""
    return int(min(max_sec, base_sec * 2 ** max(0, attempt - 1)) * 1000)
