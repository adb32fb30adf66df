"""GPU discovery: bring the ``GPUResource`` rows in line with what each host reports.

Only the inventory and the readings change here.  Status changes are compare-and-swap
updates that never touch a reserved GPU: a GPU that vanishes goes OFFLINE only if it is
free (a reserved one stays with its case), and one that comes back becomes AVAILABLE.
When a GPU became usable the conductor is asked to reconcile, which starts waiting cases.

A line of nvidia-smi output that cannot be read (a garbled or absurd value) costs only that
line: the host's other GPUs are still brought in line, and since the unread line could be
any GPU, none of the host's GPUs is taken for vanished in that round.  Unreadable process
lines leave the counts of foreign processes as they were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db.models import Q
from django.utils import timezone

from gpus.models import GPUResource
from mqi_site.config import Config, HostSpec
from mqi_site.database import recheck_connection
from mqi_site.messaging import CONDUCTOR, Command, send
from workers.gpu_discovery.nvidia_smi import (
    COMPUTE_APPS_QUERY,
    GPU_QUERY,
    ComputeApp,
    GPUInfo,
    parse_compute_apps,
    parse_gpu_lines,
)
from workers.hosts import transport_for, with_host_environment
from workers.transports import TransportError

log = logging.getLogger(__name__)


@dataclass
class HostSync:
    host: str
    seen: int = 0
    added: int = 0
    offline: int = 0
    back: int = 0
    foreign_busy: list[int] = field(default_factory=list)
    error: str = ""


@dataclass
class _Discovered:
    gpus: list[GPUInfo]
    apps: list[ComputeApp] | None  # None: the process list could not be read
    unread_gpus: list[str] = field(default_factory=list)  # a problem per unread GPU line
    unread_apps: str = ""


def _discover(name: str, spec: HostSpec) -> _Discovered:
    if spec.gpu_discovery == "static":
        gpus = [
            GPUInfo(
                index=gpu.index,
                uuid=gpu.uuid or f"static-{name}-{gpu.index}",
                name=gpu.name,
                memory_used_mib=None,
                memory_total_mib=gpu.memory_total_mib or None,
                utilization_pct=None,
                temperature_c=None,
            )
            for gpu in spec.static_gpus
        ]
        return _Discovered(gpus, [])
    transport = transport_for(name)
    listed = transport.run(
        with_host_environment(name, f"{spec.nvidia_smi} {GPU_QUERY}"), timeout=30
    )
    if listed.exit_code != 0:
        raise TransportError(
            f"nvidia-smi on {name} exited with {listed.exit_code}: {listed.stderr.strip()[:200]}",
            permanent=False,
        )
    apps = transport.run(
        with_host_environment(name, f"{spec.nvidia_smi} {COMPUTE_APPS_QUERY}"), timeout=30
    )
    gpus, unread = parse_gpu_lines(listed.stdout)
    discovered = _Discovered(gpus, [], unread)
    if apps.exit_code == 0:
        try:
            discovered.apps = parse_compute_apps(apps.stdout)
        except ValueError as exc:
            discovered.apps, discovered.unread_apps = None, str(exc)
    return discovered


def sync_host(name: str, spec: HostSpec) -> HostSync:
    report = HostSync(name)
    try:
        discovered = _discover(name, spec)
    except (TransportError, ValueError) as exc:
        report.error = str(exc)
        log.warning("GPU discovery on %s failed: %s (GPUs left as they were)", name, exc)
        if isinstance(exc, TransportError) and exc.unreachable:
            send(CONDUCTOR, Command.HOST_UNREACHABLE, {"host": name, "error": str(exc)})
        return report
    recheck_connection()  # after nvidia-smi over SSH here and on the hosts before
    problems = [*discovered.unread_gpus, *filter(None, [discovered.unread_apps])]
    if problems:
        report.error = "; ".join(problems)
        log.warning("GPU discovery on %s: %s (left as they were)", name, report.error)
    found, apps = discovered.gpus, discovered.apps
    now = timezone.now()
    busy_by_uuid: dict[str, int] = {}
    for app in apps or []:
        busy_by_uuid[app.gpu_uuid] = busy_by_uuid.get(app.gpu_uuid, 0) + 1
    for info in found:
        gpu, created = GPUResource.objects.get_or_create(host=name, index=info.index)
        report.added += created
        report.seen += 1
        # Processes on a GPU we have not reserved were not started by us.
        foreign = busy_by_uuid.get(info.uuid, 0)
        GPUResource.objects.filter(pk=gpu.pk).update(
            uuid=info.uuid,
            name=info.name,
            memory_used_mib=info.memory_used_mib,
            memory_total_mib=info.memory_total_mib,
            utilization_pct=info.utilization_pct,
            temperature_c=info.temperature_c,
            last_seen=now,
        )
        if apps is not None:
            GPUResource.objects.filter(pk=gpu.pk).exclude(
                status=GPUResource.Status.RESERVED
            ).update(foreign_processes=foreign)
        if foreign and gpu.status != GPUResource.Status.RESERVED:
            report.foreign_busy.append(info.index)
        report.back += GPUResource.objects.filter(
            pk=gpu.pk, status=GPUResource.Status.OFFLINE
        ).update(status=GPUResource.Status.AVAILABLE)
    if discovered.unread_gpus:
        return report  # an unread line may be any GPU not listed: none has vanished
    vanished = GPUResource.objects.filter(host=name).exclude(index__in=[g.index for g in found])
    report.offline = vanished.filter(status=GPUResource.Status.AVAILABLE).update(
        status=GPUResource.Status.OFFLINE
    )
    for gpu in vanished.filter(status=GPUResource.Status.RESERVED):
        log.warning(
            "GPU %s vanished from nvidia-smi while step run %s holds it", gpu, gpu.step_run_id
        )
    return report


def sync_gpus(config: Config) -> list[HostSync]:
    reports = [sync_host(name, spec) for name, spec in config.hosts.items()]
    usable = (
        any(r.added or r.back for r in reports)
        or GPUResource.objects.filter(
            Q(status=GPUResource.Status.AVAILABLE, foreign_processes=0)
        ).exists()
    )
    if usable:
        # New or returning GPUs (or ones a foreign process left): start waiting cases.
        send(CONDUCTOR, Command.RECONCILE, {})
    for report in reports:
        # at INFO only when something changed: an idle system stays quiet
        changed = report.added or report.back or report.offline or report.error
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "GPU discovery on %s: %d seen, %d new, %d back, %d offline, foreign busy %s%s",
            report.host,
            report.seen,
            report.added,
            report.back,
            report.offline,
            report.foreign_busy or "none",
            f", error: {report.error}" if report.error else "",
        )
    return reports
