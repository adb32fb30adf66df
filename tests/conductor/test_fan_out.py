"""A step that fans out over the plan's beams, on PostgreSQL with real commits: one step
run per beam, each on a GPU of its own, the GPUs shared out across waiting cases."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from cases.models import Case, WorkflowStep
from cases.services import step_run_heartbeat
from conductor import maintenance, operations
from conductor.reconcile import reconcile
from gpus.models import GPUResource
from mqi_site.messaging import QUEUES, Command, ErrorKind
from tests.conductor.helpers import fail, fan_out_simulation, make_gpus, succeed
from tests.conductor.helpers import register_beams as register
from tests.conftest import drain

pytestmark = pytest.mark.django_db(transaction=True)

SIMULATE = "run_moqui_sim"


@pytest.fixture(autouse=True)
def fanned_out(use_config):
    use_config(fan_out_simulation)


def step(case: Case, name: str) -> WorkflowStep:
    return case.steps.get(name=name, status__in=WorkflowStep.ACTIVE)


def beams(case: Case) -> list[WorkflowStep]:
    return list(case.steps.filter(name=SIMULATE, status__in=WorkflowStep.ACTIVE).order_by("pk"))


def to_simulation(case: Case) -> None:
    succeed(step(case, "upload_case_files"))
    succeed(step(case, "run_interpreter"))


def gpu_of(run: WorkflowStep) -> GPUResource | None:
    return GPUResource.objects.filter(step_run=run).first()


def test_three_beams_on_four_free_gpus_run_at_once_each_on_its_own(stub_broker):
    gpus = make_gpus(4)
    case = register("case-1")
    interpreter_gpu = gpus[0]
    to_simulation(case)

    runs = beams(case)
    assert [(r.beam_number, r.beam_name, r.status) for r in runs] == [
        (1, "B1 G090", "DISPATCHED"),
        (2, "B2 G270", "DISPATCHED"),
        (3, "B3 G180", "DISPATCHED"),
    ]
    held = [gpu_of(run) for run in runs]
    assert held[0] == interpreter_gpu  # the first beam took over the case's GPU
    assert len(set(held)) == 3
    assert GPUResource.objects.filter(status="AVAILABLE").count() == 1  # no hoarding
    assert "--beam 2 --beam-name 'B2 G270'" in runs[1].command
    assert runs[1].command.endswith("/case-1/run-1/beam-2")
    assert "--input-dir " in runs[1].command and "/case-1/run-1 --output-dir" in runs[1].command
    sent = drain(stub_broker, QUEUES["remote_executor"])
    assert [m.args[1]["step_run_id"] for m in sent if m.args[0] == Command.EXECUTE_COMMAND][
        -3:
    ] == [run.pk for run in runs]

    for run in runs:
        succeed(run)

    case.refresh_from_db()
    assert case.workflow_step == "download_results"
    download = step(case, "download_results")
    assert gpu_of(download) == held[2]  # every_step: the last beam hands the GPU on
    assert GPUResource.objects.filter(status="AVAILABLE").count() == 3


def test_with_one_free_gpu_the_beams_run_one_after_another(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1")
    to_simulation(case)

    for number in (1, 2, 3):
        runs = beams(case)
        running = [run for run in runs if run.status == "DISPATCHED"]
        assert [run.beam_number for run in running] == [number]
        assert all(run.status == "PENDING" for run in runs if run not in running)
        assert gpu_of(running[0]) == gpu
        assert Case.objects.get(pk=case.pk).status == Case.Status.PROCESSING
        succeed(running[0])

    case.refresh_from_db()
    assert case.workflow_step == "download_results"


def test_a_freed_gpu_goes_to_the_higher_priority_case_first_then_to_the_oldest(stub_broker):
    make_gpus(2)
    first = register("first")
    to_simulation(first)  # beams 1 and 2 run, beam 3 waits
    urgent = register("urgent", priority=5)  # waits for a GPU at its upload
    assert urgent.status == Case.Status.PENDING_RESOURCE

    succeed(beams(first)[0])

    assert gpu_of(step(urgent, "upload_case_files")) is not None
    assert beams(first)[-1].status == "PENDING"


def test_a_beam_that_fails_for_good_cancels_its_sibling_beams_and_frees_their_gpus(stub_broker):
    make_gpus(2)
    case = register("case-1")
    to_simulation(case)
    one, two, _three = beams(case)
    drain(stub_broker, QUEUES["remote_executor"])

    fail(two, ErrorKind.PERMANENT, "exited with code 4: out of GPU memory")

    case.refresh_from_db()
    assert case.status == Case.Status.FAILED
    assert (
        case.error_message == f"{SIMULATE} (beam 2) failed: exited with code 4: out of GPU memory"
    )
    statuses = dict(case.steps.filter(name=SIMULATE).values_list("beam_number", "status"))
    assert statuses == {1: "CANCELLED", 2: "FAILED", 3: "CANCELLED"}
    assert not GPUResource.objects.filter(step_run__isnull=False).exists()
    kills = [m.args[1]["step_run_id"] for m in drain(stub_broker, QUEUES["remote_executor"])]
    assert kills == [one.pk]  # the waiting third beam had nothing to kill


def test_a_beams_transient_failure_retries_that_beam_only_on_its_own_gpu(stub_broker):
    make_gpus(3)
    case = register("case-1")
    to_simulation(case)
    _one, two, _three = beams(case)
    gpu = gpu_of(two)

    fail(two, ErrorKind.TRANSIENT, "connection reset")

    runs = beams(case)
    assert [(r.beam_number, r.attempt) for r in runs] == [(1, 1), (3, 1), (2, 2)]
    assert gpu_of(runs[-1]) == gpu
    for run in runs:
        succeed(run)
    assert Case.objects.get(pk=case.pk).workflow_step == "download_results"


def test_cancel_kills_every_beams_process_group_and_frees_every_gpu(stub_broker):
    make_gpus(2)
    case = register("case-1")
    to_simulation(case)
    one, two, _ = beams(case)
    drain(stub_broker, QUEUES["remote_executor"])

    operations.case_cancel(case_pk=case.pk, actor="ana")

    cancels = drain(stub_broker, QUEUES["remote_executor"])
    assert {(m.args[0], m.args[1]["step_run_id"]) for m in cancels} == {
        (Command.CANCEL_COMMAND, one.pk),
        (Command.CANCEL_COMMAND, two.pk),
    }
    assert GPUResource.objects.filter(status="AVAILABLE").count() == 2


def test_the_case_progress_is_taken_across_its_beams(stub_broker):
    make_gpus(3)
    case = register("case-1")
    to_simulation(case)
    one, two, three = beams(case)
    span = (70, 90)

    step_run_heartbeat(step_run_id=one.pk, deadline_sec=60, progress=60, span=span)
    assert Case.objects.get(pk=case.pk).progress == 74  # 70 + 20 * (60 + 0 + 0) / 3 %
    succeed(two)
    step_run_heartbeat(step_run_id=three.pk, deadline_sec=60, progress=30, span=span)

    assert Case.objects.get(pk=case.pk).progress == 82  # 70 + 20 * (60 + 100 + 30) / 3 %
    assert WorkflowStep.objects.get(pk=one.pk).progress == 60


def test_a_drained_gpu_waits_for_the_beam_on_it_then_leaves_service(stub_broker):
    make_gpus(3)
    case = register("case-1")
    to_simulation(case)
    _one, two, _three = beams(case)
    gpu = gpu_of(two)
    maintenance.gpu_start_maintenance(gpu_pk=gpu.pk)
    assert GPUResource.objects.get(pk=gpu.pk).status == "RESERVED"

    succeed(two)

    assert GPUResource.objects.get(pk=gpu.pk).status == "MAINTENANCE"
    assert [r.beam_number for r in beams(case)] == [1, 3]


def test_the_reconciler_re_drives_a_silent_beam_on_its_own(stub_broker):
    make_gpus(3)
    case = register("case-1")
    to_simulation(case)
    one, two, three = beams(case)
    later = timezone.now() + timedelta(seconds=121)
    for run in (one, three):  # their workers keep beating; beam 2's went silent
        WorkflowStep.objects.filter(pk=run.pk).update(deadline=later + timedelta(hours=1))
    drain(stub_broker, QUEUES["remote_executor"])

    with time_machine.travel(later):
        report = reconcile()

    assert report.redriven == [str(two)]
    (message,) = drain(stub_broker, QUEUES["remote_executor"])
    assert message.args[1]["step_run_id"] == two.pk
