"""A GPU server reached over SSH (commands) and SFTP (files), with paramiko's public API.

Security: key authentication only (no agent, no ``~/.ssh`` key discovery, no passwords), a
private key that others may read is refused as OpenSSH refuses it, host keys checked against
the target's own known_hosts file (``@revoked`` keys refused, unknown hosts rejected and
never added). Key material and file contents are never logged.

Connections: one per target per thread (paramiko clients are not meant to be shared between
threads), kept open between calls, and re-opened when they died. An operation that fails
because the connection broke is retried once on a fresh connection when repeating it is
harmless; :meth:`SSHTransport.run` is retried only if the command never reached the server.

Files: SFTP version 3 as paramiko's ``SFTPClient`` speaks it, 32 KiB per request (paramiko's
``SFTPFile.MAX_REQUEST_SIZE``), writes pipelined (``set_pipelined``) and reads prefetched
(``prefetch``). Nothing of paramiko's below that is used: its private names change without
notice between releases.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from workers.transports.base import (
    PERMANENT_ERRNOS,
    CommandResult,
    FileDigest,
    FileStat,
    SSHTarget,
    TransportError,
    link_refused,
    os_error,
    path_chain,
)
from workers.transports.digests import digest_script_batches, parse_digest_output

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The SFTP channel's receive window. paramiko keeps a channel's unread input in one buffer
# and moves what is left to its front on every read, so the more the server may send ahead,
# the more each read of a prefetched answer costs: a small window reads fastest.
SFTP_WINDOW_BYTES = 1024 * 1024
SFTP_MAX_PACKET_BYTES = 64 * 1024
# A download asks for this much of a file at once (SFTPFile.prefetch). Bounded: a download
# that stops early (an error, a cancel) has to take in what was asked before the file
# closes, and holds it in memory meanwhile.
PREFETCH_BYTES = 64 * 1024 * 1024

# the longest script sent as one ``sh -c`` argument (Linux caps one argument at 128 KiB)
MAX_SCRIPT_BYTES = 120 * 1024

_PARAMIKO_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    paramiko.SSHException,
    paramiko.SFTPError,
)

_cache = threading.local()


class _UnknownHostKeyError(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"host key for {hostname} is unknown")
        self.key = key


class _RevokedHostKeyError(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"host key for {hostname} is revoked")
        self.key = key


class _RejectUnknownHost(paramiko.RejectPolicy):
    """Reject like :class:`paramiko.RejectPolicy`, with the key and the reason kept for the
    error message. Revoked keys never reach the accepted keys, so they arrive here too."""

    def __init__(self, revoked: Sequence[paramiko.PKey]) -> None:
        self.revoked = list(revoked)

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if key in self.revoked:
            raise _RevokedHostKeyError(hostname, key)
        raise _UnknownHostKeyError(hostname, key)


def _make_paramiko_transport(sock: socket.socket, **kwargs: object) -> paramiko.Transport:
    # SFTP waits for an answer to each small request: without this, Nagle's algorithm holds
    # a request back until the previous packet is acknowledged, which the server delays
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, **kwargs)  # type: ignore[arg-type]
    options = transport.get_security_options()
    # AES-GCM first: one AEAD pass in OpenSSL per packet, where CTR adds an HMAC-SHA-256
    options.ciphers = sorted(options.ciphers, key=lambda name: "-gcm@" not in name)
    return transport


def _load_key(target: SSHTarget) -> paramiko.PKey:
    where = f"ssh {target.address}"
    try:
        status = os.stat(target.key_file)
    except FileNotFoundError:
        raise TransportError(
            f"{where}: private key file {target.key_file!r} does not exist; "
            "point key_file at the transfer user's private key",
            permanent=True,
        ) from None
    except OSError as exc:
        raise TransportError(
            f"{where}: cannot read private key file {target.key_file!r} ({exc.strerror}); "
            "make it readable by this user only",
            permanent=True,
        ) from None
    # OpenSSH's rule (sshkey_perm_ok): a key of ours that others may read is compromised
    # and is not used. A key owned by someone else (a secret mounted into a container) is
    # checked by its owner, not here.
    if status.st_uid == os.getuid() and status.st_mode & 0o077:
        raise TransportError(
            f"{where}: permissions {stat.S_IMODE(status.st_mode):04o} for {target.key_file!r} "
            "are too open: a private key must not be readable by others; "
            f"`chmod 600 {shlex.quote(target.key_file)}`, and replace the key if others "
            "may have read it",
            permanent=True,
        )
    try:
        return paramiko.PKey.from_path(target.key_file)
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


def _load_known_hosts(target: SSHTarget, client: paramiko.SSHClient) -> list[paramiko.PKey]:
    """Put the known_hosts file's keys into ``client``; return the ``@revoked`` keys.

    paramiko reads no markers: it fails on a ``@revoked`` or ``@cert-authority`` line. A
    revoked key is refused for every host, as OpenSSH does ("must not ever be accepted"),
    even where a line also lists it as valid; host certificates (``@cert-authority``) are
    not supported by paramiko, so such a line is a configuration error, not a hint.
    """
    where = f"ssh {target.address}: known_hosts file {target.known_hosts_file!r}"
    try:
        with open(target.known_hosts_file, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise TransportError(
            f"ssh {target.address}: cannot read known_hosts file "
            f"{target.known_hosts_file!r} ({exc.strerror}); create it with the server's "
            "verified host key",
            permanent=True,
        ) from None
    accepted: list[HostKeyEntry] = []
    revoked: list[paramiko.PKey] = []
    for number, text in enumerate(lines, 1):
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        marker = ""
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
        if marker == "@cert-authority":
            raise TransportError(
                f"{where}, line {number}: @cert-authority (host certificates) is not "
                "supported; list the server's own host key instead "
                f"(`ssh-keyscan -p {target.port} {target.hostname}`, after verifying it)",
                permanent=True,
            )
        if marker not in ("", "@revoked"):
            raise TransportError(
                f"{where}, line {number}: unknown marker {marker[:40]!r}; remove the line",
                permanent=True,
            )
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (InvalidHostKey, paramiko.SSHException, ValueError):
            entry = None
        if entry is None:  # OpenSSH skips lines it cannot read, and so does paramiko
            logger.info("%s, line %d: not a key this client can read; skipped", where, number)
            continue
        if marker:
            revoked.append(entry.key)
        else:
            accepted.append(entry)
    keys = client.get_host_keys()
    for entry in accepted:
        if entry.key in revoked:
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return revoked


def _connect_error(
    target: SSHTarget,
    exc: BaseException,
    *,
    dropped: bool = False,
    revoked: Sequence[paramiko.PKey] = (),
) -> TransportError:
    where = f"ssh {target.address}"
    known_hosts = target.known_hosts_file
    offered = getattr(exc, "key", None)
    if isinstance(exc, _RevokedHostKeyError) or (
        isinstance(exc, paramiko.BadHostKeyException) and offered in revoked
    ):
        return TransportError(
            f"{where}: the server's host key ({offered.get_name()} {offered.fingerprint}) "
            f"is marked @revoked in {known_hosts}: refused. The server needs a new host key; "
            "verify it with the server's administrator and list it in known_hosts",
            permanent=True,
        )
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
            unreachable=True,
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
            unreachable=True,
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return TransportError(
            f"{where}: connection refused or host unreachable; is sshd running? will retry",
            permanent=False,
            unreachable=True,
        )
    if isinstance(exc, TimeoutError):
        return TransportError(
            f"{where}: no answer within {target.connect_timeout_sec:g}s; will retry",
            permanent=False,
            unreachable=True,
        )
    return TransportError(
        f"{where}: cannot connect ({exc!r}); will retry", permanent=False, unreachable=True
    )


class _Connection:
    """One authenticated SSH connection and, once needed, its SFTP session."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        key = _load_key(target)
        client = paramiko.SSHClient()
        revoked = _load_known_hosts(target, client)
        client.set_missing_host_key_policy(_RejectUnknownHost(revoked))
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
            raise _connect_error(target, exc, dropped=dropped, revoked=revoked) from exc
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
        return self._sftp is None or not self._sftp.get_channel().closed

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            sftp = paramiko.SFTPClient.from_transport(
                self.transport,
                window_size=SFTP_WINDOW_BYTES,
                max_packet_size=SFTP_MAX_PACKET_BYTES,
            )
            if sftp is None:
                raise paramiko.SSHException("the server did not open an SFTP session")
            self._sftp = sftp
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
            unreachable=True,
        )

    def _call(
        self,
        action: str,
        path: str,
        operation: Callable[[_Connection], T],
        *,
        retry: bool = True,
    ) -> T:
        """Run an operation; once more on a fresh connection if the first broke and ``retry``
        (repeating it is harmless)."""
        for attempt in (1, 2):
            connection = self._connection()
            try:
                return operation(connection)
            except _PARAMIKO_ERRORS as exc:
                error = self._error(exc, connection, action, path)
                if error.permanent or attempt == 2 or not retry:
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
                unreachable=True,
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

    def mkdir(self, path: str, *, private: bool = False) -> None:
        def operation(connection: _Connection) -> None:
            try:
                connection.sftp.mkdir(path, 0o700 if private else 0o777)
            except OSError:
                # "Failure" is what an existing folder looks like (mkdir does not follow a
                # link there either); anything else is re-raised
                existing = _lstat_or_none(connection.sftp, path)
                if existing is not None and existing.is_symlink:
                    raise link_refused(self.description, path) from None
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
        def operation(connection: _Connection) -> None:
            connection.sftp.posix_rename(src, dst)

        self._call(f"rename {src!r} to", dst, operation, retry=False)

    def open_read(self, path: str, *, root: str, size: int, offset: int = 0) -> _SFTPStream:
        def operation(connection: _Connection) -> _SFTPStream:
            handle = connection.sftp.open(path, "rb", bufsize=0)
            try:
                self._check_opened(connection.sftp, handle, root, path)
                handle.seek(offset)
            except BaseException:
                handle.close()
                raise
            return _SFTPStream(self, connection, handle, path, "read", position=offset, end=size)

        return self._call("open", path, operation)

    def open_write(
        self, path: str, *, root: str, offset: int = 0, private: bool = False
    ) -> _SFTPStream:
        def operation(connection: _Connection) -> _SFTPStream:
            sftp = connection.sftp
            # "x" adds O_EXCL, so nothing already there (a link above all) is written
            # through; "w" is what makes paramiko's handle writable
            mode = "r+b" if offset else "wxb"
            try:
                handle = sftp.open(path, mode, bufsize=0)
            except OSError as exc:
                existing = None if offset or exc.errno else _lstat_or_none(sftp, path)
                if existing is not None and existing.is_symlink:
                    raise link_refused(self.description, path) from None
                if existing is not None:
                    raise TransportError(
                        f"{self.description}: {path!r} already exists where a new file is "
                        "created; remove it",
                        permanent=True,
                    ) from None
                raise
            try:
                self._check_opened(sftp, handle, root, path)
                if private and not offset:
                    # created with the SFTP server's umask; nothing is written before this
                    handle.chmod(0o600)
                handle.seek(offset)
                handle.set_pipelined(True)
            except BaseException:
                handle.close()
                raise
            return _SFTPStream(self, connection, handle, path, "write")

        # creating is not repeated after a lost connection: the first try may have created it
        return self._call("open", path, operation, retry=bool(offset))

    def _check_opened(
        self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, root: str, path: str
    ) -> None:
        """Refuse unless ``handle`` is the regular file at ``path``, reached from ``root``
        through real folders only.

        SFTP version 3 opens follow links and its attributes carry no inode number, so
        every level is ``lstat``-ed after the open, and the opened file's attributes must be
        the ones found at its name. A link swapped in before the open and out again before
        these checks goes unseen only if the file it led to looks the same; doing that takes
        the files' owner (the folders an upload creates are readable by no one else).
        """
        for level in path_chain(root, path):
            attrs = sftp.lstat(level)
            mode = attrs.st_mode or 0
            if stat.S_ISLNK(mode):
                raise link_refused(self.description, level)
            if level != path and not stat.S_ISDIR(mode):
                raise TransportError(
                    f"{self.description}: {level!r} is not a folder; remove it", permanent=True
                )
        if not stat.S_ISREG(mode):
            raise TransportError(
                f"{self.description}: {path!r} is not a regular file; remove it", permanent=True
            )
        if _identity(handle.stat()) != _identity(attrs):
            raise TransportError(
                f"{self.description}: {path!r} changed while it was opened (is something "
                "moving files there?); will retry",
                permanent=False,
            )


