"""Host keys, seen from a case: a GPU server whose key is unknown or has changed is never
talked to.  The case fails at once (no retries) with a permanent error that says how to
fix it, nothing is uploaded, and known_hosts is left exactly as it was."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cases.models import Case
from mqi_site.config import get_config
from mqi_site.messaging import ErrorKind
from tests.workers.conftest import make_case, wait_terminal
from workers.scanner.scan import scan_cases
from workers.transports.ssh import close_thread_connections

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def another_host_key(tmp_path: Path) -> tuple[str, str]:
    key = tmp_path / "impostor_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return kind, blob


def run_case(gpu_server, case_id: str) -> Case:
    close_thread_connections()  # GPU discovery connected while known_hosts was still right
    make_case(gpu_server.watch_dir, case_id)
    scan_cases(get_config())
    (case,) = wait_terminal(case_id)
    return case


def test_a_host_missing_from_known_hosts_fails_the_case_with_the_command_to_add_it(
    gpu_server, discovered_gpus, workers, tmp_path
):
    known_hosts = Path(gpu_server.sshd.target.known_hosts_file)
    known_hosts.write_text(f"# {gpu_server.sshd.port} was never added\n")
    before = known_hosts.read_bytes()

    case = run_case(gpu_server, "QA-unknown-host")

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    assert f"host key for [127.0.0.1]:{gpu_server.sshd.port} is not in {known_hosts}" in (
        case.error_message
    )
    assert f"`ssh-keyscan -p {gpu_server.sshd.port} 127.0.0.1 >> {known_hosts}`" in (
        case.error_message
    )
    assert "after verifying the fingerprint" in case.error_message
    assert case.steps.count() == 1  # permanent: never retried
    assert known_hosts.read_bytes() == before
    assert not gpu_server.case_dir("QA-unknown-host").exists()


def test_a_changed_host_key_fails_the_case_and_says_it_may_be_an_interception(
    gpu_server, discovered_gpus, workers, tmp_path
):
    known_hosts = Path(gpu_server.sshd.target.known_hosts_file)
    kind, blob = another_host_key(tmp_path)
    known_hosts.write_text(f"[127.0.0.1]:{gpu_server.sshd.port} {kind} {blob}\n")
    before = known_hosts.read_bytes()

    case = run_case(gpu_server, "QA-changed-host")

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    assert f"host key for [127.0.0.1]:{gpu_server.sshd.port} CHANGED" in case.error_message
    assert "the connection is being intercepted" in case.error_message
    assert f"ssh-keygen -R '[127.0.0.1]:{gpu_server.sshd.port}' -f {known_hosts}" in (
        case.error_message
    )
    assert case.steps.count() == 1
    assert known_hosts.read_bytes() == before
    assert not gpu_server.case_dir("QA-changed-host").exists()


def test_a_revoked_host_key_fails_the_case_with_that_reason(
    gpu_server, discovered_gpus, workers, tmp_path
):
    known_hosts = Path(gpu_server.sshd.target.known_hosts_file)
    kind, blob = gpu_server.sshd.host_key.with_suffix(".pub").read_text().split()[:2]
    # the key stays listed, as when @revoked is added and the old line forgotten
    known_hosts.write_text(known_hosts.read_text() + f"@revoked * {kind} {blob}\n")
    before = known_hosts.read_bytes()

    case = run_case(gpu_server, "QA-revoked-host")

    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.PERMANENT
    assert f"is marked @revoked in {known_hosts}: refused" in case.error_message
    assert case.steps.count() == 1
    assert known_hosts.read_bytes() == before
    assert not gpu_server.case_dir("QA-revoked-host").exists()


def test_the_right_host_key_lets_the_same_case_through(gpu_server, discovered_gpus, workers):
    case = run_case(gpu_server, "QA-known-host")

    assert case.status == Case.Status.COMPLETED, case.error_message
