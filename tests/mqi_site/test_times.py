"""One format for times and spans, on every page and in every command."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from mqi_site.times import format_duration, format_time

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(
    "zone, shown",
    [
        ("UTC", "2026-11-29 18:44:36 UTC"),
        ("Europe/Zurich", "2026-11-29 19:44:36 CET"),
        ("Europe/Zurich", "2026-07-01 20:44:36 CEST"),
    ],
)
def test_a_time_is_shown_in_the_sites_zone_with_its_label(zone, shown):
    moment = datetime(2026, 11, 29, 18, 44, 36, tzinfo=UTC)
    if "CEST" in shown:
        moment = moment.replace(month=7, day=1)
    with timezone.override(zone):
        assert format_time(moment) == shown


def test_no_time_is_a_dash_or_what_the_caller_asks():
    assert format_time(None) == "—"
    assert format_time(None, empty="-") == "-"


@pytest.mark.parametrize(
    "seconds, shown",
    [(2, "2 s"), (529, "8 min 49 s"), (3 * 3600 + 7 * 60, "3 h 07 min"), (52 * 3600, "2 d 4 h")],
)
def test_a_span_reads_short_and_exact(seconds, shown):
    assert format_duration(timedelta(seconds=seconds)) == shown
