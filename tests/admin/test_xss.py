"""Nothing a case folder's name or a worker's output contains is rendered as markup."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.conductor.helpers import active_run, fail, make_gpus, register, succeed

pytestmark = pytest.mark.django_db(transaction=True)

# Case ids are folder names, so the markup has no "/"; an img with onerror still runs
# script if it is ever rendered as markup.
XSS = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"


def test_it_shows_markup_from_case_ids_and_worker_output_as_text(operator_client: Client):
    gpu = make_gpus(1)[0]
    failed = register(XSS)
    succeed(active_run(failed))
    fail(active_run(failed), message=XSS, stdout_tail=XSS, stderr_tail=XSS, exit_code=1)
    held = register(f"held-{XSS}")  # takes the GPU the failed case released

    urls = [
        reverse("admin:cases_case_changelist"),
        reverse("admin:cases_case_change", args=[failed.pk]),
        reverse("admin:cases_case_change", args=[held.pk]),
        reverse("admin:gpus_gpuresource_changelist"),
        reverse("admin:gpus_gpuresource_change", args=[gpu.pk]),
        reverse("overview:index"),
    ]
    for url in urls:
        response = operator_client.get(url)
        html = response.content.decode()
        assert response.status_code == 200, url
        assert XSS not in html, url
        assert ESCAPED in html, url


def test_it_escapes_markup_in_action_messages(operator_client: Client):
    make_gpus(1)
    case = register(XSS)

    response = operator_client.post(
        reverse("admin:cases_case_operator_action", args=[case.pk, "cancel"]),
        {"post": "yes"},
        follow=True,
    )

    html = response.content.decode()
    assert f"Case {ESCAPED}: cancelled" in html
    assert XSS not in html
