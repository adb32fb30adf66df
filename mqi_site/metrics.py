"""Prometheus metrics read from the database at scrape time.

Message-level metrics (enqueued, processed, durations per actor) come from Dramatiq's own
Prometheus middleware in the worker processes; these are the case-level figures.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, DurationField, ExpressionWrapper, F, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from cases.models import Case, WorkflowStep
from gpus.models import GPUResource, Host
from mqi_site.config import get_config


class CaseMetrics(Collector):
    def collect(self) -> Iterator:
        by_status = dict(Case.objects.values_list("status").annotate(n=Count("pk")))
        cases = GaugeMetricFamily("mqi_cases", "Cases by status", labels=["status"])
        for status in Case.Status.values:
            cases.add_metric([status], by_status.get(status, 0))
        yield cases

        gpus = GaugeMetricFamily("mqi_gpus", "GPUs by host and status", labels=["host", "status"])
        for host, status, n in (
            GPUResource.objects.values_list("host", "status").annotate(n=Count("pk")).order_by()
        ):
            gpus.add_metric([host, status], n)
        yield gpus

        up = GaugeMetricFamily(
            "mqi_host_up",
            "1 while a GPU server can be reached, 0 while it is down",
            labels=["host"],
        )
        down_since = GaugeMetricFamily(
            "mqi_host_down_since_seconds",
            "When a GPU server that is down went down (Unix time)",
            labels=["host"],
        )
        down = {host.name: host for host in Host.objects.filter(state=Host.State.DOWN)}
        for name in get_config().hosts:
            up.add_metric([name], 0 if name in down else 1)
            if name in down:
                down_since.add_metric([name], down[name].down_since.timestamp())
        yield up
        yield down_since

        duration = ExpressionWrapper(
            F("finished_at") - F("started_at"), output_field=DurationField()
        )
        steps = SummaryMetricFamily(
            "mqi_step_duration_seconds", "Run time of finished step runs", labels=["step", "status"]
        )
        finished = (
            WorkflowStep.objects.filter(started_at__isnull=False, finished_at__isnull=False)
            .values_list("name", "status")
            .annotate(n=Count("pk"), total=Sum(duration))
            .order_by()
        )
        for name, status, n, total in finished:
            steps.add_metric([name, status], n, total.total_seconds() if total else 0.0)
        yield steps

        retries = CounterMetricFamily(
            "mqi_step_attempts", "Step runs sent to a worker, by step", labels=["step"]
        )
        sent = WorkflowStep.objects.filter(dispatched_at__isnull=False)
        for name, n in sent.values_list("name").annotate(n=Count("pk")).order_by():
            retries.add_metric([name], n)
        yield retries
