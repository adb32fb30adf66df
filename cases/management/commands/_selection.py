"""Shared option parsing for the case commands: durations like ``2h`` and ``30m``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_when(value: str) -> datetime:
    """``2h`` (two hours ago), ``3d``, or an ISO date/time."""
    match = _DURATION.match(value.strip())
    if match:
        return timezone.now() - timedelta(**{_UNITS[match[2]]: int(match[1])})
    parsed = parse_datetime(value) or parse_datetime(f"{value}T00:00:00")
    if parsed is None:
        raise CommandError(f"cannot read {value!r} as a time: use e.g. 2h, 3d or 2026-11-28T08:00")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)
