"""Duplicated and re-driven messages: one worker per transfer, one poll chain per command,
and a connection that sshd drops mid-authentication is worth another try."""

from __future__ import annotations

import paramiko
import pytest

from cases.models import WorkflowStep
from cases.services import step_run_claim, step_run_heartbeat, step_run_mark_running
from conductor import transitions
from tests.conductor.helpers import active_run, make_gpus, register
from workers.transports.base import SSHTarget
from workers.transports.ssh import _connect_error


def test_a_transfer_taken_by_one_worker_is_not_taken_by_a_duplicate_message(stub_broker, db):
    make_gpus(1)
    run = active_run(register("case-1"))

    first = step_run_claim(step_run_id=run.pk, deadline_sec=60)
    duplicate = step_run_claim(step_run_id=run.pk, deadline_sec=60)

    assert (first, duplicate) == (True, False)
    run.refresh_from_db()
    assert run.status == WorkflowStep.Status.RUNNING


def test_a_redriven_transfer_can_be_taken_again_by_the_next_worker(stub_broker, db):
    make_gpus(1)
    run = active_run(register("case-1"))
    assert step_run_claim(step_run_id=run.pk, deadline_sec=60)  # then that worker dies

    assert transitions.step_run_redrive(step_run_id=run.pk, force=True) == "redriven"

    assert step_run_claim(step_run_id=run.pk, deadline_sec=60)


def test_only_the_poll_holding_the_latest_beat_goes_on(stub_broker, db):
    make_gpus(1)
    run = active_run(register("case-1"))
    token = step_run_mark_running(step_run_id=run.pk, deadline_sec=60)

    next_token = step_run_heartbeat(step_run_id=run.pk, deadline_sec=60, last_beat=token)
    duplicate = step_run_heartbeat(step_run_id=run.pk, deadline_sec=60, last_beat=token)

    assert next_token is not None and next_token != token
    assert duplicate is None  # the same poll delivered twice: the copy ends its chain
    assert step_run_heartbeat(step_run_id=run.pk, deadline_sec=60, last_beat=next_token)


def test_a_reattach_starts_a_new_poll_chain_and_ends_the_old_one(stub_broker, db):
    make_gpus(1)
    run = active_run(register("case-1"))
    old_chain = step_run_mark_running(step_run_id=run.pk, deadline_sec=60)

    new_chain = step_run_mark_running(step_run_id=run.pk, deadline_sec=60)  # re-driven

    assert step_run_heartbeat(step_run_id=run.pk, deadline_sec=60, last_beat=old_chain) is None
    assert step_run_heartbeat(step_run_id=run.pk, deadline_sec=60, last_beat=new_chain)


TARGET = SSHTarget(
    name="gpu1",
    hostname="127.0.0.1",
    port=2222,
    username="mqi",
    key_file="/keys/id",
    known_hosts_file="/keys/known_hosts",
)


@pytest.mark.parametrize(("dropped", "permanent"), [(True, False), (False, True)])
def test_authentication_fails_permanently_only_while_the_connection_stays_open(dropped, permanent):
    error = _connect_error(TARGET, paramiko.AuthenticationException(), dropped=dropped)

    assert error.permanent is permanent
