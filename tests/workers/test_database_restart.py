"""A worker thread's kept database connection, closed by the server (as a restart does):
the next message, and a heartbeat after slow I/O within a message, reconnect instead of
failing."""

from __future__ import annotations

import contextlib
import time

import psycopg2
import pytest
from django.conf import settings
from django.db import connection
from django_dramatiq.middleware import DbConnectionsMiddleware

from cases.models import Case
from cases.services import step_run_heartbeat, step_run_mark_running
from tests.conductor.helpers import active_run, make_gpus, register
from tests.harness import database_url_for

pytestmark = pytest.mark.django_db(transaction=True)


def server_closes_this_threads_connection() -> None:
    """Terminate this thread's backend from another session and wait until it is gone."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    url = database_url_for(settings.DATABASES["default"])
    with contextlib.closing(psycopg2.connect(url)) as admin:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 10
            while True:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cursor.fetchone() == (0,):
                    return
                assert time.monotonic() < deadline, f"backend {pid} did not exit"
                time.sleep(0.01)


def test_the_next_message_after_the_server_closed_the_connection_reconnects():
    Case.objects.count()
    server_closes_this_threads_connection()

    DbConnectionsMiddleware().before_process_message(broker=None, message=None)

    assert Case.objects.count() == 0


def test_a_heartbeat_after_slow_io_reconnects(stub_broker):
    make_gpus(1)
    run = active_run(register("case-1"))
    token = step_run_mark_running(step_run_id=run.pk, deadline_sec=60)
    server_closes_this_threads_connection()  # while the files moved

    assert step_run_heartbeat(step_run_id=run.pk, deadline_sec=60, last_beat=token)


def test_marking_a_run_running_after_starting_its_command_reconnects(stub_broker):
    make_gpus(1)
    run = active_run(register("case-1"))
    server_closes_this_threads_connection()  # while the command started over SSH

    assert step_run_mark_running(step_run_id=run.pk, deadline_sec=60)
