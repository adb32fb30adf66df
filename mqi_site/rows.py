"""Row reads and writes for the conductor's hot path, with their SQL built once per process.

The conductor's transitions are a handful of primary-key statements.  Through the ORM,
building each statement (query cloning, filter resolution, compilation) cost more than
PostgreSQL took to run it: about 5 of a transition's 8 ms.  These helpers write the same
statements from the models' metadata, cache the SQL text per model and field list, and
turn rows into ordinary model instances (``Model.from_db``), so callers keep working with
models and the ORM stays the way to everything else.

On PostgreSQL each statement is also planned once per connection (``PREPARE``, then
``EXECUTE``): planning was a third to a half of the server's time for these statements.

Values go through each field's ``pre_save`` (``auto_now`` works) and
``get_db_prep_save``; columns come from ``_meta``, so a renamed field changes the SQL with
it.  Unlike ``save()``, no model signals are sent (the project connects none).  Nothing
here starts or ends a transaction: callers run inside ``transaction.atomic()`` and take
row locks in the order they document.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, TypeVar

from django.db import DatabaseError, connection
from django.db.backends.utils import CursorWrapper
from django.db.models import Field, Model

M = TypeVar("M", bound=Model)


def qn(name: str) -> str:
    return connection.ops.quote_name(name)


@cache
def select_list(model: type[Model], alias: str = "") -> str:
    """Every concrete column of ``model``, in ``_meta`` order (what ``from_db`` expects)."""
    prefix = f"{qn(alias)}." if alias else ""
    return ", ".join(prefix + qn(field.column) for field in model._meta.concrete_fields)


@cache
def table(model: type[Model]) -> str:
    return qn(model._meta.db_table)


def for_update(*, of: str = "", skip_locked: bool = False) -> str:
    """The row-lock clause, or nothing on a database without row locks (SQLite).

    ``of``: the table alias to lock in a join (the other tables are only read).
    """
    features = connection.features
    if not features.has_select_for_update:
        return ""
    clause = " FOR UPDATE"
    if of and features.has_select_for_update_of:
        clause += f" OF {qn(of)}"
    if skip_locked and features.has_select_for_update_skip_locked:
        clause += " SKIP LOCKED"
    return clause


def query(cursor: CursorWrapper, sql: str, params: Sequence[Any]) -> None:
    """``cursor.execute(sql, params)``; on PostgreSQL through a statement prepared once.

    A prepared statement lives as long as its session, whatever happens to transactions,
    so it is recorded against the database connection it was made on: a new connection
    (Django reconnects after an error or ``CONN_MAX_AGE``) prepares again.
    """
    if connection.vendor != "postgresql":
        cursor.execute(sql, params)
        return
    name = _statement_name(sql)
    prepared = _Prepared.on_this_connection(cursor)
    try:
        if name not in prepared.names:
            cursor.execute(f"PREPARE {name} AS {_numbered(sql)}")
            prepared.names.add(name)
        arguments = f"({', '.join(['%s'] * len(params))})" if params else ""
        cursor.execute(f"EXECUTE {name}{arguments}", params)
    except DatabaseError:
        # A statement whose tables changed under it (a migration while we ran) fails until
        # it is prepared again; whatever the error, start afresh on the next transaction.
        prepared.stale = True
        raise


class _Prepared:
    """The statements prepared on one database connection."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.names: set[str] = set()
        self.stale = False

    @classmethod
    def on_this_connection(cls, cursor: CursorWrapper) -> _Prepared:
        raw = connection.connection
        prepared = getattr(connection, "_mqi_prepared", None)
        if prepared is None or prepared.raw is not raw:
            prepared = connection._mqi_prepared = cls(raw)
        elif prepared.stale:
            cursor.execute("DEALLOCATE ALL")
            prepared.names.clear()
            prepared.stale = False
        return prepared


_names: dict[str, str] = {}
_names_lock = threading.Lock()


def _statement_name(sql: str) -> str:
    """One name per SQL text in this process (each connection prepares it under that name)."""
    name = _names.get(sql)
    if name is None:
        with _names_lock:
            name = _names.setdefault(sql, f"mqi_rows_{len(_names)}")
    return name


