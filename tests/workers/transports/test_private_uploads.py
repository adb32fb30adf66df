"""Uploaded patient data is readable by the transfer user only on the GPU server, whatever
the server's umask: the folders an upload creates are 0700 and its files 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from workers.hosts import ensure_remote_dir
from workers.transports import LocalTransport, SSHTransport
from workers.transports.transfer import SMALL_FILE_BYTES, download_tree, upload_tree


@pytest.fixture(params=["ssh", "local"])
def transport(request, sshd_server):
    return SSHTransport(sshd_server.target) if request.param == "ssh" else LocalTransport()


@pytest.fixture
def open_umask():
    """A umask that lets everyone read, as on many servers."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def modes(root: Path) -> dict[str, int]:
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.lstat().st_mode)
        for path in [root, *root.rglob("*")]
    }


def case_folder(tmp_path: Path) -> Path:
    source = tmp_path / "case"
    (source / "logs" / "beam1").mkdir(parents=True)
    (source / "plan.dcm").write_bytes(os.urandom(3 * SMALL_FILE_BYTES))
    (source / "logs" / "beam1" / "spots.ptn").write_bytes(b"spots")
    for path in [source, *source.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return source


def test_an_upload_creates_folders_and_files_only_the_owner_can_read(
    transport, tmp_path, open_umask
):
    target = tmp_path / "upload" / "QA-1"

    upload_tree(transport, case_folder(tmp_path), str(target))

    assert modes(target) == {
        ".": 0o700,
        "plan.dcm": 0o600,
        "logs": 0o700,
        "logs/beam1": 0o700,
        "logs/beam1/spots.ptn": 0o600,
    }


def test_a_resumed_upload_keeps_its_files_private(transport, tmp_path, open_umask):
    source = case_folder(tmp_path)
    target = tmp_path / "upload" / "QA-1"
    upload_tree(transport, source, str(target))
    (source / "plan.dcm").write_bytes(os.urandom(3 * SMALL_FILE_BYTES))  # changed: sent again

    upload_tree(transport, source, str(target))

    assert modes(target)["plan.dcm"] == 0o600


def test_a_download_keeps_the_local_umask(transport, tmp_path, open_umask):
    # results on the worker machine are read by the admin site, which may be another user
    results = tmp_path / "results"
    results.mkdir()
    (results / "RTDOSE.dcm").write_bytes(b"dose")

    download_tree(transport, str(results), tmp_path / "back" / "QA-1")

    assert modes(tmp_path / "back" / "QA-1") == {".": 0o755, "RTDOSE.dcm": 0o644}


def test_the_folders_made_for_uploads_and_outputs_are_private(transport, tmp_path, open_umask):
    (tmp_path / "srv").mkdir(mode=0o755)

    ensure_remote_dir(transport, str(tmp_path / "srv" / "mqi" / "upload"))

    assert modes(tmp_path / "srv") == {".": 0o755, "mqi": 0o700, "mqi/upload": 0o700}


def test_the_folders_are_made_below_a_parent_that_is_a_link(transport, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "srv").symlink_to(tmp_path / "data", target_is_directory=True)

    ensure_remote_dir(transport, str(tmp_path / "srv" / "mqi" / "upload"))

    assert (tmp_path / "data" / "mqi" / "upload").is_dir()
