"""Copy a folder tree to or from a transport: atomic, verified, resumable and idempotent.

One implementation for both directions and both transports; the transports only provide
primitives (list, stat, open, rename...). For every file:

- it is written as ``.<name>.mqi-part`` next to its final name and renamed into place only
  after its size and SHA-256 were checked on the *other* host: the local side hashes the
  bytes as they stream through, the far side hashes what it holds (``sha256sum`` over SSH,
  batched), so a reader of the destination never sees a partial or corrupt file;
- a ``.mqi-part`` left by an interrupted transfer is continued from its current size (the
  final check covers the continued part too; on a mismatch the file is sent once more from
  scratch); small files (at most ``SMALL_FILE_BYTES``) are always sent whole;
- a file already in place with the same size and hash is not sent again, so re-running a
  finished transfer only costs the listing and the hashing.

Paths are confined to the two roots. Roots with ``..`` are refused; the destination folder
and a source folder on the far side must not be symbolic links (the local folder of an
upload is resolved once: the scanner accepts case folders linked inside the watch folder).
In the source tree a link is followed when it stays inside the tree, by reading the file it
resolves to; every file is then read through real folders only, and a folder swapped for a
link after the listing is refused (:meth:`Transport.open_read`). In the destination tree no
link is followed or written through. An upload's folders and files are created readable by
their owner only: they hold patient data on a shared GPU server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shlex
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.transports.base import (
    FileDigest,
    FileStat,
    ReadStream,
    Transport,
    TransportError,
    WriteStream,
)
from workers.transports.local import LocalTransport


class Hasher(Protocol):
    """What the copy needs of a ``hashlib`` hash object."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


logger = logging.getLogger(__name__)

PART_PREFIX = "."
PART_SUFFIX = ".mqi-part"
CHUNK_SIZE = 1024 * 1024
# chunks read ahead of the hashing and writing (bounded memory: CHUNK_SIZE each)
CHUNKS_AHEAD = 8
# files up to this size are read and written whole, with no helper thread
SMALL_FILE_BYTES = 256 * 1024
# files are verified and renamed in groups: one checksum command per group
VERIFY_BATCH_FILES = 500
VERIFY_BATCH_BYTES = 1024 * 1024 * 1024
# generous: a slow disk hashes at ~100 MB/s
DIGEST_TIMEOUT_BASE_SEC = 60.0
DIGEST_BYTES_PER_SEC = 20_000_000


@dataclass
class TransferReport:
    """What a transfer did. ``bytes_sent`` is what actually crossed (re-sends included)."""

    files: int = 0
    bytes: int = 0
    files_skipped: int = 0
    bytes_skipped: int = 0
    files_resumed: int = 0
    bytes_resumed: int = 0
    files_resent: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    # every file now in place at the destination, as verified: (relative path, size, sha256)
    verified: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def megabytes_per_sec(self) -> float:
        return self.bytes_sent / self.seconds / 1e6 if self.seconds else 0.0


Progress = Callable[["TransferReport"], None]


def upload_tree(
    transport: Transport,
    local_dir: str | os.PathLike[str],
    remote_dir: str,
    *,
    on_progress: Progress | None = None,
) -> TransferReport:
    """Copy the folder ``local_dir`` (on this machine) to ``remote_dir`` on ``transport``.

    ``on_progress`` is called with the report so far after every chunk and file sent (a
    long transfer uses it to tell the conductor it is alive)."""
    local = LocalTransport()
    source = _Tree(local, os.path.realpath(_local_root(local_dir)), local=True)
    destination = _Tree(transport, _remote_root(remote_dir, transport), local=False)
    return _Copy(source, destination, on_progress).run()


