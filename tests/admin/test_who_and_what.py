"""Who (patient, plan) and what (manifest, runs) a case is about, in the list and on its page."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from cases.models import Case
from tests.admin.helpers import completed_case
from tests.conductor.helpers import make_gpus

pytestmark = pytest.mark.django_db(transaction=True)

CASE_LIST = reverse("admin:cases_case_changelist")


def listed(client: Client, query: str) -> list[str]:
    html = client.get(CASE_LIST + query).content.decode()
    return re.findall(r'<th class="field-case_id"><a href="[^"]+">([^<]+)</a>', html)


def page(client: Client, case: Case) -> str:
    response = client.get(reverse("admin:cases_case_change", args=[case.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_list_shows_patient_and_plan_and_searches_them(operator_client: Client):
    make_gpus(1)
    case = completed_case("QA-list-1")
    Case.objects.filter(pk=case.pk).update(treatment_machine="PBS-G2")
    completed_case("QA-list-2")
    Case.objects.filter(case_id="QA-list-2").update(
        patient_id="P-7731", patient_name="Roe^Richard", plan_label="H&N boost"
    )

    html = operator_client.get(CASE_LIST).content.decode()

    assert "QA0001" in html and "QA^Case0001" in html and "QA0001 PBS" in html
    assert "2 beams, PBS-G1" in html
    assert listed(operator_client, "?q=P-7731") == ["QA-list-2"]
    assert listed(operator_client, "?q=Richard") == ["QA-list-2"]
    assert listed(operator_client, "?q=boost") == ["QA-list-2"]
    assert listed(operator_client, "?machine=PBS-G2") == ["QA-list-1"]
    assert "PBS-G2" in operator_client.get(CASE_LIST).content.decode()  # a filter choice


def test_the_page_shows_who_what_and_the_runs(operator_client: Client):
    make_gpus(1)
    case = completed_case("QA-page")

    html = page(operator_client, case)

    for shown in ("QA0001", "QA^Case0001", "QA0001 PBS", "PBS-G1", "1 B1 G090, 2 B2 G270"):
        assert shown in html
    assert "yes: every log names the plan" in html
    assert "unchanged since run 1" in html
    for entry in case.manifest:
        assert entry["path"] in html
    assert 'class="mqi-run mqi-run-current" data-run="1"' in html


def test_the_page_says_when_the_logs_were_not_checked(operator_client: Client):
    make_gpus(1)
    case = completed_case("QA-unchecked")
    Case.objects.filter(pk=case.pk).update(log_check="off")

    html = page(operator_client, case)

    assert "not checked: scanner.check_log_identity is off in config.yaml" in html
