"""What a command prints cannot break following it, and no error while following it frees
its GPU under it: an unreadable progress line is ignored, NUL bytes in its output are
stored, and an error inside the executor reports the step failed only once the command's
process group is confirmed gone (else the step keeps its GPU and the poll is retried).

Each test starts a real command on the ``local`` transport and plays the executor's poll
messages by hand, so the moment of each look is the test's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cases.models import Case, WorkflowStep
from conductor.actors import conductor
from gpus.models import GPUResource
from mqi_site.config import get_config
from mqi_site.messaging import QUEUES, REMOTE_EXECUTOR, Command
from tests.conductor.helpers import active_run, make_gpus, register, succeed
from tests.conftest import drain
from tests.workers.conftest import wait_for
from workers import executor
from workers.actors import remote_executor
from workers.transports import LocalTransport, TransportError
from workers.transports.detached import RunState, kill_group, poll

pytestmark = pytest.mark.django_db(transaction=True)

SHIPPED_PATTERN = r"Generating particles for \((?P<done>\d+) of (?P<total>\d+) batches\)"
# Prints a line, says so, and runs until the test creates `go` (or the group is killed).
PRINT_AND_WAIT = "printf '%s\\n' {line}; touch printed; while [ ! -e go ]; do sleep 0.05; done"


class Started:
    def __init__(self, run: WorkflowStep, broker) -> None:
        self.run = run
        self.broker = broker
        config = get_config()
        paths = config.run_paths(run.case.case_id, run.run.number, run.host)
        self.case_dir = Path(paths.case_dir)
        self.run_dir = executor.remote_run_dir(str(self.case_dir), run.name, run.pk)

    def wait_printed(self) -> None:
        wait_for((self.case_dir / "printed").exists, 30, "the command's output")

    def finish(self) -> None:
        (self.case_dir / "go").touch()
        wait_for(Path(self.run_dir, "exit_code").exists, 30, "the command to end")

    def poll_once(self) -> None:
        """Deliver the latest poll message the executor sent itself."""
        polls = [
            m for m in drain(self.broker, QUEUES[REMOTE_EXECUTOR]) if m.args[0] == "poll_command"
        ]
        assert polls, "the executor stopped polling"
        remote_executor.fn(*polls[-1].args)

    def outcomes(self) -> list[tuple[str, dict[str, Any]]]:
        return [tuple(m.args) for m in drain(self.broker, QUEUES["conductor"])]

    def state(self) -> RunState:
        return poll(LocalTransport(), self.run_dir).state


@pytest.fixture
def start(use_config, stub_broker) -> Iterator[Callable[..., Started]]:
    """Start ``command`` as the run_interpreter step of a case holding the only GPU."""
    started: list[Started] = []

    def start_command(command: str, *, progress_pattern: str | None = None) -> Started:
        def edit(raw: dict) -> None:
            raw["remote_commands"]["run_interpreter"] = command
            raw["workflows"]["default_qa"][1]["progress_pattern"] = progress_pattern

        use_config(edit)
        make_gpus(1)
        case = register("QA-output")
        Path(get_config().run_paths(case.case_id, 1, "local").case_dir).mkdir(parents=True)
        succeed(active_run(case))  # the upload
        drain(stub_broker, QUEUES[REMOTE_EXECUTOR])
        run = active_run(case)
        remote_executor.fn(
            Command.EXECUTE_COMMAND, {"case_id": case.case_id, "step_run_id": run.pk}
        )
        started.append(Started(run, stub_broker))
        drain(stub_broker, QUEUES["conductor"])
        return started[-1]

    yield start_command
    for each in started:
        kill_group(LocalTransport(), each.run_dir)


def still_holding_its_gpu(started: Started) -> bool:
    run = WorkflowStep.objects.get(pk=started.run.pk)
    gpu = GPUResource.objects.get()
    return (
        run.status == WorkflowStep.Status.RUNNING
        and gpu.status == GPUResource.Status.RESERVED
        and gpu.step_run_id == started.run.pk
        and started.state() == RunState.RUNNING
    )


@pytest.mark.parametrize(
    "line",
    [
        "'Generating particles for (" + "9" * 5000 + " of 10 batches)'",
        "'Generating particles for (" + "9" * 40 + " of " + "9" * 41 + " batches)'",
        "'Generating particles for (3 of 0 batches)'",
        "'Generating particles for (" + "x" * 5000 + ")'",
    ],
    ids=["5000 digits", "40 digits", "zero total", "a long line"],
)
def test_an_unreadable_progress_line_is_ignored_and_the_step_goes_on(start, line):
    started = start(PRINT_AND_WAIT.format(line=line), progress_pattern=SHIPPED_PATTERN)
    started.wait_printed()

    started.poll_once()

    assert started.outcomes() == []
    assert still_holding_its_gpu(started)
    assert Case.objects.get().progress == 30  # the step's own start value, nothing read
    started.finish()
    started.poll_once()
    assert [command for command, _ in started.outcomes()] == [Command.EXECUTION_SUCCEEDED]


def test_a_readable_progress_line_still_moves_the_progress_bar(start):
    started = start(
        PRINT_AND_WAIT.format(line="'Generating particles for (5 of 10 batches)'"),
        progress_pattern=SHIPPED_PATTERN,
    )
    started.wait_printed()

    started.poll_once()

    assert Case.objects.get().progress == 50  # halfway from 30 to the next step's 70


def test_nul_bytes_and_escapes_in_the_output_are_stored(start):
    started = start(
        "printf 'out\\0put\\n\\033[31mred\\n'; printf 'err\\0or\\n' >&2; touch printed; "
        "while [ ! -e go ]; do sleep 0.05; done; exit 3"
    )
    started.finish()
    started.poll_once()
    ((command, payload),) = started.outcomes()

    conductor.fn(command, payload)

    run = WorkflowStep.objects.get(pk=started.run.pk)
    case = Case.objects.get()
    assert case.status == Case.Status.FAILED
    assert (run.exit_code, run.status) == (3, WorkflowStep.Status.FAILED)
    assert run.stdout_tail == "out\ufffdput\n\x1b[31mred\n"
    assert run.stderr_tail == "err\ufffdor\n"
    assert case.error_message == "run_interpreter failed: exited with code 3: err\ufffdor"
    assert GPUResource.objects.get().status == GPUResource.Status.AVAILABLE


def test_an_internal_error_stops_the_command_before_the_failure_is_reported(start, monkeypatch):
    started = start(PRINT_AND_WAIT.format(line="x"), progress_pattern=SHIPPED_PATTERN)
    started.wait_printed()

    def broken(*args):
        raise RuntimeError("a bug in the executor")

    monkeypatch.setattr(executor, "_progress", broken)
    started.poll_once()

    ((command, payload),) = started.outcomes()
    assert command == Command.EXECUTION_FAILED
    assert "RuntimeError: a bug in the executor" in payload["error_message"]
    # by the time the failure is reported, the process group is gone
    status = poll(LocalTransport(), started.run_dir)
    assert (status.state, status.exit_code) == (RunState.EXITED, 143)


def test_a_command_that_cannot_be_stopped_keeps_its_step_and_the_poll_is_retried(
    start, monkeypatch
):
    started = start(PRINT_AND_WAIT.format(line="x"), progress_pattern=SHIPPED_PATTERN)
    started.wait_printed()

    def broken(*args):
        raise RuntimeError("a bug in the executor")

    def unreachable(*args, **kwargs):
        raise TransportError("gpu1: connection lost; will retry", permanent=False)

    monkeypatch.setattr(executor, "_progress", broken)
    monkeypatch.setattr(executor, "kill_group", unreachable)
    with pytest.raises(executor.RetryFollowing, match="could not be confirmed gone"):
        started.poll_once()  # raised out of the actor: Dramatiq retries the poll

    assert started.outcomes() == []
    assert still_holding_its_gpu(started)
