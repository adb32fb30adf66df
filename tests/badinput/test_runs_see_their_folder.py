"""A run computes from exactly the folder that was checked, and nothing else.

The whole system runs in this process on a site (local transport, stand-in tools): logs
of another patient or beam never start, a folder changed after its check is not
uploaded, a retry on a changed folder starts again from the upload, and whatever an
earlier upload or run left on the GPU server is gone before a command runs.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from cases.models import Case, CaseEvent
from conductor.operations import case_cancel, case_retry
from conductor.transitions import CaseStateError
from mqi_site.config import get_config
from mqi_site.messaging import ErrorKind
from tests.badinput.conftest import Site
from tests.badinput.test_folders_that_change import status, waiting_behind_a_hanging_case
from tests.workers.conftest import wait_for, wait_terminal
from workers.gpu_discovery.sync import sync_gpus
from workers.scanner.scan import scan_cases

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def found(site: Site, name: str, **switches: str):
    sync_gpus(get_config())
    folder = site.sample(name, **switches)
    return folder


def run_until_done(*case_ids: str) -> list[Case]:
    scan_cases(get_config())
    return wait_terminal(*case_ids)


def retag(log, **header: str) -> None:
    """Rewrite ``# key: value`` header lines of a stand-in log."""
    lines = log.read_text().splitlines()
    for number, line in enumerate(lines):
        for key, value in header.items():
            if line.startswith(f"# {key}:"):
                lines[number] = f"# {key}: {value}"
    log.write_text("\n".join(lines) + "\n")


def test_a_log_of_another_patient_fails_the_case_before_anything_runs(site, workers):
    folder = found(site, "QA-foreign-log")
    retag(folder / "QA0001_beam2.ptn", patient_id="QA0999")

    (case,) = run_until_done("QA-foreign-log")

    assert (case.status, case.error_kind) == (Case.Status.FAILED, ErrorKind.INVALID_INPUT)
    assert case.error_message == (
        "invalid case folder: QA0001_beam2.ptn names patient 'QA0999', but the plan "
        "RP.plan.dcm is for patient 'QA0001'"
    )
    assert case.log_check == "failed"
    assert not case.steps.exists()
    assert not site.upload_dir.exists() or not any(site.upload_dir.iterdir())


def test_a_log_of_a_beam_the_plan_does_not_have_fails_the_case(site, workers):
    folder = found(site, "QA-foreign-beam")
    retag(folder / "QA0001_beam2.ptn", beam_number="7")

    (case,) = run_until_done("QA-foreign-beam")

    assert case.error_kind == ErrorKind.INVALID_INPUT
    assert "QA0001_beam2.ptn names beam 7, which is not a treatment beam of the plan" in (
        case.error_message
    )
    assert "beam 2 (B2 G270) of the plan RP.plan.dcm has no delivery log" in case.error_message
    assert not case.steps.exists()


def test_the_case_records_who_and_what_from_the_plan(site, workers):
    found(site, "QA-who")

    (case,) = run_until_done("QA-who")

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert (case.patient_id, case.patient_name, case.plan_label) == (
        "QA0001",
        "QA^Case0001",
        "QA0001 PBS",
    )
    assert case.treatment_machine == "PBS-G1"
    assert case.beam_count == 2
    assert case.beams == [{"number": 1, "name": "B1 G090"}, {"number": 2, "name": "B2 G270"}]
    assert case.plan_date is not None
    assert case.log_check == "passed"
    assert case.current_run.manifest == case.manifest


def test_a_folder_changed_while_its_case_waits_is_not_uploaded(site, workers):
    folder = waiting_behind_a_hanging_case(site, "QA-late-change")
    (folder / "QA0001_beam3.ptn").write_text("# patient_id: QA0001\n# beam_number: 1\n")

    case_cancel(case_pk=Case.objects.get(case_id="QA-holder").pk, actor="test")
    (case,) = wait_terminal("QA-late-change")

    assert (case.status, case.error_kind) == (Case.Status.FAILED, ErrorKind.INVALID_INPUT)
    assert case.error_message == (
        "upload_case_files failed: the case folder changed after it was checked (added "
        "QA0001_beam3.ptn); nothing was run on it: re-run the case from the start to check "
        "the folder again"
    )
    assert not site.case_dir("QA-late-change").exists()


