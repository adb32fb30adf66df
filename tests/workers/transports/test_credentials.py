"""The private key and known_hosts edges: a key others may read, ``@revoked`` and
``@cert-authority`` lines. Each is a permanent error that says what to do, never a traceback
and never a connection that goes ahead."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sshd import SSHServer
from workers.transports import SSHTransport, TransportError


def server_key_line(server: SSHServer) -> str:
    """The known_hosts line for the server's host key, without the host name."""
    kind, blob = server.host_key.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def other_key_line(tmp_path: Path) -> str:
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {blob}"


def connect_with_known_hosts(server: SSHServer, tmp_path: Path, text: str) -> SSHTransport:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(text)
    return SSHTransport(dataclasses.replace(server.target, known_hosts_file=str(known_hosts)))


def connect_with_key_mode(server: SSHServer, tmp_path: Path, mode: int) -> SSHTransport:
    key = tmp_path / "client_key"
    shutil.copyfile(server.client_key, key)
    key.chmod(mode)
    return SSHTransport(dataclasses.replace(server.target, key_file=str(key)))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
def test_a_private_key_others_may_read_is_refused(sshd_server, tmp_path, mode):
    transport = connect_with_key_mode(sshd_server, tmp_path, mode)

    with pytest.raises(TransportError) as error:
        transport.run("true", timeout=10)

    assert error.value.permanent
    assert f"permissions {mode:04o} for '{tmp_path / 'client_key'}' are too open" in str(
        error.value
    )
    assert "chmod 600" in str(error.value)


def test_a_private_key_only_its_owner_may_read_is_used(sshd_server, tmp_path):
    transport = connect_with_key_mode(sshd_server, tmp_path, 0o400)

    assert transport.run("echo ok", timeout=10).stdout == "ok\n"


def test_a_revoked_host_key_is_refused_with_that_reason(sshd_server, tmp_path):
    line = f"@revoked [127.0.0.1]:{sshd_server.port} {server_key_line(sshd_server)}\n"
    transport = connect_with_known_hosts(sshd_server, tmp_path, line)

    with pytest.raises(TransportError) as error:
        transport.run("true", timeout=10)

    assert error.value.permanent
    assert "is marked @revoked in" in str(error.value)


def test_a_revoked_host_key_is_refused_even_where_it_is_also_listed(sshd_server, tmp_path):
    host = f"[127.0.0.1]:{sshd_server.port}"
    text = f"{host} {server_key_line(sshd_server)}\n@revoked * {server_key_line(sshd_server)}\n"
    transport = connect_with_known_hosts(sshd_server, tmp_path, text)

    with pytest.raises(TransportError) as error:
        transport.lstat("/")

    assert error.value.permanent
    assert "is marked @revoked in" in str(error.value)


def test_a_revoked_host_key_offered_instead_of_the_listed_one_is_called_revoked(
    sshd_server, tmp_path
):
    host = f"[127.0.0.1]:{sshd_server.port}"
    text = f"{host} {other_key_line(tmp_path)}\n@revoked {host} {server_key_line(sshd_server)}\n"
    transport = connect_with_known_hosts(sshd_server, tmp_path, text)

    with pytest.raises(TransportError) as error:
        transport.lstat("/")

    assert error.value.permanent
    assert "is marked @revoked in" in str(error.value)


def test_revoking_another_key_does_not_stop_the_listed_one(sshd_server, tmp_path):
    host = f"[127.0.0.1]:{sshd_server.port}"
    text = (
        f"# revoked after the old server was decommissioned\n"
        f"@revoked {host} {other_key_line(tmp_path)}\n"
        f"{host} {server_key_line(sshd_server)}\n"
    )
    transport = connect_with_known_hosts(sshd_server, tmp_path, text)

    assert transport.run("echo ok", timeout=10).stdout == "ok\n"


def test_a_cert_authority_line_is_a_clear_permanent_error(sshd_server, tmp_path):
    host = f"[127.0.0.1]:{sshd_server.port}"
    text = (
        f"@cert-authority *.example.org {other_key_line(tmp_path)}\n"
        f"{host} {server_key_line(sshd_server)}\n"
    )
    transport = connect_with_known_hosts(sshd_server, tmp_path, text)

    with pytest.raises(TransportError) as error:
        transport.lstat("/")

    assert error.value.permanent
    assert "line 1: @cert-authority (host certificates) is not supported" in str(error.value)


def test_an_unreadable_known_hosts_line_is_skipped_as_openssh_does(sshd_server, tmp_path):
    host = f"[127.0.0.1]:{sshd_server.port}"
    text = f"{host} ssh-ed25519 not!base64\n{host} {server_key_line(sshd_server)}\n"
    transport = connect_with_known_hosts(sshd_server, tmp_path, text)

    assert transport.run("echo ok", timeout=10).stdout == "ok\n"
