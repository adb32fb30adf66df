"""A GPU server that is down, as the operator sees it: overview, GPU pages, /metrics."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from gpus.models import Host
from tests.conductor.helpers import make_gpus

pytestmark = pytest.mark.django_db


@pytest.fixture
def server_down() -> Host:
    make_gpus(2)
    since = timezone.now() - timedelta(minutes=3)
    return Host.objects.create(
        name="local",
        state=Host.State.DOWN,
        down_since=since,
        last_error="ssh root@gpu1:22: connection refused or host unreachable",
    )


def test_the_overview_says_since_when_a_server_is_down(operator_client: Client, server_down):
    html = operator_client.get(reverse("overview:index")).content.decode()

    since = timezone.localtime(server_down.down_since).strftime("%Y-%m-%d %H:%M:%S")
    assert f"down since {since}" in html
    assert "connection refused or host unreachable" in html


def test_each_gpu_of_a_server_that_is_down_says_so(operator_client: Client, server_down):
    html = operator_client.get(reverse("admin:gpus_gpuresource_changelist")).content.decode()

    assert html.count("server down since") == 2


def test_metrics_tell_which_servers_are_up(operator_client: Client, server_down):
    text = operator_client.get("/metrics").content.decode()
    samples = {
        (sample.name, sample.labels.get("host")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    assert samples[("mqi_host_up", "local")] == 0
    assert samples[("mqi_host_down_since_seconds", "local")] == pytest.approx(
        server_down.down_since.timestamp()
    )
