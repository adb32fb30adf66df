"""The case list: what a row shows, its order, its filters, and that it stays cheap on big
tables (a constant number of queries, no full COUNT(*) of a huge table)."""

from __future__ import annotations

import re
import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from cases.admin import EstimatedCountPaginator
from tests.admin.helpers import bulk_cases, completed_case, failed_case, hold_gpus, processing_case
from tests.conductor.helpers import make_gpus, register

CASE_LIST = reverse("admin:cases_case_changelist")


def list_page(client: Client, query: str = "") -> tuple[str, int]:
    """The list's HTML and the number of queries it took."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(CASE_LIST + query)
    assert response.status_code == 200
    return response.content.decode(), len(queries.captured_queries)


def row_case_ids(html: str) -> list[str]:
    return re.findall(r'<th class="field-case_id"><a href="[^"]+">([^<]+)</a>', html)


# --- cost -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_takes_the_same_number_of_queries_for_10_and_1000_cases(operator_client: Client):
    gpus = make_gpus(3)
    hold_gpus(bulk_cases(10), gpus)  # 3 of the 10 are PROCESSING
    html_10, queries_10 = list_page(operator_client)

    bulk_cases(990, start=10)
    html_1000, queries_1000 = list_page(operator_client)

    print(f"\ncase list queries: {queries_10} with 10 cases, {queries_1000} with 1,000")
    assert queries_10 == queries_1000
    assert len(row_case_ids(html_10)) == 10
    assert len(row_case_ids(html_1000)) == 100
    # The held GPUs are shown, so the reverse one-to-one was read (through the join).
    assert html_10.count(">local:") == 3


@pytest.mark.django_db
def test_it_renders_10000_cases(operator_client: Client):
    bulk_cases(10_000)

    started = time.perf_counter()
    html, queries = list_page(operator_client)
    elapsed = time.perf_counter() - started

    print(f"\ncase list with 10,000 cases: {elapsed * 1000:.0f} ms, {queries} queries")
    assert len(row_case_ids(html)) == 100
    assert "10000 cases" in html
    assert elapsed < 3.0


@pytest.mark.django_db
def test_it_uses_the_row_estimate_for_a_whole_big_table(operator_client: Client, monkeypatch):
    bulk_cases(300)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE cases_case")
    monkeypatch.setattr(EstimatedCountPaginator, "exact_below", 100)

    with CaptureQueriesContext(connection) as whole:
        operator_client.get(CASE_LIST)
    with CaptureQueriesContext(connection) as filtered:
        operator_client.get(CASE_LIST + "?status__exact=FAILED")

    counts = [q["sql"] for q in whole.captured_queries if "COUNT(*)" in q["sql"]]
    filtered_counts = [q["sql"] for q in filtered.captured_queries if "COUNT(*)" in q["sql"]]
    assert counts == []
    assert len(filtered_counts) == 1


# --- content and order ----------------------------------------------------------------

pytestmark_conductor = pytest.mark.django_db(transaction=True)


@pytestmark_conductor
def test_it_lists_active_cases_first_then_the_newest(operator_client: Client):
    make_gpus(3)
    processing_case("old-running")
    completed_case("done")
    register("new-waiting-or-running")
    failed_case("newest-failed")

    html, _ = list_page(operator_client)

    assert row_case_ids(html) == ["new-waiting-or-running", "old-running", "newest-failed", "done"]


@pytestmark_conductor
def test_it_shows_status_progress_step_and_gpu_in_a_row(operator_client: Client):
    make_gpus(1)
    processing_case("row-1")

    html, _ = list_page(operator_client)

    assert 'class="mqi-badge mqi-processing">Processing</span>' in html
    assert "30% run_interpreter" in html
    assert 'style="width: 30%"' in html
    assert ">local:0</a>" in html


@pytestmark_conductor
def test_it_filters_by_status_workflow_host_and_searches_by_case_id(operator_client: Client):
    make_gpus(1)
    failed_case("alpha-7")
    completed_case("beta-8")

    by_status, _ = list_page(operator_client, "?status__exact=FAILED")
    by_workflow, _ = list_page(operator_client, "?workflow=default_qa")
    by_host, _ = list_page(operator_client, "?host=local")
    by_other_host, _ = list_page(operator_client, "?host=elsewhere")
    by_search, _ = list_page(operator_client, "?q=ta-8")

    assert row_case_ids(by_status) == ["alpha-7"]
    assert sorted(row_case_ids(by_workflow)) == ["alpha-7", "beta-8"]
    assert sorted(row_case_ids(by_host)) == ["alpha-7", "beta-8"]
    assert row_case_ids(by_other_host) == []
    assert row_case_ids(by_search) == ["beta-8"]
