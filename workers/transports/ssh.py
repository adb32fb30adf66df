"""A GPU server reached over SSH (commands) and SFTP (files), with paramiko.

Security: key authentication only (no agent, no ``~/.ssh`` key discovery, no passwords),
host keys checked against the target's own known_hosts file, unknown hosts rejected and
never added. Key material and file contents are never logged.

Connections: one per target per thread (paramiko clients are not meant to be shared between
threads), kept open between calls, and re-opened when they died. An operation that fails
because the connection broke is retried once on a fresh connection when repeating it is
harmless; :meth:`SSHTransport.run` is retried only if the command never reached the server.
"""

from __future__ import annotations

import logging
import secrets
import select
import shlex
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import paramiko
from paramiko.buffered_pipe import BufferedPipe
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTPError,
    int64,
)

from workers.transports.base import (
    PERMANENT_ERRNOS,
    CommandResult,
    FileDigest,
    FileStat,
    SSHTarget,
    TransportError,
    os_error,
)
from workers.transports.digests import digest_script_batches, parse_digest_output

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Measured on loopback against OpenSSH 9.2 (200 MB file): paramiko's defaults (2 MiB window,
# 32 KiB packets and requests) give ~115 MB/s; a larger window, 256 KiB packets from the
# server and ~256 KiB SFTP requests give ~230 MB/s each way, on par with OpenSSH's sftp.
# Fewer, bigger packets and requests mean less per-packet Python work. OpenSSH's
# sftp-server accepts messages up to 256 KiB, so a request stays a little below that (a
# read answered with less than asked costs an extra round trip).
WINDOW_SIZE = 32 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
SFTP_REQUEST_SIZE = 252 * 1024
READ_REQUESTS_IN_FLIGHT = 32
# requests in flight for the many-small-files operations (each open file is a handle on the
# server until its close is answered)
SMALL_FILE_REQUESTS_IN_FLIGHT = 96

# the longest script sent as one ``sh -c`` argument (Linux caps one argument at 128 KiB)
MAX_SCRIPT_BYTES = 120 * 1024

_PARAMIKO_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    paramiko.SSHException,
    SFTPError,
)

_cache = threading.local()


class _UnknownHostKeyError(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"host key for {hostname} is unknown")
        self.key = key


