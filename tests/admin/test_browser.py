"""The admin through a real browser (headless Chromium against the live server): logging in,
the pages an operator reads, and every operator action clicked through, checked in the
database afterwards.  Screenshots of the main pages go to artifacts/screenshots/."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from cases.models import Case, WorkflowStep
from gpus.models import GPUResource
from tests.admin.helpers import (
    PASSWORD,
    completed_case,
    failed_case,
    logged_in_page,
    populate_demo,
    processing_case,
    reload,
    screenshot,
)
from tests.conductor.helpers import holder, make_gpus, register

pytestmark = pytest.mark.django_db(transaction=True)

# Case ids are folder names, so the markup has no "/"; an img with onerror still runs
# script if it is ever rendered as markup.
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def page(browser_context: BrowserContext, live_server, operator) -> Page:
    return logged_in_page(browser_context, live_server, operator)


def open_case(page: Page, live_server, case: Case) -> None:
    page.goto(f"{live_server.url}/admin/cases/case/{case.pk}/change/")


def open_gpu(page: Page, live_server, gpu: GPUResource) -> None:
    page.goto(f"{live_server.url}/admin/gpus/gpuresource/{gpu.pk}/change/")


def run_list_action(page: Page, url: str, labels: list[str], action: str) -> None:
    """Tick the rows whose object is named ``labels`` and run the list action ``action``."""
    page.goto(url)
    for label in labels:
        page.get_by_label(f"Select this object for an action - {label}", exact=True).check()
    page.select_option("select[name=action]", action)
    page.get_by_role("button", name="Go").click()


def click_button(page: Page, label: str) -> None:
    page.get_by_role("button", name=label, exact=True).click()


def confirm(page: Page, action: str, *says: str) -> None:
    """On the action's confirmation page: check that it says ``says``, then confirm."""
    expect(page.locator("h1")).to_contain_text("are you sure?")
    for text in says:
        expect(page.locator("#content-main")).to_contain_text(text)
    page.locator(f"[data-confirm={action}]").click()


def expect_message(page: Page, level: str, text: str) -> None:
    expect(page.locator(f"ul.messagelist li.{level}")).to_contain_text(text)


# --- reading --------------------------------------------------------------------------


def test_an_operator_logs_in_and_reads_the_case_list(browser_context, live_server, operator):
    cases = populate_demo()
    page = browser_context.new_page()

    page.goto(f"{live_server.url}/admin/cases/case/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/cases/case/"))
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()

    expect(page.locator("#result_list")).to_be_visible()
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(9)
    # Active cases first: the newest active case leads, terminal ones follow.
    expect(rows.first).to_contain_text(cases["waiting"].case_id)
    expect(rows.first.locator(".mqi-badge")).to_have_text("Waiting for a GPU")
    simulating = rows.filter(has_text=cases["simulating"].case_id)
    expect(simulating).to_contain_text("70% run_moqui_sim")
    expect(simulating.locator(".field-gpu")).to_have_text(re.compile(r"local:\d|gpu-node-2:0"))
    screenshot(page, "case-list")


def test_a_case_detail_shows_the_timeline_history_and_paths(page, live_server):
    cases = populate_demo()
    case = cases["failed"]

    open_case(page, live_server, case)

    expect(page.locator("h1")).to_have_text("Case")
    expect(page.locator(".field-case_id")).to_contain_text(case.case_id)
    expect(page.locator(".field-status_badge")).to_contain_text("Failed")
    timeline = page.locator("#step-timeline")
    expect(timeline.locator("tbody.mqi-step")).to_have_count(2)
    failed_step = timeline.locator("tbody.mqi-step-failed")
    expect(failed_step).to_contain_text("run_interpreter")
    expect(failed_step).to_contain_text("interpreter exited with 2")
    expect(failed_step.locator("pre.mqi-stderr")).to_contain_text("ValueError: no beam")
    expect(failed_step.locator("pre.mqi-command")).to_contain_text(f"--case {case.case_id} --gpu")
    expect(page.locator("#case-history")).to_contain_text("failed")
    expect(page.locator(".field-remote_case_dir")).to_contain_text(f"upload/{case.case_id}")
    expect(page.locator(".field-source_path")).to_contain_text(f"/incoming/{case.case_id}")
    expect(page.locator("input[name=_save]")).to_have_count(0)
    screenshot(page, "case-detail")


