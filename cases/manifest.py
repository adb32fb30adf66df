"""A case folder's manifest: every file it holds, with its size and SHA-256.

The manifest is what makes a result traceable.  It is taken when the scanner finds a
folder (and again whenever an operator retries a case), the upload checks that it sent
exactly those files, each run keeps the manifest it computed from, and the case page
compares the folder as it is now with it.

Entries are ``{"path": "logs/beam1.ptn", "size": 1234, "sha256": "..."}``, sorted by path,
paths relative to the case folder and '/'-separated.  The walk sees the folder as the
upload does: hidden files count, a symbolic link inside the folder stands for what it
points at, our own partial-transfer files (``.name.mqi-part``) are not data.  A link
leading out of the folder, a dangling one or a device makes the folder unreadable here;
the scanner has already said why in words.

Hashing is what costs; a small cache keyed by (path, size, mtime, inode) keeps a case page
that is looked at again and again from hashing the same files every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

CHUNK = 1024 * 1024
PART_PREFIX, PART_SUFFIX = ".", ".mqi-part"  # workers.transports.transfer.part_name
CACHE_ENTRIES = 4096


class Entry(TypedDict):
    path: str
    size: int
    sha256: str


Manifest = list[Entry]


class ManifestError(Exception):
    """The folder cannot be listed the way the upload would list it; the message says why."""


class FolderChanging(ManifestError):
    """A file changed while it was being hashed: something is still writing the folder."""


@dataclass
class ManifestDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self, limit: int = 5) -> str:
        """``"added a.ptn; removed b.ptn; changed RP.dcm"``, each list cut at ``limit``."""
        parts = []
        for verb, paths in (("added", self.added), ("removed", self.removed)):
            if paths:
                parts.append(f"{verb} {_listed(paths, limit)}")
        if self.changed:
            parts.append(f"changed {_listed(self.changed, limit)}")
        return "; ".join(parts) or "no difference"

    def describe_if_any(self) -> str:
        """:meth:`describe`, or "" when there is no difference."""
        return self.describe() if self else ""


def folder_manifest(root: Path | str) -> Manifest:
    """The manifest of the folder at ``root`` as it is now.

    Raises :class:`FolderChanging` when a file changes while it is read (a copy still
    writing it), :class:`ManifestError` when the folder cannot be read as a whole.
    """
    manifest = []
    for rel, _size, path in walk(root):
        size, sha256 = _hashed(path, rel)
        manifest.append(Entry(path=rel, size=size, sha256=sha256))
    return manifest


def walk(root: Path | str) -> list[tuple[str, int, str]]:
    """``(relative path, size, path to read)`` of every file, sorted; links resolved inside."""
    top = os.fspath(root)
    try:
        real_top = os.path.realpath(top, strict=True)
    except OSError as exc:
        raise ManifestError(f"the case folder {top} cannot be read: {exc.strerror}") from None
    found: list[tuple[str, int, str]] = []
    pending = [("", top, real_top)]
    while pending:
        rel_dir, path_dir, real_dir = pending.pop()
        try:
            with os.scandir(path_dir) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            raise ManifestError(f"{rel_dir or '.'} cannot be listed: {exc.strerror}") from None
        for entry in entries:
            name = entry.name
            if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ManifestError(f"{rel!r} has a name that is not valid UTF-8") from None
            real = os.path.join(real_dir, name)
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if not _inside(real, real_top):
                    raise ManifestError(f"{rel} points outside the case folder")
            try:
                info = os.stat(real)
            except OSError as exc:
                raise ManifestError(f"{rel} cannot be read: {exc.strerror}") from None
            if stat.S_ISDIR(info.st_mode):
                if _inside(real_dir, real) and entry.is_symlink():
                    raise ManifestError(f"{rel} is a link that makes a loop")
                pending.append((rel, entry.path, real))
            elif stat.S_ISREG(info.st_mode):
                found.append((rel, info.st_size, real))
            else:
                raise ManifestError(f"{rel} is neither a file nor a folder")
    found.sort()
    return found


def signature(root: Path | str) -> list[tuple[str, int, int, int]]:
    """Path, size, mtime and inode of every file: cheap to take, and it changes whenever
    a file is written, replaced or renamed in (checks taken around a hashing pass)."""
    found = []
    for rel, _size, path in walk(root):
        try:
            info = os.stat(path)
        except OSError as exc:
            raise FolderChanging(f"{rel} disappeared: {exc.strerror}") from None
        found.append((rel, info.st_size, info.st_mtime_ns, info.st_ino))
    return found


def diff(old: Sequence[Entry], new: Sequence[Entry]) -> ManifestDiff:
    before = {entry["path"]: entry for entry in old}
    after = {entry["path"]: entry for entry in new}
    return ManifestDiff(
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=sorted(
            path
            for path in before.keys() & after.keys()
            if (before[path]["size"], before[path]["sha256"])
            != (after[path]["size"], after[path]["sha256"])
        ),
    )


def digest(manifest: Iterable[Entry]) -> str:
    """One SHA-256 over the whole manifest: a short name for exactly these files."""
    canonical = sorted((entry["path"], entry["size"], entry["sha256"]) for entry in manifest)
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def total_bytes(manifest: Iterable[Entry]) -> int:
    return sum(entry["size"] for entry in manifest)


# --- hashing ------------------------------------------------------------------------------

_cache: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
_cache_lock = threading.Lock()


def _hashed(path: str, rel: str) -> tuple[int, str]:
    before = _identity(path, rel)
    with _cache_lock:
        known = _cache.get(before)
        if known is not None:
            _cache.move_to_end(before)
            return before[1], known
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
    except OSError as exc:
        raise ManifestError(f"{rel} cannot be read: {exc.strerror}") from None
    if _identity(path, rel) != before:
        raise FolderChanging(f"{rel} changed while it was read; is something still writing it?")
    value = hasher.hexdigest()
    with _cache_lock:
        _cache[before] = value
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return before[1], value


def _identity(path: str, rel: str) -> tuple[str, int, int, int]:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ManifestError(f"{rel} cannot be read: {exc.strerror}") from None
    return (path, info.st_size, info.st_mtime_ns, info.st_ino)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _listed(paths: list[str], limit: int) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