class _RejectUnknownHost(paramiko.RejectPolicy):
    """Reject like :class:`paramiko.RejectPolicy`, but keep the key for the error message."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _UnknownHostKeyError(hostname, key)


def _make_paramiko_transport(sock: socket.socket, **kwargs: object) -> paramiko.Transport:
    transport = paramiko.Transport(
        sock,
        default_window_size=WINDOW_SIZE,
        default_max_packet_size=MAX_PACKET_SIZE,
        **kwargs,  # type: ignore[arg-type]
    )
    options = transport.get_security_options()
    # AES-GCM first: one AEAD pass in OpenSSL per packet, where CTR adds an HMAC-SHA-256
    options.ciphers = sorted(options.ciphers, key=lambda name: "-gcm@" not in name)
    return transport


def _load_key(target: SSHTarget) -> paramiko.PKey:
    where = f"ssh {target.address}"
    try:
        return paramiko.PKey.from_path(target.key_file)
    except FileNotFoundError:
        raise TransportError(
            f"{where}: private key file {target.key_file!r} does not exist; "
            "point key_file at the transfer user's private key",
            permanent=True,
        ) from None
    except paramiko.PasswordRequiredException:
        raise TransportError(
            f"{where}: private key {target.key_file!r} is protected by a passphrase; "
            "use a key without one (ssh-keygen -p) dedicated to this service",
            permanent=True,
        ) from None
    except (OSError, ValueError, TypeError, paramiko.SSHException) as exc:
        raise TransportError(
            f"{where}: cannot load private key {target.key_file!r} ({type(exc).__name__}); "
            "check that it is an unencrypted OpenSSH or PEM private key readable by this user",
            permanent=True,
        ) from None


def _connect_error(
    target: SSHTarget, exc: BaseException, *, dropped: bool = False
) -> TransportError:
    where = f"ssh {target.address}"
    known_hosts = target.known_hosts_file
    if isinstance(exc, _UnknownHostKeyError):
        return TransportError(
            f"{where}: host key for {target.known_hosts_name} is not in {known_hosts} "
            f"(server offers {exc.key.get_name()} {exc.key.fingerprint}); add it with "
            f"`ssh-keyscan -p {target.port} {target.hostname} >> {known_hosts}` after "
            "verifying the fingerprint with the server's administrator",
            permanent=True,
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return TransportError(
            f"{where}: host key for {target.known_hosts_name} CHANGED: server offers "
            f"{exc.key.get_name()} {exc.key.fingerprint}, {known_hosts} expects "
            f"{exc.expected_key.fingerprint}. The server was reinstalled or the connection is "
            "being intercepted; verify the new fingerprint with the server's administrator, "
            "then replace the entry "
            f"(`ssh-keygen -R '{target.known_hosts_name}' -f {known_hosts}`)",
            permanent=True,
        )
    if isinstance(exc, paramiko.AuthenticationException) and dropped:
        # paramiko reports a connection lost mid-authentication (sshd restarting) as an
        # authentication failure; a server that refuses the key keeps the connection open.
        return TransportError(
            f"{where}: the connection closed during authentication; will retry",
            permanent=False,
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return TransportError(
            f"{where}: the server refused key authentication as {target.username!r} with "
            f"{target.key_file!r}; add the matching public key to that user's authorized_keys",
            permanent=True,
        )
    if isinstance(exc, socket.gaierror):
        return TransportError(
            f"{where}: cannot resolve host name {target.hostname!r} ({exc}); will retry",
            permanent=False,
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return TransportError(
            f"{where}: connection refused or host unreachable; is sshd running? will retry",
            permanent=False,
        )
    if isinstance(exc, TimeoutError):
        return TransportError(
            f"{where}: no answer within {target.connect_timeout_sec:g}s; will retry",
            permanent=False,
        )
    return TransportError(f"{where}: cannot connect ({exc!r}); will retry", permanent=False)


class _Chunks:
    """Bytes in arrival order, kept as the chunks they came in: taking bytes from the front
    copies only those bytes, and a whole chunk taken at once is not copied at all."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._start = 0  # bytes of the first chunk already taken
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)

    def peek(self, limit: int | None = None) -> bytes:
        """The first ``limit`` bytes (all of them if None), left in place."""
        wanted = self._size if limit is None else min(limit, self._size)
        if not wanted:
            return b""
        first = self._chunks[0]
        if self._start == 0 and len(first) == wanted:
            return first  # a whole packet: no copy
        parts: list[memoryview] = []
        start, needed = self._start, wanted
        for chunk in self._chunks:
            part = memoryview(chunk)[start : start + needed]
            parts.append(part)
            needed -= len(part)
            start = 0
            if not needed:
                break
        return b"".join(parts)

    def __delitem__(self, index: slice) -> None:
        """``del chunks[:n]`` and ``del chunks[:]``: drop bytes from the front."""
        if index.start is not None or index.step is not None:
            raise IndexError("only the front can be dropped")
        count = self._size if index.stop is None else min(index.stop, self._size)
        self._size -= count
        while count:
            left = len(self._chunks[0]) - self._start
            if count < left:
                self._start += count
                return
            self._chunks.popleft()
            self._start = 0
            count -= left


