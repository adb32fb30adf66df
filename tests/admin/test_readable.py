"""The pages read plainly: times in the site's zone with its label, a case's duration from
its first dispatch with its wait apart, "Done" for a completed case, and no link or section
that leads nowhere (an empty task list, "Change" on read-only pages, "View site", a Failure
section of dashes, remote folders of a case never uploaded)."""

from __future__ import annotations

import pytest
import time_machine
from django.urls import reverse

from cases.models import Case
from conductor.transitions import advance_waiting
from tests.admin.helpers import completed_case
from tests.conductor.helpers import (
    make_gpus,
    register,
    register_sample,
    run_to_completion,
)

pytestmark = pytest.mark.django_db(transaction=True)


def case_page(client, case: Case) -> str:
    return client.get(reverse("admin:cases_case_change", args=[case.pk])).content.decode()


def test_the_admin_home_has_no_links_that_lead_nowhere(operator_client):
    html = operator_client.get(reverse("admin:index")).content.decode()

    assert "Django Dramatiq" not in html and "Tasks" not in html
    assert "View site" not in html
    assert ">Change<" not in html


def test_times_are_in_the_sites_zone_with_its_label(operator_client, settings):
    settings.TIME_ZONE = "Europe/Zurich"
    make_gpus(1)
    with time_machine.travel("2026-11-29 18:44:36Z", tick=False):
        case = completed_case("zoned")

    html = case_page(operator_client, case)

    assert "2026-11-29 19:44:36 CET" in html
    assert "18:44:36" not in html
    assert "Nov. 29" not in html


def test_duration_counts_from_the_first_dispatch_and_the_wait_is_shown_apart(operator_client):
    with time_machine.travel("2026-11-29 18:00:00Z", tick=False):
        case = register_sample("waited")  # no GPU: it waits
    with time_machine.travel("2026-11-29 18:08:49Z", tick=False):
        make_gpus(1)
        advance_waiting()
    with time_machine.travel("2026-11-29 18:08:51Z", tick=False):
        run_to_completion(case)

    case.refresh_from_db()
    html = case_page(operator_client, case)
    listing = operator_client.get(reverse("admin:cases_case_changelist")).content.decode()

    assert case.status == Case.Status.COMPLETED
    assert '<div class="readonly">8 min 49 s</div>' in html  # waited
    assert '<div class="readonly">2 s</div>' in html  # ran
    assert '<td class="field-duration">2 s</td>' in listing
    assert "Done" in listing and "100% download_results" not in listing


def test_a_completed_case_has_no_failure_section(operator_client):
    make_gpus(1)
    case = completed_case("fine")

    html = case_page(operator_client, case)

    assert "<h2>Failure</h2>" not in html and "Error message" not in html
    assert "Remote case directory" in html


def test_a_case_never_uploaded_lists_no_remote_folders(operator_client):
    case = register("never-up", problems=["no RTPLAN in the folder"])

    html = case_page(operator_client, case)

    assert "Remote case directory" not in html and "Remote output directory" not in html
    assert "no RTPLAN in the folder" in html
