"""The hot path's hand-built statements behave like the ORM calls they replace."""

from __future__ import annotations

import threading

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.forms.models import model_to_dict
from django.utils import timezone

from cases.models import Case, CaseEvent, WorkflowStep
from gpus.models import GPUResource
from mqi_site import rows


def make_case(case_id: str = "c-1") -> Case:
    return Case.objects.create(case_id=case_id, source_path=f"/in/{case_id}", workflow="wf")


def select_case(where: str) -> str:
    return f"SELECT {rows.select_list(Case)} FROM cases_case WHERE {where}"


@pytest.mark.django_db
def test_it_reads_the_row_the_orm_reads() -> None:
    case = make_case()
    Case.objects.filter(pk=case.pk).update(finished_at=timezone.now(), priority=3)

    fetched = rows.fetch(Case, select_case("id = %s"), [case.pk])

    expected = Case.objects.get(pk=case.pk)
    assert model_to_dict(fetched) == model_to_dict(expected)
    assert fetched.finished_at == expected.finished_at
    assert fetched.finished_at.tzinfo is not None
    assert fetched._state.adding is False


@pytest.mark.django_db
def test_it_returns_none_for_no_row() -> None:
    assert rows.fetch(Case, select_case("id = %s"), [-1]) is None


@pytest.mark.django_db
def test_update_writes_only_the_named_fields_and_moves_auto_now() -> None:
    case = make_case()
    before = Case.objects.get(pk=case.pk).updated_at
    stale = Case.objects.get(pk=case.pk)
    Case.objects.filter(pk=case.pk).update(priority=7)  # a field the update does not name
    stale.status = Case.Status.PROCESSING
    stale.priority = 0

    changed = rows.update(stale, ["status", "updated_at"])

    after = Case.objects.get(pk=case.pk)
    assert changed == 1
    assert after.status == Case.Status.PROCESSING
    assert after.priority == 7
    assert after.updated_at > before


@pytest.mark.django_db
def test_insert_sets_the_key_and_computes_in_the_insert() -> None:
    case = make_case()
    WorkflowStep.objects.create(case=case, name="upload", type="upload", attempt=4, status="FAILED")
    run = WorkflowStep(case=case, name="upload", type="upload", status="DISPATCHED")
    next_attempt = (
        "(SELECT MAX(attempt) FROM cases_workflowstep WHERE case_id = %s AND name = %s) + 1"
    )

    rows.insert(run, computed={"attempt": (next_attempt, [case.pk, "upload"])})

    assert run.pk is not None and run._state.adding is False
    assert "attempt" in run.get_deferred_fields()
    assert run.attempt == 5  # read from the database on first use
    stored = WorkflowStep.objects.get(pk=run.pk)
    assert (stored.attempt, stored.status, stored.case_id) == (5, "DISPATCHED", case.pk)
    assert stored.created_at is not None


@pytest.mark.django_db
def test_insert_of_a_model_with_defaults() -> None:
    case = make_case()
    event = CaseEvent(case=case, kind="created", message="found")

    rows.insert(event)

    assert CaseEvent.objects.get(pk=event.pk).message == "found"


@pytest.mark.django_db
def test_prep_gives_the_database_value() -> None:
    now = timezone.now()
    assert rows.prep(GPUResource, "reserved_at", now) == now  # PostgreSQL takes it as is
    assert rows.prep(GPUResource, "drain_requested", 1) is True


@pytest.mark.django_db(transaction=True)
def test_for_update_skip_locked_passes_over_a_row_another_transaction_holds() -> None:
    case = make_case()
    sql = select_case("id = %s") + rows.for_update(skip_locked=True)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                assert rows.fetch(Case, select_case("id = %s") + rows.for_update(), [case.pk])
                held.set()
                release.wait(timeout=10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(timeout=10)
        with transaction.atomic():
            assert rows.fetch(Case, sql, [case.pk]) is None
    finally:
        release.set()
        thread.join()
    with transaction.atomic():
        assert rows.fetch(Case, sql, [case.pk]).pk == case.pk
    assert sql.endswith(" FOR UPDATE SKIP LOCKED")
    assert rows.for_update(of="r") == ' FOR UPDATE OF "r"'


@pytest.mark.django_db(transaction=True)
def test_statements_are_prepared_once_per_connection() -> None:
    case = make_case()
    sql = select_case("id = %s")

    def prepared_here() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            return [row[0] for row in cursor.fetchall() if sql.split(" FROM ")[0] in row[0]]

    for _ in range(3):
        assert rows.fetch(Case, sql, [case.pk]).pk == case.pk
    assert len(prepared_here()) == 1
    connection.close()  # as Django does after an error or CONN_MAX_AGE
    assert rows.fetch(Case, sql, [case.pk]).pk == case.pk
    assert len(prepared_here()) == 1


@pytest.mark.django_db(transaction=True)
def test_a_statement_lost_on_the_server_is_prepared_again() -> None:
    case = make_case()
    sql = select_case("id = %s")
    assert rows.fetch(Case, sql, [case.pk]) is not None
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # the server forgot it (as a changed table would)

    with pytest.raises(DatabaseError), transaction.atomic():
        rows.fetch(Case, sql, [case.pk])

    with transaction.atomic():
        assert rows.fetch(Case, sql, [case.pk]).pk == case.pk
