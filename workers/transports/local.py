"""This machine as a transport: for running on the GPU server itself, and for the local side
of every transfer.

Same primitives and the same error rules as :class:`~workers.transports.ssh.SSHTransport`,
so transfer and detached-run code cannot tell the difference.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import socket
import stat
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import BinaryIO, Self

from workers.transports.base import (
    CommandResult,
    FileDigest,
    FileStat,
    TransportError,
    link_refused,
    os_error,
    path_chain,
)

logger = logging.getLogger(__name__)

# a file being written is handed to the disk every this many bytes (see _LocalStream.write)
WRITEBACK_BYTES = 64 * 1024 * 1024
_FADVISE = getattr(os, "posix_fadvise", None)  # not on macOS: there the sync does it all
# a folder on the way to a file: opened without following a link
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO put where a file was listed must not block the open (it is refused after)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class LocalTransport:
    """Commands through ``/bin/sh`` and files through ``os`` on this machine. Stateless."""

    def __init__(self) -> None:
        self.description = f"local {socket.gethostname()}"

    def _error(self, exc: OSError, action: str, path: str) -> TransportError:
        return os_error(exc, where=self.description, action=action, path=path)

    def run(self, script: str, *, timeout: float) -> CommandResult:
        # its own session, so a timeout kills everything the script started (but not what
        # it detached with setsid: that is in a session of its own)
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise self._error(exc, "start", "/bin/sh") from exc
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise TransportError(
                f"{self.description}: command did not finish within {timeout:g}s and was "
                "killed; will retry",
                permanent=False,
            ) from None
        return CommandResult(
            # a command killed by a signal has no exit code; SSH reports it as -1 too
            exit_code=process.returncode if process.returncode >= 0 else -1,
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
        )

    def lstat(self, path: str) -> FileStat | None:
        return self._stat(path, follow=False)

    def stat(self, path: str) -> FileStat | None:
        return self._stat(path, follow=True)

    def _stat(self, path: str, *, follow: bool) -> FileStat | None:
        try:
            st = os.stat(path, follow_symlinks=follow)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._error(exc, "stat", path) from exc
        return FileStat(name=os.path.basename(path), size=st.st_size, mode=st.st_mode)

    def listdir(self, path: str) -> list[FileStat]:
        try:
            with os.scandir(path) as entries:
                return [
                    FileStat(name=e.name, size=st.st_size, mode=st.st_mode)
                    for e in entries
                    for st in (e.stat(follow_symlinks=False),)
                ]
        except OSError as exc:
            raise self._error(exc, "list", path) from exc

    def realpath(self, path: str) -> str:
        try:
            return os.path.realpath(path, strict=True)
        except OSError as exc:
            raise self._error(exc, "resolve", path) from exc

    def mkdir(self, path: str, *, private: bool = False) -> None:
        try:
            os.mkdir(path, 0o700 if private else 0o777)
        except FileExistsError as exc:
            if os.path.islink(path):
                raise link_refused(self.description, path) from None
            if not os.path.isdir(path):
                raise self._error(exc, "create folder", path) from exc
        except OSError as exc:
            raise self._error(exc, "create folder", path) from exc

    def remove(self, path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, "remove", path) from exc

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst``; a file's data reaches the disk before its new name.

        Written files are not synced when closed but here, when a transfer publishes them:
        by then a whole batch is written, the first sync commits the journal with all of it
        and the rest cost little (one sync per closed file made downloads of many small
        files ~2x slower).
        """
        try:
            if stat.S_ISREG(os.lstat(src).st_mode):  # not through a link, not a folder
                descriptor = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
            os.replace(src, dst)
        except OSError as exc:
            raise self._error(exc, f"rename {src!r} to", dst) from exc

    def open_read(self, path: str, *, root: str, size: int, offset: int = 0) -> _LocalStream:
        descriptor = self._open_below(root, path, _READ_FLAGS)
        try:
            handle = os.fdopen(descriptor, "rb")
        except BaseException:
            os.close(descriptor)
            raise
        try:
            handle.seek(offset)
        except OSError as exc:
            handle.close()
            raise self._error(exc, "open", path) from exc
        return _LocalStream(self, handle, path, "read", unread=max(size - offset, 0))

    def open_write(
        self, path: str, *, root: str, offset: int = 0, private: bool = False
    ) -> _LocalStream:
        if offset:
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        else:  # O_EXCL: neither a file nor a link already there is written (through)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        descriptor = self._open_below(root, path, flags, 0o600 if private else 0o666)
        try:
            handle = os.fdopen(descriptor, "wb")  # on a descriptor, "w" does not truncate
        except BaseException:
            os.close(descriptor)
            raise
        try:
            handle.seek(offset)
        except OSError as exc:
            handle.close()
            raise self._error(exc, "open", path) from exc
        return _LocalStream(self, handle, path, "write")

    def _open_below(self, root: str, path: str, flags: int, mode: int = 0o666) -> int:
        """A descriptor of the regular file ``path``, reached from ``root`` one level at a
        time without following a link: what is opened is what was listed, or an error."""
        chain = path_chain(root, path)
        folder = self._open_level(root, path, _FOLDER_FLAGS)
        try:
            for level in chain[1:-1]:
                inner = self._open_level(level, path, _FOLDER_FLAGS, folder)
                os.close(folder)
                folder = inner
            descriptor = self._open_level(path, path, flags | os.O_NOFOLLOW, folder, mode)
        finally:
            os.close(folder)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise TransportError(
                    f"{self.description}: {path!r} is not a regular file; remove it",
                    permanent=True,
                )
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def _open_level(
        self, level: str, path: str, flags: int, folder: int | None = None, mode: int = 0o666
    ) -> int:
        """Open ``level`` (``path`` or a folder on its way), relative to ``folder`` if given."""
        name = level if folder is None else os.path.basename(level)
        try:
            return os.open(name, flags, mode, dir_fd=folder)
        except OSError as exc:
            # O_NOFOLLOW on a link fails with ELOOP, with O_DIRECTORY too with ENOTDIR;
            # O_EXCL on a link with EEXIST
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST) and os.path.islink(level):
                raise link_refused(self.description, level) from None
            raise self._error(exc, "open", path) from exc

    def digests(self, paths: Sequence[str], *, timeout: float) -> list[FileDigest | None]:
        return [self._digest(path) for path in paths]

    def _digest(self, path: str) -> FileDigest | None:
        try:
            descriptor = os.open(path, _READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP and os.path.islink(path):
                return None  # a link is not the file that was written
            raise self._error(exc, "checksum", path) from exc
        with os.fdopen(descriptor, "rb") as handle:
            try:
                status = os.fstat(descriptor)
                if not stat.S_ISREG(status.st_mode):
                    return None
                sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError as exc:
                raise self._error(exc, "checksum", path) from exc
        return FileDigest(size=status.st_size, sha256=sha256)

    def close(self) -> None:
        """Nothing to release."""


class _LocalStream:
    """An open local file whose failures come out as :class:`TransportError`.

    Written files are flushed out of Python on close; :meth:`LocalTransport.rename` syncs
    them to disk before it publishes them under their final name.
    """

    def __init__(
        self, owner: LocalTransport, handle: BinaryIO, path: str, action: str, *, unread: int = 0
    ) -> None:
        self._owner = owner
        self._handle = handle
        self._path = path
        self._action = action
        self._unread = unread  # reading: bytes left up to the size the file was listed with
        self._unflushed = 0  # bytes written since the disk was last asked to catch up

    def read(self, size: int) -> bytes:
        try:
            data = self._handle.read(min(size, self._unread))
        except OSError as exc:
            raise self._owner._error(exc, "read", self._path) from exc
        self._unread -= len(data)
        return data

    def write(self, data: bytes) -> None:
        try:
            self._handle.write(data)
            self._unflushed += len(data)
            if self._unflushed >= WRITEBACK_BYTES and _FADVISE is not None:
                # Start writing a big file to disk while it is still arriving (Linux starts
                # writeback on this advice), so the sync before its rename has little left.
                self._handle.flush()
                _FADVISE(self._handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                self._unflushed = 0
        except OSError as exc:
            raise self._owner._error(exc, "write", self._path) from exc

    def close(self) -> None:
        try:
            if self._action == "write" and not self._handle.closed:
                self._handle.flush()
        except OSError as exc:
            raise self._owner._error(exc, "write", self._path) from exc
        finally:
            self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except TransportError as close_error:
            logger.debug(
                "%s: closing %r after a failure: %s",
                self._owner.description,
                self._path,
                close_error,
            )
