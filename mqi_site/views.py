"""Operational endpoints: ``/healthz`` (open, for load balancers and compose) and
``/metrics`` (Prometheus; a bearer token from ``MQI_METRICS_TOKEN`` or a staff login)."""

from __future__ import annotations

import hmac
import logging

import dramatiq
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mqi_site.env import env_str
from mqi_site.metrics import CaseMetrics

log = logging.getLogger(__name__)


def _database_ok() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy; say which
        return f"database: {exc.__class__.__name__}: {exc}"
    return None


def _broker_ok() -> str | None:
    client = getattr(dramatiq.get_broker(), "client", None)
    if client is None:
        return None  # the in-memory broker lives in this process
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        return f"broker: {exc.__class__.__name__}: {exc}"
    return None


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    problems = [p for p in (_database_ok(), _broker_ok()) if p]
    if problems:
        log.warning("health check failed: %s", "; ".join(problems))
    return JsonResponse(
        {"status": "fail" if problems else "ok", "problems": problems},
        status=503 if problems else 200,
    )


def _may_scrape(request: HttpRequest) -> bool:
    token = env_str("MQI_METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(header, f"Bearer {token}"):
        return True
    return request.user.is_authenticated and request.user.is_staff


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _may_scrape(request):
        return HttpResponse("metrics need a staff login or the bearer token\n", status=401)
    registry = CollectorRegistry()
    registry.register(CaseMetrics())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
