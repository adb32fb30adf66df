"""Every transition of the conductor's state machine, on PostgreSQL with real commits."""

from __future__ import annotations

import pytest

from cases.models import Case, CaseEvent, WorkflowStep
from conductor import maintenance, operations, transitions
from gpus.models import GPUResource
from mqi_site.messaging import QUEUES, Command, ErrorKind
from tests.conductor.helpers import (
    FOLDER,
    active_run,
    fail,
    held_gpu,
    holder,
    make_gpus,
    register,
    retry,
    run_to_completion,
    succeed,
)
from tests.conftest import drain

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = [
    "upload_case_files",
    "run_interpreter",
    "run_moqui_sim",
    "download_results",
    "evaluate_dose",
]
# the completing case: lock, lock its run, finish it, end the case, release its GPU, write
# the "completed" event; the waiting case: lock it, reserve the GPU, move it, insert its run


def test_new_case_reserves_a_gpu_and_dispatches_the_upload(stub_broker):
    (gpu,) = make_gpus(1)

    case = register("case-1")

    assert case.status == Case.Status.PROCESSING
    assert case.workflow_step == "upload_case_files"
    assert case.progress == 10
    assert held_gpu(case) == gpu
    run = active_run(case)
    assert (run.name, run.type, run.attempt, run.status) == (
        "upload_case_files",
        "upload",
        1,
        WorkflowStep.Status.DISPATCHED,
    )
    (message,) = drain(stub_broker, QUEUES["file_transfer"])
    assert message.actor_name == "file_transfer"
    assert list(message.args) == [Command.UPLOAD_CASE, {"case_id": "case-1", "step_run_id": run.pk}]


def test_case_waits_for_a_gpu_when_none_is_free(stub_broker):
    make_gpus(1)
    register("first")

    second = register("second")

    assert second.status == Case.Status.PENDING_RESOURCE
    assert second.workflow_step == "upload_case_files"
    (waiting,) = second.steps.all()
    assert (waiting.status, waiting.gpu, waiting.dispatched_at) == ("PENDING", None, None)
    assert CaseEvent.objects.filter(case=second, kind="waiting_for_gpu").exists()


