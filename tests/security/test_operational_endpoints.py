"""``/healthz`` tells the anonymous only whether the system is healthy (the reasons name
hosts, ports and database users), staff also why; ``/metrics`` answers 401 to any header
that is not the token, whatever characters it holds."""

from __future__ import annotations

from types import SimpleNamespace

import dramatiq
import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def refuse() -> None:
    raise ConnectionError("Error 111 connecting to redis.internal:6379. Refused.")


@pytest.fixture
def broker_down(monkeypatch) -> None:
    broker = SimpleNamespace(client=SimpleNamespace(ping=refuse))  # a Redis broker's surface
    monkeypatch.setattr(dramatiq, "get_broker", lambda: broker)


def test_the_anonymous_learn_only_that_it_is_failing(client, broker_down):
    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "fail"}
    assert b"redis.internal" not in response.content


def test_staff_learn_which_part_is_failing(admin_client, broker_down):
    response = admin_client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "fail",
        "problems": [
            "broker: ConnectionError: Error 111 connecting to redis.internal:6379. Refused."
        ],
    }


@pytest.mark.parametrize(
    "header",
    ["Bearer s3crét", "Bearer \u2603", "Bearer s3cret\u200b", "Bäarer s3cret", "\udcff"],
)
def test_a_non_ascii_authorization_header_is_refused_not_an_error(monkeypatch, header):
    monkeypatch.setenv("MQI_METRICS_TOKEN", "s3cret")
    client = Client(raise_request_exception=False)

    assert client.get("/metrics", headers={"Authorization": header}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
