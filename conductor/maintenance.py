"""Taking GPUs out of service and back: an operator's decision, carried out by the conductor.

A free GPU goes to MAINTENANCE at once.  A GPU a step run holds is *drained*: it finishes
that step run, and its release sends it to MAINTENANCE instead of back into service
(``gpus.services.release_gpus``).
"""

from __future__ import annotations

import logging

from django.db import transaction

from conductor.transitions import CaseStateError, advance_waiting
from gpus.models import GPUResource

log = logging.getLogger(__name__)


def gpu_start_maintenance(*, gpu_pk: int, actor: str = "") -> GPUResource:
    """Take a GPU out of service; a reserved one is drained (finishes its step run first)."""
    with transaction.atomic():
        gpu = GPUResource.objects.select_for_update().get(pk=gpu_pk)
        if gpu.status == GPUResource.Status.RESERVED:
            gpu.drain_requested = True
            log.info("GPU %s: drain requested by %s", gpu, actor or "an operator")
        elif gpu.status == GPUResource.Status.MAINTENANCE:
            raise CaseStateError(f"GPU {gpu} is already in maintenance")
        else:
            gpu.status = GPUResource.Status.MAINTENANCE
            log.info("GPU %s: maintenance started by %s", gpu, actor or "an operator")
        gpu.save()
    return gpu


def gpu_end_maintenance(*, gpu_pk: int, actor: str = "") -> GPUResource:
    """Put a GPU back in service (or cancel a pending drain) and hand it to a waiting step."""
    with transaction.atomic():
        gpu = GPUResource.objects.select_for_update().get(pk=gpu_pk)
        if gpu.status == GPUResource.Status.MAINTENANCE:
            gpu.status = GPUResource.Status.AVAILABLE
            transaction.on_commit(advance_waiting)
        elif gpu.drain_requested:
            gpu.drain_requested = False
        else:
            raise CaseStateError(f"GPU {gpu} is {gpu.status}, not in maintenance")
        gpu.save()
        log.info("GPU %s: back in service (%s)", gpu, actor or "an operator")
    return gpu