class _SFTPStream:
    """An open remote file whose failures come out as :class:`TransportError`.

    Reading asks for at most ``PREFETCH_BYTES`` ahead and never past ``end``, the size the
    file was listed with, one request's worth (``MAX_REQUEST_SIZE``) per paramiko read, so
    every read is answered by exactly one prefetched request.
    """

    def __init__(
        self,
        owner: SSHTransport,
        connection: _Connection,
        handle: paramiko.SFTPFile,
        path: str,
        action: str,
        *,
        position: int = 0,
        end: int = 0,
    ) -> None:
        self._owner = owner
        self._connection = connection
        self._handle = handle
        self._path = path
        self._action = action
        self._position = position
        self._end = end
        self._prefetched = position  # the end of what was asked for
        self._short = False

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end of the file (or at the size it was listed with)."""
        if self._action != "read":
            raise ValueError(f"{self._path!r} is open for {self._action}")
        request = self._handle.MAX_REQUEST_SIZE
        pieces = []
        try:
            while size > 0 and not self._short and self._position < self._end:
                if self._position == self._prefetched:
                    self._prefetched = min(self._end, self._position + PREFETCH_BYTES)
                    if self._prefetched - self._position > request:
                        self._handle.prefetch(self._prefetched)
                wanted = min(size, request, self._prefetched - self._position)
                piece = self._handle.read(wanted)
                # Shorter than asked: the file shrank. Stop here, since paramiko waits for
                # answers to the rest of the prefetched requests, which never come.
                self._short = len(piece) < wanted
                pieces.append(piece)
                self._position += len(piece)
                size -= len(piece)
        except _PARAMIKO_ERRORS as exc:
            raise self._owner._error(exc, self._connection, "read", self._path) from exc
        return b"".join(pieces)

    def write(self, data: bytes) -> None:
        request = self._handle.MAX_REQUEST_SIZE
        try:
            # one request per call: paramiko copies what is left of a longer buffer after
            # each request it sends
            for start in range(0, len(data), request):
                self._handle.write(data[start : start + request])
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


def _file_stat(name: str, attrs: paramiko.SFTPAttributes) -> FileStat:
    return FileStat(name=name, size=attrs.st_size or 0, mode=attrs.st_mode or 0)


def _lstat_or_none(sftp: paramiko.SFTPClient, path: str) -> FileStat | None:
    try:
        return _file_stat(path, sftp.lstat(path))
    except FileNotFoundError:
        return None


def _identity(attrs: paramiko.SFTPAttributes) -> tuple[object, ...]:
    """What SFTP tells about a file that a swap for another file would change."""
    return (attrs.st_mode, attrs.st_uid, attrs.st_gid, attrs.st_size, attrs.st_mtime)


def _drain(channel: paramiko.Channel, stdout: bytearray, stderr: bytearray) -> None:
    while channel.recv_ready():
        stdout += channel.recv(1 << 20)
    while channel.recv_stderr_ready():
        stderr += channel.recv_stderr(1 << 20)