class _ChannelBuffer(BufferedPipe):
    """paramiko's buffer of a channel's unread input, kept as the packets that came in.

    paramiko keeps it in one ``array.array``: every read copies the bytes out twice and
    moves everything still buffered to the front.  Downloading, up to
    ``READ_REQUESTS_IN_FLIGHT`` answers (8 MB) wait there, and each read of an answer's
    4-byte length or of its data moved them all (py-spy: 12 % of a download in
    ``BufferedPipe.read``).  paramiko's locking and waiting are kept; only the storage
    changes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer = _Chunks()  # type: ignore[assignment]

    def _buffer_frombytes(self, data: bytes) -> None:
        self._buffer.append(data)

    def _buffer_tobytes(self, limit: int | None = None) -> bytes:
        return self._buffer.peek(limit)


class _SFTPClient(paramiko.SFTPClient):
    def _write_all(self, out: bytes) -> None:
        """paramiko's, without copying what is left of a message after each packet.

        The server takes packets of 32 KiB, so a 252 KiB write request goes out in eight,
        and paramiko copied the rest of the message after each one (4.5 copies of every
        byte uploaded); a memoryview moves along it instead.
        """
        view = memoryview(out)
        while view:
            sent = self.sock.send(view)
            if sent <= 0:
                raise EOFError()
            view = view[sent:]


class _Connection:
    """One authenticated SSH connection and, once needed, its SFTP session."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        key = _load_key(target)
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(target.known_hosts_file)
        except OSError as exc:
            raise TransportError(
                f"ssh {target.address}: cannot read known_hosts file "
                f"{target.known_hosts_file!r} ({exc.strerror}); create it with the server's "
                "verified host key",
                permanent=True,
            ) from None
        client.set_missing_host_key_policy(_RejectUnknownHost())
        timeout = target.connect_timeout_sec
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.username,
                pkey=key,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                look_for_keys=False,
                allow_agent=False,
                transport_factory=_make_paramiko_transport,
            )
        except _PARAMIKO_ERRORS as exc:
            session = client.get_transport()
            dropped = session is None or not session.is_active()
            client.close()
            raise _connect_error(target, exc, dropped=dropped) from exc
        self.client = client
        self.transport: paramiko.Transport = client.get_transport()  # type: ignore[assignment]
        self.transport.set_keepalive(target.keepalive_sec)
        self._sftp: paramiko.SFTPClient | None = None
        self._shell: _Shell | None = None

    @property
    def alive(self) -> bool:
        """The connection is up and, if an SFTP session was opened, so is that session."""
        if not self.transport.is_active():
            return False
        return self._sftp is None or not self._sftp.sock.closed

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            # paramiko's SFTPClient.from_transport, with our buffer for the channel's input
            channel = self.transport.open_session(
                window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE
            )
            channel.in_buffer = _ChannelBuffer()
            channel.invoke_subsystem("sftp")
            self._sftp = _SFTPClient(channel)
        return self._sftp

    def shell(self, deadline: float) -> _Shell:
        """The connection's shell, started on first use or when the last one ended."""
        if self._shell is None or not self._shell.usable:
            self.discard_shell()
            self._shell = _Shell(self.transport, self.target.connect_timeout_sec, deadline)
        return self._shell

    def discard_shell(self) -> None:
        if self._shell is not None:
            self._shell.channel.close()
            self._shell = None

    def close(self) -> None:
        self.client.close()  # closes the SFTP and shell channels with the transport


class _ShellLost(Exception):
    """The shell's channel closed before the command's end markers arrived."""


class _ShellTimeout(Exception):
    """The deadline passed before the command's end markers arrived."""


