"""The GPU admin: every GPU by host, who holds it, how it is doing; maintenance on and off.

GPU rows are written by GPU discovery and by the conductor (reservations), never by hand:
the admin is read-only and its two actions call ``gpu_start_maintenance`` (a reserved GPU
is drained: it finishes its step run, then goes to maintenance) and ``gpu_end_maintenance``.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from cases.admin import (
    Consequences,
    OperatorAction,
    OperatorActionsAdmin,
    case_link,
    list_actions,
    status_badge,
)
from cases.models import Case
from conductor.maintenance import gpu_end_maintenance, gpu_start_maintenance
from gpus.models import GPUResource, Host
from gpus.services import in_service_gpus
from mqi_site.times import format_duration, format_time


def _start_maintenance(gpu: GPUResource, actor: str) -> str:
    gpu = gpu_start_maintenance(gpu_pk=gpu.pk, actor=actor)
    if gpu.drain_requested:
        return f"GPU {gpu}: drain requested; it goes to maintenance when its step finishes"
    return f"GPU {gpu}: in maintenance"


def _maintenance_consequences(gpus: Sequence[GPUResource]) -> Consequences | None:
    """Confirm when a GPU holds a case, or when no GPU would be left in service."""
    leaving = [gpu for gpu in gpus if _can_start(gpu)]
    per_gpu = [(gpu, [_leaving_said(gpu)]) for gpu in leaving]
    left = in_service_gpus().exclude(pk__in=[gpu.pk for gpu in leaving]).count()
    warnings = []
    if leaving and left == 0:
        waiting = Case.objects.filter(status__in=Case.ACTIVE).count()
        warnings.append(
            f"No GPU will be in service: cases that need one wait until a GPU is back "
            f"({waiting} case{'s' if waiting != 1 else ''} not finished now)."
        )
    if not warnings and not any(gpu.step_run_id for gpu in leaving):
        return None
    return Consequences(per_gpu, warnings)


def _leaving_said(gpu: GPUResource) -> str:
    if gpu.step_run is None:
        return "leaves service now"
    return (
        f"holds case {gpu.step_run.case.case_id} ({gpu.step_run.name}): that step finishes "
        "(nothing is killed), then the GPU leaves service"
    )


def _end_maintenance(gpu: GPUResource, actor: str) -> str:
    was_draining = gpu.drain_requested and gpu.status == GPUResource.Status.RESERVED
    gpu = gpu_end_maintenance(gpu_pk=gpu.pk, actor=actor)
    if was_draining and gpu.status == GPUResource.Status.RESERVED:
        return f"GPU {gpu}: drain cancelled; it stays in service"
    return f"GPU {gpu}: back in service"


def _can_start(gpu: GPUResource) -> bool:
    return gpu.status != GPUResource.Status.MAINTENANCE and not gpu.drain_requested


def _can_end(gpu: GPUResource) -> bool:
    return gpu.status == GPUResource.Status.MAINTENANCE or gpu.drain_requested


GPU_ACTIONS = (
    OperatorAction(
        "start_maintenance",
        "Start maintenance",
        _start_maintenance,
        _can_start,
        consequences=_maintenance_consequences,
    ),
    OperatorAction("end_maintenance", "End maintenance", _end_maintenance, _can_end),
)


@admin.register(GPUResource)
class GPUResourceAdmin(OperatorActionsAdmin):
    operator_actions = GPU_ACTIONS
    actions = list_actions(GPU_ACTIONS)
    list_display = (
        "slot",
        "status_badge",
        "held_by",
        "utilization",
        "memory",
        "temperature",
        "seen",
        "foreign",
    )
    list_display_links = ("slot",)
    list_filter = ("host", "status", "drain_requested")
    list_select_related = ("step_run__case",)
    ordering = ("host", "index")
    list_per_page = 200
    search_fields = ("host", "uuid", "name", "step_run__case__case_id")
    fieldsets = (
        (None, {"fields": ("host", "index", "uuid", "name", "status_badge", "held_by")}),
        ("Maintenance", {"fields": ("drain_requested", "foreign_processes")}),
        ("Last reading", {"fields": ("utilization", "memory", "temperature", "seen")}),
        ("Reservation", {"fields": ("reserved_at",)}),
    )

    def has_delete_permission(self, request: HttpRequest, obj: GPUResource | None = None) -> bool:
        # Only a GPU that is gone (OFFLINE) may be removed; discovery re-adds one that returns.
        offline = obj is not None and obj.status == GPUResource.Status.OFFLINE
        return offline and super().has_delete_permission(request, obj)

    @admin.display(description="GPU", ordering="host")
    def slot(self, gpu: GPUResource) -> SafeString:
        return format_html('{}<br><span class="mqi-muted">{}</span>', str(gpu), gpu.name)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, gpu: GPUResource) -> SafeString:
        badge = status_badge(gpu.status, gpu.get_status_display())
        if gpu.drain_requested:
            badge += status_badge("drain", "drain pending")
        down_since = getattr(gpu, "host_down_since", None)
        if down_since is not None:
            badge += status_badge("host-down", f"server down since {format_time(down_since)}")
        return badge

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # whether each GPU's server is down, in the same query
        down = Host.objects.filter(name=OuterRef("host"), state=Host.State.DOWN)
        return (
            super()
            .get_queryset(request)
            .annotate(host_down_since=Subquery(down.values("down_since")[:1]))
        )

    @admin.display(description="Case")
    def held_by(self, gpu: GPUResource) -> SafeString | str:
        if gpu.step_run is None:
            return "—"
        return format_html(
            '{} <span class="mqi-muted">{}</span>', case_link(gpu.step_run.case), gpu.step_run.name
        )

    @admin.display(description="Util.", ordering="utilization_pct")
    def utilization(self, gpu: GPUResource) -> str:
        return "—" if gpu.utilization_pct is None else f"{gpu.utilization_pct}%"

    @admin.display(description="Memory used")
    def memory(self, gpu: GPUResource) -> str:
        if gpu.memory_used_mib is None and gpu.memory_total_mib is None:
            return "—"
        return f"{_gib(gpu.memory_used_mib)} / {_gib(gpu.memory_total_mib)} GiB"

    @admin.display(description="Temp.", ordering="temperature_c")
    def temperature(self, gpu: GPUResource) -> str:
        return "—" if gpu.temperature_c is None else f"{gpu.temperature_c} °C"

    @admin.display(description="Last seen", ordering="last_seen")
    def seen(self, gpu: GPUResource) -> str:
        if gpu.last_seen is None:
            return "never"
        return f"{format_duration(timezone.now() - gpu.last_seen, coarse=True)} ago"

    @admin.display(description="Foreign", ordering="foreign_processes")
    def foreign(self, gpu: GPUResource) -> int:
        return gpu.foreign_processes


def _gib(mib: int | None) -> str:
    return "?" if mib is None else f"{mib / 1024:.1f}"
