"""The story that made results untrustworthy, replayed through the admin in Chromium.

A case failed after its upload; the physicist first "fixed" the folder with a plan that
is not DICOM, then with the right plan and logs, and clicked *Re-run from the start*
each time.  The still-invalid folder must not start (clear reason, no GPU taken, no
run); the fixed one runs in a run of its own, and its commands can see only the new
files: nothing of the first upload survives where they look.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from cases.models import Case, CaseRun
from gpus.models import GPUResource
from mqi_site.config import get_config
from mqi_site.messaging import ErrorKind
from tests.admin.helpers import logged_in_page, screenshot
from tests.badinput.conftest import site as site
from tests.conftest import REPO_DIR
from tests.workers.conftest import wait_terminal
from tests.workers.conftest import workers as workers
from workers.gpu_discovery.sync import sync_gpus
from workers.scanner.scan import scan_cases

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@pytest.fixture
def page(browser_context, live_server, operator) -> Page:
    return logged_in_page(browser_context, live_server, operator)


def another_patients_case(tmp_path: Path) -> Path:
    """A second sample case: patient QA0002, its own plan and logs."""
    out = tmp_path / "samples"
    builder = REPO_DIR / "hpc_standins" / "make_sample_cases.py"
    subprocess.run(
        [sys.executable, str(builder), str(out), "--count", "2"],
        check=True,
        capture_output=True,
    )
    return out / "case-002"


def files_the_commands_see(case_dir: Path) -> list[str]:
    """The run folder's files, less what the system and the stand-ins wrote there."""
    return sorted(
        str(path.relative_to(case_dir))
        for path in case_dir.rglob("*")
        if path.is_file() and not path.relative_to(case_dir).parts[0].startswith(".mqi")
    )


def rerun(page: Page, live_server, case: Case) -> None:
    page.goto(f"{live_server.url}/admin/cases/case/{case.pk}/change/")
    page.get_by_role("button", name="Re-run from the start", exact=True).click()


def test_a_fixed_folder_reruns_on_its_new_files_only(site, workers, page, live_server, tmp_path):
    sync_gpus(get_config())
    folder = site.sample("QA-story", MQI_FAIL_INTERPRETER="3 the plan was exported twice")
    scan_cases(get_config())
    (first,) = wait_terminal("QA-story")
    assert (first.status, first.workflow_step) == (Case.Status.FAILED, "run_interpreter")
    first_upload = site.case_dir("QA-story")
    assert "QA0001_beam2.ptn" in files_the_commands_see(first_upload)

    # 1. a wrong fix: the plan report instead of the plan
    (folder / "RP.plan.dcm").write_text("%PDF-1.4 the plan report, not the plan\n")
    (folder / "MQI_FAIL_INTERPRETER").unlink()
    rerun(page, live_server, first)

    expect(page.locator("ul.messagelist li.error")).to_contain_text(
        "RP.plan.dcm is not a DICOM file"
    )
    refused = Case.objects.get(pk=first.pk)
    assert (refused.status, refused.error_kind) == (Case.Status.FAILED, ErrorKind.INVALID_INPUT)
    assert "RP.plan.dcm is not a DICOM file" in refused.error_message
    assert CaseRun.objects.filter(case=refused).count() == 1
    assert not GPUResource.objects.filter(status=GPUResource.Status.RESERVED).exists()

    # 2. the right fix: another export, patient QA0002, with its own logs
    for old in folder.glob("*.ptn"):
        old.unlink()
    (folder / "RP.plan.dcm").unlink()
    fixed = another_patients_case(tmp_path)
    for new in fixed.iterdir():
        if new.name != "READY":
            shutil.copy2(new, folder / new.name)
    rerun(page, live_server, refused)
    expect(page.locator("ul.messagelist li.success")).to_contain_text(
        "re-running from the start as run 2"
    )
    (case,) = wait_terminal("QA-story")

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert case.patient_id == "QA0002"
    run = case.current_run
    assert run.number == 2
    wanted = sorted(entry["path"] for entry in case.manifest)
    assert wanted == sorted(path.name for path in folder.iterdir())
    assert files_the_commands_see(site.case_dir("QA-story")) == wanted
    summary = json.loads(
        (site.results("QA-story") / "moqui_input" / "plan_summary.json").read_text()
    )
    assert summary["patient_id"] == "QA0002"
    assert sorted(log["file"] for log in summary["logs"]) == [
        "QA0002_beam1.ptn",
        "QA0002_beam2.ptn",
    ]
    assert run.manifest == case.manifest
    assert sorted(f.path for f in run.result_files.all()) == sorted(
        str(path.relative_to(site.results("QA-story")))
        for path in site.results("QA-story").rglob("*")
        if path.is_file()
    )

    page.goto(f"{live_server.url}/admin/cases/case/{case.pk}/change/")
    expect(page.locator(".field-patient_id")).to_contain_text("QA0002")
    expect(page.locator("#case-folder")).to_contain_text("unchanged since run 2")
    current = page.locator("tbody.mqi-run-current")
    expect(current).to_contain_text("run 2")
    expect(current).to_contain_text("RTDOSE.dcm")
    expect(page.locator("tbody.mqi-run[data-run='1']")).to_contain_text(
        "found in the watch directory"
    )
    screenshot(page, "case-rerun-story")

    # the folder changes after the run: the page says so
    (folder / "notes.txt").write_text("added after the run\n")
    page.reload()
    expect(page.locator("#case-folder")).to_contain_text(
        "the folder changed after run 2: added notes.txt"
    )
