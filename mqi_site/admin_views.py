"""The operations overview inside the admin: ``/admin/overview/``.

Counts per status, the running cases with their progress, GPU occupancy per host and the
latest failures, on one page that reloads itself.  It only reads; every link leads to the
case or GPU admin, where the actions are.  Included from ``mqi_site/urls.py``; wrapped in
``admin.site.admin_view``, so it needs a staff login like every admin page.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.views.decorators.cache import never_cache

from cases.models import Case
from conductor.transitions import waiting_step_runs
from gpus.models import GPUResource, Host
from gpus.services import in_service_gpus

app_name = "overview"

REFRESH_SECONDS = 10
RUNNING_SHOWN = 50
FAILURES_SHOWN = 10
WAITING_SHOWN = 50


@dataclass(frozen=True)
class StatusCount:
    status: str
    label: str
    count: int


@dataclass(frozen=True)
class HostOccupancy:
    host: str
    gpus: list[GPUResource]
    state: Host | None = None  # None: never found down

    @property
    def busy(self) -> int:
        return sum(gpu.status == GPUResource.Status.RESERVED for gpu in self.gpus)


def status_counts() -> list[StatusCount]:
    """Every status, zero included, in the order of the state machine."""
    rows = Case.objects.order_by().values_list("status").annotate(n=Count("id"))
    counts = dict(rows)
    return [StatusCount(value, label, counts.get(value, 0)) for value, label in Case.Status.choices]


def running_cases() -> list[Case]:
    running = Case.objects.filter(status=Case.Status.PROCESSING).with_gpus()
    return list(running.order_by("-priority", "created_at")[:RUNNING_SHOWN])


def gpu_occupancy() -> list[HostOccupancy]:
    gpus = GPUResource.objects.select_related("step_run__case").order_by("host", "index")
    hosts = {host.name: host for host in Host.objects.all()}
    return [
        HostOccupancy(name, list(group), hosts.get(name))
        for name, group in groupby(gpus, lambda g: g.host)
    ]


@dataclass(frozen=True)
class WaitingCase:
    position: int  # 1: the next to get a GPU
    case: Case
    step: str


def waiting_cases() -> list[WaitingCase]:
    """Cases waiting for a GPU, in the order the conductor hands GPUs out."""
    seen: dict[int, WaitingCase] = {}
    for run in waiting_step_runs().select_related("case")[: WAITING_SHOWN * 4]:
        if run.case_id not in seen and len(seen) < WAITING_SHOWN:
            seen[run.case_id] = WaitingCase(len(seen) + 1, run.case, str(run.name))
    return list(seen.values())


def latest_failures() -> list[Case]:
    failed = Case.objects.filter(status=Case.Status.FAILED)
    return list(failed.order_by("-finished_at", "-pk")[:FAILURES_SHOWN])


def overview_context(request: HttpRequest) -> dict[str, Any]:
    waiting = waiting_cases()
    return {
        **admin.site.each_context(request),
        "title": "Overview",
        "refresh_seconds": REFRESH_SECONDS,
        "status_counts": status_counts(),
        "running_cases": running_cases(),
        "running_shown": RUNNING_SHOWN,
        "hosts": gpu_occupancy(),
        "waiting_cases": waiting,
        # cases wait and nothing will ever give them a GPU until an operator acts
        "no_gpu_in_service": bool(waiting) and not in_service_gpus().exists(),
        "failures": latest_failures(),
    }


@never_cache
def overview(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("cases.view_case"):
        raise PermissionDenied
    return TemplateResponse(request, "mqi_site/overview.html", overview_context(request))


urlpatterns = [
    path("", admin.site.admin_view(overview), name="index"),
]
