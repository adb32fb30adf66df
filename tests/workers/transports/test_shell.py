"""Commands run through one long-lived ``sh`` per connection, not one login shell each."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from tests.sshd import SSHServer
from workers.transports import SSHTransport, TransportError


@pytest.fixture
def noisy_server(sshd_server: SSHServer, tmp_path: Path) -> tuple[SSHServer, Path]:
    """sshd whose sessions start a login shell that prints on both outputs (like a conda
    set-up in ~/.bashrc) and counts its start-ups in a file."""
    starts = tmp_path / "rc-starts"
    rc = tmp_path / "noisy-rc"
    # bash scripts the rc files start (pyenv's, say) read BASH_ENV too: count the shell only
    rc.write_text(
        f"echo rc-out; echo rc-err >&2; case $0 in *bash) echo started >> {starts};; esac\n"
    )
    with sshd_server.config.open("a") as config:
        config.write(f"SetEnv BASH_ENV={rc}\n")
    sshd_server.stop()
    sshd_server.start()
    return sshd_server, starts


def test_the_login_shell_starts_once_per_connection_and_its_output_is_not_a_commands(
    noisy_server,
):
    server, starts = noisy_server
    # BASH_ENV is how the test makes the login shell's start-up noisy and countable
    assert pwd.getpwuid(os.getuid()).pw_shell.endswith("bash")
    transport = SSHTransport(server.target)

    results = [transport.run(f"echo {n}; echo e{n} >&2", timeout=10) for n in range(5)]

    assert [(r.stdout, r.stderr) for r in results] == [(f"{n}\n", f"e{n}\n") for n in range(5)]
    assert starts.read_text().splitlines() == ["started"]


def test_output_is_returned_byte_for_byte_with_or_without_a_final_newline(sshd_server):
    transport = SSHTransport(sshd_server.target)

    assert transport.run("printf abc", timeout=10).stdout == "abc"
    assert transport.run("printf 'a\\n\\n'; printf x >&2", timeout=10).stdout == "a\n\n"
    assert transport.run("printf x >&2", timeout=10).stderr == "x"
    assert transport.run("true", timeout=10).stdout == ""


def test_a_command_reading_stdin_gets_nothing_and_the_next_command_still_runs(sshd_server):
    transport = SSHTransport(sshd_server.target)

    assert transport.run("cat; echo read-done", timeout=10).stdout == "read-done\n"
    assert transport.run("echo next", timeout=10).stdout == "next\n"


def test_a_command_that_kills_the_shell_fails_transiently_and_the_next_gets_a_new_shell(
    sshd_server,
):
    transport = SSHTransport(sshd_server.target)
    transport.run("true", timeout=10)

    with pytest.raises(TransportError) as error:
        transport.run("kill -9 $PPID; sleep 1", timeout=10)  # $PPID is the shell

    assert not error.value.permanent
    assert transport.run("echo again", timeout=10).stdout == "again\n"


def test_exit_codes_of_consecutive_commands_are_their_own(sshd_server):
    transport = SSHTransport(sshd_server.target)

    codes = [transport.run(f"exit {code}", timeout=10).exit_code for code in (0, 7, 0, 255)]

    assert codes == [0, 7, 0, 255]
