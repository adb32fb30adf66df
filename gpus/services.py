"""Reserving and releasing GPU rows.

These functions only *do* a reservation or a release inside the caller's transaction; the
conductor alone decides *when*.  Both are compare-and-swap updates, so even a database
without row locks (SQLite) cannot hand one GPU to two cases.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from cases.models import Case
from gpus.models import GPUResource


def gpu_held_by(case: Case) -> GPUResource | None:
    return GPUResource.objects.filter(reserved_by=case).first()


def reserve_gpu(*, case: Case, host: str | None = None) -> GPUResource | None:
    """Give ``case``, which holds no GPU (see :func:`gpu_held_by`), a free one.

    On ``host`` when given.  Must run inside ``transaction.atomic()``.  Rows another
    transaction is reserving are skipped rather than waited for, so concurrent reservations
    never block each other; a second GPU for the same case is refused by the database.
    """
    candidates = GPUResource.objects.select_for_update(skip_locked=True).filter(
        status=GPUResource.Status.AVAILABLE, foreign_processes=0
    )
    if host:
        candidates = candidates.filter(host=host)
    for gpu in candidates.order_by("host", "index")[:4]:
        now = timezone.now()
        claimed = GPUResource.objects.filter(
            pk=gpu.pk, status=GPUResource.Status.AVAILABLE, reserved_by__isnull=True
        ).update(status=GPUResource.Status.RESERVED, reserved_by=case, reserved_at=now)
        if claimed == 1:
            gpu.status, gpu.reserved_by, gpu.reserved_at = GPUResource.Status.RESERVED, case, now
            return gpu
    return None


def release_gpu(*, case: Case, held: GPUResource | None = None) -> GPUResource | None:
    """Free the GPU ``case`` holds, if any; a GPU asked to drain goes to MAINTENANCE.

    ``held``: the GPU the caller knows the case holds (saves looking it up).
    """
    gpu = held or gpu_held_by(case)
    if gpu is None:
        return None
    GPUResource.objects.filter(pk=gpu.pk, reserved_by=case).update(
        status=models.Case(
            models.When(drain_requested=True, then=models.Value(GPUResource.Status.MAINTENANCE)),
            default=models.Value(GPUResource.Status.AVAILABLE),
        ),
        reserved_by=None,
        reserved_at=None,
        drain_requested=False,
    )
    gpu.refresh_from_db()
    return gpu


def free_gpu_exists(host: str | None = None) -> bool:
    free = GPUResource.objects.filter(status=GPUResource.Status.AVAILABLE, foreign_processes=0)
    if host:
        free = free.filter(host=host)
    return free.exists()