def download_tree(
    transport: Transport,
    remote_dir: str,
    local_dir: str | os.PathLike[str],
    *,
    on_progress: Progress | None = None,
) -> TransferReport:
    """Copy the folder ``remote_dir`` on ``transport`` to ``local_dir`` on this machine."""
    local = LocalTransport()
    source = _Tree(transport, _remote_root(remote_dir, transport), local=False)
    destination = _Tree(local, _local_root(local_dir), local=True)
    return _Copy(source, destination, on_progress).run()


def prune_tree(fs: Transport, root: str, keep: set[str]) -> list[str]:
    """Remove everything under ``root`` but the files in ``keep`` (relative paths) and the
    folders that hold them; returns what was removed.  Links are removed, never followed."""
    keep_dirs = {posixpath.dirname(path) for path in keep}
    for path in list(keep_dirs):
        while path:
            path = posixpath.dirname(path)
            keep_dirs.add(path)
    removed: list[str] = []
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        for entry in fs.listdir(posixpath.join(root, relative_dir) if relative_dir else root):
            relative = posixpath.join(relative_dir, entry.name)
            if entry.is_dir and not entry.is_symlink and relative in keep_dirs:
                pending.append(relative)
            elif not (entry.is_file and not entry.is_symlink and relative in keep):
                remove_tree(fs, posixpath.join(root, relative))
                removed.append(relative)
    return sorted(removed)


def remove_tree(fs: Transport, path: str) -> None:
    """``rm -rf`` one path (a link itself, never what it points at); gone already is fine."""
    result = fs.run(f"rm -rf -- {shlex.quote(path)}", timeout=DIGEST_TIMEOUT_BASE_SEC)
    if not result.ok:
        raise TransportError(
            f"{fs.description}: cannot remove {path!r}: {result.stderr.strip()[:300]}",
            permanent=True,
        )


def part_name(name: str) -> str:
    """The temporary name a file is written under before it is renamed to ``name``."""
    return f"{PART_PREFIX}{name}{PART_SUFFIX}"


def is_part_name(name: str) -> bool:
    return (
        name.startswith(PART_PREFIX)
        and name.endswith(PART_SUFFIX)
        and len(name) > len(PART_PREFIX + PART_SUFFIX)
    )


def _refuse(message: str) -> TransportError:
    return TransportError(message, permanent=True)


