"""The manifest of a case folder: what is in it, as the upload sees it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cases import manifest
from workers.transports import LocalTransport
from workers.transports.transfer import upload_tree

pytestmark = pytest.mark.pure


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "QA-1"
    (root / "logs").mkdir(parents=True)
    (root / "RP.plan.dcm").write_bytes(b"plan")
    (root / "logs" / "beam1.ptn").write_bytes(b"log one")
    (root / ".hidden").write_bytes(b"hidden files are uploaded too")
    (root / "current.ptn").symlink_to("logs/beam1.ptn")
    (root / "logs" / ".beam2.ptn.mqi-part").write_bytes(b"a partial transfer, not data")
    (root / "READY").write_bytes(b"")
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_it_lists_every_file_with_size_and_sha256(folder: Path) -> None:
    assert manifest.folder_manifest(folder) == [
        {"path": ".hidden", "size": 29, "sha256": sha(b"hidden files are uploaded too")},
        {"path": "READY", "size": 0, "sha256": sha(b"")},
        {"path": "RP.plan.dcm", "size": 4, "sha256": sha(b"plan")},
        {"path": "current.ptn", "size": 7, "sha256": sha(b"log one")},
        {"path": "logs/beam1.ptn", "size": 7, "sha256": sha(b"log one")},
    ]


def test_it_is_what_the_upload_sends(folder: Path, tmp_path: Path) -> None:
    report = upload_tree(LocalTransport(), folder, str(tmp_path / "remote" / "QA-1"))

    sent = [{"path": p, "size": s, "sha256": h} for p, s, h in sorted(report.verified)]
    assert sent == manifest.folder_manifest(folder)


def test_a_link_out_of_the_folder_makes_it_unreadable(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("another patient")
    (folder / "leak.ptn").symlink_to(tmp_path / "secret")

    with pytest.raises(manifest.ManifestError, match=r"leak\.ptn points outside the case folder"):
        manifest.folder_manifest(folder)


def test_a_file_written_while_it_is_hashed_is_noticed(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    real_open = open

    def open_and_append(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if str(path).endswith("RP.plan.dcm"):
            with real_open(path, "ab") as writer:
                writer.write(b" still being copied")
        return handle

    monkeypatch.setattr("builtins.open", open_and_append)

    with pytest.raises(manifest.FolderChanging, match=r"RP\.plan\.dcm changed while it was read"):
        manifest.folder_manifest(folder)


def test_a_diff_names_what_was_added_removed_and_changed(folder: Path) -> None:
    before = manifest.folder_manifest(folder)
    (folder / "RP.plan.dcm").write_bytes(b"another plan")
    (folder / "logs" / "beam1.ptn").unlink()
    os.unlink(folder / "current.ptn")
    (folder / "beam7.ptn").write_bytes(b"foreign log")

    difference = manifest.diff(before, manifest.folder_manifest(folder))

    assert difference.describe() == (
        "added beam7.ptn; removed current.ptn, logs/beam1.ptn; changed RP.plan.dcm"
    )
    assert not manifest.diff(before, before)


def test_the_digest_names_exactly_these_files(folder: Path) -> None:
    first = manifest.folder_manifest(folder)
    assert manifest.digest(first) == manifest.digest(list(reversed(first)))
    (folder / "READY").write_bytes(b"x")
    assert manifest.digest(manifest.folder_manifest(folder)) != manifest.digest(first)