class _Shell:
    """One plain ``/bin/sh`` per connection that runs every command sent over it.

    sshd runs each exec request through the user's login shell, and bash then reads
    ``~/.bashrc`` (Debian's bash does so for commands from sshd): on GPU servers that is
    often conda, pyenv or module set-ups costing 0.1 to 0.5 s per command, paid by every poll
    of every step.  This shell pays it once per connection.  Each command runs as a child,
    ``/bin/sh -c SCRIPT </dev/null``, so it cannot read the commands after it; its end is
    a marker line with the exit status on stdout and a marker line on stderr, with a random
    marker per command.  A script must not leave processes writing to its stdout or stderr
    (detached commands redirect theirs).
    """

    def __init__(self, transport: paramiko.Transport, open_timeout: float, deadline: float):
        self.channel = transport.open_session(timeout=open_timeout)
        try:
            self.channel.exec_command("exec /bin/sh")
            self.execute(":", deadline)  # whatever rc files print comes before its markers
        except BaseException:
            self.channel.close()
            raise

    @property
    def usable(self) -> bool:
        return not (self.channel.closed or self.channel.eof_received)

    def execute(self, command: str, deadline: float) -> tuple[int, bytes, bytes]:
        """Run ``command`` (shell text) and return its exit status, stdout and stderr."""
        mark = f"MQI-END-{secrets.token_hex(8)}"
        self.channel.sendall(
            f"{command} </dev/null; printf '\\n%s %d\\n' {mark} $?; "
            f"printf '\\n%s\\n' {mark} >&2\n".encode()
        )
        stdout, stderr = bytearray(), bytearray()
        code: int | None = None
        stderr_done = False
        out_mark, err_mark = f"\n{mark} ".encode(), f"\n{mark}\n".encode()
        while True:
            _drain(self.channel, stdout, stderr)
            start = stdout.find(out_mark)
            end = stdout.find(b"\n", start + len(out_mark)) if start >= 0 else -1
            if code is None and end >= 0:
                code = int(stdout[start + len(out_mark) : end])
                del stdout[start:]
            start = stderr.find(err_mark)
            if not stderr_done and start >= 0:
                stderr_done = True
                del stderr[start:]
            if code is not None and stderr_done:
                return code, bytes(stdout), bytes(stderr)
            if not self.usable and not self.channel.recv_ready():
                raise _ShellLost
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _ShellTimeout
            # the channel's fileno becomes readable on data, EOF and close (a paramiko pipe)
            select.select([self.channel], [], [], remaining)


def _connections() -> dict[SSHTarget, _Connection]:
    connections = getattr(_cache, "connections", None)
    if connections is None:
        connections = _cache.connections = {}
    return connections


def close_thread_connections() -> None:
    """Close every connection this thread holds (at worker-thread shutdown, in tests)."""
    connections = _connections()
    while connections:
        _, connection = connections.popitem()
        connection.close()


