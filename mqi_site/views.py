"""Operational endpoints: ``/healthz`` (open, for load balancers and compose: ok or failing;
which part fails only to staff) and ``/metrics`` (Prometheus; a bearer token from
``MQI_METRICS_TOKEN`` or a staff login)."""

from __future__ import annotations

import hmac
import logging

import dramatiq
from django.db import DatabaseError, connection
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
    body: dict[str, object] = {"status": "fail" if problems else "ok"}
    # Error texts name hosts, ports, database users: for staff only (and the log).
    if _is_staff(request):
        body["problems"] = problems
    return JsonResponse(body, status=503 if problems else 200)


def _is_staff(request: HttpRequest) -> bool:
    try:
        return request.user.is_authenticated and request.user.is_staff
    except DatabaseError:
        return False  # the session lives in the database that is failing


def _may_scrape(request: HttpRequest) -> bool:
    token = env_str("MQI_METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    # compare_digest refuses str with non-ASCII characters (a TypeError, a 500): compare
    # bytes; a header that is not the token in any encoding is simply not the token
    expected = f"Bearer {token}".encode()
    if token and hmac.compare_digest(header.encode("utf-8", "surrogatepass"), expected):
        return True
    return _is_staff(request)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _may_scrape(request):
        return HttpResponse("metrics need a staff login or the bearer token\n", status=401)
    registry = CollectorRegistry()
    registry.register(CaseMetrics())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