@cache
def _numbered(sql: str) -> str:
    """``%s`` placeholders as PostgreSQL's ``$1``, ``$2``, ... (the text holds no other ``%``)."""
    pieces = sql.split("%s")
    if any("%" in piece for piece in pieces):
        raise ValueError(f"a prepared statement may only hold %s placeholders: {sql}")
    numbered = [pieces[0]]
    for number, piece in enumerate(pieces[1:], start=1):
        numbered.append(f"${number}{piece}")
    return "".join(numbered)


def fetch_row(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    """The first row of ``sql``, as the database driver returns it."""
    with connection.cursor() as cursor:
        query(cursor, sql, params)
        return cursor.fetchone()


def fetch(model: type[M], sql: str, params: Sequence[Any]) -> M | None:
    """The first row of ``sql`` (selecting :func:`select_list`) as a ``model`` instance."""
    row = fetch_row(sql, params)
    return None if row is None else from_row(model, row)


def from_row(model: type[M], row: Sequence[Any]) -> M:
    """A ``model`` instance from a row of :func:`select_list`, converted as the ORM would."""
    converters = _converters(model)
    if converters:  # none on PostgreSQL; SQLite's text datetimes and integer booleans
        row = list(row)
        for index, column, functions in converters:
            for function in functions:
                row[index] = function(row[index], column, connection)
    return model.from_db(connection.alias, _attnames(model), row)


@cache
def _converters(model: type[Model]) -> tuple[tuple[int, Any, tuple[Any, ...]], ...]:
    found = []
    for index, field in enumerate(model._meta.concrete_fields):
        column = field.get_col(model._meta.db_table)
        functions = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if functions:
            found.append((index, column, tuple(functions)))
    return tuple(found)


def prep(model: type[Model], name: str, value: Any) -> Any:
    """``value`` for field ``name`` as the database takes it (a parameter of raw SQL)."""
    return _fields(model, (name,))[0].get_db_prep_save(value, connection)


def width(model: type[Model]) -> int:
    return len(model._meta.concrete_fields)


@cache
def _attnames(model: type[Model]) -> list[str]:
    return [field.attname for field in model._meta.concrete_fields]


@cache
def _fields(model: type[Model], names: tuple[str, ...]) -> tuple[Field, ...]:
    return tuple(model._meta.get_field(name) for name in names)


@cache
def _update_sql(model: type[Model], names: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{qn(field.column)} = %s" for field in _fields(model, names))
    return f"UPDATE {table(model)} SET {assignments} WHERE {qn(model._meta.pk.column)} = %s"


def update(instance: Model, names: Iterable[str]) -> int:
    """``instance.save(update_fields=names)`` for a row known to exist; returns rows changed."""
    names = tuple(names)
    model = type(instance)
    values = [
        field.get_db_prep_save(field.pre_save(instance, False), connection)
        for field in _fields(model, names)
    ]
    with connection.cursor() as cursor:
        query(cursor, _update_sql(model, names), [*values, instance.pk])
        return cursor.rowcount


@cache
def _insert_parts(model: type[Model]) -> tuple[tuple[Field, ...], str, str]:
    fields = tuple(field for field in model._meta.concrete_fields if not field.primary_key)
    columns = ", ".join(qn(field.column) for field in fields)
    returning = qn(model._meta.pk.column)
    return fields, f"INSERT INTO {table(model)} ({columns})", returning


def insert(
    instance: Model, *, computed: dict[str, tuple[str, Sequence[Any]]] | None = None
) -> None:
    """``instance.save()`` for a new row: one INSERT, the new primary key set on ``instance``.

    ``computed``: field name -> (SQL expression, params) for values the database works out
    in the INSERT itself; the instance's attribute for such a field is deferred afterwards
    (read from the database if anyone asks).
    """
    computed = computed or {}
    fields, head, returning = _insert_parts(type(instance))
    placeholders: list[str] = []
    params: list[Any] = []
    for field in fields:
        if field.name in computed:
            expression, expression_params = computed[field.name]
            placeholders.append(expression)
            params.extend(expression_params)
        else:
            placeholders.append("%s")
            params.append(field.get_db_prep_save(field.pre_save(instance, True), connection))
    sql = f"{head} VALUES ({', '.join(placeholders)}) RETURNING {returning}"
    with connection.cursor() as cursor:
        query(cursor, sql, params)
        instance.pk = cursor.fetchone()[0]
    instance._state.adding = False
    instance._state.db = connection.alias
    for name in computed:
        instance.__dict__.pop(type(instance)._meta.get_field(name).attname, None)