class SSHTransport:
    """A GPU server over SSH. Cheap to create; connections live in a per-thread cache."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self.description = f"ssh {target.address}"

    # -- connection handling ---------------------------------------------------------------

    def _connection(self) -> _Connection:
        connections = _connections()
        connection = connections.get(self.target)
        if connection is not None and not connection.alive:
            logger.info("%s: connection died; reconnecting", self.description)
            self._drop(connection)
            connection = None
        if connection is None:
            connection = _Connection(self.target)
            connections[self.target] = connection
        return connection

    def _drop(self, connection: _Connection) -> None:
        connections = _connections()
        if connections.get(self.target) is connection:
            del connections[self.target]
        connection.close()

    def _error(
        self, exc: BaseException, connection: _Connection | None, action: str, path: str
    ) -> TransportError:
        """Classify a failed operation; a broken connection is dropped from the cache."""
        if isinstance(exc, TransportError):
            return exc
        if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
            # the server answered (paramiko maps SFTP "no such file"/"permission denied")
            return os_error(exc, where=self.description, action=action, path=path)
        alive = connection is not None and connection.alive
        if alive and type(exc) is OSError and exc.errno is None:
            # an SFTP failure status on a healthy connection. SFTP v3 has no code for ENOSPC,
            # EEXIST, ENOTDIR, EIO...: OpenSSH answers all of them with "Failure".
            return TransportError(
                f"{self.description}: cannot {action} {path!r}: the server reports {exc}; "
                "check free disk space, permissions and that every parent is a folder",
                permanent=True,
            )
        if connection is not None:
            self._drop(connection)
        return TransportError(
            f"{self.description}: connection lost during {action} {path!r} "
            f"({type(exc).__name__}: {exc}); will reconnect and retry",
            permanent=False,
        )

    def _call(self, action: str, path: str, operation: Callable[[_Connection], T]) -> T:
        """Run an idempotent operation; once more on a fresh connection if the first broke."""
        for attempt in (1, 2):
            connection = self._connection()
            try:
                return operation(connection)
            except _FileFailed as failed:  # one file of many: name it
                error = self._error(failed.error, connection, action, failed.path)
                if error.permanent or attempt == 2:
                    raise error from failed.error
                logger.info("%s; retrying once", error)
            except _PARAMIKO_ERRORS as exc:
                error = self._error(exc, connection, action, path)
                if error.permanent or attempt == 2:
                    raise error from exc
                logger.info("%s; retrying once", error)
        raise AssertionError("unreachable")

    def close(self) -> None:
        connection = _connections().get(self.target)
        if connection is not None:
            self._drop(connection)

    # -- commands --------------------------------------------------------------------------

    def run(self, script: str, *, timeout: float) -> CommandResult:
        command = "/bin/sh -c " + shlex.quote(script)
        if len(command.encode()) > MAX_SCRIPT_BYTES:
            raise ValueError(f"script is {len(command)} bytes; the limit is {MAX_SCRIPT_BYTES}")
        deadline = time.monotonic() + timeout
        try:
            # starting the shell is harmless to repeat: nothing ran yet
            connection, shell = self._call(
                "start a shell for", "sh", lambda c: (c, c.shell(deadline))
            )
            try:
                exit_code, stdout, stderr = shell.execute(command, deadline)
            except (_ShellLost, _ShellTimeout):
                connection.discard_shell()
                raise
            except _PARAMIKO_ERRORS as exc:
                connection.discard_shell()
                raise self._error(exc, connection, "run", "sh") from exc
        except _ShellTimeout:
            raise TransportError(
                f"{self.description}: command did not finish within {timeout:g}s "
                "(it may still be running there); will retry",
                permanent=False,
            ) from None
        except _ShellLost:
            connection = _connections().get(self.target)
            if connection is not None and not connection.alive:
                self._drop(connection)
            raise TransportError(
                f"{self.description}: connection lost while a command ran (it may have "
                "run); will reconnect",
                permanent=False,
            ) from None
        return CommandResult(
            exit_code=exit_code,
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
        )

    def digests(self, paths: Sequence[str], *, timeout: float) -> list[FileDigest | None]:
        results: list[FileDigest | None] = []
        for batch, script in digest_script_batches(paths, max_bytes=MAX_SCRIPT_BYTES - 1024):
            result = self.run(script, timeout=timeout)
            results.extend(parse_digest_output(result, len(batch), where=self.description))
        return results

    # -- files -----------------------------------------------------------------------------

    def lstat(self, path: str) -> FileStat | None:
        return self._stat(path, follow=False)

    def stat(self, path: str) -> FileStat | None:
        return self._stat(path, follow=True)

    def _stat(self, path: str, *, follow: bool) -> FileStat | None:
        def operation(connection: _Connection) -> FileStat | None:
            try:
                attrs = connection.sftp.stat(path) if follow else connection.sftp.lstat(path)
            except FileNotFoundError:
                return None
            return _file_stat(path.rsplit("/", 1)[-1], attrs)

        return self._call("stat", path, operation)

    def listdir(self, path: str) -> list[FileStat]:
        def operation(connection: _Connection) -> list[FileStat]:
            return [_file_stat(a.filename, a) for a in connection.sftp.listdir_attr(path)]

        return self._call("list", path, operation)

    def realpath(self, path: str) -> str:
        return self._call("resolve", path, lambda c: c.sftp.normalize(path))

    def mkdir(self, path: str) -> None:
        def operation(connection: _Connection) -> None:
            try:
                connection.sftp.mkdir(path)
            except OSError:
                # "Failure" is what an existing folder looks like; anything else is re-raised
                existing = _stat_or_none(connection.sftp, path)
                if existing is None or not existing.is_dir:
                    raise

        self._call("create folder", path, operation)

    def remove(self, path: str) -> None:
        def operation(connection: _Connection) -> None:
            try:
                connection.sftp.remove(path)
            except FileNotFoundError:
                return

        self._call("remove", path, operation)

    def rename(self, src: str, dst: str) -> None:
        # not retried: after a lost reply we cannot tell whether it happened
        connection = self._connection()
        try:
            connection.sftp.posix_rename(src, dst)
        except _PARAMIKO_ERRORS as exc:
            raise self._error(exc, connection, f"rename {src!r} to", dst) from exc

    def read_files(self, files: Sequence[tuple[str, int]]) -> list[bytes]:
        # open, read and close of many files in flight at once: one round trip per window
        # of files instead of three per file
        def operation(connection: _Connection) -> list[bytes]:
            return _Pipeline(connection.sftp).read_files(files)

        return self._call("read", _first(files), operation)

    def write_files(self, files: Sequence[tuple[str, bytes]]) -> None:
        def operation(connection: _Connection) -> None:
            _Pipeline(connection.sftp).write_files(files)

        self._call("write", _first(files), operation)

    def rename_all(self, renames: Sequence[tuple[str, str]]) -> None:
        # not retried, as rename
        connection = self._connection()
        try:
            _Pipeline(connection.sftp).rename_all(renames)
        except _FileFailed as failed:
            raise self._error(
                failed.error, connection, f"rename {failed.path!r} to", failed.other
            ) from failed.error
        except _PARAMIKO_ERRORS as exc:
            raise self._error(exc, connection, "rename", _first(renames)) from exc

    def open_read(self, path: str, *, offset: int = 0, size: int | None = None) -> _SFTPStream:
        def operation(connection: _Connection) -> _SFTPStream:
            handle = connection.sftp.open(path, "rb", bufsize=0)
            reader = _PipelinedReader(connection.sftp, handle, offset, size)
            return _SFTPStream(self, connection, handle, path, "read", reader=reader)

        return self._call("open", path, operation)

    def open_write(self, path: str, *, offset: int = 0) -> _SFTPStream:
        def operation(connection: _Connection) -> _SFTPStream:
            handle = connection.sftp.open(path, "r+b" if offset else "wb", bufsize=0)
            handle.MAX_REQUEST_SIZE = SFTP_REQUEST_SIZE
            handle.set_pipelined(True)
            handle.seek(offset)
            return _SFTPStream(self, connection, handle, path, "write")

        return self._call("open", path, operation)


class _SFTPStream:
    """An open remote file whose failures come out as :class:`TransportError`."""

    def __init__(
        self,
        owner: SSHTransport,
        connection: _Connection,
        handle: paramiko.SFTPFile,
        path: str,
        action: str,
        *,
        reader: _PipelinedReader | None = None,
    ) -> None:
        self._owner = owner
        self._connection = connection
        self._handle = handle
        self._path = path
        self._action = action
        self._reader = reader

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (at most one SFTP response); b"" at the end of the file."""
        if self._reader is None:
            raise ValueError(f"{self._path!r} is open for {self._action}")
        try:
            return self._reader.read(size)
        except _PARAMIKO_ERRORS as exc:
            raise self._owner._error(exc, self._connection, "read", self._path) from exc

    def write(self, data: bytes) -> None:
        try:
            self._handle.write(data)
        except _PARAMIKO_ERRORS as exc:
            raise self._owner._error(exc, self._connection, "write", self._path) from exc

    def close(self) -> None:
        # pipelined writes report their errors here
        try:
            self._handle.close()
        except _PARAMIKO_ERRORS as exc:
            raise self._owner._error(exc, self._connection, self._action, self._path) from exc

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
            # the first failure is the one worth reporting
            logger.debug(
                "%s: closing %r after a failure: %s",
                self._owner.description,
                self._path,
                close_error,
            )


