"""A case's results on its page: the files with their downloads (staff only, confined to
the run's results folder), the dose picture, the QA verdict with its gamma rates and
maps, and the QA badge in the list.  The cases are real: sample folders run to the end by
the conductor, their doses evaluated by the evaluate worker.

Screenshots go to artifacts/screenshots/ (case-page-qa-passed.png is the one
docs/case-page.png was copied from)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.cache import caches
from django.test import Client
from django.urls import reverse
from playwright.sync_api import BrowserContext, Page, expect

from cases.models import Case, ResultFile
from evaluation.picture import cache_key
from tests.admin.helpers import logged_in_page, screenshot
from tests.conductor.helpers import make_gpus
from tests.qa_cases import evaluated_case, moqui_dose, results_dir

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def picture_cache(settings, tmp_path):
    """Pictures drawn by the tests go to a cache of their own."""
    settings.CACHES = {
        **settings.CACHES,
        "pictures": {**settings.CACHES["pictures"], "LOCATION": tmp_path / "pictures"},
    }


@pytest.fixture
def passed(stub_broker) -> Case:
    make_gpus(1)
    return evaluated_case("QA-2025-0201", stub_broker)


def download_url(case: Case, result_file: ResultFile) -> str:
    return reverse("admin:cases_case_result_download", args=[case.pk, result_file.pk])


def dose_file(case: Case) -> ResultFile:
    return ResultFile.objects.get(run=case.current_run, path="RTDOSE.dcm")


# --- downloads: who may, and what can be handed out ----------------------------------


def test_a_result_file_downloads_for_staff_and_not_for_anyone_else(passed, viewer_client):
    url = download_url(passed, dose_file(passed))

    anonymous = Client().get(url)
    staff = viewer_client.get(url)

    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    assert staff.status_code == 200
    assert staff["Content-Disposition"] == 'attachment; filename="RTDOSE.dcm"'
    assert b"".join(staff.streaming_content) == (results_dir(passed) / "RTDOSE.dcm").read_bytes()


def test_a_result_path_that_climbs_out_of_the_results_folder_is_not_served(passed, operator_client):
    forged = ResultFile.objects.create(
        run=passed.current_run, path="../../../../../../etc/passwd", size=1, sha256="0" * 64
    )

    response = operator_client.get(download_url(passed, forged))

    assert response.status_code == 404


def test_a_result_file_that_is_a_link_out_of_the_folder_is_not_served(
    passed, operator_client, tmp_path
):
    secret = tmp_path / "secret.txt"
    secret.write_text("not a result")
    (results_dir(passed) / "notes.txt").symlink_to(secret)
    linked = ResultFile.objects.create(
        run=passed.current_run, path="notes.txt", size=12, sha256="0" * 64
    )

    response = operator_client.get(download_url(passed, linked))

    assert response.status_code == 404
    assert b"not a result" not in response.content


def test_a_result_file_is_only_found_under_its_own_case(passed, operator_client, stub_broker):
    other = evaluated_case("QA-2025-0202", stub_broker)

    response = operator_client.get(download_url(other, dose_file(passed)))

    assert response.status_code == 404


def test_the_dose_picture_is_cached_per_file_and_drawn_again_when_the_file_changes(
    passed, operator_client
):
    url = reverse("admin:cases_case_dose_picture", args=[passed.pk, dose_file(passed).pk, "dose"])
    path = results_dir(passed) / "RTDOSE.dcm"

    first = operator_client.get(url)
    cached = caches["pictures"].get(cache_key([path], variant="dose picture"))
    moqui_dose(passed, "RTDOSE.dcm", factor=2.0)
    second = operator_client.get(url)

    assert first.status_code == 200 and first["Content-Type"] == "image/png"
    assert first.content.startswith(b"\x89PNG") and cached == first.content
    assert second.status_code == 200 and second.content != first.content


def test_a_dose_that_cannot_be_read_says_why_instead_of_a_picture(passed, operator_client):
    dose = results_dir(passed) / "RTDOSE.dcm"
    dose.write_bytes(dose.read_bytes()[:-5000])

    page = operator_client.get(reverse("admin:cases_case_change", args=[passed.pk]))

    assert page.status_code == 200
    assert "RTDOSE.dcm cannot be shown: RTDOSE.dcm" in page.content.decode()
    assert b"mqi-dose-picture" not in page.content


# --- in the browser -------------------------------------------------------------------

EVERY_IMAGE_LOADED = "[...document.images].every(image => image.complete && image.naturalWidth > 0)"


@pytest.fixture
def page(browser_context: BrowserContext, live_server, operator) -> Page:
    return logged_in_page(browser_context, live_server, operator)


def test_a_physicist_reads_the_verdicts_in_the_list(page, live_server, passed, stub_broker):
    failed = evaluated_case("QA-2025-0203", stub_broker, factor=1.1)

    page.goto(f"{live_server.url}/admin/cases/case/")

    rows = page.locator("#result_list tbody tr")
    expect(rows.filter(has_text=passed.case_id).locator(".mqi-qa-line")).to_have_text("QA passed")
    expect(rows.filter(has_text=failed.case_id).locator(".mqi-qa-line")).to_have_text("QA failed")
    expect(rows.locator("img.mqi-dose-thumbnail")).to_have_count(2)
    page.wait_for_function(EVERY_IMAGE_LOADED)
    page.get_by_role("link", name="QA failed").click()  # the filter
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(failed.case_id)
    screenshot(page, "case-list-qa-failed")


def test_a_physicist_reads_the_rates_sees_the_dose_and_downloads_a_result(
    page, live_server, passed
):
    page.goto(f"{live_server.url}/admin/cases/case/{passed.pk}/change/")

    qa = page.locator("#case-qa")
    expect(qa.locator(".mqi-qa-verdict .mqi-badge")).to_have_text("QA passed")
    expect(qa.locator('tr[data-criterion="3%/2mm"] .mqi-qa-rate')).to_have_text("100.0%")
    expect(qa.locator('tr[data-criterion="2%/2mm"] .mqi-qa-rate')).to_have_text("100.0%")
    expect(qa.locator("img.mqi-gamma-picture")).to_have_count(2)
    summary = page.locator("#case-dose .mqi-dose-summary")
    expect(summary).to_contain_text("RTDOSE.dcm: max 1.028 Gy at")
    expect(summary).to_contain_text("grid 29 x 29 x 23 voxels of 2.5 x 2.5 x 2.5 mm")
    expect(page.locator("#case-dose img.mqi-dose-picture")).to_be_visible()
    page.wait_for_function(EVERY_IMAGE_LOADED)
    current = page.locator("#case-runs tbody.mqi-run-current")
    expect(current.locator(".mqi-badge")).to_have_text("current")
    expect(current.locator(".mqi-result-files tbody tr")).to_have_count(2)
    screenshot(page, "case-page-qa-passed")

    with page.expect_download() as started:
        current.locator(".mqi-result-files tbody tr", has_text="RTDOSE.dcm").get_by_role(
            "link", name="Download"
        ).click()
    download = started.value

    assert download.suggested_filename == "RTDOSE.dcm"
    assert Path(download.path()).read_bytes() == (results_dir(passed) / "RTDOSE.dcm").read_bytes()


def test_a_case_below_the_threshold_reads_qa_failed_with_its_gamma_map(
    page, live_server, stub_broker
):
    make_gpus(1)
    failed = evaluated_case("QA-2025-0204", stub_broker, factor=1.1)

    page.goto(f"{live_server.url}/admin/cases/case/{failed.pk}/change/")

    expect(page.locator(".field-status_badge")).to_contain_text("Completed")
    qa = page.locator("#case-qa")
    expect(qa.locator(".mqi-qa-verdict .mqi-badge")).to_have_text("QA failed")
    expect(qa.locator('tr[data-criterion="3%/2mm"]')).to_contain_text("failed")
    page.wait_for_function(EVERY_IMAGE_LOADED)
    screenshot(page, "case-page-qa-failed")


def test_an_anonymous_browser_gets_the_login_page_not_the_file(browser, live_server, passed):
    context = browser.new_context()
    try:
        anonymous = context.new_page()
        anonymous.goto(live_server.url + download_url(passed, dose_file(passed)))
        expect(anonymous).to_have_url(re.compile(r"/admin/login/\?next=.*/download/"))
        expect(anonymous.locator("#id_username")).to_be_visible()
    finally:
        context.close()
