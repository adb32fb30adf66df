"""A transfer cut by a dying server resumes where it stopped instead of starting over."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from workers.transports import SSHTransport, TransportError
from workers.transports.transfer import download_tree, part_name, upload_tree

FILE_BYTES = 120 * 1000 * 1000


def wait_until_part_grows(part: Path, at_least: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (part.exists() and part.stat().st_size >= at_least):
        assert time.monotonic() < deadline, f"{part} did not reach {at_least} bytes"
        time.sleep(0.005)


def transfer_and_kill_server_midway(server, transfer, part: Path) -> BaseException:
    """Run ``transfer`` in a thread, kill sshd once ``part`` holds some data, return the error."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            transfer()
        except BaseException as exc:  # the thread's outcome is checked below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    wait_until_part_grows(part, FILE_BYTES // 4)
    server.kill()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert len(errors) == 1
    return errors[0]


@pytest.fixture
def big_file(scratch) -> Path:
    source = scratch / "case"
    source.mkdir()
    path = source / "logs.bin"
    with path.open("wb") as handle:
        for _ in range(FILE_BYTES // 10_000_000):
            handle.write(os.urandom(10_000_000))
    return path


@pytest.mark.slow
def test_an_interrupted_upload_resumes_and_completes(sshd_server, big_file, scratch):
    remote = scratch / "remote"
    transport = SSHTransport(sshd_server.target)
    part = remote / part_name(big_file.name)

    error = transfer_and_kill_server_midway(
        sshd_server, lambda: upload_tree(transport, big_file.parent, str(remote)), part
    )
    assert isinstance(error, TransportError) and not error.permanent
    kept = part.stat().st_size
    assert 0 < kept < FILE_BYTES

    sshd_server.start()
    report = upload_tree(transport, big_file.parent, str(remote))

    assert report.bytes_resumed == kept
    assert report.bytes_sent == FILE_BYTES - kept
    assert sha256(remote / big_file.name) == sha256(big_file)
    assert not part.exists()


@pytest.mark.slow
def test_an_interrupted_download_resumes_and_completes(sshd_server, big_file, scratch):
    back = scratch / "back"
    transport = SSHTransport(sshd_server.target)
    part = back / part_name(big_file.name)

    error = transfer_and_kill_server_midway(
        sshd_server, lambda: download_tree(transport, str(big_file.parent), back), part
    )
    assert isinstance(error, TransportError) and not error.permanent
    kept = part.stat().st_size

    sshd_server.start()
    report = download_tree(transport, str(big_file.parent), back)

    assert report.bytes_resumed == kept > 0
    assert report.bytes_sent == FILE_BYTES - kept
    assert sha256(back / big_file.name) == sha256(big_file)


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
