"""The reconciler re-drives what lost messages left behind, with the clock mocked."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from cases.models import Case, CaseEvent, WorkflowStep
from conductor import machine
from conductor.reconcile import reconcile
from gpus.models import GPUResource
from mqi_site.messaging import QUEUES, Command
from tests.conductor.helpers import active_run, holder, make_gpus, register, succeed
from tests.conftest import drain

# the shipped config's conductor.dispatch_grace_sec
DISPATCH_GRACE = timedelta(seconds=120)

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_lost_dispatch_is_sent_again_once_the_deadline_passes(stub_broker):
    make_gpus(1)
    case = register("case-1")
    run = active_run(case)
    drain(stub_broker, QUEUES["file_transfer"])  # the broker lost it

    assert not reconcile().redriven  # before the deadline nothing happens

    with time_machine.travel(timezone.now() + DISPATCH_GRACE + timedelta(seconds=1)):
        report = reconcile()

    assert report.redriven == [str(run)]
    (message,) = drain(stub_broker, QUEUES["file_transfer"])
    assert list(message.args) == [Command.UPLOAD_CASE, {"case_id": "case-1", "step_run_id": run.pk}]
    assert CaseEvent.objects.filter(case=case, kind="redriven").count() == 1
    assert active_run(case) == run  # the same step run: workers treat it idempotently


def test_a_step_run_silent_after_every_resend_fails_as_transient_and_is_retried(stub_broker):
    make_gpus(1)
    case = register("case-1")
    run = active_run(case)
    now = timezone.now()

    for _ in range(machine.MAX_REDRIVES + 1):
        now += DISPATCH_GRACE + timedelta(seconds=1)
        with time_machine.travel(now):
            reconcile()

    run.refresh_from_db()
    assert run.status == WorkflowStep.Status.FAILED
    assert "no word from the worker" in run.error_message
    assert active_run(case).attempt == 2


def test_a_gpu_booked_by_a_step_run_that_ended_is_released_with_a_history_entry(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1")
    # Simulate a booking the state cannot explain (e.g. an old bug or a manual edit).
    Case.objects.filter(pk=case.pk).update(status=Case.Status.FAILED)
    WorkflowStep.objects.filter(case=case).update(status=WorkflowStep.Status.FAILED)
    waiting = register("case-2")

    report = reconcile()

    gpu.refresh_from_db()
    waiting.refresh_from_db()
    assert report.gpus_repaired == 1
    assert CaseEvent.objects.filter(case=case, kind="gpu_repaired").exists()
    assert waiting.status == Case.Status.PROCESSING
    assert holder(gpu) == waiting


def test_waiting_cases_start_even_if_the_release_event_was_lost(stub_broker):
    (gpu,) = make_gpus(1)
    first = register("first")
    second = register("second")
    # The release happened but nobody woke the waiting case (e.g. the process died).
    GPUResource.objects.filter(pk=gpu.pk).update(status="AVAILABLE", step_run=None)
    Case.objects.filter(pk=first.pk).update(status=Case.Status.COMPLETED)
    WorkflowStep.objects.filter(case=first).update(status=WorkflowStep.Status.SUCCEEDED)

    report = reconcile()

    second.refresh_from_db()
    assert report.waiting_started == 1
    assert second.status == Case.Status.PROCESSING


def test_a_running_case_with_no_step_run_at_all_runs_its_step_again(stub_broker):
    make_gpus(1)
    case = register("case-1")
    run = active_run(case)
    # A state no transition leaves behind (each ends a step run and starts the next in one
    # transaction): repaired by running the case's current step again.
    WorkflowStep.objects.filter(pk=run.pk).update(status=WorkflowStep.Status.SUCCEEDED)

    report = reconcile()

    assert report.advanced == ["case-1"]
    assert report.gpus_repaired == 1
    again = active_run(case)
    assert (again.name, again.attempt, again.status) == ("upload_case_files", 2, "DISPATCHED")


def test_reconcile_on_a_healthy_system_does_nothing(stub_broker):
    make_gpus(1)
    case = register("case-1")
    succeed(active_run(case))

    report = reconcile()

    assert not report
    assert report.summary().startswith("re-driven 0")