def test_the_overview_shows_counts_running_cases_gpus_and_failures(page, live_server):
    cases = populate_demo()

    page.goto(f"{live_server.url}/admin/")
    page.get_by_role("link", name="Overview").first.click()

    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator("[data-mqi-live]")).to_have_attribute("data-mqi-live", "10")
    expect(page.locator('[data-status="PROCESSING"] .mqi-count-n')).to_have_text("4")
    expect(page.locator('[data-status="COMPLETED"] .mqi-count-n')).to_have_text("2")
    expect(page.locator("#running-cases tbody tr")).to_have_count(4)
    expect(page.locator('[data-host="local"]')).to_contain_text("3 of 3 busy")
    expect(page.locator('[data-host="gpu-node-2"]')).to_contain_text("Maintenance")
    failures = page.locator("#latest-failures")
    expect(failures).to_contain_text("interpreter exited with 2")
    screenshot(page, "overview")

    failures.get_by_role("link", name=cases["failed"].case_id).click()
    expect(page.locator(".field-case_id")).to_contain_text(cases["failed"].case_id)


def test_the_gpu_list_shows_each_gpu_by_host_with_its_case_and_readings(page, live_server):
    cases = populate_demo()
    reserved = GPUResource.objects.get(host="gpu-node-2", index=0)

    page.goto(f"{live_server.url}/admin/gpus/gpuresource/")

    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(5)
    slots = ["gpu-node-2:0", "gpu-node-2:1", "local:0", "local:1", "local:2"]
    expect(rows.locator(".field-slot")).to_contain_text(slots)
    first = rows.nth(0)
    expect(first.locator(".field-status_badge")).to_have_text("Reserved")
    expect(first.locator(".field-held_by")).to_contain_text(holder(reserved).case_id)
    expect(first).to_contain_text("97%")
    expect(first).to_contain_text("18.0 / 24.0 GiB")
    expect(first).to_contain_text("78 °C")
    expect(rows.nth(1).locator(".field-status_badge")).to_have_text("Maintenance")
    screenshot(page, "gpu-list")

    first.locator(".field-held_by a").click()
    expect(page.locator(".field-case_id")).to_contain_text(cases["uploading"].case_id)


# --- acting ---------------------------------------------------------------------------


def test_retry_from_the_failed_step_on_the_detail_page(page, live_server):
    make_gpus(1)
    case = failed_case("retry-1")

    open_case(page, live_server, case)
    click_button(page, "Retry from the failed step")

    expect_message(
        page, "success", "Case retry-1: folder checked again, retrying from run_interpreter"
    )
    case = reload(case)
    assert case.status == Case.Status.PROCESSING
    assert case.steps.filter(name="run_interpreter", attempt=2).exists()


def test_rerun_from_the_start_on_the_detail_page(page, live_server):
    make_gpus(1)
    case = failed_case("rerun-1")

    open_case(page, live_server, case)
    click_button(page, "Re-run from the start")

    expect_message(
        page, "success", "Case rerun-1: folder checked again, re-running from the start as run 2"
    )
    case = reload(case)
    assert (case.status, case.workflow_step) == (Case.Status.PROCESSING, "upload_case_files")
    assert case.steps.filter(name="upload_case_files", attempt=2).exists()


def test_cancel_from_the_list_reports_each_case(page, live_server):
    make_gpus(2)
    running = processing_case("cancel-me")
    done = completed_case("already-done")

    run_list_action(
        page, f"{live_server.url}/admin/cases/case/", ["cancel-me", "already-done"], "cancel"
    )
    confirm(page, "cancel", "cancel-me:run_interpreter#1", "nothing: case already-done")

    expect_message(page, "success", "Case cancel-me: cancelled")
    expect_message(page, "error", "Case already-done is already COMPLETED; nothing to cancel")
    assert reload(running).status == Case.Status.CANCELLED
    assert reload(done).status == Case.Status.COMPLETED
    assert not GPUResource.objects.filter(step_run__case=running).exists()


def test_cancel_on_the_detail_page(page, live_server):
    make_gpus(1)
    case = processing_case("cancel-2")

    open_case(page, live_server, case)
    click_button(page, "Cancel")
    confirm(page, "cancel", "kills its command", "is released")

    expect_message(page, "success", "Case cancel-2: cancelled")
    assert reload(case).status == Case.Status.CANCELLED
    assert case.steps.get(name="run_interpreter").status == WorkflowStep.Status.CANCELLED
    # A cancelled case offers the restarts and nothing else.
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Re-run from the start")).to_be_visible()


