"""Reserving, handing on and releasing GPU rows.

These functions only *do* a booking inside the caller's transaction; the conductor alone
decides *when*.  Every change is a compare-and-swap (``filter(pk=..., status=old)
.update(...)``, acting only if the row was still as expected), so even a database without
row locks (SQLite) cannot hand one GPU to two step runs; on PostgreSQL the candidate row is
also locked with SKIP LOCKED, so concurrent reservations pass each other by instead of
waiting.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Case, Value, When
from django.utils import timezone

from cases.models import WorkflowStep
from gpus.models import GPUResource, Host


def free_gpus(host: str | None = None):
    """GPUs a step run may take: available, on a server that is up, and running nothing
    this system did not start."""
    free = GPUResource.objects.filter(
        status=GPUResource.Status.AVAILABLE, foreign_processes=0, step_run__isnull=True
    ).exclude(host__in=Host.objects.filter(state=Host.State.DOWN).values("name"))
    return free.filter(host=host) if host else free


def in_service_gpus():
    """GPUs that take cases now or after their current one: available or reserved, not
    being drained to maintenance.  (A free GPU a foreign process uses stays in service.)"""
    return GPUResource.objects.filter(
        status__in=(GPUResource.Status.AVAILABLE, GPUResource.Status.RESERVED),
        drain_requested=False,
    )


# --- GPU servers up and down ---------------------------------------------------------------


def host_mark_down(name: str, error: str) -> bool:
    """Record that ``name`` cannot be reached; True when it was up until now."""
    now = timezone.now()
    host, _ = Host.objects.get_or_create(name=name)
    went_down = Host.objects.filter(pk=host.pk, state=Host.State.UP).update(
        state=Host.State.DOWN, down_since=now, last_error=error[:2000], checked_at=now
    )
    if not went_down:
        Host.objects.filter(pk=host.pk).update(last_error=error[:2000], checked_at=now)
    return bool(went_down)


def host_mark_up(name: str) -> bool:
    """Record that ``name`` can be reached; True when it was down until now."""
    now = timezone.now()
    host, _ = Host.objects.get_or_create(name=name)
    came_back = Host.objects.filter(pk=host.pk, state=Host.State.DOWN).update(
        state=Host.State.UP, down_since=None, checked_at=now
    )
    if not came_back:
        Host.objects.filter(pk=host.pk).update(checked_at=now)
    return bool(came_back)


def hosts_down() -> dict[str, Host]:
    return {host.name: host for host in Host.objects.filter(state=Host.State.DOWN)}


def host_is_up(name: str) -> bool:
    return not Host.objects.filter(name=name, state=Host.State.DOWN).exists()


def free_gpu_exists(host: str | None = None) -> bool:
    return free_gpus(host).exists()


def reserve_gpu(*, step_run: WorkflowStep, host: str | None = None) -> GPUResource | None:
    """Give ``step_run`` a free GPU (on ``host`` when given): the first by host and index.

    Must run inside ``transaction.atomic()``.  Returns the GPU, or None when none is free.
    """
    while True:
        candidate = (
            free_gpus(host)
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("host", "index")
            .first()
        )
        if candidate is None:
            return None
        taken = GPUResource.objects.filter(
            pk=candidate.pk, status=GPUResource.Status.AVAILABLE, step_run__isnull=True
        ).update(status=GPUResource.Status.RESERVED, step_run=step_run, reserved_at=timezone.now())
        if taken:
            candidate.status, candidate.step_run = GPUResource.Status.RESERVED, step_run
            return candidate
        # another transaction took it between our look and our update (SQLite): next one


def hand_over(*, from_run: int, to_run: WorkflowStep) -> GPUResource | None:
    """Move the GPU ``from_run`` holds to ``to_run`` (a case keeping its GPU between steps,
    or a retry keeping its step's).  Returns it, or None when ``from_run`` held none."""
    gpu = GPUResource.objects.filter(step_run_id=from_run).first()
    if gpu is None:
        return None
    moved = GPUResource.objects.filter(pk=gpu.pk, step_run_id=from_run).update(step_run=to_run)
    return gpu if moved else None


def release_gpus(*, step_runs: Iterable[int]) -> list[GPUResource]:
    """Free the GPUs the step runs hold; a GPU asked to drain goes to MAINTENANCE instead.

    Returns the GPUs as they are afterwards.
    """
    held = list(
        GPUResource.objects.filter(step_run_id__in=list(step_runs)).values_list("pk", flat=True)
    )
    if not held:
        return []
    GPUResource.objects.filter(pk__in=held).update(
        status=Case(
            When(drain_requested=True, then=Value(GPUResource.Status.MAINTENANCE)),
            default=Value(GPUResource.Status.AVAILABLE),
        ),
        step_run=None,
        reserved_at=None,
        drain_requested=False,
    )
    return list(GPUResource.objects.filter(pk__in=held))


def gpus_held(step_runs: Iterable[int]) -> dict[int, int]:
    """``{step run id: GPU id}`` for the step runs that hold one."""
    return dict(
        GPUResource.objects.filter(step_run_id__in=list(step_runs)).values_list("step_run_id", "pk")
    )
