"""Cases through every step against a real sshd, with the workers running as threads."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from cases.models import Case, WorkflowStep
from conductor.operations import case_cancel, case_retry
from gpus.models import GPUResource
from mqi_site.config import get_config
from mqi_site.messaging import ErrorKind
from tests.conftest import REPO_DIR
from tests.workers.conftest import make_case, wait_for, wait_terminal
from workers import executor
from workers.scanner.scan import scan_cases

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def run_dir(server, case_id: str, step: str) -> Path:
    runs = sorted((server.case_dir(case_id) / ".mqi" / "runs").glob(f"{step}-*"))
    assert runs, f"no run folder for {step}"
    return runs[-1]


def test_a_case_goes_through_every_step_over_ssh(gpu_server, discovered_gpus, workers):
    make_case(gpu_server.watch_dir, "QA-0001")

    scan_cases(get_config())
    (case,) = wait_terminal("QA-0001")

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert case.progress == 100
    assert list(case.steps.values_list("name", "status")) == [
        ("upload_case_files", "SUCCEEDED"),
        ("run_interpreter", "SUCCEEDED"),
        ("run_moqui_sim", "SUCCEEDED"),
        ("download_results", "SUCCEEDED"),
        ("evaluate_dose", "SUCCEEDED"),
    ]
    # the stand-in MOQUI's dose from the delivery logs passes against the TPS dose
    assert case.qa_verdict == Case.QAVerdict.PASSED, case.qa_said()
    local = gpu_server.results("QA-0001") / "RTDOSE.dcm"
    remote = gpu_server.output("QA-0001") / "RTDOSE.dcm"
    assert sha256(local) == sha256(remote)
    assert gpu_server.starts("QA-0001", "interpreter") == 1
    assert gpu_server.starts("QA-0001", "moquisim") == 1
    assert not GPUResource.objects.filter(step_run__isnull=False).exists()


def test_a_commands_end_is_reported_as_it_happens_not_at_the_next_poll(
    gpu_server, discovered_gpus, workers, monkeypatch
):
    # polls ten minutes apart: only the doorbell (a wait for the end on the server) can
    # report the commands' ends before the test's timeout
    monkeypatch.setattr(executor, "_poll_delay_ms", lambda polls: 600_000)
    make_case(gpu_server.watch_dir, "QA-bell")

    scan_cases(get_config())
    (case,) = wait_terminal("QA-bell")

    assert case.status == Case.Status.COMPLETED, case.error_message
    execute_runs = case.steps.filter(type="execute")
    assert list(execute_runs.values_list("status", flat=True)) == ["SUCCEEDED", "SUCCEEDED"]
    # each end was reported once: no outcome arrived for a step run already done
    assert not case.events.filter(kind="ignored_outcome").exists()


def test_a_rerun_over_ssh_sees_only_the_fixed_folder(gpu_server, discovered_gpus, workers):
    folder = make_case(gpu_server.watch_dir, "QA-rerun", switches={"MQI_FAIL_MOQUI": "5 x"})
    scan_cases(get_config())
    (failed,) = wait_terminal("QA-rerun")
    leftover = gpu_server.case_dir("QA-rerun") / "MQI_FAIL_MOQUI"
    assert failed.status == Case.Status.FAILED and leftover.exists()

    (folder / "MQI_FAIL_MOQUI").unlink()
    case_retry(case_pk=failed.pk, from_start=True, actor="physicist")
    (case,) = wait_terminal("QA-rerun")

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert gpu_server.case_dir("QA-rerun").name == "run-2"
    uploaded = sorted(
        path.name for path in gpu_server.case_dir("QA-rerun").iterdir() if path.is_file()
    )
    assert uploaded == sorted(entry["path"] for entry in case.manifest)
    assert "MQI_FAIL_MOQUI" not in uploaded
    assert sorted(f.path for f in case.current_run.result_files.all()) == sorted(
        str(path.relative_to(gpu_server.results("QA-rerun")))
        for path in gpu_server.results("QA-rerun").rglob("*")
        if path.is_file()
    )


def test_a_hostile_case_name_goes_through_every_step_and_injects_nothing(
    gpu_server, discovered_gpus, workers, tmp_path
):
    name = "QA 2 'a' \"b\" $(touch CANARY1) `touch CANARY2`; touch CANARY3 é"
    make_case(gpu_server.watch_dir, name)

    scan_cases(get_config())
    (case,) = wait_terminal(name)

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert (gpu_server.results(name) / "RTDOSE.dcm").exists()
    interpreter = case.steps.get(name="run_interpreter")
    assert f"--case {name!r}" not in interpreter.command  # quoted by shlex, not repr
    for root in (tmp_path, REPO_DIR, Path.home()):
        assert not [p for p in root.rglob("CANARY*")], f"an injected command ran under {root}"


def test_progress_lines_move_the_case_progress(gpu_server, discovered_gpus, workers):
    def slow_sim(raw):
        raw["remote_commands"]["run_moqui_sim"] = raw["remote_commands"]["run_moqui_sim"].replace(
            "--batches 4 --batch-seconds 0.1", "--batches 10 --batch-seconds 0.4"
        )

    gpu_server.configure(slow_sim)
    make_case(gpu_server.watch_dir, "QA-0003")
    scan_cases(get_config())
    seen: set[int] = set()

    def sampled_done() -> bool:
        case = Case.objects.filter(case_id="QA-0003").first()
        if case is not None and case.workflow_step == "run_moqui_sim":
            seen.add(case.progress)
        return case is not None and case.is_terminal

    wait_for(sampled_done, 60, "the case to finish")

    between = {p for p in seen if 70 < p < 90}
    assert len(between) >= 2, f"progress seen during the simulation: {sorted(seen)}"


def test_sshd_killed_while_a_command_runs_reattaches_and_runs_it_once(
    gpu_server, discovered_gpus, workers, prober
):
    make_case(gpu_server.watch_dir, "QA-0004", switches={"MQI_SLEEP_MOQUI": "3"})
    scan_cases(get_config())
    wait_for(lambda: gpu_server.starts("QA-0004", "moquisim") == 1, 60, "the simulation to start")

    gpu_server.sshd.kill()
    time.sleep(1.5)  # the server stays down while the command keeps running
    gpu_server.sshd.start()
    (case,) = wait_terminal("QA-0004", timeout=90)

    assert case.status == Case.Status.COMPLETED, case.error_message
    assert gpu_server.starts("QA-0004", "moquisim") == 1
    assert gpu_server.starts("QA-0004", "interpreter") == 1
    assert (gpu_server.results("QA-0004") / "RTDOSE.dcm").exists()
    # the outage cost no attempt: every step ran once, the waiting step went on by itself
    assert sorted(case.steps.values_list("name", "attempt")) == [
        ("download_results", 1),
        ("evaluate_dose", 1),
        ("run_interpreter", 1),
        ("run_moqui_sim", 1),
        ("upload_case_files", 1),
    ]
    kinds = set(case.events.values_list("kind", flat=True))
    assert {"waiting_for_host", "host_back"} <= kinds


def test_timeout_kills_the_whole_process_group(gpu_server, discovered_gpus, workers):
    gpu_server.configure(lambda raw: raw["workflows"]["default_qa"][1].update(timeout_sec=1))
    make_case(gpu_server.watch_dir, "QA-0005", switches={"MQI_HANG_INTERPRETER": "1"})

    scan_cases(get_config())
    (case,) = wait_terminal("QA-0005")

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.TIMEOUT
    assert "timeout of 1 s" in case.error_message
    pgid = int((run_dir(gpu_server, "QA-0005", "run_interpreter") / "pgid").read_text())
    assert group_members(pgid) == []
    assert not GPUResource.objects.filter(step_run__isnull=False).exists()


def test_cancel_kills_the_remote_process_group(gpu_server, discovered_gpus, workers):
    make_case(gpu_server.watch_dir, "QA-0006", switches={"MQI_HANG_MOQUI": "1"})
    scan_cases(get_config())
    wait_for(
        lambda: WorkflowStep.objects.filter(
            case__case_id="QA-0006", name="run_moqui_sim", status="RUNNING"
        ).exists(),
        60,
        "the simulation to run",
    )
    pgid = int((run_dir(gpu_server, "QA-0006", "run_moqui_sim") / "pgid").read_text())
    assert group_members(pgid)

    case_cancel(case_pk=Case.objects.get(case_id="QA-0006").pk, actor="test")

    wait_for(lambda: group_members(pgid) == [], 30, "the process group to be gone")
    assert Case.objects.get(case_id="QA-0006").status == Case.Status.CANCELLED


def test_a_failing_interpreter_fails_the_case_with_exit_code_and_stderr(
    gpu_server, discovered_gpus, workers
):
    make_case(
        gpu_server.watch_dir, "QA-0007", switches={"MQI_FAIL_INTERPRETER": "3 plan has no beams"}
    )

    scan_cases(get_config())
    (case,) = wait_terminal("QA-0007")

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    failed = case.steps.get(name="run_interpreter")
    assert failed.exit_code == 3
    assert "plan has no beams" in failed.stderr_tail
    assert case.error_message == (
        "run_interpreter failed: exited with code 3: interpreter: plan has no beams"
    )
    assert gpu_server.starts("QA-0007", "interpreter") == 1  # permanent: never retried


def test_unknown_host_key_fails_the_case_with_how_to_fix_it(gpu_server, discovered_gpus, workers):
    Path(gpu_server.sshd.target.known_hosts_file).write_text("")
    make_case(gpu_server.watch_dir, "QA-0008")

    scan_cases(get_config())
    (case,) = wait_terminal("QA-0008")

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    assert "known_hosts" in case.error_message
    assert os.path.getsize(gpu_server.sshd.target.known_hosts_file) == 0
