"""The evaluate worker on real files and a real database: a sample case (plan, delivery
logs and its planning system's dose, RD.tps.dcm) brought to its evaluate step by the
conductor, with MOQUI's dose in its results folder made from the planning system's.

The worker runs in the test's thread; the messages it sends are delivered to the conductor
actor by hand, as the broker would."""

from __future__ import annotations

from pathlib import Path

import pytest

from cases.models import Case, QAResult, WorkflowStep
from gpus.models import GPUResource
from mqi_site.messaging import QUEUES, Command
from tests.conductor.helpers import make_gpus, register_sample
from tests.conftest import drain
from tests.qa_cases import TPS_DOSE, at_evaluation, evaluated, moqui_dose, results_dir
from workers import evaluate

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def gpus(stub_broker):
    return make_gpus(1)


def test_a_dose_that_matches_the_tps_dose_passes_qa_on_no_gpu(stub_broker, gpus):
    case = register_sample("qa-pass")
    run = at_evaluation(case, moqui_dose(case, "RTDOSE.dcm"))

    assert run.gpu is None
    assert GPUResource.objects.get().status == GPUResource.Status.AVAILABLE
    case = evaluated(run, stub_broker)

    assert (case.status, case.qa_verdict) == ("COMPLETED", "PASSED")
    result = QAResult.objects.get(step_run=run)
    assert [(c.label, c.pass_rate_pct, c.passed) for c in result.criteria.all()] == [
        ("3%/2mm", 100.0, True),
        ("2%/2mm", 100.0, True),
    ]
    assert all(bytes(c.gamma_png).startswith(b"\x89PNG") for c in result.criteria.all())
    assert result.reference_files[0]["path"] == TPS_DOSE
    assert result.evaluated_files[0]["path"] == "RTDOSE.dcm"
    assert case.events.filter(kind="qa_passed").exists()
    assert WorkflowStep.objects.get(pk=run.pk).stdout_tail.startswith("PASSED")


def test_a_dose_ten_percent_high_fails_qa_and_the_case_still_completes(stub_broker):
    case = register_sample("qa-fail")
    run = at_evaluation(case, moqui_dose(case, "RTDOSE.dcm", factor=1.1))

    case = evaluated(run, stub_broker)

    assert (case.status, case.qa_verdict) == ("COMPLETED", "FAILED")
    result = QAResult.objects.get(step_run=run)
    assert all(c.pass_rate_pct < 95 and not c.passed for c in result.criteria.all())
    event = case.events.get(kind="qa_failed")
    assert event.message.startswith("QA failed (pass rate >= 95%): gamma 3%/2mm")


def test_doses_written_per_beam_are_summed_before_the_comparison(stub_broker):
    case = register_sample("qa-beams")
    run = at_evaluation(
        case,
        moqui_dose(case, "beam-1/RTDOSE.dcm", beam=1),
        moqui_dose(case, "beam-2/RTDOSE.dcm", beam=2),
    )

    case = evaluated(run, stub_broker)

    assert case.qa_verdict == "PASSED"
    result = QAResult.objects.get(step_run=run)
    assert [f["path"] for f in result.evaluated_files] == [
        "beam-1/RTDOSE.dcm",
        "beam-2/RTDOSE.dcm",
    ]
    assert {c.pass_rate_pct for c in result.criteria.all()} == {100.0}


def test_a_case_folder_without_a_tps_dose_is_completed_not_evaluated(stub_broker):
    case = register_sample("qa-no-tps", without=[TPS_DOSE])
    run = at_evaluation(case, moqui_dose_without_tps(case))

    case = evaluated(run, stub_broker)

    assert (case.status, case.qa_verdict) == ("COMPLETED", "NOT_EVALUATED")
    assert WorkflowStep.objects.get(pk=run.pk).status == "SUCCEEDED"
    result = QAResult.objects.get(step_run=run)
    assert result.describe() == "not evaluated: no TPS dose in the case folder"
    assert not result.criteria.exists()


def moqui_dose_without_tps(case: Case) -> Path:
    """A dose in the results of a case whose folder holds no planning system's dose."""
    template = Path(case.source_path).parent.parent / "templates" / "case-001" / TPS_DOSE
    target = results_dir(case) / "RTDOSE.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(template.read_bytes())
    return target


def test_a_corrupt_dose_fails_the_step_for_good_saying_why(stub_broker):
    case = register_sample("qa-corrupt")
    dose = moqui_dose(case, "RTDOSE.dcm")
    dose.write_bytes(dose.read_bytes()[:-5000])  # the pixel data cut short
    run = at_evaluation(case, dose)

    case = evaluated(run, stub_broker)

    assert (case.status, case.error_kind, case.qa_verdict) == ("FAILED", "permanent", "")
    assert "QA evaluation failed: RTDOSE.dcm" in case.error_message
    assert not QAResult.objects.exists()


def test_results_without_an_rt_dose_fail_the_step(stub_broker):
    case = register_sample("qa-no-dose")
    log = results_dir(case) / "moqui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("done\n")
    run = at_evaluation(case, log)

    case = evaluated(run, stub_broker)

    assert (case.status, case.error_kind) == ("FAILED", "permanent")
    assert "hold no RT Dose" in case.error_message


def test_a_result_changed_after_its_download_is_not_evaluated(stub_broker):
    case = register_sample("qa-changed")
    dose = moqui_dose(case, "RTDOSE.dcm")
    run = at_evaluation(case, dose)
    moqui_dose(case, "RTDOSE.dcm", factor=1.01)

    case = evaluated(run, stub_broker)

    assert case.status == "FAILED"
    assert "RTDOSE.dcm is no longer the file of run 1's results" in case.error_message


def test_a_result_that_links_out_of_the_results_folder_is_not_read(stub_broker, tmp_path):
    case = register_sample("qa-link")
    outside = moqui_dose(case, "RTDOSE.dcm").rename(tmp_path / "elsewhere.dcm")
    link = results_dir(case) / "RTDOSE.dcm"
    link.symlink_to(outside)
    run = at_evaluation(case, link)

    case = evaluated(run, stub_broker)

    assert case.status == "FAILED"
    assert "RTDOSE.dcm leads out of" in case.error_message


def test_a_step_run_cancelled_meanwhile_records_and_reports_nothing(stub_broker):
    case = register_sample("qa-cancelled")
    run = at_evaluation(case, moqui_dose(case, "RTDOSE.dcm"))
    WorkflowStep.objects.filter(pk=run.pk).update(status=WorkflowStep.Status.CANCELLED)

    evaluate.handle(Command.EVALUATE_RESULTS, {"case_id": case.case_id, "step_run_id": run.pk})

    assert not QAResult.objects.exists()
    assert drain(stub_broker, QUEUES["conductor"]) == []
