"""A folder name full of shell syntax is data everywhere: transfer, detached run, environment."""

from __future__ import annotations

import os
import shlex
import time
import uuid
from pathlib import Path

import pytest

from workers.transports import LocalTransport, SSHTransport
from workers.transports.detached import RunState, poll, start_detached
from workers.transports.transfer import download_tree, upload_tree


@pytest.fixture
def canary() -> str:
    return f"mqi-canary-{uuid.uuid4().hex[:8]}"


def hostile(canary: str) -> str:
    return (
        f"case 'single' \"double\" $(touch {canary}) `touch {canary}` ; touch {canary} "
        f"&& touch {canary} | x > y \\ $HOME\nsecond line ünïcødé *"
    )


def assert_no_canary(canary: str, *roots: Path) -> None:
    for root in {Path.home(), Path.cwd(), Path("/"), Path("/tmp"), *roots}:
        assert not (root / canary).exists(), f"command injection: {root / canary}"
    for root in roots:
        assert not list(root.rglob(canary)), "command injection below the test folder"


@pytest.fixture(params=["ssh", "local"])
def transport(request, sshd_server):
    return SSHTransport(sshd_server.target) if request.param == "ssh" else LocalTransport()


def test_hostile_names_go_through_upload_and_download(transport, tmp_path, canary):
    name = hostile(canary)
    source = tmp_path / "source" / name
    (source / name).mkdir(parents=True)
    (source / name / name).write_bytes(b"dose")
    (source / f"{name}.dcm").write_bytes(b"plan")
    remote, back = tmp_path / "remote" / name, tmp_path / "back" / name

    upload_tree(transport, source, str(remote))
    download_tree(transport, str(remote), back)

    for root in (remote, back):
        assert (root / name / name).read_bytes() == b"dose"
        assert (root / f"{name}.dcm").read_bytes() == b"plan"
    again = upload_tree(transport, source, str(remote))
    assert again.files_skipped == 2  # checksums of these names were read back correctly
    assert_no_canary(canary, tmp_path)


def test_hostile_names_go_through_a_detached_run(transport, tmp_path, canary):
    name = hostile(canary)
    case_dir = tmp_path / name
    case_dir.mkdir()
    (case_dir / name).write_text("input")
    run_dir = case_dir / "runs" / name
    command = f'cat {shlex.quote(name)} > out.txt; printf "%s" "$CASE_NAME" > env.txt'

    start_detached(transport, str(run_dir), str(case_dir), command, {"CASE_NAME": name})
    deadline = time.monotonic() + 20
    while (status := poll(transport, str(run_dir))).state != RunState.EXITED:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)

    assert status.exit_code == 0, status.stderr_tail
    assert (case_dir / "out.txt").read_text() == "input"
    assert (case_dir / "env.txt").read_text() == name
    assert_no_canary(canary, tmp_path)
    assert os.path.isdir(run_dir)
