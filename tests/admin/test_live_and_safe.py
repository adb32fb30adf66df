"""What a physicist sees while cases run, and the actions that ask first, in Chromium.

A running simulation's output tail appears on the case page while it runs (the page
updates itself, keeping the reader's place); cancel and maintenance go through a page
that says what will happen; the overview says when cases wait and no GPU is in service,
and lists the waiting line.  Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from cases import admin as case_admin
from cases.models import Case, WorkflowStep
from cases.services import step_run_heartbeat
from conductor import maintenance
from conductor.operations import case_change_priority
from gpus.models import GPUResource
from mqi_site.config import get_config
from tests.admin.helpers import (
    logged_in_page,
    populate_demo,
    processing_case,
    reload,
    screenshot,
)
from tests.admin.test_browser import confirm, expect_message, run_list_action
from tests.conductor.helpers import active_run, make_gpus, register, register_sample
from tests.workers.conftest import wait_for, workers  # noqa: F401  (the fixture)
from workers.executor import remote_run_dir

pytestmark = pytest.mark.django_db(transaction=True)

BATCHES = 5


@pytest.fixture
def page(browser_context: BrowserContext, live_server, operator, monkeypatch) -> Page:
    # a short update interval keeps the tests short; the page reads it from the context
    monkeypatch.setattr(case_admin, "LIVE_REFRESH_SECONDS", 1)
    return logged_in_page(browser_context, live_server, operator)


@pytest.fixture
def slow_simulation(use_config):
    """The shipped (local) config with a simulation of BATCHES batches, 3 s each."""

    def slow(raw: dict) -> None:
        raw["remote_commands"]["run_moqui_sim"] += f" --batches {BATCHES} --batch-seconds 3"

    use_config(slow)


def case_url(live_server, case: Case) -> str:
    return f"{live_server.url}/admin/cases/case/{case.pk}/change/"


def simulation(case: Case) -> WorkflowStep:
    return case.steps.get(name="run_moqui_sim")


def open_while_simulating(page: Page, live_server, case_id: str) -> Case:
    """A case run by the real workers, its page open, until the simulation has printed
    its second batch line (seen on the page, which updates itself)."""
    case = register_sample(case_id)
    page.goto(case_url(live_server, case))
    timeline = page.locator("#step-timeline")
    expect(timeline).to_contain_text(f"(2 of {BATCHES} batches)", timeout=60_000)
    return case


def test_the_output_tail_appears_while_the_simulation_runs(
    page,
    live_server,
    slow_simulation,
    workers,  # noqa: F811
):
    make_gpus(1, host="local")

    case = open_while_simulating(page, live_server, "live-1")

    run = simulation(case)
    assert run.status == WorkflowStep.Status.RUNNING and run.finished_at is None
    assert f"(2 of {BATCHES} batches)" in run.stdout_tail
    expect(page.locator(".field-progress_bar")).to_contain_text("run_moqui_sim")
    screenshot(page, "case-live-output")
    case_admin.case_cancel(case_pk=case.pk, actor="test")  # no need to wait for the end


def test_cancel_asks_first_then_keeps_the_output(
    page,
    live_server,
    slow_simulation,
    workers,  # noqa: F811
):
    make_gpus(1, host="local")
    case = open_while_simulating(page, live_server, "cancel-live")

    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#content-main")).to_contain_text("cancel-live:run_moqui_sim#1")
    expect(page.locator("#content-main")).to_contain_text("kills its command")
    expect(page.locator("#content-main")).to_contain_text("GPU local:0 is released")
    assert reload(case).status == Case.Status.PROCESSING  # asking changed nothing
    screenshot(page, "case-cancel-confirmation")
    confirm(page, "cancel")

    expect_message(page, "success", "Case cancel-live: cancelled")
    run = simulation(case)
    printed = command_stdout(case, run)
    # the cancel's own last look is stored: everything the command printed until killed
    wait_for(lambda: reload_run(run).stdout_tail == printed.read_text(), 30, "the kept output")
    assert run.status == WorkflowStep.Status.CANCELLED
    assert f"(2 of {BATCHES} batches)" in run.stdout_tail
    page.reload()
    expect(page.locator("#step-timeline")).to_contain_text(f"(2 of {BATCHES} batches)")
    expect(page.locator("[data-mqi-live]")).to_have_count(0)  # ended: no more updates


def command_stdout(case: Case, run: WorkflowStep) -> Path:
    paths = get_config().run_paths(case.case_id, run.run.number, run.host)
    return Path(remote_run_dir(paths.case_dir, run.name, run.pk)) / "stdout"


def reload_run(run: WorkflowStep) -> WorkflowStep:
    run.refresh_from_db()
    return run


def test_the_page_updates_itself_and_keeps_the_readers_place(page, live_server):
    make_gpus(1)
    case = processing_case("scroll-1")
    for _ in range(40):  # a long history: the page scrolls
        case_change_priority(case_pk=case.pk, by=1, actor="operator")
    page.set_viewport_size({"width": 1280, "height": 600})
    page.goto(case_url(live_server, case))
    page.evaluate("window.scrollTo(0, 700)")
    assert page.evaluate("window.scrollY") == 700

    step_run_heartbeat(
        step_run_id=active_run(case).pk,
        deadline_sec=600,
        tails=("reading plan\nnew line from the interpreter\n", ""),
    )

    expect(page.locator("#step-timeline")).to_contain_text("new line from the interpreter")
    assert page.evaluate("window.scrollY") == 700


def test_maintenance_of_a_busy_or_the_last_gpus_asks_first(page, live_server):
    _busy, free = make_gpus(2, host="node-1")
    processing_case("holder-1")
    gpu_list = f"{live_server.url}/admin/gpus/gpuresource/"

    run_list_action(page, gpu_list, ["node-1:0", "node-1:1"], "start_maintenance")

    content = page.locator("#content-main")
    expect(content).to_contain_text("holds case holder-1 (run_interpreter)")
    expect(content).to_contain_text("leaves service now")
    expect(content).to_contain_text("No GPU will be in service")
    screenshot(page, "gpu-maintenance-confirmation")
    page.get_by_role("link", name="No, take me back").click()
    expect(page.locator("#result_list")).to_be_visible()
    statuses = set(GPUResource.objects.values_list("status", "drain_requested"))
    assert statuses == {("RESERVED", False), ("AVAILABLE", False)}

    # a free GPU while another stays in service: no question
    run_list_action(page, gpu_list, ["node-1:1"], "start_maintenance")
    expect_message(page, "success", "GPU node-1:1: in maintenance")
    free.refresh_from_db()
    assert free.status == GPUResource.Status.MAINTENANCE


def test_the_overview_warns_when_cases_wait_and_no_gpu_is_in_service(page, live_server):
    for gpu in make_gpus(2):
        maintenance.gpu_start_maintenance(gpu_pk=gpu.pk, actor="operator")
    register("old-normal")
    urgent = register("new-urgent")
    register("newest-normal")
    case_change_priority(case_pk=urgent.pk, by=5, actor="operator")

    page.goto(f"{live_server.url}/admin/overview/")

    expect(page.locator("#no-gpu-warning")).to_contain_text(
        "3 cases wait for a GPU and no GPU is in service"
    )
    rows = page.locator("#waiting-cases tbody tr")
    expect(rows).to_have_count(3)
    for position, case_id in enumerate(["new-urgent", "old-normal", "newest-normal"], 1):
        expect(rows.nth(position - 1)).to_contain_text(f"{position} {case_id}")
    screenshot(page, "overview-no-gpu-in-service")

    maintenance.gpu_end_maintenance(gpu_pk=GPUResource.objects.first().pk, actor="operator")
    page.reload()
    expect(page.locator("#no-gpu-warning")).to_have_count(0)


SCROLLING_BOXES = """() => Array.from(document.querySelectorAll(".results, .module, #content"))
    .filter((box) => box.scrollWidth > box.clientWidth + 1)
    .map((box) => (box.id || box.className) + " " + box.scrollWidth + ">" + box.clientWidth)"""


def test_no_page_scrolls_sideways_at_1280_px(page, live_server):
    cases = populate_demo()
    long_line = "Generating particles for (3 of 5 batches) " + "x" * 400
    WorkflowStep.objects.filter(case=cases["failed"]).update(
        stdout_tail=long_line + "\n", stderr_tail=long_line, error_message=long_line
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    admin = f"{live_server.url}/admin"
    pages = {
        "case-list": f"{admin}/cases/case/",
        "gpu-list": f"{admin}/gpus/gpuresource/",
        "overview": f"{admin}/overview/",
        **{f"case-{name}": case_url(live_server, case) for name, case in cases.items()},
    }

    too_wide = {}
    for name, url in pages.items():
        page.goto(url)
        width = page.evaluate("document.documentElement.scrollWidth")
        # the case list's table scrolls inside its own box (.results): clipped, not wide
        boxes = page.evaluate(SCROLLING_BOXES)
        if width > 1280 or boxes:
            too_wide[name] = (width, boxes)
        if not name.startswith("case-") or name == "case-list" or width > 1280 or boxes:
            screenshot(page, f"at-1280-{name}")

    assert too_wide == {}
    page.goto(pages["case-failed"])
    screenshot(page, "case-failed-1280")
