"""Times and spans as people read them, one format on every page and in every command.

A time is shown in the site's time zone (``MQI_TIME_ZONE``) with its label, so
"2026-11-29 19:44:36 CET" means the same on the case page, the overview and in
``case_status``.  Spans are short and exact: "45 s", "12 min 03 s", "3 h 07 min".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def format_time(value: datetime | None, *, empty: str = "—") -> str:
    """``value`` in the site's time zone, with the zone's label; ``empty`` for None."""
    if value is None:
        return empty
    return timezone.localtime(value).strftime(TIME_FORMAT)


def format_duration(span: timedelta | None, *, coarse: bool = False) -> str:
    """``"45 s"``, ``"12 min 03 s"``, ``"3 h 07 min"``, ``"2 d 4 h"``; ``"—"`` when unknown.

    ``coarse`` drops the seconds of spans over a minute (``"12 min"``).
    """
    if span is None:
        return "—"
    seconds = max(0, int(span.total_seconds()))
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{days} d {hour} h"
    if hours:
        return f"{hours} h {minute:02d} min"
    if minutes:
        return f"{minutes} min" if coarse else f"{minutes} min {sec:02d} s"
    return f"{sec} s"
