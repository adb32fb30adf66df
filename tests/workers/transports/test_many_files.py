"""Many small files, and the per-file primitives a transfer is made of."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from workers.transports import LocalTransport, SSHTransport, TransportError
from workers.transports.transfer import SMALL_FILE_BYTES, download_tree, part_name, upload_tree


@pytest.fixture(params=["ssh", "local"])
def transport(request, sshd_server):
    return SSHTransport(sshd_server.target) if request.param == "ssh" else LocalTransport()


def write(transport, root: Path, path: Path, data: bytes, **options) -> None:
    with transport.open_write(str(path), root=str(root), **options) as writer:
        writer.write(data)


def read(transport, root: Path, path: Path, size: int, **options) -> bytes:
    with transport.open_read(str(path), root=str(root), size=size, **options) as reader:
        return reader.read(size + 1)


@pytest.mark.parametrize("size", [0, 1, 32 * 1024, 32 * 1024 + 1, SMALL_FILE_BYTES, 3_000_001])
def test_a_written_file_reads_back_the_same(transport, tmp_path, size):
    data = os.urandom(size)

    write(transport, tmp_path, tmp_path / "f", data)

    assert (tmp_path / "f").read_bytes() == data
    assert read(transport, tmp_path, tmp_path / "f", size) == data


def test_reading_from_an_offset_and_writing_at_one(transport, tmp_path):
    data = os.urandom(200_000)
    (tmp_path / "f").write_bytes(data[:70_000])

    write(transport, tmp_path, tmp_path / "f", data[70_000:], offset=70_000)

    assert (tmp_path / "f").read_bytes() == data
    assert read(transport, tmp_path, tmp_path / "f", len(data), offset=12_345) == data[12_345:]


def test_creating_a_file_that_exists_is_refused_and_leaves_it_alone(transport, tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 5000)

    with pytest.raises(TransportError) as error:
        write(transport, tmp_path, tmp_path / "f", b"short")

    assert error.value.permanent
    assert (tmp_path / "f").read_bytes() == b"x" * 5000


def test_a_file_shorter_than_expected_reads_short(transport, tmp_path):
    (tmp_path / "f").write_bytes(b"abc")

    assert read(transport, tmp_path, tmp_path / "f", 10) == b"abc"


def test_a_large_file_shorter_than_expected_reads_short_without_hanging(transport, tmp_path):
    data = os.urandom(1_000_000)
    (tmp_path / "f").write_bytes(data)

    assert read(transport, tmp_path, tmp_path / "f", 5_000_000) == data


def test_nothing_past_the_expected_size_is_read(transport, tmp_path):
    (tmp_path / "f").write_bytes(b"abcdef")

    assert read(transport, tmp_path, tmp_path / "f", 4) == b"abcd"


def test_reading_a_missing_file_is_a_permanent_error_that_names_it(transport, tmp_path):
    with pytest.raises(TransportError) as error:
        read(transport, tmp_path, tmp_path / "gone", 4)

    assert error.value.permanent
    assert str(tmp_path / "gone") in str(error.value)
    (tmp_path / "there").write_bytes(b"data")  # the connection is still usable
    assert read(transport, tmp_path, tmp_path / "there", 4) == b"data"


def test_writing_into_a_missing_folder_is_a_permanent_error_that_names_it(transport, tmp_path):
    with pytest.raises(TransportError) as error:
        write(transport, tmp_path, tmp_path / "missing" / "f4", b"data")

    assert error.value.permanent
    assert "missing/f4" in str(error.value)
    write(transport, tmp_path, tmp_path / "after", b"ok")
    assert (tmp_path / "after").read_bytes() == b"ok"


def test_rename_replaces_the_target(transport, tmp_path):
    (tmp_path / "part").write_text("new")
    (tmp_path / "final").write_text("old")

    transport.rename(str(tmp_path / "part"), str(tmp_path / "final"))

    assert (tmp_path / "final").read_text() == "new"
    assert not (tmp_path / "part").exists()


def test_renaming_a_missing_file_is_a_permanent_error_that_names_it(transport, tmp_path):
    with pytest.raises(TransportError) as error:
        transport.rename(str(tmp_path / "gone"), str(tmp_path / "c"))

    assert error.value.permanent
    assert str(tmp_path / "gone") in str(error.value)


def test_a_small_files_kept_part_is_written_over_and_verified(transport, tmp_path):
    source = tmp_path / "case"
    source.mkdir()
    (source / "log.txt").write_bytes(b"the real log\n" * 100)
    remote = tmp_path / "remote"
    remote.mkdir()
    # an interrupted earlier attempt left a part whose start does not match
    (remote / part_name("log.txt")).write_bytes(b"garbage")

    report = upload_tree(transport, source, str(remote))

    assert (remote / "log.txt").read_bytes() == (source / "log.txt").read_bytes()
    assert not (remote / part_name("log.txt")).exists()
    assert (report.files_resumed, report.files_resent) == (0, 0)


def test_a_folder_of_large_and_small_files_goes_up_and_down_intact(transport, tmp_path):
    # uploading, the far side hashes the large files while the small ones are sent
    source = tmp_path / "case"
    (source / "logs").mkdir(parents=True)
    (source / "plan.bin").write_bytes(os.urandom(3 * SMALL_FILE_BYTES + 5))
    (source / "spots.bin").write_bytes(os.urandom(SMALL_FILE_BYTES + 1))
    for i in range(150):
        (source / "logs" / f"beam{i:03}.log").write_bytes(os.urandom(i * 37))
    remote, back = tmp_path / "remote", tmp_path / "back"

    up = upload_tree(transport, source, str(remote))
    down = download_tree(transport, str(remote), back)

    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert sorted(p.relative_to(back) for p in back.rglob("*") if p.is_file()) == files
    assert all((back / f).read_bytes() == (source / f).read_bytes() for f in files)
    assert not list(remote.rglob("*.mqi-part"))
    assert (up.files, down.files, up.files_resent, down.files_resent) == (152, 152, 0, 0)
    assert upload_tree(transport, source, str(remote)).files_skipped == 152


def test_transfers_leave_no_connection_or_thread_behind(sshd_server, tmp_path):
    # A transfer's far-side hashing runs in a helper thread with its own SSH connection
    # (connections are per thread); the helper must close it, or a long-running worker
    # gains a connection and a paramiko thread per transfer.
    transport = SSHTransport(sshd_server.target)
    source = tmp_path / "case"
    source.mkdir()
    (source / "plan.bin").write_bytes(os.urandom(SMALL_FILE_BYTES * 2))
    for i in range(20):
        (source / f"log{i}").write_bytes(os.urandom(100))
    upload_tree(transport, source, str(tmp_path / "first"))  # this thread's own connection
    baseline = threading.active_count()

    for i in range(3):
        upload_tree(transport, source, str(tmp_path / f"up{i}"))
        download_tree(transport, str(tmp_path / f"up{i}"), tmp_path / f"down{i}")

    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == baseline, [t.name for t in threading.enumerate()]