def test_case_goes_through_every_step_in_order_and_completes(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1")
    seen = []

    while (run := active_run(case)) is not None:
        case.refresh_from_db()
        seen.append((run.name, case.progress))
        # every_step: each step on the GPU server is dispatched with the one GPU the case
        # holds throughout; the evaluation, here, on the downloaded results, needs none
        on_server = run.type != "evaluate"
        assert (run.gpu, held_gpu(case)) == ((gpu, gpu) if on_server else (None, None))
        succeed(run)

    case.refresh_from_db()
    assert seen == [
        ("upload_case_files", 10),
        ("run_interpreter", 30),
        ("run_moqui_sim", 70),
        ("download_results", 90),
        ("evaluate_dose", 95),
    ]
    assert case.status == Case.Status.COMPLETED
    assert case.progress == 100
    assert case.finished_at is not None
    gpu.refresh_from_db()
    assert gpu.status == GPUResource.Status.AVAILABLE and gpu.step_run is None


def test_execute_commands_go_to_the_executor_with_the_rendered_command(stub_broker):
    make_gpus(2)
    case = register("case-1")
    succeed(active_run(case))

    run = active_run(case)
    (message,) = drain(stub_broker, QUEUES["remote_executor"])
    assert list(message.args) == [
        Command.EXECUTE_COMMAND,
        {"case_id": "case-1", "step_run_id": run.pk},
    ]
    assert "--case case-1 --gpu 0" in run.command


def test_waiting_case_starts_when_another_case_completes(stub_broker):
    make_gpus(1)
    first = register("first")
    second = register("second")
    assert second.status == Case.Status.PENDING_RESOURCE

    run_to_completion(first)

    second.refresh_from_db()
    assert second.status == Case.Status.PROCESSING
    assert held_gpu(second) is not None
    assert active_run(second).name == "upload_case_files"


def test_a_released_gpu_is_not_handed_to_a_case_bound_to_another_host(stub_broker):
    make_gpus(1)
    first = register("first")
    elsewhere = register("elsewhere")
    Case.objects.filter(pk=elsewhere.pk).update(host="gpu-other")

    run_to_completion(first)

    elsewhere.refresh_from_db()
    assert elsewhere.status == Case.Status.PENDING_RESOURCE
    assert GPUResource.objects.get().status == GPUResource.Status.AVAILABLE


def test_waiting_case_starts_when_another_case_fails(stub_broker):
    make_gpus(1)
    first = register("first")
    second = register("second")

    fail(active_run(first), ErrorKind.PERMANENT, "disk full on GPU server")

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Case.Status.FAILED
    assert second.status == Case.Status.PROCESSING


def test_waiting_cases_start_by_priority_then_age(stub_broker):
    make_gpus(1)
    running = register("running")
    old = register("old")
    urgent = register("urgent")
    operations.case_set_priority(case_pk=urgent.pk, priority=5)

    run_to_completion(running)

    urgent.refresh_from_db()
    old.refresh_from_db()
    assert urgent.status == Case.Status.PROCESSING
    assert old.status == Case.Status.PENDING_RESOURCE
    run_to_completion(urgent)
    old.refresh_from_db()
    assert old.status == Case.Status.PROCESSING


def test_gpu_is_released_when_case_fails(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1")
    succeed(active_run(case))

    fail(active_run(case), ErrorKind.PERMANENT, "interpreter exited with 3", exit_code=3)

    case.refresh_from_db()
    gpu.refresh_from_db()
    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    assert case.error_message == "run_interpreter failed: interpreter exited with 3"
    assert gpu.status == GPUResource.Status.AVAILABLE and gpu.step_run is None
    failed = case.steps.get(name="run_interpreter")
    assert (failed.status, failed.exit_code) == (WorkflowStep.Status.FAILED, 3)


def test_permanent_failure_is_never_retried(stub_broker):
    make_gpus(1)
    case = register("case-1")

    fail(active_run(case), ErrorKind.PERMANENT, "missing input")

    case.refresh_from_db()
    assert case.status == Case.Status.FAILED
    assert case.steps.count() == 1


def test_transient_failure_is_retried_with_backoff_until_the_budget_runs_out(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1")
    drain(stub_broker, QUEUES["file_transfer"])

    fail(active_run(case), ErrorKind.TRANSIENT, "connection reset")

    retry = active_run(case)
    assert (retry.name, retry.attempt, retry.gpu) == ("upload_case_files", 2, gpu)
    (message,) = drain(stub_broker, QUEUES["file_transfer"])
    assert message.queue_name.endswith(".DQ")  # delayed: exponential backoff
    assert message.options["eta"] > 0
    assert CaseEvent.objects.filter(case=case, kind="retry_scheduled").count() == 1

    fail(retry, ErrorKind.TRANSIENT, "connection reset")
    fail(active_run(case), ErrorKind.TRANSIENT, "connection refused")

    case.refresh_from_db()
    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.TRANSIENT
    assert "gave up after 3 attempts: connection refused" in case.error_message
    assert list(case.steps.values_list("attempt", "status")) == [
        (1, "FAILED"),
        (2, "FAILED"),
        (3, "FAILED"),
    ]
    gpu.refresh_from_db()
    assert gpu.step_run is None


def test_duplicate_outcome_is_recorded_and_changes_nothing(stub_broker):
    make_gpus(1)
    case = register("case-1")
    upload = active_run(case)
    assert succeed(upload) is True
    interpreter = active_run(case)

    assert succeed(upload) is False

    case.refresh_from_db()
    assert case.workflow_step == "run_interpreter"
    assert active_run(case) == interpreter
    assert case.steps.count() == 2
    assert CaseEvent.objects.filter(case=case, kind="ignored_outcome").count() == 1


def test_failure_for_a_finished_step_run_changes_nothing(stub_broker):
    make_gpus(1)
    case = register("case-1")
    upload = active_run(case)
    succeed(upload)

    assert fail(upload, ErrorKind.PERMANENT, "late failure") is False

    case.refresh_from_db()
    assert case.status == Case.Status.PROCESSING


def test_outcome_for_a_superseded_attempt_is_ignored(stub_broker):
    make_gpus(1)
    case = register("case-1")
    first_attempt = active_run(case)
    fail(first_attempt, ErrorKind.TRANSIENT, "timeout")
    second_attempt = active_run(case)

    assert succeed(first_attempt) is False

    assert active_run(case) == second_attempt


def test_outcome_of_the_wrong_kind_is_ignored(stub_broker):
    make_gpus(1)
    case = register("case-1")
    upload = active_run(case)

    changed = transitions.step_run_succeeded(
        step_run_id=upload.pk, command=Command.EXECUTION_SUCCEEDED, outcome={}
    )

    assert changed is False
    assert active_run(case) == upload


def test_duplicate_new_case_found_creates_nothing(stub_broker):
    make_gpus(2)
    register("case-1")
    drain(stub_broker, QUEUES["file_transfer"])

    again = transitions.case_register(case_id="case-1", source_path="/incoming/case-1")

    assert again is None
    assert Case.objects.count() == 1
    assert WorkflowStep.objects.count() == 1
    assert drain(stub_broker, QUEUES["file_transfer"]) == []


def test_second_folder_with_the_same_case_id_is_noted_not_started(stub_broker):
    make_gpus(2)
    case = register("case-1")

    transitions.case_register(case_id="case-1", source_path="/elsewhere/case-1")

    assert CaseEvent.objects.filter(case=case, kind="duplicate_case_id").exists()
    assert WorkflowStep.objects.count() == 1


def test_invalid_folder_becomes_a_failed_case_with_the_reason(stub_broker):
    make_gpus(1)

    case = register("bad", problems=["no RTPLAN file", "no machine log files matching '*.ptn'"])

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.INVALID_INPUT
    assert "no RTPLAN file" in case.error_message and "*.ptn" in case.error_message
    assert GPUResource.objects.get().step_run is None


def test_cancel_releases_the_gpu_and_asks_the_executor_to_kill(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1")
    succeed(active_run(case))
    interpreter = active_run(case)
    drain(stub_broker, QUEUES["remote_executor"])

    transitions.case_cancel(case_pk=case.pk, actor="physicist")

    case.refresh_from_db()
    gpu.refresh_from_db()
    interpreter.refresh_from_db()
    assert case.status == Case.Status.CANCELLED
    assert interpreter.status == WorkflowStep.Status.CANCELLED
    assert gpu.step_run is None
    (message,) = drain(stub_broker, QUEUES["remote_executor"])
    assert list(message.args) == [
        Command.CANCEL_COMMAND,
        {"case_id": "case-1", "step_run_id": interpreter.pk},
    ]
    # A late success from the killed command is stale.
    assert succeed(interpreter) is False


def test_cancel_refuses_a_finished_case(stub_broker):
    make_gpus(1)
    case = run_to_completion(register("case-1"))

    with pytest.raises(transitions.CaseStateError, match="already COMPLETED"):
        transitions.case_cancel(case_pk=case.pk)


def test_retry_starts_again_from_the_failed_step(stub_broker):
    make_gpus(1)
    case = register("case-1")
    succeed(active_run(case))
    fail(active_run(case), ErrorKind.PERMANENT, "bad plan")

    retry(case, actor="physicist")

    case.refresh_from_db()
    run = active_run(case)
    assert case.status == Case.Status.PROCESSING
    assert case.error_message == ""
    assert (run.name, run.attempt) == ("run_interpreter", 2)
    assert run_to_completion(case).status == Case.Status.COMPLETED


def test_replay_from_the_start_runs_every_step_again(stub_broker):
    make_gpus(1)
    case = register("case-1")
    succeed(active_run(case))
    succeed(active_run(case))
    fail(active_run(case), ErrorKind.PERMANENT, "simulation diverged")

    retry(case, from_start=True)

    case.refresh_from_db()
    assert active_run(case).name == "upload_case_files"
    assert active_run(case).attempt == 2
    assert case.progress == 10
    assert CaseEvent.objects.filter(case=case, kind="replayed").exists()
    assert run_to_completion(case).status == Case.Status.COMPLETED


def test_a_retry_stays_in_its_run_when_the_folder_is_unchanged(stub_broker):
    make_gpus(1)
    case = register("case-1")
    succeed(active_run(case))
    fail(active_run(case), ErrorKind.PERMANENT, "bad plan")

    retry(case)

    case.refresh_from_db()
    assert case.current_run.number == 1
    assert active_run(case).run == case.current_run


def test_a_retry_on_a_changed_folder_starts_a_new_run_from_the_upload(stub_broker):
    make_gpus(1)
    case = register("case-1")
    succeed(active_run(case))
    fail(active_run(case), ErrorKind.PERMANENT, "a log was missing")
    changed = [*FOLDER, {"path": "beam3.ptn", "size": 9, "sha256": "1" * 64}]

    retry(case, manifest=changed)

    case.refresh_from_db()
    assert case.current_run.number == 2
    assert active_run(case).name == "upload_case_files"
    assert active_run(case).run == case.current_run
    event = CaseEvent.objects.filter(case=case, kind="replayed").get()
    assert "the folder changed since run 1 was uploaded (added beam3.ptn)" in event.message
    assert run_to_completion(case).current_run.manifest == changed


def test_a_retry_of_a_folder_still_invalid_keeps_the_case_failed(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1", problems=["RP.plan.dcm is not a DICOM file"])

    retry(case, problems=["QA0001_beam1.ptn is empty (0 bytes)"])

    case.refresh_from_db()
    gpu.refresh_from_db()
    assert (case.status, case.error_kind) == (Case.Status.FAILED, ErrorKind.INVALID_INPUT)
    assert case.error_message == "invalid case folder: QA0001_beam1.ptn is empty (0 bytes)"
    assert not case.steps.exists() and case.current_run is None
    assert gpu.status == GPUResource.Status.AVAILABLE


def test_a_run_records_its_manifest_and_its_result_files(stub_broker):
    make_gpus(1)
    case = register("case-1")
    for _ in range(3):
        succeed(active_run(case))
    files = [{"path": "RTDOSE.dcm", "size": 5264, "sha256": "2" * 64}]

    succeed(active_run(case), files=files)
    succeed(active_run(case))  # the evaluation

    case.refresh_from_db()
    run = case.current_run
    assert case.status == Case.Status.COMPLETED
    assert run.manifest == FOLDER and run.uploaded_at is not None
    assert [(f.path, f.size, f.sha256) for f in run.result_files.all()] == [
        ("RTDOSE.dcm", 5264, "2" * 64)
    ]
    assert run.finished_at == case.finished_at


def test_retry_refuses_a_running_case(stub_broker):
    make_gpus(1)
    case = register("case-1")

    with pytest.raises(transitions.CaseStateError, match="only FAILED or CANCELLED"):
        retry(case)


def test_retried_case_waits_when_no_gpu_is_free(stub_broker):
    make_gpus(1)
    failed = register("failed")
    fail(active_run(failed), ErrorKind.PERMANENT, "x")
    register("busy")

    retry(failed)

    failed.refresh_from_db()
    assert failed.status == Case.Status.PENDING_RESOURCE


def test_case_id_is_quoted_in_rendered_commands(stub_broker):
    make_gpus(1)
    nasty = "a b'; $(touch canary) `id`"  # a folder name: no "/"
    case = register(nasty)
    succeed(active_run(case))

    command = active_run(case).command

    assert "--case 'a b'\"'\"'; $(touch canary) `id`'" in command


def test_execute_steps_policy_holds_the_gpu_only_while_executing(stub_broker, use_config):
    use_config(lambda raw: raw["conductor"].update(gpu_policy="execute_steps"))
    (gpu,) = make_gpus(1)
    case = register("case-1")
    other = register("case-2")

    # Uploads need no GPU: both start at once.
    assert case.status == other.status == Case.Status.PROCESSING
    assert GPUResource.objects.get().step_run is None
    succeed(active_run(case))
    case.refresh_from_db()
    assert held_gpu(case) == gpu
    succeed(active_run(other))
    other.refresh_from_db()
    assert other.status == Case.Status.PENDING_RESOURCE
    assert other.workflow_step == "run_interpreter"

    succeed(active_run(case))  # interpreter
    succeed(active_run(case))  # simulation: the GPU moves on to case-2 for its interpreter

    case.refresh_from_db()
    other.refresh_from_db()
    assert active_run(case).name == "download_results"
    assert other.status == Case.Status.PROCESSING
    assert held_gpu(other) == gpu


def test_unknown_workflow_fails_the_case_with_the_reason(stub_broker):
    make_gpus(1)

    case = register("case-1", workflow_name="no_such_flow")

    assert case.status == Case.Status.FAILED
    assert "workflow 'no_such_flow' is not configured" in case.error_message


def test_gpus_in_maintenance_or_busy_with_foreign_processes_are_not_handed_out(stub_broker):
    GPUResource.objects.create(host="local", index=0, status=GPUResource.Status.MAINTENANCE)
    GPUResource.objects.create(host="local", index=1, foreign_processes=1)

    case = register("case-1")

    assert case.status == Case.Status.PENDING_RESOURCE


def test_draining_gpu_goes_to_maintenance_after_its_case(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1")
    GPUResource.objects.filter(pk=gpu.pk).update(drain_requested=True)
    waiting = register("case-2")

    run_to_completion(case)

    gpu.refresh_from_db()
    waiting.refresh_from_db()
    assert gpu.status == GPUResource.Status.MAINTENANCE
    assert waiting.status == Case.Status.PENDING_RESOURCE


def test_maintenance_on_a_free_gpu_takes_it_out_of_service(stub_broker):
    (gpu,) = make_gpus(1)

    maintenance.gpu_start_maintenance(gpu_pk=gpu.pk)

    assert register("case-1").status == Case.Status.PENDING_RESOURCE


def test_ending_maintenance_hands_the_gpu_to_a_waiting_case(stub_broker):
    (gpu,) = make_gpus(1)
    maintenance.gpu_start_maintenance(gpu_pk=gpu.pk)
    waiting = register("case-1")

    maintenance.gpu_end_maintenance(gpu_pk=gpu.pk)

    waiting.refresh_from_db()
    assert waiting.status == Case.Status.PROCESSING


def test_maintenance_on_a_reserved_gpu_drains_it(stub_broker):
    (gpu,) = make_gpus(1)
    case = register("case-1")

    maintenance.gpu_start_maintenance(gpu_pk=gpu.pk)

    gpu.refresh_from_db()
    assert (gpu.status, gpu.drain_requested) == (GPUResource.Status.RESERVED, True)
    run_to_completion(case)
    gpu.refresh_from_db()
    assert gpu.status == GPUResource.Status.MAINTENANCE


@pytest.mark.parametrize("policy", ["every_step", "execute_steps"])
def test_the_evaluation_is_sent_to_its_worker_without_a_gpu_while_others_wait(
    stub_broker, use_config, policy
):
    use_config(lambda raw: raw["conductor"].update(gpu_policy=policy))
    (gpu,) = make_gpus(1)
    case = register("case-1")
    for _ in range(4):
        succeed(active_run(case))
    other = register("other")  # takes the GPU the download freed (or waits for none)

    run = active_run(case)
    assert (run.name, run.status, run.gpu) == ("evaluate_dose", "DISPATCHED", None)
    assert holder(gpu) != case
    (message,) = drain(stub_broker, QUEUES["evaluator"])
    assert list(message.args) == [
        Command.EVALUATE_RESULTS,
        {"case_id": "case-1", "step_run_id": run.pk},
    ]
    assert Case.objects.get(pk=other.pk).status == Case.Status.PROCESSING
