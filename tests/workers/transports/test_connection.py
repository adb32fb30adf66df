"""Connecting: host keys are verified, keys are the only credential, dead connections heal."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import pytest

from tests.sshd import SSHServer
from workers.transports import LocalTransport, SSHTransport, TransportError
from workers.transports import ssh as ssh_module


def other_host_key_line(server: SSHServer, tmp_path: Path) -> str:
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return f"[127.0.0.1]:{server.port} {kind} {blob}\n"


def test_it_refuses_a_host_missing_from_known_hosts(sshd_server, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    target = dataclasses.replace(sshd_server.target, known_hosts_file=str(known_hosts))

    with pytest.raises(TransportError) as error:
        SSHTransport(target).run("true", timeout=10)

    assert error.value.permanent
    assert "is not in" in str(error.value) and "ssh-keyscan" in str(error.value)
    assert known_hosts.read_text() == ""  # nothing was added


def test_it_refuses_a_host_whose_key_changed(sshd_server, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(other_host_key_line(sshd_server, tmp_path))
    before = known_hosts.read_text()
    target = dataclasses.replace(sshd_server.target, known_hosts_file=str(known_hosts))

    with pytest.raises(TransportError) as error:
        SSHTransport(target).lstat("/")

    assert error.value.permanent
    assert "CHANGED" in str(error.value)
    assert known_hosts.read_text() == before


def test_it_refuses_a_missing_known_hosts_file(sshd_server, tmp_path):
    target = dataclasses.replace(sshd_server.target, known_hosts_file=str(tmp_path / "nope"))

    with pytest.raises(TransportError) as error:
        SSHTransport(target).lstat("/")

    assert error.value.permanent
    assert not (tmp_path / "nope").exists()


def test_a_key_the_server_does_not_know_is_a_permanent_error(sshd_server, tmp_path):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    target = dataclasses.replace(sshd_server.target, key_file=str(key))

    with pytest.raises(TransportError) as error:
        SSHTransport(target).lstat("/")

    assert error.value.permanent
    assert "authorized_keys" in str(error.value)


def test_a_key_with_a_passphrase_is_a_permanent_error(sshd_server, tmp_path):
    key = tmp_path / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(key)], check=True
    )
    target = dataclasses.replace(sshd_server.target, key_file=str(key))

    with pytest.raises(TransportError) as error:
        SSHTransport(target).lstat("/")

    assert error.value.permanent
    assert "passphrase" in str(error.value)
    assert "secret" not in str(error.value)


def test_a_server_that_is_down_is_a_transient_error(sshd_server):
    transport = SSHTransport(sshd_server.target)
    sshd_server.kill()

    with pytest.raises(TransportError) as error:
        transport.lstat("/")

    assert not error.value.permanent


def test_it_reconnects_transparently_after_the_server_restarted(sshd_server):
    transport = SSHTransport(sshd_server.target)
    assert transport.run("echo one", timeout=10).stdout == "one\n"

    sshd_server.kill()
    sshd_server.start()

    assert transport.lstat("/") is not None
    assert transport.run("echo two", timeout=10).stdout == "two\n"


def test_run_reports_exit_code_and_both_outputs(sshd_server):
    result = SSHTransport(sshd_server.target).run("echo out; echo err >&2; exit 3", timeout=10)

    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_a_command_that_overruns_its_timeout_is_a_transient_error(sshd_server):
    transport = SSHTransport(sshd_server.target)

    with pytest.raises(TransportError) as error:
        transport.run("sleep 5", timeout=0.5)

    assert not error.value.permanent
    assert transport.run("echo still usable", timeout=10).ok


def test_one_connection_is_reused_by_a_thread(sshd_server):
    transport = SSHTransport(sshd_server.target)
    transport.run("true", timeout=10)
    first = transport._connection()

    transport.lstat("/")
    SSHTransport(sshd_server.target).run("true", timeout=10)

    assert transport._connection() is first


def test_run_waits_for_a_command_that_closed_its_output_early(sshd_server):
    script = "exec >/dev/null 2>&1; sleep 0.3; exit 4"

    assert SSHTransport(sshd_server.target).run(script, timeout=10).exit_code == 4


def test_a_local_command_that_overruns_its_timeout_is_killed(tmp_path):
    marker = tmp_path / "survived"

    with pytest.raises(TransportError) as error:
        LocalTransport().run(f"sleep 0.5 && touch '{marker}' & sleep 5", timeout=0.3)

    assert not error.value.permanent
    time.sleep(0.8)  # the background child would have touched the marker by now
    assert not marker.exists()


def test_the_connection_prefers_aes_gcm(sshd_server):
    """One AEAD pass per packet; CTR would add an HMAC-SHA-256 over every byte sent."""
    transport = SSHTransport(sshd_server.target)
    transport.run("true", timeout=10)

    session = ssh_module._connections()[sshd_server.target].transport
    assert (session.local_cipher, session.remote_cipher) == ("aes128-gcm@openssh.com",) * 2