def _local_root(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if ".." in text.split("/"):
        raise _refuse(f"local folder {text!r} contains '..'; pass a path without it")
    return os.path.abspath(text)


def _remote_root(path: str, transport: Transport) -> str:
    if not posixpath.isabs(path):
        raise _refuse(f"{transport.description}: {path!r} is not an absolute path")
    if ".." in path.split("/"):
        raise _refuse(f"{transport.description}: {path!r} contains '..'; remote paths are confined")
    return posixpath.normpath(path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class _Tree:
    fs: Transport
    root: str
    local: bool  # on this machine: where the in-stream hash is taken

    @property
    def where(self) -> str:
        return self.fs.description


@dataclass
class _File:
    relative: str
    size: int
    source: str
    final: str
    part: str
    offset: int = 0  # bytes of .mqi-part kept from an earlier attempt
    part_exists: bool = False  # a .mqi-part is there (kept or written): remove it to restart
    attempts: int = 0
    local_sha256: str = ""


class _Copy:
    """One transfer. ``near`` is the side on this machine, ``far`` the other one."""

    def __init__(
        self, source: _Tree, destination: _Tree, on_progress: Progress | None = None
    ) -> None:
        self.source = source
        self.destination = destination
        self.on_progress = on_progress
        self.near, self.far = (source, destination) if source.local else (destination, source)
        self.report = TransferReport()
        # uploads put patient data on a shared server: readable by its owner only
        self.private = source.local
        self._source_real = ""  # the source root with its parents' links resolved

    def run(self) -> TransferReport:
        started = time.monotonic()
        folders, files = self._walk_source()
        self._prepare_destination(folders)
        plan, candidates = self._plan(files)
        to_send = self._skip_files_in_place(plan, candidates)
        batches = _batches(to_send)
        if self.source.local:
            for batch in batches:
                self._send_and_publish(batch, None)
        else:
            self._download_batches(batches)
        self.report.seconds = time.monotonic() - started
        logger.info(
            "%s -> %s: %d files, %d bytes sent, %d skipped, %d resumed in %.1fs",
            self.source.where,
            self.destination.where,
            self.report.files,
            self.report.bytes_sent,
            self.report.bytes_skipped,
            self.report.bytes_resumed,
            self.report.seconds,
        )
        return self.report

    # -- source ----------------------------------------------------------------------------

    def _walk_source(self) -> tuple[list[str], list[tuple[str, int, str]]]:
        """Folders and ``(relative path, size, path to read)`` of files.

        The path to read goes through real folders below the resolved root only: a link
        inside the tree is replaced by what it resolves to, if that is inside the tree.
        """
        tree = self.source
        root_stat = tree.fs.lstat(tree.root)
        if root_stat is None:
            raise _refuse(f"{tree.where}: source folder {tree.root!r} does not exist")
        if root_stat.is_symlink:
            raise _refuse(
                f"{tree.where}: source folder {tree.root!r} is a symbolic link; it is not "
                "followed: point the transfer at the folder itself"
            )
        if not root_stat.is_dir:
            raise _refuse(f"{tree.where}: source {tree.root!r} is not a folder")
        self._source_real = root_real = tree.fs.realpath(tree.root)
        folders: list[str] = []
        files: list[tuple[str, int, str]] = []
        pending = [("", root_real)]
        while pending:
            relative_dir, real_dir = pending.pop()
            for entry in sorted(tree.fs.listdir(real_dir), key=lambda e: e.name):
                if is_part_name(entry.name):
                    continue  # our own leftovers are never data
                self._check_name(entry.name, real_dir)
                relative = posixpath.join(relative_dir, entry.name)
                kind, real = entry, posixpath.join(real_dir, entry.name)
                if entry.is_symlink:
                    kind, real = self._follow_source_link(real, real_dir, root_real)
                if kind.is_dir:
                    folders.append(relative)
                    pending.append((relative, real))
                elif kind.is_file:
                    files.append((relative, kind.size, real))
                else:
                    raise _refuse(
                        f"{tree.where}: {real!r} is neither a file nor a folder "
                        "(device, socket or pipe); remove it from the folder"
                    )
        return folders, files

    def _check_name(self, name: str, folder: str) -> None:
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            raise _refuse(f"{self.source.where}: invalid entry {name!r} in {folder!r}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise _refuse(
                f"{self.source.where}: file name {name.encode('utf-8', 'surrogateescape')!r} "
                f"in {folder!r} is not valid UTF-8; rename it"
            ) from None

    def _follow_source_link(self, path: str, real_dir: str, root_real: str) -> tuple[FileStat, str]:
        tree = self.source
        real = tree.fs.realpath(path)
        if not _inside(real, root_real):
            raise _refuse(
                f"{tree.where}: symlink {path!r} points outside {tree.root!r} (to {real!r}); "
                "it is not followed: copy the file into the folder instead"
            )
        target = tree.fs.stat(path)
        if target is None:
            raise _refuse(f"{tree.where}: symlink {path!r} is dangling")
        if target.is_dir and _inside(real_dir, real):
            raise _refuse(f"{tree.where}: symlink {path!r} makes a loop (to {real!r})")
        return target, real

    # -- destination -----------------------------------------------------------------------

    def _prepare_destination(self, folders: Sequence[str]) -> None:
        tree = self.destination
        self._make_parents(posixpath.dirname(tree.root))
        # mkdir refuses a link, at the root and below: nothing is written through one
        tree.fs.mkdir(tree.root, private=self.private)
        for relative in folders:
            tree.fs.mkdir(posixpath.join(tree.root, relative), private=self.private)

    def _make_parents(self, path: str) -> None:
        """``mkdir -p`` of the destination's parent (links among the parents are fine)."""
        existing = self.destination.fs.stat(path)
        if existing is not None:
            if existing.is_dir:
                return
            raise _refuse(f"{self.destination.where}: {path!r} exists and is not a folder")
        parent = posixpath.dirname(path)
        if parent != path:
            self._make_parents(parent)
        self.destination.fs.mkdir(path, private=self.private)

    def _plan(self, files: Sequence[tuple[str, int, str]]) -> tuple[list[_File], list[_File]]:
        """Every file with its destination names and how much of it is already there, and
        the files whose final name holds a file of the right size (maybe the right file)."""
        tree = self.destination
        listings: dict[str, dict[str, FileStat]] = {}
        plan: list[_File] = []
        candidates: list[_File] = []
        for relative, size, source in files:
            folder = posixpath.join(tree.root, posixpath.dirname(relative))
            name = posixpath.basename(relative)
            if folder not in listings:
                listings[folder] = {e.name: e for e in tree.fs.listdir(folder)}
            item = _File(
                relative=relative,
                size=size,
                source=source,
                final=posixpath.join(folder, name),
                part=posixpath.join(folder, part_name(name)),
            )
            final = listings[folder].get(name)
            if final is not None and final.is_dir:
                raise _refuse(
                    f"{tree.where}: {item.final!r} is a folder but the source has a file "
                    "there; remove it"
                )
            part = listings[folder].get(part_name(name))
            if part is not None and part.is_file and part.size <= size:
                item.offset = part.size
                item.part_exists = True
            elif part is not None:
                # a symlink or something bigger: never append through or to it
                tree.fs.remove(item.part)
            self.report.files += 1
            self.report.bytes += size
            plan.append(item)
            if final is not None and final.is_file and final.size == size:
                candidates.append(item)
        return plan, candidates

    def _skip_files_in_place(self, plan: list[_File], candidates: list[_File]) -> list[_File]:
        """The files still to send: those in place with the same hash on both sides are not."""
        if not candidates:
            return plan
        source_paths = [c.source for c in candidates]
        destination_paths = [c.final for c in candidates]
        near_paths, far_paths = (
            (source_paths, destination_paths)
            if self.source.local
            else (destination_paths, source_paths)
        )
        timeout = _digest_timeout(sum(c.size for c in candidates))
        # hash both sides at the same time: the far side is a remote process, the near
        # side is hashlib in a helper thread (it releases the GIL)
        with ThreadPoolExecutor(max_workers=1) as pool:
            near_future = pool.submit(self.near.fs.digests, near_paths, timeout=timeout)
            far = self.far.fs.digests(far_paths, timeout=timeout)
            near = near_future.result()
        in_place = {
            id(c): n.sha256
            for c, n, f in zip(candidates, near, far, strict=True)
            if n is not None and n == f and n.size == c.size
        }
        remaining = []
        for item in plan:
            if id(item) not in in_place:
                remaining.append(item)
                continue
            self.report.files_skipped += 1
            self.report.bytes_skipped += item.size
            self.report.verified.append((item.relative, item.size, in_place[id(item)]))
            if item.part_exists:
                self.destination.fs.remove(item.part)  # a stale attempt of a file now in place
        return remaining

    # -- copying ---------------------------------------------------------------------------

    def _download_batches(self, batches: list[list[_File]]) -> None:
        """Download, hashing each batch's remote sources while earlier batches are copied."""
        helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqi-far-hash")
        digests: list[Future[dict[str, FileDigest | None]]] = []
        try:
            digests += [helper.submit(self._far_digests, batch) for batch in batches]
            for batch, batch_digests in zip(batches, digests, strict=True):
                self._send_and_publish(batch, batch_digests)
        finally:
            self._let_go(helper, digests)

    def _send_and_publish(
        self, batch: list[_File], far_digests: Future[dict[str, FileDigest | None]] | None
    ) -> None:
        large = [item for item in batch if item.size > SMALL_FILE_BYTES]
        small = [item for item in batch if item.size <= SMALL_FILE_BYTES]
        if far_digests is not None or not large or not small:
            self._send_large(large)
            self._send_small(small)
            self._verify_and_publish(batch, far_digests)
            return
        # Uploading both: the far side hashes the large files (a helper thread, its own
        # connection, opened while they are sent) while the small ones are sent.
        helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqi-far-hash")
        work: list[Future[Any]] = []
        try:
            work.append(helper.submit(self.far.fs.run, "true", timeout=DIGEST_TIMEOUT_BASE_SEC))
            self._send_large(large)
            large_digests = helper.submit(self._far_digests, large)
            work.append(large_digests)
            self._send_small(small)
            small_digests = self._far_digests(small)
            digests: Future[dict[str, FileDigest | None]] = Future()
            digests.set_result({**large_digests.result(), **small_digests})
        finally:
            self._let_go(helper, work)
        self._verify_and_publish(batch, digests)

    def _let_go(self, helper: ThreadPoolExecutor, work: Sequence[Future[Any]]) -> None:
        """End a far-side helper without waiting for it, and close its own connection.

        Work it has not started is dropped (after a failure nobody needs it); what it is
        doing (a long remote hash) ends on its own, and the close queued behind it then
        runs: connections are per thread, so only the helper can close its own.
        """
        for future in work:
            future.cancel()  # no effect on work under way or done
        helper.submit(self.far.fs.close)
        helper.shutdown(wait=False)

    def _send_large(self, items: list[_File]) -> None:
        for item in items:
            self._send(item)
            if self.on_progress is not None:
                self.on_progress(self.report)

    def _send_small(self, items: list[_File]) -> None:
        for item in items:
            self._send_whole(item)
            if self.on_progress is not None:
                self.on_progress(self.report)

    def _far_digests(self, items: Sequence[_File]) -> dict[str, FileDigest | None]:
        """Digests computed on the far side: of the parts uploading, of the sources downloading."""
        paths = [item.part if self.destination is self.far else item.source for item in items]
        timeout = _digest_timeout(sum(item.size for item in items))
        return dict(zip(paths, self.far.fs.digests(paths, timeout=timeout), strict=True))

    def _send(self, item: _File) -> None:
        item.attempts += 1
        digest = self._hash_kept_part(item) if item.offset else None
        if digest is None:
            item.offset = 0
            digest = hashlib.sha256()
        remaining = item.size - item.offset
        # Hashing and writing a chunk happen in a helper thread while the next chunk is
        # read (both release the GIL). The helper is the innermost context, so its writes
        # end before the files close.
        written: deque[Future[None]] = deque()
        with (
            self._open_source(item, offset=item.offset) as reader,
            self._open_part(item) as writer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqi-write") as helper,
        ):
            while remaining > 0:
                chunk = reader.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise TransportError(
                        f"{self.source.where}: {item.source!r} became shorter while being "
                        "copied; is something still writing it? will retry",
                        permanent=False,
                    )
                written.append(helper.submit(_hash_and_write, digest, writer, chunk))
                if len(written) > CHUNKS_AHEAD:
                    written.popleft().result()  # a failed write is raised here
                remaining -= len(chunk)
                self.report.bytes_sent += len(chunk)
                if self.on_progress is not None:  # a big file takes a while
                    self.on_progress(self.report)
            while written:
                written.popleft().result()
        item.local_sha256 = digest.hexdigest()

    def _send_whole(self, item: _File) -> None:
        """Send a small file in one read and one write (a kept part is started over)."""
        with self._open_source(item) as reader:
            data = reader.read(item.size)
        if len(data) != item.size:
            raise TransportError(
                f"{self.source.where}: {item.source!r} became shorter while being "
                "copied; is something still writing it? will retry",
                permanent=False,
            )
        item.attempts += 1
        item.offset = 0
        item.local_sha256 = hashlib.sha256(data).hexdigest()
        with self._open_part(item) as writer:
            writer.write(data)
        self.report.bytes_sent += item.size

    def _open_source(self, item: _File, *, offset: int = 0) -> ReadStream:
        return self.source.fs.open_read(
            item.source, root=self._source_real, size=item.size, offset=offset
        )

    def _open_part(self, item: _File) -> WriteStream:
        """The part to write from ``item.offset``; from 0, an earlier part is removed first
        (a new part is created exclusively, never written through what is there)."""
        tree = self.destination
        if not item.offset and item.part_exists:
            tree.fs.remove(item.part)
        writer = tree.fs.open_write(
            item.part, root=tree.root, offset=item.offset, private=self.private
        )
        item.part_exists = True
        return writer

    def _hash_kept_part(self, item: _File) -> Hasher | None:
        """The hash of the first ``offset`` bytes on the local side; None if they are not there.

        Uploading, that is the local source (the remote part is checked after the copy);
        downloading, the local part itself.
        """
        digest = hashlib.sha256()
        remaining = item.offset
        if self.source.local:
            reader = self._open_source(item)
        else:
            reader = self.near.fs.open_read(item.part, root=self.near.root, size=item.offset)
        with reader:
            while remaining > 0:
                chunk = reader.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    return None
                digest.update(chunk)
                remaining -= len(chunk)
        return digest

    def _verify_and_publish(
        self, batch: list[_File], far_digests: Future[dict[str, FileDigest | None]] | None
    ) -> None:
        """Rename every file whose copy matches the far side's hash; send the others again."""
        if not batch:
            return
        far = far_digests.result() if far_digests is not None else self._far_digests(batch)
        mismatched = []
        verified = []
        still_differs: TransportError | None = None
        for item in batch:
            digest = far[item.part if self.destination is self.far else item.source]
            if digest == FileDigest(size=item.size, sha256=item.local_sha256):
                verified.append(item)
                if item.offset:
                    self.report.files_resumed += 1
                    self.report.bytes_resumed += item.offset
            elif item.attempts >= 2:
                still_differs = still_differs or TransportError(
                    f"{self.far.where}: {item.relative!r} still differs after being sent again "
                    f"(expected {item.size} bytes sha256 {item.local_sha256}, found {digest}); "
                    "is something changing it? will retry",
                    permanent=False,
                )
            else:
                logger.warning(
                    "%s: %r differs after the copy (resumed from %d); sending it again",
                    self.far.where,
                    item.relative,
                    item.offset,
                )
                mismatched.append(item)
        for item in verified:
            self.destination.fs.rename(item.part, item.final)
            item.part_exists = False
        self.report.verified += [(item.relative, item.size, item.local_sha256) for item in verified]
        if still_differs is not None:
            raise still_differs
        for item in mismatched:
            self.report.files_resent += 1
            item.offset = 0
            self._send(item)
        self._verify_and_publish(mismatched, None)


def _groups(items: list[_File], *, files: int, size: int) -> list[list[_File]]:
    """Consecutive groups of ``items``: a group is closed once it holds ``files`` files or
    ``size`` bytes (so it can pass ``size`` by its last file)."""
    groups: list[list[_File]] = [[]]
    total = 0
    for item in items:
        if len(groups[-1]) >= files or total >= size:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += item.size
    return [group for group in groups if group]


def _batches(items: list[_File]) -> list[list[_File]]:
    """Consecutive groups verified with one checksum command each."""
    return _groups(items, files=VERIFY_BATCH_FILES, size=VERIFY_BATCH_BYTES)


def _hash_and_write(digest: Hasher, writer: WriteStream, chunk: bytes) -> None:
    digest.update(chunk)
    writer.write(chunk)


def _digest_timeout(total_bytes: int) -> float:
    return DIGEST_TIMEOUT_BASE_SEC + total_bytes / DIGEST_BYTES_PER_SEC
