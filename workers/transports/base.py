"""What the transfer and detached-run code needs from a host, and the errors it can raise.

Two implementations exist: :class:`~workers.transports.ssh.SSHTransport` (a GPU server
reached over SSH/SFTP) and :class:`~workers.transports.local.LocalTransport` (running on
the GPU server itself). Both expose the same small primitives, shaped like paramiko's
``SFTPClient``, so :mod:`~workers.transports.transfer` and
:mod:`~workers.transports.detached` are written once.

Files are opened below a root folder (the case folder, the results folder) and no symbolic
link is followed from that root down, not even one swapped in after the folder was listed:
locally every level is opened with ``O_NOFOLLOW``; over SFTP, whose protocol (version 3)
has neither ``O_NOFOLLOW`` nor inode numbers, every level is ``lstat``-ed after the open and
the opened file's attributes must match the ones found at its name.

Every primitive raises :class:`TransportError` (never a raw ``OSError`` or paramiko
exception), and every error says whether retrying can help.
"""

from __future__ import annotations

import errno
import posixpath
import stat as stat_module
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable


@dataclass(frozen=True, kw_only=True)
class SSHTarget:
    """How to reach one GPU server. Hashable: it is the key of the per-thread connection cache."""

    name: str
    hostname: str
    port: int = 22
    username: str
    key_file: str
    known_hosts_file: str
    connect_timeout_sec: float = 10.0
    keepalive_sec: int = 15

    @property
    def address(self) -> str:
        """``user@host:port``, for messages (no secrets in it)."""
        return f"{self.username}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host's name as it appears in known_hosts (``[host]:port`` unless port 22)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class TransportError(Exception):
    """A transport operation failed.

    ``permanent`` is False when the same call may succeed later unchanged (network, SSH
    connection, timeout) and True when something must be fixed first (host key, key file,
    missing path, permissions, full disk).  ``unreachable`` says that the host itself could
    not be reached (connection refused or timed out, or dropped): an outage of the server,
    not a failure of what was asked of it.  The message names the host, the path and what
    to do about it.
    """

    def __init__(self, message: str, *, permanent: bool, unreachable: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.unreachable = unreachable and not permanent

    @property
    def transient(self) -> bool:
        return not self.permanent


@dataclass(frozen=True)
class FileStat:
    """The attributes the transfer code needs (``lstat`` semantics unless said otherwise)."""

    name: str
    size: int
    mode: int

    @property
    def is_dir(self) -> bool:
        return stat_module.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat_module.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat_module.S_ISLNK(self.mode)


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str


class ReadStream(Protocol):
    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class WriteStream(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """A host on which commands run and files live. Paths are absolute POSIX paths."""

    @property
    def description(self) -> str:
        """Where operations happen (``ssh root@gpu1:22`` / ``local``), for messages."""
        ...

    def run(self, script: str, *, timeout: float) -> CommandResult:
        """Run a POSIX ``sh`` script (stdin is empty) and wait for it, at most ``timeout`` s.

        A non-zero exit is a normal result, not an error; a command killed by a signal has
        exit code -1 (over SSH: 128 + the signal number, as the remote shell reports it).
        Raises a transient :class:`TransportError` on timeout or a lost connection; it is not
        retried on its own, since a script that was sent may have run.
        Keep scripts under ~100 KiB (they travel as one ``sh -c`` argument).
        """
        ...

    def lstat(self, path: str) -> FileStat | None:
        """Attributes of ``path`` itself (a symlink is not followed); None if it is missing."""
        ...

    def stat(self, path: str) -> FileStat | None:
        """Attributes of what ``path`` points to; None if it (or its target) is missing."""
        ...

    def listdir(self, path: str) -> list[FileStat]:
        """Entries of a folder with ``lstat`` attributes, without ``.`` and ``..``."""
        ...

    def realpath(self, path: str) -> str:
        """``path`` with every symlink resolved (the path must exist)."""
        ...

    def mkdir(self, path: str, *, private: bool = False) -> None:
        """Create one folder level; an existing folder is fine, a symlink there is refused.

        ``private``: a folder created now is readable by its owner only (0700); an existing
        one keeps its mode.
        """
        ...

    def open_read(self, path: str, *, root: str, size: int, offset: int = 0) -> ReadStream:
        """Open ``path``, a regular file below the folder ``root``, for reading from ``offset``.

        ``size`` is the file's expected size: nothing past it is read (a file that is
        shorter now reads short). Neither ``root``, nor a folder between it and ``path``, nor
        ``path`` may be a symbolic link, checked on what was opened (a folder swapped for a
        link after it was listed is refused, not followed); a link is a permanent error.
        """
        ...

    def open_write(
        self, path: str, *, root: str, offset: int = 0, private: bool = False
    ) -> WriteStream:
        """Open ``path`` below ``root`` for sequential writing at ``offset``.

        At offset 0 the file is created and must not exist yet (a symlink or file put there
        is an error, never written through): remove an earlier one first. At a larger
        offset it is an existing regular file, written from there. Links are refused as for
        :meth:`open_read`. ``private``: a file created now is readable by its owner only
        (0600).
        """
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src`` (POSIX rename semantics)."""
        ...

    def remove(self, path: str) -> None:
        """Remove a file or symlink; a missing one is fine."""
        ...

    def digests(self, paths: Sequence[str], *, timeout: float) -> list[FileDigest | None]:
        """Size and SHA-256 of each file, computed on this host; None where it is missing or
        is a symbolic link."""
        ...

    def close(self) -> None:
        """Release this thread's resources for this host (the next call reconnects)."""
        ...


# errno values that mean "fix something first" and those that mean "try again later"
_PERMANENT_HINTS: dict[int, str] = {
    errno.ENOENT: "check that it exists",
    errno.ENOTDIR: "a parent of it is a file, not a folder",
    errno.EISDIR: "it is a folder where a file was expected",
    errno.EEXIST: "something else already exists there",
    errno.EACCES: "give the transfer user access to it",
    errno.EPERM: "give the transfer user access to it",
    errno.ENOSPC: "free disk space there",
    errno.EDQUOT: "raise the disk quota or free space there",
    errno.EROFS: "the file system is mounted read-only",
    errno.ENAMETOOLONG: "shorten the file name",
    errno.ELOOP: "a symlink loop is in the way",
}
PERMANENT_ERRNOS = frozenset(_PERMANENT_HINTS)
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EAGAIN,
        errno.EINTR,
    }
)


