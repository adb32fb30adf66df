"""Many small files at once: read_files, write_files, rename_all (pipelined over SFTP)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from workers.transports import LocalTransport, SSHTransport, TransportError
from workers.transports.ssh import SMALL_FILE_REQUESTS_IN_FLIGHT
from workers.transports.transfer import SMALL_FILE_BYTES, download_tree, part_name, upload_tree

# more files than requests in flight, so the window slides; sizes from empty to the largest
# file sent whole
COUNT = SMALL_FILE_REQUESTS_IN_FLIGHT * 2 + 7


@pytest.fixture(params=["ssh", "local"])
def transport(request, sshd_server):
    return SSHTransport(sshd_server.target) if request.param == "ssh" else LocalTransport()


def contents(count: int) -> list[bytes]:
    sizes = [0, 1, SMALL_FILE_BYTES, *((i * 977) % 40_000 for i in range(count - 3))]
    return [os.urandom(size) for size in sizes]


def test_written_files_read_back_the_same(transport, tmp_path):
    datas = contents(COUNT)
    paths = [str(tmp_path / f"f{i:03}") for i in range(COUNT)]

    transport.write_files(list(zip(paths, datas, strict=True)))

    assert [Path(p).read_bytes() for p in paths] == datas
    sizes = [(p, len(d)) for p, d in zip(paths, datas, strict=True)]
    assert transport.read_files(sizes) == datas


def test_writing_truncates_what_was_there(transport, tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"x" * 5000)

    transport.write_files([(str(target), b"short")])

    assert target.read_bytes() == b"short"


def test_a_file_shorter_than_expected_reads_short(transport, tmp_path):
    (tmp_path / "f").write_bytes(b"abc")

    assert transport.read_files([(str(tmp_path / "f"), 10)]) == [b"abc"]


def test_a_missing_file_among_many_is_a_permanent_error_that_names_it(transport, tmp_path):
    paths = [tmp_path / f"f{i}" for i in range(20)]
    for path in paths:
        path.write_bytes(b"data")
    paths[13].unlink()

    with pytest.raises(TransportError) as error:
        transport.read_files([(str(p), 4) for p in paths])

    assert error.value.permanent
    assert str(paths[13]) in str(error.value)
    # the connection is still usable, and nothing was left half-done on it
    assert transport.read_files([(str(paths[0]), 4)]) == [b"data"]


def test_writing_into_a_missing_folder_is_a_permanent_error_that_names_it(transport, tmp_path):
    files = [(str(tmp_path / f"f{i}"), b"data") for i in range(10)]
    files[4] = (str(tmp_path / "missing" / "f4"), b"data")

    with pytest.raises(TransportError) as error:
        transport.write_files(files)

    assert error.value.permanent
    assert "missing/f4" in str(error.value)
    transport.write_files([(str(tmp_path / "after"), b"ok")])
    assert (tmp_path / "after").read_bytes() == b"ok"


def test_rename_all_replaces_the_targets_in_order(transport, tmp_path):
    for i in range(COUNT):
        (tmp_path / f"part{i}").write_text(f"new {i}")
        (tmp_path / f"final{i}").write_text("old")

    transport.rename_all(
        [(str(tmp_path / f"part{i}"), str(tmp_path / f"final{i}")) for i in range(COUNT)]
    )

    assert [(tmp_path / f"final{i}").read_text() for i in range(COUNT)] == [
        f"new {i}" for i in range(COUNT)
    ]
    assert not list(tmp_path.glob("part*"))


def test_rename_all_names_the_rename_that_failed(transport, tmp_path):
    (tmp_path / "a").write_text("a")

    with pytest.raises(TransportError) as error:
        transport.rename_all(
            [
                (str(tmp_path / "a"), str(tmp_path / "b")),
                (str(tmp_path / "gone"), str(tmp_path / "c")),
            ]
        )

    assert str(tmp_path / "gone") in str(error.value)
    assert (tmp_path / "b").read_text() == "a"  # the one before it happened


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