def test_priority_up_from_the_list_and_down_on_the_detail_page(page, live_server):
    case = register("prio-1")  # no GPU: it waits, which is when priority matters

    run_list_action(page, f"{live_server.url}/admin/cases/case/", ["prio-1"], "raise_priority")
    expect_message(page, "success", "Case prio-1: priority 0 -> 1")
    assert reload(case).priority == 1

    open_case(page, live_server, case)
    click_button(page, "Lower priority")
    expect_message(page, "success", "Case prio-1: priority 1 -> 0")
    click_button(page, "Lower priority")
    expect_message(page, "success", "Case prio-1: priority 0 -> -1")
    assert reload(case).priority == -1


def test_gpu_maintenance_on_from_the_list_and_off_on_the_detail_page(page, live_server):
    gpu = make_gpus(1, host="node-7")[0]

    run_list_action(
        page, f"{live_server.url}/admin/gpus/gpuresource/", ["node-7:0"], "start_maintenance"
    )
    confirm(page, "start_maintenance", "leaves service now", "No GPU will be in service")
    expect_message(page, "success", "GPU node-7:0: in maintenance")
    gpu.refresh_from_db()
    assert gpu.status == GPUResource.Status.MAINTENANCE

    open_gpu(page, live_server, gpu)
    click_button(page, "End maintenance")
    expect_message(page, "success", "GPU node-7:0: back in service")
    gpu.refresh_from_db()
    assert gpu.status == GPUResource.Status.AVAILABLE


def test_maintenance_of_a_reserved_gpu_drains_it(page, live_server):
    gpu = make_gpus(1)[0]
    case = processing_case("drain-1")

    open_gpu(page, live_server, gpu)
    expect(page.locator(".field-held_by")).to_contain_text("drain-1")
    click_button(page, "Start maintenance")
    confirm(page, "start_maintenance", "holds case drain-1")

    expect_message(page, "success", "drain requested")
    gpu.refresh_from_db()
    assert (gpu.status, gpu.drain_requested) == (GPUResource.Status.RESERVED, True)
    expect(page.locator(".field-status_badge")).to_contain_text("drain pending")
    screenshot(page, "gpu-detail-draining")

    open_case(page, live_server, case)
    click_button(page, "Cancel")
    confirm(page, "cancel")
    expect_message(page, "success", "Case drain-1: cancelled")
    gpu.refresh_from_db()
    assert (gpu.status, gpu.drain_requested) == (GPUResource.Status.MAINTENANCE, False)


# --- who may act, and what is shown as text -------------------------------------------


def test_a_viewer_sees_no_controls_and_a_forged_post_is_refused(
    browser_context, live_server, viewer
):
    make_gpus(1)
    case = processing_case("viewed-1")
    page = logged_in_page(browser_context, live_server, viewer)

    page.goto(f"{live_server.url}/admin/cases/case/")
    expect(page.locator("#result_list")).to_contain_text("viewed-1")
    expect(page.locator("select[name=action]")).to_have_count(0)
    page.goto(f"{live_server.url}/admin/gpus/gpuresource/")
    expect(page.locator("select[name=action]")).to_have_count(0)
    open_case(page, live_server, case)
    expect(page.locator(".field-status_badge")).to_contain_text("Processing")
    expect(page.locator(".mqi-operator-actions")).to_have_count(0)

    # A POST with the viewer's own valid session and CSRF token: still refused.
    status = page.evaluate(
        """async (url) => {
            const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
            const response = await fetch(url, {method: "POST", headers: {"X-CSRFToken": token}});
            return response.status;
        }""",
        f"/admin/cases/case/{case.pk}/operator/cancel/",
    )
    assert status == 403
    assert reload(case).status == Case.Status.PROCESSING


def test_a_case_id_with_markup_is_shown_as_text(page, live_server):
    make_gpus(1)
    case = failed_case(XSS)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(f"{live_server.url}/admin/cases/case/")
    expect(page.locator("#result_list")).to_contain_text(XSS)
    open_case(page, live_server, case)
    expect(page.locator(".field-case_id")).to_contain_text(XSS)
    page.goto(f"{live_server.url}/admin/overview/")
    expect(page.locator("#latest-failures")).to_contain_text(XSS)

    assert dialogs == []
