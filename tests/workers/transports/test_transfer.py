"""Folder upload/download: verified on both sides, idempotent, over SSH and locally."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.transports import LocalTransport, SSHTransport, TransportError
from workers.transports.transfer import download_tree, part_name, upload_tree

BIG_FILE_BYTES = 200 * 1000 * 1000


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``root``, computed here independently."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("big") / "case"
    root.mkdir()
    with (root / "dose.bin").open("wb") as handle:
        for _ in range(BIG_FILE_BYTES // 10_000_000):
            handle.write(os.urandom(10_000_000))
    yield root
    shutil.rmtree(root.parent)


@pytest.fixture(scope="module")
def many_files_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many") / "case"
    for index in range(1000):
        folder = root / f"beam{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"log{index:04}.txt").write_bytes(os.urandom(index * 7 % 5000))
    (root / "empty-folder").mkdir()
    return root


@pytest.fixture(params=["ssh", "local"])
def transport(request, sshd_factory):
    if request.param == "local":
        return LocalTransport()
    return SSHTransport(sshd_factory().target)


@pytest.mark.slow
def test_a_200_mb_file_goes_up_and_down_intact(transport, big_tree, scratch):
    remote, back = scratch / "remote" / "case", scratch / "back"

    up = upload_tree(transport, big_tree, str(remote))
    down = download_tree(transport, str(remote), back)

    expected = tree_hashes(big_tree)
    assert tree_hashes(remote) == expected
    assert tree_hashes(back) == expected
    assert up.bytes_sent == down.bytes_sent == BIG_FILE_BYTES
    print(
        f"\n{transport.description}: upload {up.megabytes_per_sec:.0f} MB/s, "
        f"download {down.megabytes_per_sec:.0f} MB/s"
    )


def test_a_thousand_small_files_go_up_and_down_intact(transport, many_files_tree, tmp_path):
    remote, back = tmp_path / "remote" / "case", tmp_path / "back"

    up = upload_tree(transport, many_files_tree, str(remote))
    down = download_tree(transport, str(remote), back)

    expected = tree_hashes(many_files_tree)
    assert len(expected) == 1000
    assert tree_hashes(remote) == expected
    assert tree_hashes(back) == expected
    assert (remote / "empty-folder").is_dir() and (back / "empty-folder").is_dir()
    assert up.files == down.files == 1000
    assert not list(remote.rglob("*.mqi-part")) and not list(back.rglob("*.mqi-part"))


def test_uploading_again_sends_nothing(transport, many_files_tree, tmp_path):
    remote = tmp_path / "remote"
    upload_tree(transport, many_files_tree, str(remote))

    again = upload_tree(transport, many_files_tree, str(remote))

    assert again.files_skipped == again.files == 1000
    assert again.bytes_sent == 0


def test_a_file_of_the_same_size_but_different_content_is_replaced(transport, tmp_path):
    source, remote = tmp_path / "source", tmp_path / "remote"
    source.mkdir()
    (source / "plan.dcm").write_bytes(b"new contents")
    remote.mkdir()
    (remote / "plan.dcm").write_bytes(b"old contents")

    report = upload_tree(transport, source, str(remote))

    assert (remote / "plan.dcm").read_bytes() == b"new contents"
    assert report.files_skipped == 0


def test_a_corrupt_partial_file_is_sent_again_from_scratch(transport, tmp_path):
    source, remote = tmp_path / "source", tmp_path / "remote"
    source.mkdir()
    data = os.urandom(3_000_000)
    (source / "log.bin").write_bytes(data)
    remote.mkdir()
    (remote / part_name("log.bin")).write_bytes(b"garbage" * 1000)

    report = upload_tree(transport, source, str(remote))

    assert (remote / "log.bin").read_bytes() == data
    assert report.files_resent == 1
    assert report.bytes_sent == len(data) - 7000 + len(data)
    assert not (remote / part_name("log.bin")).exists()


def test_a_missing_local_folder_is_a_permanent_error(transport, tmp_path):
    with pytest.raises(TransportError) as error:
        upload_tree(transport, tmp_path / "no-such-case", str(tmp_path / "remote"))

    assert error.value.permanent
    assert "does not exist" in str(error.value)


def test_a_missing_remote_folder_is_a_permanent_error(transport, tmp_path):
    with pytest.raises(TransportError) as error:
        download_tree(transport, str(tmp_path / "no-such-results"), tmp_path / "back")

    assert error.value.permanent
    assert "does not exist" in str(error.value)
    assert not (tmp_path / "back").exists()


def test_a_destination_below_a_file_is_a_permanent_error(transport, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_text("a")
    (tmp_path / "a-file").write_text("not a folder")

    with pytest.raises(TransportError) as error:
        upload_tree(transport, source, str(tmp_path / "a-file" / "case"))

    assert error.value.permanent


def test_reading_a_missing_remote_file_is_a_permanent_error(transport, tmp_path):
    with pytest.raises(TransportError) as error:
        transport.open_read(str(tmp_path / "missing.dcm"), root=str(tmp_path), size=10)

    assert error.value.permanent
    assert "missing.dcm" in str(error.value)


def test_a_local_symlink_out_of_the_folder_is_refused(transport, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (tmp_path / "secret").write_text("outside")
    (source / "link").symlink_to(tmp_path / "secret")

    with pytest.raises(TransportError) as error:
        upload_tree(transport, source, str(tmp_path / "remote"))

    assert error.value.permanent
    assert "points outside" in str(error.value)
    assert not (tmp_path / "remote").exists()


def test_a_remote_symlink_out_of_the_folder_is_refused(transport, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "etc").symlink_to("/etc")

    with pytest.raises(TransportError) as error:
        download_tree(transport, str(remote), tmp_path / "back")

    assert error.value.permanent
    assert "points outside" in str(error.value)


def test_a_symlink_inside_the_folder_is_copied_as_the_file_it_points_to(transport, tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "real.txt").write_text("data")
    (source / "alias.txt").symlink_to("sub/real.txt")

    upload_tree(transport, source, str(tmp_path / "remote"))

    copied = tmp_path / "remote" / "alias.txt"
    assert copied.read_text() == "data" and not copied.is_symlink()


def test_remote_paths_with_dot_dot_are_refused(transport, tmp_path):
    source = tmp_path / "source"
    source.mkdir()

    with pytest.raises(TransportError) as error:
        upload_tree(transport, source, f"{tmp_path}/remote/../../etc")

    assert error.value.permanent
