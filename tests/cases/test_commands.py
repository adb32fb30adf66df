"""Management commands, through call_command: each changes state only through the
conductor's functions, and --dry-run changes nothing."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from cases.models import Case, CaseEvent, WorkflowStep
from mqi_site.messaging import ErrorKind
from tests.conductor.helpers import (
    active_run,
    fail,
    held_gpu,
    make_gpus,
    register,
    register_sample,
    run_to_completion,
    succeed,
)
from tests.qa_cases import evaluated_case, results_dir

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def failed_case(case_id: str, kind: str = ErrorKind.PERMANENT, at_interpreter: bool = True) -> Case:
    case = register_sample(case_id)
    if at_interpreter:
        succeed(active_run(case))
    fail(active_run(case), kind, f"{case_id} broke")
    case.refresh_from_db()
    return case


def snapshot():
    return (
        list(Case.objects.order_by("pk").values_list("status", "workflow_step", "priority")),
        WorkflowStep.objects.count(),
        CaseEvent.objects.count(),
    )


@pytest.fixture
def gpus():
    return make_gpus(4)


def test_replay_failed_dry_run_changes_nothing(gpus, stub_broker):
    failed_case("a")
    failed_case("b")
    before = snapshot()

    out, _ = run("replay_failed", "--dry-run")

    assert snapshot() == before
    assert "would replay from the failed step: a" in out
    assert "would replay 2 case(s)" in out


def test_replay_failed_retries_every_failed_case_from_the_failed_step(gpus, stub_broker):
    failed_case("a")
    failed_case("b")

    out, _ = run("replay_failed")

    assert "replayed 2 case(s)" in out
    for case in Case.objects.all():
        assert case.status == Case.Status.PROCESSING
        assert active_run(case).name == "run_interpreter"
        assert active_run(case).attempt == 2


def test_replay_failed_by_case_id_from_the_start(gpus, stub_broker):
    failed_case("a")
    failed_case("b")

    run("replay_failed", "a", "--from-start")

    assert active_run(Case.objects.get(case_id="a")).name == "upload_case_files"
    assert Case.objects.get(case_id="b").status == Case.Status.FAILED


def test_replay_failed_by_error_kind(gpus, stub_broker):
    failed_case("a", kind=ErrorKind.TIMEOUT)
    failed_case("b", kind=ErrorKind.PERMANENT)

    run("replay_failed", "--error-kind", "timeout")

    assert Case.objects.get(case_id="a").status == Case.Status.PROCESSING
    assert Case.objects.get(case_id="b").status == Case.Status.FAILED


def test_replay_failed_by_time_window(gpus, stub_broker):
    with time_machine.travel(timezone.now() - timedelta(hours=5)):
        failed_case("old")
    failed_case("new")

    run("replay_failed", "--since", "2h")

    assert Case.objects.get(case_id="new").status == Case.Status.PROCESSING
    assert Case.objects.get(case_id="old").status == Case.Status.FAILED


def test_replay_failed_names_cases_that_are_not_failed(gpus, stub_broker):
    register("running")

    with pytest.raises(CommandError, match="not failed \\(or unknown\\): ghost, running"):
        run("replay_failed", "running", "ghost")


def test_cancel_case_dry_run_changes_nothing(gpus, stub_broker):
    register("a")
    before = snapshot()

    out, _ = run("cancel_case", "a", "--dry-run")

    assert snapshot() == before
    assert "would cancel a:" in out
    assert "a:upload_case_files#1 (Dispatched on GPU local:0): stops it" in out
    assert "GPU local:0 is released" in out


def test_cancel_case_dry_run_refuses_what_the_real_command_refuses(gpus, stub_broker):
    completed = register("done")
    Case.objects.filter(pk=completed.pk).update(status=Case.Status.COMPLETED)

    with pytest.raises(CommandError, match="1 of 1 case\\(s\\) would be not cancelled"):
        run("cancel_case", "done", "--dry-run")
    with pytest.raises(CommandError, match="1 of 1 case\\(s\\) not cancelled"):
        run("cancel_case", "done")


def test_cancel_case_cancels_and_releases_the_gpu(gpus, stub_broker):
    register("a")

    out, _ = run("cancel_case", "a")

    case = Case.objects.get(case_id="a")
    assert case.status == Case.Status.CANCELLED
    assert held_gpu(case) is None
    assert "cancelled a" in out


def test_cancel_case_refuses_finished_and_unknown_cases(gpus, stub_broker):
    failed_case("done")

    with pytest.raises(CommandError, match="2 of 2 case"):
        run("cancel_case", "done", "ghost")


def test_case_status_shows_one_case_timeline(gpus, stub_broker):
    failed_case("a")

    out, _ = run("case_status", "a")

    assert "status    Failed" in out
    assert "run_interpreter" in out and "[permanent] a broke" in out
    assert "created" in out and "failed" in out


def test_case_status_prints_the_results_folder_and_the_qa_verdict(gpus, stub_broker):
    case = evaluated_case("qa", stub_broker, factor=1.1)

    out, _ = run("case_status", "qa")

    assert f"results   {results_dir(case)}   (run 1)" in out
    assert "QA        QA failed (pass rate >= 95%): gamma 3%/2mm " in out


def test_case_status_summary_counts_every_status(gpus, stub_broker):
    register("running")
    failed_case("broken")

    out, _ = run("case_status")

    assert "Processing: 1" in out and "Failed: 1" in out and "Completed: 0" in out
    assert "Waiting for a GPU: 0" in out
    assert "running" in out and "broken broke" in out


def test_case_status_prints_the_whole_failure_message(gpus, stub_broker):
    case = failed_case("long")
    message = "the interpreter said: " + "x" * 300 + " THE END"
    Case.objects.filter(pk=case.pk).update(error_message=message)

    summary, _ = run("case_status")
    one, _ = run("case_status", "long")

    assert message in summary and message in one


def test_case_status_names_statuses_as_the_pages_do(stub_broker):
    register("waits")  # no GPU at all: it waits for one

    out, _ = run("case_status", "waits")

    assert "status    Waiting for a GPU" in out
    assert "PENDING_RESOURCE" not in out


@pytest.mark.parametrize("zone, label", [("UTC", "UTC"), ("Europe/Zurich", "CET")])
def test_case_status_shows_times_in_the_sites_zone_with_its_label(
    gpus, stub_broker, settings, zone, label
):
    settings.TIME_ZONE = zone
    with time_machine.travel("2026-11-29 18:44:36Z", tick=False):
        completed = register_sample("timed")
    with time_machine.travel("2026-11-29 18:50:00Z", tick=False):
        run_to_completion(completed)

    out, _ = run("case_status", "timed")

    local = "18:44:36" if zone == "UTC" else "19:44:36"
    assert f"found 2026-11-29 {local} {label}" in out
    assert "waited 0 s" in out and "ran 5 min 24 s" in out
    assert "Completed  Done" in out


def test_case_status_of_an_unknown_case_is_an_error():
    with pytest.raises(CommandError, match="no case 'ghost'"):
        run("case_status", "ghost")


def test_reconcile_dry_run_lists_without_acting(gpus, stub_broker):
    case = register("a")
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        out, _ = run("reconcile", "--dry-run")
        assert not CaseEvent.objects.filter(case=case, kind="redriven").exists()
        assert "would have: re-driven 1" in out
        assert "re-drive a:upload_case_files#1" in out
        out, _ = run("reconcile")
    assert "re-driven 1" in out
