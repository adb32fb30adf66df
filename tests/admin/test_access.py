"""Who may look and who may act: login is required everywhere, viewers cannot act (the
controls are hidden and the server refuses forged requests), actions need POST + CSRF."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.urls import reverse

from cases.models import Case
from gpus.models import GPUResource
from tests.admin.helpers import failed_case, processing_case, reload
from tests.conductor.helpers import make_gpus

pytestmark = pytest.mark.django_db(transaction=True)

CASE_LIST = reverse("admin:cases_case_changelist")
GPU_LIST = reverse("admin:gpus_gpuresource_changelist")
OVERVIEW = reverse("overview:index")


def case_action_url(case: Case, name: str) -> str:
    return reverse("admin:cases_case_operator_action", args=[case.pk, name])


@pytest.fixture
def gpus() -> list[GPUResource]:
    return make_gpus(2)


@pytest.mark.parametrize(
    "url",
    [
        CASE_LIST,
        GPU_LIST,
        OVERVIEW,
        reverse("admin:index"),
    ],
)
def test_it_redirects_anonymous_users_to_the_login(client: Client, url: str):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert f"next={url}" in response["Location"]


def test_it_redirects_anonymous_users_from_a_case_and_acts_on_nothing(client: Client, gpus):
    case = processing_case("anon-1")

    detail = client.get(reverse("admin:cases_case_change", args=[case.pk]))
    action = client.post(case_action_url(case, "cancel"))

    assert detail.status_code == 302 and "/admin/login/" in detail["Location"]
    assert action.status_code == 302 and "/admin/login/" in action["Location"]
    assert reload(case).status == Case.Status.PROCESSING


def test_it_shows_a_viewer_no_action_controls(viewer_client: Client, gpus):
    case = processing_case("view-1")

    listing = viewer_client.get(CASE_LIST).content.decode()
    detail = viewer_client.get(reverse("admin:cases_case_change", args=[case.pk])).content.decode()
    gpu_listing = viewer_client.get(GPU_LIST).content.decode()

    assert "view-1" in listing
    assert 'name="action"' not in listing
    assert 'name="action"' not in gpu_listing
    assert "view-1" in detail
    assert "/operator/" not in detail
    assert 'name="_save"' not in detail


def test_it_refuses_a_viewers_forged_list_action(viewer_client: Client, gpus):
    case = processing_case("forged-1")

    viewer_client.post(CASE_LIST, {"action": "cancel", ACTION_CHECKBOX_NAME: [case.pk], "index": 0})

    assert reload(case).status == Case.Status.PROCESSING


def test_it_refuses_a_viewers_forged_detail_action(viewer_client: Client, gpus):
    case = failed_case("forged-2")

    response = viewer_client.post(case_action_url(case, "retry_failed_step"))

    assert response.status_code == 403
    assert reload(case).status == Case.Status.FAILED


def test_it_refuses_a_viewers_forged_gpu_maintenance(viewer_client: Client, gpus):
    gpu = gpus[1]
    url = reverse("admin:gpus_gpuresource_operator_action", args=[gpu.pk, "start_maintenance"])

    response = viewer_client.post(url)

    assert response.status_code == 403
    gpu.refresh_from_db()
    assert gpu.status == GPUResource.Status.AVAILABLE


def test_it_refuses_an_action_without_a_csrf_token(operator):
    make_gpus(1)
    case = processing_case("csrf-1")
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    response = client.post(case_action_url(case, "cancel"))

    assert response.status_code == 403
    assert reload(case).status == Case.Status.PROCESSING


def test_it_refuses_an_action_by_get(operator_client: Client, gpus):
    case = processing_case("get-1")

    response = operator_client.get(case_action_url(case, "cancel"))

    assert response.status_code == 405
    assert reload(case).status == Case.Status.PROCESSING


def test_it_refuses_to_save_the_read_only_form(operator_client: Client, gpus):
    case = processing_case("save-1")

    response = operator_client.post(
        reverse("admin:cases_case_change", args=[case.pk]), {"priority": 99, "_save": "Save"}
    )

    assert response.status_code == 405
    assert reload(case).priority == 0


def test_it_offers_no_add_and_no_delete(operator_client: Client, gpus):
    case = failed_case("del-1")

    add = operator_client.get(reverse("admin:cases_case_add"))
    delete = operator_client.get(reverse("admin:cases_case_delete", args=[case.pk]))
    listing = operator_client.get(CASE_LIST).content.decode()

    assert add.status_code == 403
    assert delete.status_code == 403
    assert "delete_selected" not in listing


def test_it_refuses_the_overview_to_staff_without_case_permission(django_user_model):
    user = django_user_model.objects.create_user("nobody", password="x", is_staff=True)
    client = Client()
    client.force_login(user)

    assert client.get(OVERVIEW).status_code == 403