def test_a_retry_after_the_folder_changed_starts_again_from_the_upload(site, workers):
    folder = found(site, "QA-changed", MQI_FAIL_MOQUI="4 out of GPU memory")
    (failed,) = run_until_done("QA-changed")
    assert failed.workflow_step == "run_moqui_sim"

    (folder / "MQI_FAIL_MOQUI").unlink()  # the physicist fixes what made it fail
    _, said = case_retry(case_pk=failed.pk, actor="physicist")
    (case,) = wait_terminal("QA-changed")

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert said.startswith("re-running from the start as run 2 (the folder changed since run 1")
    assert "removed MQI_FAIL_MOQUI" in said
    assert case.current_run.number == 2
    assert site.starts("QA-changed", "interpreter") == 2  # once in each run
    assert not (site.case_dir("QA-changed") / "MQI_FAIL_MOQUI").exists()
    assert CaseEvent.objects.filter(case=case, kind="replayed", actor="physicist").exists()


def test_a_retry_of_a_folder_that_is_still_invalid_changes_nothing_but_the_reasons(site, workers):
    folder = found(site, "QA-still-bad")
    (folder / "QA0001_beam2.ptn").write_bytes(b"")
    (case,) = run_until_done("QA-still-bad")
    assert case.error_message == "invalid case folder: QA0001_beam2.ptn is empty (0 bytes)"

    (folder / "QA0001_beam1.ptn").write_bytes(b"")  # a second mistake while fixing
    with pytest.raises(CaseStateError, match="was not restarted"):
        case_retry(case_pk=case.pk, actor="physicist")
    out = StringIO()
    call_command("replay_failed", "QA-still-bad", "--from-start", stdout=out, stderr=out)

    case.refresh_from_db()
    assert (case.status, case.error_kind) == (Case.Status.FAILED, ErrorKind.INVALID_INPUT)
    assert case.error_message == (
        "invalid case folder: QA0001_beam1.ptn is empty (0 bytes); "
        "QA0001_beam2.ptn is empty (0 bytes)"
    )
    assert "skipped QA-still-bad: case QA-still-bad was not restarted" in out.getvalue()
    assert not case.steps.exists() and not case.runs.exists()


def test_what_an_earlier_upload_left_on_the_server_is_removed_before_commands_run(site, workers):
    # as if the database had been reset: the run folders exist already, with stale files
    stale_input = site.upload_dir / "QA-stale" / "run-1" / "QA0001_beam9.ptn"
    stale_output = site.download_dir / "QA-stale" / "run-1" / "RTDOSE-old.dcm"
    for stale in (stale_input, stale_output):
        stale.parent.mkdir(parents=True)
        stale.write_text("from an earlier life")
    found(site, "QA-stale")

    (case,) = run_until_done("QA-stale")

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert not stale_input.exists() and not stale_output.exists()
    assert not (site.results("QA-stale") / "RTDOSE-old.dcm").exists()
    assert {f.path for f in case.current_run.result_files.all()} >= {"RTDOSE.dcm"}


def test_a_folder_without_its_marker_is_not_restarted(site, workers):
    folder = found(site, "QA-unmarked", MQI_FAIL_INTERPRETER="2 wrong")
    (case,) = run_until_done("QA-unmarked")
    (folder / "READY").unlink()

    with pytest.raises(CaseStateError, match="the folder is not complete: it has no READY file"):
        case_retry(case_pk=case.pk, from_start=True, actor="physicist")
    wait_for(lambda: status("QA-unmarked") == Case.Status.FAILED, 5, "the case to stay failed")
