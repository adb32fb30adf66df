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
from gpus.models import GPUResource


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
