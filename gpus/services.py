"""Reserving and releasing GPU rows.

These functions only *do* a reservation or a release inside the caller's transaction; the
conductor alone decides *when*.  Both are compare-and-swap updates, so even a database
without row locks (SQLite) cannot hand one GPU to two cases.
"""

from __future__ import annotations

from functools import cache

from django.utils import timezone

from cases.models import Case
from gpus.models import GPUResource
from mqi_site import rows


@cache
def _gpu_sql(statement: str) -> str:
    return f"{statement} RETURNING {rows.select_list(GPUResource)}"


def gpu_held_by(case: Case) -> GPUResource | None:
    sql = f"SELECT {rows.select_list(GPUResource)} FROM gpus_gpuresource WHERE reserved_by_id = %s"
    return rows.fetch(GPUResource, sql, [case.pk])


def reserve_gpu(*, case: Case, host: str | None = None) -> GPUResource | None:
    """Give ``case``, which holds no GPU (see :func:`gpu_held_by`), a free one.

    On ``host`` when given; the first free one by host and index.  Must run inside
    ``transaction.atomic()``.  Rows another transaction is reserving are skipped rather
    than waited for, so concurrent reservations never block each other; a second GPU for
    the same case is refused by the database.
    """
    return rows.fetch(
        GPUResource,
        _reserve_sql(bool(host)),
        [
            GPUResource.Status.RESERVED,
            case.pk,
            rows.prep(GPUResource, "reserved_at", timezone.now()),
            GPUResource.Status.AVAILABLE,
            *([host] if host else []),
            GPUResource.Status.AVAILABLE,
        ],
    )


@cache
def _reserve_sql(on_host: bool) -> str:
    # One statement: the sub-select picks and locks a free row (SKIP LOCKED: one another
    # transaction is taking is passed over), the update takes it only if it is still free
    # (compare-and-swap, which alone keeps SQLite, without row locks, from double-booking).
    free = (
        "SELECT id FROM gpus_gpuresource WHERE status = %s AND foreign_processes = 0"
        " AND reserved_by_id IS NULL" + (" AND host = %s" if on_host else "")
    )
    return _gpu_sql(
        "UPDATE gpus_gpuresource SET status = %s, reserved_by_id = %s, reserved_at = %s"
        f' WHERE id = ({free} ORDER BY host, "index" LIMIT 1{rows.for_update(skip_locked=True)})'
        " AND status = %s AND reserved_by_id IS NULL"
    )


def release_gpu(*, case: Case, held: GPUResource | None = None) -> GPUResource | None:
    """Free the GPU ``case`` holds, if any; a GPU asked to drain goes to MAINTENANCE.

    Returns the GPU as it is afterwards, or None when the case held none.  ``held``: the
    GPU the caller knows the case holds (only its id is used).
    """
    which, key = ("id", held.pk) if held is not None else ("reserved_by_id", case.pk)
    return rows.fetch(
        GPUResource,
        _release_sql(which),
        [
            GPUResource.Status.MAINTENANCE,
            GPUResource.Status.AVAILABLE,
            False,
            key,
            case.pk,
        ],
    )


@cache
def _release_sql(which: str) -> str:
    return _gpu_sql(
        "UPDATE gpus_gpuresource SET"
        " status = CASE WHEN drain_requested THEN %s ELSE %s END,"
        " reserved_by_id = NULL, reserved_at = NULL, drain_requested = %s"
        f" WHERE {which} = %s AND reserved_by_id = %s"
    )


def free_gpu_exists(host: str | None = None) -> bool:
    free = GPUResource.objects.filter(status=GPUResource.Status.AVAILABLE, foreign_processes=0)
    if host:
        free = free.filter(host=host)
    return free.exists()
