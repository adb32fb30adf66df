"""GPUs on the GPU servers and who holds them."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class GPUStatus(models.TextChoices):
    AVAILABLE = "AVAILABLE"
    RESERVED = "RESERVED"
    MAINTENANCE = "MAINTENANCE"
    OFFLINE = "OFFLINE"


class HostState(models.TextChoices):
    UP = "UP"
    DOWN = "DOWN"


class Host(models.Model):
    """A GPU server of config.yaml and whether it can be reached.

    A host is DOWN from the moment a worker, GPU discovery or the probe could not reach it
    (connection refused, timed out, dropped) until the probe reaches it again.  While it
    is down its GPUs are given to no step run, and step runs that need it wait instead of
    spending attempts; an outage longer than ``hosts.<name>.max_outage_sec`` fails them.
    """

    State = HostState

    name = models.CharField(max_length=64, unique=True, help_text="Host name from config.yaml.")
    state = models.CharField(max_length=8, choices=State.choices, default=State.UP)
    down_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True, help_text="Last reached or probed.")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=HostState.values), name="gpus_host_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(state="DOWN", down_since__isnull=False) | Q(state="UP"),
                name="gpus_host_down_has_since",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_up(self) -> bool:
        return self.state == HostState.UP


class GPUResource(models.Model):
    Status = GPUStatus

    host = models.CharField(max_length=64, help_text="Host name from config.yaml.")
    index = models.PositiveSmallIntegerField(help_text="nvidia-smi index on the host.")
    uuid = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.AVAILABLE)
    # One-to-one: a GPU is held by at most one step run and a step run holds at most one.
    step_run = models.OneToOneField(
        "cases.WorkflowStep",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="held_gpu",
    )
    reserved_at = models.DateTimeField(null=True, blank=True)
    # Maintenance asked for while reserved: the GPU finishes its step run, then goes to
    # MAINTENANCE instead of AVAILABLE.
    drain_requested = models.BooleanField(default=False)
    # Processes on the GPU that this system did not start; such a GPU is not handed out.
    foreign_processes = models.PositiveSmallIntegerField(default=0)
    memory_used_mib = models.PositiveIntegerField(null=True, blank=True)
    memory_total_mib = models.PositiveIntegerField(null=True, blank=True)
    utilization_pct = models.PositiveSmallIntegerField(null=True, blank=True)
    temperature_c = models.SmallIntegerField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["host", "index"]
        verbose_name = "GPU"
        constraints = [
            models.UniqueConstraint(fields=["host", "index"], name="gpus_gpuresource_unique_slot"),
            models.CheckConstraint(
                condition=Q(status__in=GPUStatus.values),
                name="gpus_gpuresource_status_valid",
            ),
            # RESERVED <=> held by a step run.
            models.CheckConstraint(
                condition=(
                    Q(status="RESERVED", step_run__isnull=False)
                    | (~Q(status="RESERVED") & Q(step_run__isnull=True))
                ),
                name="gpus_gpuresource_reserved_has_step_run",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.host}:{self.index}"
