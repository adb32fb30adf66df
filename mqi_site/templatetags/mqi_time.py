"""``{{ value|when }}`` and ``{{ span|span }}``: the formats of :mod:`mqi_site.times`."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone

from mqi_site.times import format_duration, format_time

register = template.Library()


@register.filter
def when(value: datetime | None) -> str:
    return format_time(value)


@register.filter
def since(value: datetime | None) -> str:
    """How long ago ``value`` was, as a span ("12 min")."""
    return format_duration(None if value is None else timezone.now() - value, coarse=True)


@register.filter
def span(value: timedelta | None) -> str:
    return format_duration(value)
