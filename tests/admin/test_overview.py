"""The overview page: counts per status, running cases, GPUs per host, latest failures."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from cases.models import Case
from tests.admin.helpers import bulk_cases, failed_case, processing_case
from tests.conductor.helpers import make_gpus

OVERVIEW = reverse("overview:index")


def overview(client: Client) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(OVERVIEW)
    assert response.status_code == 200
    return response.content.decode(), len(queries.captured_queries)


def count_of(html: str, status: str) -> int:
    match = re.search(rf'data-status="{status}"[^>]*>\s*<span class="mqi-count-n">(\d+)', html)
    assert match, status
    return int(match.group(1))


@pytest.mark.django_db(transaction=True)
def test_it_shows_the_latest_ten_failures_newest_first_with_their_reason(operator_client):
    make_gpus(1)
    for i in range(12):
        failed_case(f"fail-{i:02d}")
    processing_case("still-running")

    html, _ = overview(operator_client)

    failures = html[html.index('id="latest-failures"') :]
    shown = re.findall(r'<a href="/admin/cases/case/\d+/change/">(fail-\d+)</a>', failures)
    assert shown == [f"fail-{i:02d}" for i in range(11, 1, -1)]
    assert "run_interpreter failed: interpreter exited with 2" in failures
    assert count_of(html, "FAILED") == 12
    assert count_of(html, "PROCESSING") == 1
    assert count_of(html, "NEW") == 0


@pytest.mark.django_db(transaction=True)
def test_it_shows_running_cases_and_gpu_occupancy_per_host(operator_client):
    make_gpus(2, host="node-a")
    make_gpus(1, host="node-b")
    processing_case("run-1")

    html, _ = overview(operator_client)

    running = html[html.index('id="running-cases"') : html.index('id="gpu-occupancy"')]
    assert "run-1" in running
    assert "30% run_interpreter" in running
    assert 'style="width: 30%"' in running
    assert re.search(r'data-host="node-a">.*?1 of 2 busy', html, re.S)
    assert re.search(r'data-host="node-b">.*?0 of 1 busy', html, re.S)


@pytest.mark.django_db
def test_it_takes_the_same_number_of_queries_for_10_and_1000_cases(operator_client):
    make_gpus(4)
    bulk_cases(10)
    _, queries_10 = overview(operator_client)

    bulk_cases(990, start=10)
    html, queries_1000 = overview(operator_client)

    print(f"\noverview queries: {queries_10} with 10 cases, {queries_1000} with 1,000")
    assert queries_10 == queries_1000
    assert count_of(html, "PROCESSING") == Case.objects.filter(status="PROCESSING").count()


@pytest.mark.django_db
def test_it_updates_itself(operator_client):
    html, _ = overview(operator_client)

    assert 'data-mqi-live="10"' in html
    assert "cases/mqi-live.js" in html


@pytest.mark.django_db
def test_the_admin_index_and_every_admin_page_link_to_it(operator_client):
    index = operator_client.get(reverse("admin:index")).content.decode()
    cases = operator_client.get(reverse("admin:cases_case_changelist")).content.decode()

    assert 'id="overview-module"' in index
    assert f'<a href="{OVERVIEW}">Overview</a>' in index
    assert f'<a href="{OVERVIEW}">Overview</a>' in cases