class _Requests:
    """SFTP requests sent without waiting for their answers, answered in any order.

    This is the one place that uses paramiko's request/response internals
    (``_async_request``/``_read_response``), which is why paramiko is pinned. An answer
    that arrives while another one is awaited comes to ``_async_response`` and is kept.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self._sftp = sftp
        self._arrived: dict[int, tuple[int, paramiko.Message]] = {}

    def send(self, kind: int, *args: object) -> int:
        return self._sftp._async_request(self, kind, *args)

    def answer(self, number: int) -> tuple[int, paramiko.Message | None]:
        """The answer to request ``number``; raises on an error status.

        The status "end of file" is no error: it comes back as ``(CMD_STATUS, None)`` (a
        lost connection raises an SSHException).
        """
        try:
            if number not in self._arrived:
                return self._sftp._read_response(number)
            kind, message = self._arrived.pop(number)
            if kind == CMD_STATUS:
                self._sftp._convert_status(message)  # raises unless it is "OK"
            return kind, message
        except EOFError:
            return CMD_STATUS, None

    def _async_response(self, kind: int, message: paramiko.Message, number: int) -> None:
        """paramiko's callback for an answer that arrived before the one being waited for."""
        self._arrived[number] = (kind, message)


class _PipelinedReader:
    """Sequential SFTP reads with a fixed number of requests in flight.

    paramiko's own ``prefetch`` requests the whole file at once and looks up every chunk
    with a scan over everything buffered, which gets slower the more has arrived
    (single-digit MB/s with a large window). A bounded window of requests, which OpenSSH
    answers in order, keeps the link busy with constant memory.
    """

    def __init__(
        self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, offset: int, size: int | None
    ) -> None:
        self._requests = _Requests(sftp)
        self._handle = handle.handle
        # a small file gets as many requests as it needs, not a full window of them
        self._expected_end = size if size is not None else float("inf")
        self._next_offset = offset  # of the next request to send
        self._in_flight: deque[tuple[int, int, int]] = deque()  # (request, offset, length)
        self._leftover = b""
        self._eof = False

    def read(self, size: int) -> bytes:
        if not self._leftover and not self._eof:
            self._leftover = self._next_chunk()
        data, self._leftover = self._leftover[:size], self._leftover[size:]
        return data

    def _next_chunk(self) -> bytes:
        while len(self._in_flight) < READ_REQUESTS_IN_FLIGHT and (
            self._next_offset < self._expected_end or not self._in_flight
        ):
            self._request(self._next_offset, SFTP_REQUEST_SIZE)
            self._next_offset += SFTP_REQUEST_SIZE
        number, offset, length = self._in_flight.popleft()
        data = self._response(number)
        if not data:
            self._eof = True
            self._discard_in_flight()
        elif len(data) < length:
            # short read before the end: the requests after it are for the wrong offsets
            self._discard_in_flight()
            self._next_offset = offset + len(data)
        return data

    def _request(self, offset: int, length: int) -> None:
        number = self._requests.send(CMD_READ, self._handle, int64(offset), length)
        self._in_flight.append((number, offset, length))

    def _response(self, number: int) -> bytes:
        kind, message = self._requests.answer(number)
        if message is None:
            return b""  # SFTP status EOF: reading at or past the end
        if kind != CMD_DATA:
            raise SFTPError(f"expected data, got SFTP message type {kind}")
        return message.get_string()

    def _discard_in_flight(self) -> None:
        # wait for the answers to requests we no longer want, so that none is mistaken for
        # the answer to a new request; they are all EOF or data we will ask for again
        while self._in_flight:
            number, _, _ = self._in_flight.popleft()
            self._response(number)


