"""The GPU list: cheap to render, and GPUs are removed only once they are gone."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gpus.models import GPUResource
from tests.admin.helpers import bulk_cases, hold_gpus
from tests.conductor.helpers import make_gpus

GPU_LIST = reverse("admin:gpus_gpuresource_changelist")


def list_queries(client: Client) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(GPU_LIST)
    assert response.status_code == 200
    return len(queries.captured_queries)


@pytest.mark.django_db
def test_it_takes_the_same_number_of_queries_for_2_and_40_gpus(operator_client: Client):
    cases = bulk_cases(120)
    hold_gpus(cases, make_gpus(2, host="a"))
    few = list_queries(operator_client)

    hold_gpus(cases[6:], make_gpus(38, host="b"))
    many = list_queries(operator_client)

    assert GPUResource.objects.filter(status="RESERVED").count() == 40
    assert few == many


@pytest.mark.django_db
def test_only_an_offline_gpu_may_be_deleted(operator_client: Client):
    in_service, gone = make_gpus(2)
    GPUResource.objects.filter(pk=gone.pk).update(status="OFFLINE")

    refused = operator_client.post(reverse("admin:gpus_gpuresource_delete", args=[in_service.pk]))
    allowed = operator_client.post(
        reverse("admin:gpus_gpuresource_delete", args=[gone.pk]), {"post": "yes"}
    )

    assert refused.status_code == 403
    assert allowed.status_code == 302
    assert list(GPUResource.objects.values_list("pk", flat=True)) == [in_service.pk]
