"""What the management commands print cannot take over the operator's terminal: case ids,
folders, reasons and history are shown with control characters escaped; and a reader that
goes away (``case_status | head -1``) ends the command quietly."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from cases.models import Case
from mqi_site.messaging import ErrorKind
from tests.conductor.helpers import active_run, fail, make_gpus, register
from tests.conftest import REPO_DIR
from tests.harness import database_url_for

# Clears the screen, turns text red, sets the window title, returns the carriage, forges a
# line, and reverses the text that follows (a bidi override).
HOSTILE = "QA-\x1b[2J\x1b[31m\x1b]0;owned\x07\rOK\ncase QA-2 COMPLETED\u202e"
ESCAPED = "QA-\\x1b[2J\\x1b[31m\\x1b]0;owned\\x07\\rOK\\ncase QA-2 COMPLETED\\u202e"


def output(*args: str) -> str:
    out, err = StringIO(), StringIO()
    with contextlib.suppress(CommandError):  # cancel_case exits 1 for an unknown case
        call_command(*args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


@pytest.fixture
def failed_hostile_case(stub_broker) -> Case:
    make_gpus(1)
    case = register(HOSTILE)
    fail(active_run(case), ErrorKind.PERMANENT, f"exited with code 1: {HOSTILE}")
    return Case.objects.get(pk=case.pk)


def no_control_characters(text: str) -> bool:
    return not any((c < " " and c != "\n") or c == "\u202e" for c in text)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "command",
    [
        ("case_status", HOSTILE),
        ("case_status",),
        ("replay_failed", "--dry-run"),
        ("cancel_case", "--dry-run", "no-such\x1b[2Jcase"),
    ],
    ids=["case_status CASE", "case_status", "replay_failed", "cancel_case"],
)
def test_hostile_names_and_reasons_are_printed_escaped(failed_hostile_case, command):
    printed = output(*command)

    assert no_control_characters(printed), repr(printed)
    assert ESCAPED[:40] in printed or "no-such\\x1b[2Jcase" in printed


@pytest.mark.django_db(transaction=True)
def test_case_status_into_a_closed_pipe_ends_quietly(settings):
    environment = {
        **os.environ,
        "DATABASE_URL": database_url_for(settings.DATABASES["default"]),
        "MQI_CONFIG": str(settings.MQI_CONFIG),
    }
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write fails
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", "case_status"],
            cwd=REPO_DIR,
            env=environment,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)

    assert done.stderr.decode() == ""
    assert done.returncode == 1


@pytest.mark.django_db(transaction=True)
def test_case_status_piped_into_head_ends_quietly(settings):
    # more output than a pipe holds, so the command is still writing when head exits
    Case.objects.bulk_create(
        Case(case_id=f"QA-{n:05d}-{'x' * 30}", source_path="/x", workflow="default_qa")
        for n in range(2000)
    )
    environment = {
        **os.environ,
        "DATABASE_URL": database_url_for(settings.DATABASES["default"]),
        "MQI_CONFIG": str(settings.MQI_CONFIG),
    }

    done = subprocess.run(
        f"{sys.executable} manage.py case_status --limit 5000 | head -1",
        shell=True,
        cwd=REPO_DIR,
        env=environment,
        capture_output=True,
        timeout=120,
        check=False,
    )

    assert done.stdout.decode().startswith("New: 2000")
    assert done.stderr.decode() == ""