class _FileFailed(Exception):
    """The request about ``path`` (one of many in flight) failed with ``error``."""

    def __init__(self, error: BaseException, path: str, other: str = "") -> None:
        super().__init__(str(error))
        self.error = error
        self.path = path
        self.other = other


_Reply = Callable[[int, "paramiko.Message | None"], None]


class _Pipeline:
    """Many small SFTP requests in flight, each answer handled by its own callback.

    A file's open is answered with a handle; its callback then sends the read or write and
    the close, so a window of files costs about one round trip, not three per file. After
    the first failure no new file is started, every request in flight is still waited for
    and every handle opened is closed, then the failure is raised as :class:`_FileFailed`.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self._sftp = sftp
        self._requests = _Requests(sftp)
        self._in_flight: deque[tuple[int, str, str, _Reply]] = deque()  # number, paths, reply
        self._failure: _FileFailed | None = None

    def read_files(self, files: Sequence[tuple[str, int]]) -> list[bytes]:
        contents = [b""] * len(files)

        def start(index: int) -> None:
            path, size = files[index]
            if size > SFTP_REQUEST_SIZE:
                raise ValueError(f"{path!r}: {size} bytes is more than one request")

            def opened(handle: bytes) -> None:
                def data(kind: int, message: paramiko.Message | None) -> None:
                    # end of file (shorter than expected) reads as b""; the caller checks
                    contents[index] = message.get_string() if message and kind == CMD_DATA else b""

                if size:
                    self._send(path, data, CMD_READ, handle, int64(0), size)
                self._close(path, handle)

            self._open(path, SFTP_FLAG_READ, opened)

        self._run(len(files), start)
        return contents

    def write_files(self, files: Sequence[tuple[str, bytes]]) -> None:
        def start(index: int) -> None:
            path, data = files[index]
            if len(data) > SFTP_REQUEST_SIZE:
                raise ValueError(f"{path!r}: {len(data)} bytes is more than one request")

            def opened(handle: bytes) -> None:
                if data:
                    self._send(path, _ok, CMD_WRITE, handle, int64(0), data)
                self._close(path, handle)

            flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC
            self._open(path, flags, opened)

        self._run(len(files), start)

    def rename_all(self, renames: Sequence[tuple[str, str]]) -> None:
        def start(index: int) -> None:
            src, dst = renames[index]
            self._send(src, _ok, CMD_EXTENDED, "posix-rename@openssh.com", src, dst, other=dst)

        self._run(len(renames), start)

    def _open(self, path: str, flags: int, opened: Callable[[bytes], None]) -> None:
        def reply(kind: int, message: paramiko.Message | None) -> None:
            if kind != CMD_HANDLE or message is None:
                raise SFTPError(f"expected a handle, got SFTP message type {kind}")
            handle = message.get_binary()
            if self._failure is None:
                opened(handle)
            else:
                self._close(path, handle)  # something failed meanwhile: only close it

        self._send(path, reply, CMD_OPEN, path, flags, paramiko.SFTPAttributes())

    def _close(self, path: str, handle: bytes) -> None:
        self._send(path, _ok, CMD_CLOSE, handle)

    def _send(self, path: str, reply: _Reply, kind: int, *args: object, other: str = "") -> None:
        self._in_flight.append((self._requests.send(kind, *args), path, other, reply))

    def _run(self, count: int, start: Callable[[int], None]) -> None:
        started = 0
        while True:
            while (
                self._failure is None
                and started < count
                and len(self._in_flight) < SMALL_FILE_REQUESTS_IN_FLIGHT
            ):
                start(started)
                started += 1
            if not self._in_flight:
                break
            number, path, other, reply = self._in_flight.popleft()
            try:
                reply(*self._requests.answer(number))
            except _PARAMIKO_ERRORS as exc:  # the server said no, or the connection is gone
                if self._failure is None:
                    self._failure = _FileFailed(exc, path, other)
                if self._sftp.sock.closed or not self._sftp.sock.get_transport().is_active():
                    break  # nothing more will be answered
        if self._failure is not None:
            raise self._failure


def _ok(kind: int, message: paramiko.Message | None) -> None:
    """A status answer: an error status was already raised while reading it."""


def _first(items: Sequence[tuple[str, object]]) -> str:
    return items[0][0] if items else ""


def _file_stat(name: str, attrs: paramiko.SFTPAttributes) -> FileStat:
    return FileStat(name=name, size=attrs.st_size or 0, mode=attrs.st_mode or 0)


def _stat_or_none(sftp: paramiko.SFTPClient, path: str) -> FileStat | None:
    try:
        return _file_stat(path, sftp.stat(path))
    except FileNotFoundError:
        return None


def _drain(channel: paramiko.Channel, stdout: bytearray, stderr: bytearray) -> None:
    while channel.recv_ready():
        stdout += channel.recv(1 << 20)
    while channel.recv_stderr_ready():
        stderr += channel.recv_stderr(1 << 20)
