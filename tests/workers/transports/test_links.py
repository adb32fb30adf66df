"""Symbolic links are not followed at a transfer's roots, nor when one is swapped in while a
transfer runs: what is opened is checked, not only the name that was listed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.transports import LocalTransport, SSHTransport, TransportError
from workers.transports import transfer as transfer_module
from workers.transports.transfer import SMALL_FILE_BYTES, download_tree, upload_tree

# sent whole in one read, and streamed in chunks
SIZES = [1000, 3 * SMALL_FILE_BYTES]


def swapped_for_link(path: Path, outside: Path) -> Callable[[], None]:
    """A swap: ``path`` is moved aside and a link to ``outside`` takes its name."""

    def swap() -> None:
        path.rename(path.with_name(path.name + "-moved"))
        path.symlink_to(outside, target_is_directory=outside.is_dir())

    return swap


def swapping(base: type, method: str, swap: Callable[[], None]) -> type:
    """``base`` whose first call of ``method`` does ``swap`` first: after the tree was
    listed and its folders made, just before a file is opened."""

    def hooked(self, *args, **kwargs):
        if not type(self).swapped:
            type(self).swapped = True
            swap()
        return getattr(base, method)(self, *args, **kwargs)

    return type(f"Swapping{base.__name__}", (base,), {"swapped": False, method: hooked})


def make_transport(kind: str, server, cls: type | None = None):
    if kind == "ssh":
        return (cls or SSHTransport)(server.target)
    return (cls or LocalTransport)()


@pytest.fixture(params=["ssh", "local"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder no transfer may read or write: files in it hold a canary."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def canary(size: int) -> bytes:
    return (b"CANARY" * (size // 6 + 1))[:size]


def files_holding_canary(*roots: Path) -> list[Path]:
    return [
        path
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and b"CANARY" in path.read_bytes()
    ]


def assert_refused_as_link(error: pytest.ExceptionInfo[TransportError]) -> None:
    assert error.value.permanent
    assert "is a symbolic link" in str(error.value)


def test_an_upload_target_that_is_a_link_is_refused(kind, sshd_server, tmp_path, outside):
    source = tmp_path / "case"
    source.mkdir()
    (source / "plan.dcm").write_bytes(b"plan")
    target = tmp_path / "upload" / "QA-1"
    target.parent.mkdir()
    target.symlink_to(outside, target_is_directory=True)

    with pytest.raises(TransportError) as error:
        upload_tree(make_transport(kind, sshd_server), source, str(target))

    assert_refused_as_link(error)
    assert list(outside.iterdir()) == []


def test_a_download_source_that_is_a_link_is_refused(kind, sshd_server, tmp_path, outside):
    (outside / "RTDOSE.dcm").write_bytes(canary(100))
    results = tmp_path / "download" / "QA-1"
    results.parent.mkdir()
    results.symlink_to(outside, target_is_directory=True)
    back = tmp_path / "back"

    with pytest.raises(TransportError) as error:
        download_tree(make_transport(kind, sshd_server), str(results), back)

    assert_refused_as_link(error)
    assert files_holding_canary(back) == []


def test_a_download_into_a_local_folder_that_is_a_link_is_refused(
    kind, sshd_server, tmp_path, outside
):
    results = tmp_path / "results"
    results.mkdir()
    (results / "RTDOSE.dcm").write_bytes(b"dose")
    back = tmp_path / "back"
    back.symlink_to(outside, target_is_directory=True)

    with pytest.raises(TransportError) as error:
        download_tree(make_transport(kind, sshd_server), str(results), back)

    assert_refused_as_link(error)
    assert list(outside.iterdir()) == []


def test_a_link_inside_the_destination_is_not_written_through(kind, sshd_server, tmp_path):
    source = tmp_path / "case"
    (source / "logs").mkdir(parents=True)
    (source / "logs" / "beam1.ptn").write_bytes(b"log")
    target = tmp_path / "upload" / "QA-1"
    (target / "elsewhere").mkdir(parents=True)
    (target / "logs").symlink_to(target / "elsewhere", target_is_directory=True)

    with pytest.raises(TransportError) as error:
        upload_tree(make_transport(kind, sshd_server), source, str(target))

    assert_refused_as_link(error)
    assert list((target / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("swapped", ["sub-folder", "file"])
def test_a_download_source_swapped_for_a_link_after_listing_is_refused(
    kind, sshd_server, tmp_path, outside, size, swapped
):
    results = tmp_path / "results"
    (results / "beam1").mkdir(parents=True)
    (results / "beam1" / "dose.bin").write_bytes(os.urandom(size))
    (outside / "dose.bin").write_bytes(canary(size))
    if swapped == "sub-folder":
        swap = swapped_for_link(results / "beam1", outside)
    else:
        swap = swapped_for_link(results / "beam1" / "dose.bin", outside / "dose.bin")
    source_class = swapping(SSHTransport if kind == "ssh" else LocalTransport, "open_read", swap)
    back = tmp_path / "back"

    with pytest.raises(TransportError) as error:
        download_tree(make_transport(kind, sshd_server, source_class), str(results), back)

    assert_refused_as_link(error)
    assert source_class.swapped
    assert files_holding_canary(back) == []


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("swapped", ["sub-folder", "file"])
def test_an_upload_source_swapped_for_a_link_after_listing_is_refused(
    kind, sshd_server, tmp_path, outside, size, swapped, monkeypatch
):
    source = tmp_path / "case"
    (source / "logs").mkdir(parents=True)
    (source / "logs" / "beam1.ptn").write_bytes(os.urandom(size))
    (outside / "beam1.ptn").write_bytes(canary(size))
    if swapped == "sub-folder":
        swap = swapped_for_link(source / "logs", outside)
    else:
        swap = swapped_for_link(source / "logs" / "beam1.ptn", outside / "beam1.ptn")
    local_class = swapping(LocalTransport, "open_read", swap)
    monkeypatch.setattr(transfer_module, "LocalTransport", local_class)
    target = tmp_path / "upload" / "QA-1"

    with pytest.raises(TransportError) as error:
        upload_tree(make_transport(kind, sshd_server), source, str(target))

    assert_refused_as_link(error)
    assert local_class.swapped
    assert files_holding_canary(target) == []


@pytest.mark.parametrize("size", SIZES)
def test_an_upload_target_folder_swapped_for_a_link_is_not_written_through(
    kind, sshd_server, tmp_path, outside, size
):
    source = tmp_path / "case"
    (source / "logs").mkdir(parents=True)
    (source / "logs" / "beam1.ptn").write_bytes(canary(size))
    target = tmp_path / "upload" / "QA-1"
    # the folder is made by the transfer, then swapped just before the file is created
    destination_class = swapping(
        SSHTransport if kind == "ssh" else LocalTransport,
        "open_write",
        lambda: swapped_for_link(target / "logs", outside)(),
    )

    with pytest.raises(TransportError) as error:
        upload_tree(make_transport(kind, sshd_server, destination_class), source, str(target))

    assert_refused_as_link(error)
    assert destination_class.swapped
    assert files_holding_canary(outside) == []