def path_chain(root: str, path: str) -> list[str]:
    """``root``, every folder between it and ``path``, and ``path`` (strictly below ``root``)."""
    root = posixpath.normpath(root)
    path = posixpath.normpath(path)
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix) or ".." in path.split("/"):
        raise ValueError(f"{path!r} is not below {root!r}")
    chain = [root]
    for name in path[len(prefix) :].split("/"):
        chain.append(posixpath.join(chain[-1], name))
    return chain


def link_refused(where: str, path: str) -> TransportError:
    """The error for a symbolic link where a transfer does not follow links."""
    return TransportError(
        f"{where}: {path!r} is a symbolic link; links are not followed there (nor a folder "
        "swapped for one while it was read): replace it with the folder or file itself",
        permanent=True,
    )


def os_error(exc: OSError, *, where: str, action: str, path: str) -> TransportError:
    """Turn an ``OSError`` from a file operation into a :class:`TransportError`.

    File-system errors (missing path, permissions, full disk...) are permanent; network
    errors are transient. An errno we do not know (EIO...) is treated as permanent: retrying
    a failing disk does not help, and a person has to look.
    """
    code = exc.errno
    reason = exc.strerror or str(exc) or type(exc).__name__
    if code in _TRANSIENT_ERRNOS:
        return TransportError(
            f"{where}: cannot {action} {path!r}: {reason}; will retry", permanent=False
        )
    hint = _PERMANENT_HINTS.get(code or 0, "check the path and the host")
    return TransportError(f"{where}: cannot {action} {path!r}: {reason}; {hint}", permanent=True)
