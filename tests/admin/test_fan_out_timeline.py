"""The case page shows a fanned-out step's beams as rows of its step timeline."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from cases.models import WorkflowStep
from cases.services import step_run_heartbeat
from tests.conductor.helpers import fan_out_simulation, make_gpus, register_beams, succeed

pytestmark = pytest.mark.django_db(transaction=True)


def test_each_beam_is_a_row_of_the_timeline_with_its_progress(operator_client: Client, use_config):
    use_config(fan_out_simulation)
    make_gpus(2)
    case = register_beams("QA-beams")
    for name in ("upload_case_files", "run_interpreter"):
        succeed(case.steps.get(name=name))
    one, two, _ = case.steps.filter(name="run_moqui_sim").order_by("beam_number")
    step_run_heartbeat(step_run_id=two.pk, deadline_sec=60, progress=40, span=(70, 90))

    html = operator_client.get(reverse("admin:cases_case_change", args=[case.pk])).content.decode()

    for label in ("beam 1 (B1 G090)", "beam 2 (B2 G270)", "beam 3 (B3 G180)"):
        assert f"<strong>run_moqui_sim · {label}</strong>" in html
    assert '<span class="mqi-muted mqi-step-progress">40%</span>' in html
    assert WorkflowStep.objects.get(pk=one.pk).status == "DISPATCHED"
    assert case.steps.get(beam_number=3).status == "PENDING"
