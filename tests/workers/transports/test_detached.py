"""Detached commands: survive the connection, run once, report their end, die as a group."""

from __future__ import annotations

import os
import shlex
import threading
import time
from pathlib import Path

import pytest

from workers.transports import LocalTransport, SSHTransport, TransportError
from workers.transports.detached import (
    RunState,
    RunStatus,
    kill_group,
    poll,
    read_new_output,
    start_detached,
    wait_for_end,
)


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` that are not zombies (read from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_for(transport, run_dir: str, state: RunState, timeout: float = 20.0) -> RunStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = poll(transport, run_dir)
        if status.state == state:
            return status
        assert time.monotonic() < deadline, f"still {status}"
        time.sleep(0.05)


@pytest.fixture(params=["ssh", "local"])
def transport(request, sshd_server):
    return SSHTransport(sshd_server.target) if request.param == "ssh" else LocalTransport()


def test_it_runs_in_the_background_and_reports_exit_code_and_output(transport, tmp_path):
    run_dir = str(tmp_path / "runs" / "step-1")
    command = "echo progress 50; echo oops >&2; echo progress 100; exit 3"

    assert start_detached(transport, run_dir, str(tmp_path), command, {}) is True
    status = wait_for(transport, run_dir, RunState.EXITED)

    assert status.exit_code == 3
    assert status.stdout_tail == "progress 50\nprogress 100\n"
    assert status.stderr_tail == "oops\n"
    assert status.stdout_size == len(status.stdout_tail)


def test_it_runs_in_cwd_with_the_given_environment(transport, tmp_path):
    run_dir = str(tmp_path / "run")
    command = 'pwd; printf "%s|%s\\n" "$GPU_ID" "$CASE_NAME"'

    start_detached(transport, run_dir, str(tmp_path), command, {"GPU_ID": "3", "CASE_NAME": "a b"})

    assert wait_for(transport, run_dir, RunState.EXITED).stdout_tail == f"{tmp_path}\n3|a b\n"


def test_a_second_start_does_not_run_it_again(transport, tmp_path):
    run_dir, counter = str(tmp_path / "run"), tmp_path / "counter"
    command = f"echo ran >> {shlex.quote(str(counter))}"

    assert start_detached(transport, run_dir, str(tmp_path), command, {}) is True
    wait_for(transport, run_dir, RunState.EXITED)
    assert start_detached(transport, run_dir, str(tmp_path), command, {}) is False
    assert start_detached(transport, run_dir, str(tmp_path), command, {}) is False

    assert counter.read_text() == "ran\n"


def test_a_second_start_during_the_first_waits_until_the_command_runs(transport, tmp_path):
    # The first start has taken the lock (run_dir) but not yet launched its command, as when
    # one message is delivered twice at once. The second start must not return before the
    # command runs: a poll right after it would see a run folder with nothing alive in it.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    returned: list[bool] = []
    second = threading.Thread(
        target=lambda: returned.append(
            start_detached(transport, str(run_dir), str(tmp_path), "true", {})
        )
    )
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive(), "the second start returned before the first one's command ran"

    (run_dir / "pgid").write_text("1\n")  # the first start's command is now running
    second.join(timeout=10)

    assert returned == [False]


def test_a_missing_working_directory_is_a_permanent_error_and_takes_no_lock(transport, tmp_path):
    run_dir = tmp_path / "run"

    with pytest.raises(TransportError) as error:
        start_detached(transport, str(run_dir), str(tmp_path / "gone"), "true", {})

    assert error.value.permanent
    assert not run_dir.exists()


def test_polling_a_run_that_never_started_says_missing(transport, tmp_path):
    assert poll(transport, str(tmp_path / "never")).state == RunState.MISSING


def test_output_can_be_read_incrementally_by_complete_lines(transport, tmp_path):
    run_dir, gate = str(tmp_path / "run"), tmp_path / "gate"
    command = (
        f"printf 'line 1\\nline 2\\npart'; "
        f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.02; done; printf 'ial\\nline 4\\n'"
    )
    start_detached(transport, run_dir, str(tmp_path), command, {})
    deadline = time.monotonic() + 10
    while poll(transport, run_dir).stdout_size < 18:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    first = read_new_output(transport, run_dir, 0)
    gate.touch()
    wait_for(transport, run_dir, RunState.EXITED)
    second = read_new_output(transport, run_dir, first.next_offset)

    assert first.lines == ["line 1", "line 2"]
    assert second.lines == ["partial", "line 4"]
    assert read_new_output(transport, run_dir, second.next_offset).lines == []


def test_kill_group_leaves_no_process_of_the_group_alive(transport, tmp_path):
    run_dir = str(tmp_path / "run")
    start_detached(transport, run_dir, str(tmp_path), "sleep 300 & sleep 300 & wait", {})
    pgid = poll(transport, run_dir).pgid
    assert pgid is not None
    deadline = time.monotonic() + 10
    while len(live_group_members(pgid)) < 3:  # sh and both sleeps
        assert time.monotonic() < deadline
        time.sleep(0.02)

    assert kill_group(transport, run_dir, grace_sec=5) is True

    assert live_group_members(pgid) == []
    status = poll(transport, run_dir)
    assert (status.state, status.exit_code, status.kill_requested) == (RunState.EXITED, 143, True)
    assert kill_group(transport, run_dir) is False  # nothing left: harmless to repeat


def test_kill_group_uses_sigkill_when_sigterm_is_ignored(transport, tmp_path):
    run_dir = str(tmp_path / "run")
    command = "trap '' TERM; sleep 300 & sleep 300 & wait"
    start_detached(transport, run_dir, str(tmp_path), command, {})
    pgid = poll(transport, run_dir).pgid
    assert pgid is not None

    assert kill_group(transport, run_dir, grace_sec=0.5) is True

    assert live_group_members(pgid) == []
    assert poll(transport, run_dir).exit_code == 137


@pytest.mark.slow
def test_it_survives_the_ssh_server_dying_and_runs_exactly_once(sshd_server, tmp_path):
    transport = SSHTransport(sshd_server.target)
    run_dir, counter, gate = str(tmp_path / "run"), tmp_path / "counter", tmp_path / "gate"
    command = (
        f"echo ran >> {shlex.quote(str(counter))}; "
        f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; echo finished"
    )
    assert start_detached(transport, run_dir, str(tmp_path), command, {}) is True
    pgid = poll(transport, run_dir).pgid
    assert pgid is not None

    sshd_server.kill()
    with pytest.raises(TransportError) as error:
        poll(transport, run_dir)
    assert not error.value.permanent
    assert live_group_members(pgid) != []  # still running without its connection
    gate.touch()
    sshd_server.start()

    assert start_detached(transport, run_dir, str(tmp_path), command, {}) is False
    status = wait_for(transport, run_dir, RunState.EXITED)
    assert (status.exit_code, status.stdout_tail) == (0, "finished\n")
    assert counter.read_text() == "ran\n"


def test_a_run_whose_processes_were_killed_outright_is_reported_vanished(transport, tmp_path):
    run_dir = tmp_path / "run"
    start_detached(transport, str(run_dir), str(tmp_path), "sleep 300", {})
    wrapper_pid = int((run_dir / "wrapper").read_text().split()[0])
    pgid = poll(transport, str(run_dir)).pgid
    assert pgid is not None

    # what a reboot or the OOM killer leaves behind: no exit code, nothing running
    transport.run(f"kill -KILL {wrapper_pid} -{pgid}", timeout=10)

    assert wait_for(transport, str(run_dir), RunState.VANISHED).exit_code is None


def test_files_the_command_creates_get_the_usual_permissions(transport, tmp_path):
    run_dir = str(tmp_path / "run")
    transport.run(f"touch {shlex.quote(str(tmp_path / 'usual'))}", timeout=10)

    start_detached(transport, run_dir, str(tmp_path), "touch result.dcm", {"SECRET": "x"})
    wait_for(transport, run_dir, RunState.EXITED)

    assert (tmp_path / "result.dcm").stat().st_mode == (tmp_path / "usual").stat().st_mode
    assert (tmp_path / "run" / "wrapper.sh").stat().st_mode & 0o077 == 0


# --- waiting for the end (the executor's doorbell) -----------------------------------------

GATED = "while [ ! -e gate ]; do sleep 0.05; done; echo through"


def assert_the_wait_ends_with_the_command(transport, tmp_path: Path) -> None:
    """A wait started while the gated command runs is still waiting a moment later, and
    returns True once the gate opens and the command ends (far below its 600 s limit)."""
    run_dir = str(tmp_path / "run")
    start_detached(transport, run_dir, str(tmp_path), GATED, {})
    ended: list[bool] = []
    thread = threading.Thread(
        target=lambda: ended.append(wait_for_end(transport, run_dir, 600)), daemon=True
    )
    thread.start()
    thread.join(timeout=2)
    assert thread.is_alive(), "returned while the command still ran"

    (tmp_path / "gate").touch()

    thread.join(timeout=60)
    assert ended == [True]
    assert poll(transport, run_dir).exit_code == 0


def test_waiting_for_the_end_returns_when_the_command_ends(transport, tmp_path):
    assert_the_wait_ends_with_the_command(transport, tmp_path)


def test_waiting_for_the_end_gives_up_at_its_limit(transport, tmp_path):
    run_dir = str(tmp_path / "run")
    start_detached(transport, run_dir, str(tmp_path), GATED, {})

    assert wait_for_end(transport, run_dir, limit_sec=1) is False
    assert poll(transport, run_dir).state == RunState.RUNNING
    (tmp_path / "gate").touch()


def test_waiting_for_a_run_that_is_gone_returns_at_once(transport, tmp_path):
    assert wait_for_end(transport, str(tmp_path / "never-started"), limit_sec=600) is False

    run_dir = tmp_path / "run"
    start_detached(transport, str(run_dir), str(tmp_path), "sleep 300", {})
    wrapper_pid = int((run_dir / "wrapper").read_text().split()[0])
    transport.run(f"kill -KILL {wrapper_pid} -{poll(transport, str(run_dir)).pgid}", timeout=10)
    assert wait_for_end(transport, str(run_dir), limit_sec=600) is False


def test_waiting_for_the_end_works_without_gnu_tail(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tail").write_text("#!/bin/sh\necho 'tail: unrecognized option' >&2; exit 1\n")
    (bin_dir / "tail").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    assert_the_wait_ends_with_the_command(LocalTransport(), tmp_path)
