"""The operator actions as the server sees them: each calls the conductor, reports every
case's outcome (the conductor's own words when it refuses) and records who acted."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse

from cases.admin import MAX_MESSAGES_PER_KIND
from cases.models import Case, CaseEvent
from gpus.models import GPUResource
from tests.admin.helpers import completed_case, failed_case, processing_case, reload
from tests.conductor.helpers import holder, make_gpus, register

pytestmark = pytest.mark.django_db(transaction=True)

CASE_LIST = reverse("admin:cases_case_changelist")
GPU_LIST = reverse("admin:gpus_gpuresource_changelist")


def list_action(
    client: Client, url: str, action: str, objects, *, confirmed: bool = False
) -> list[tuple[str, str]]:
    """Run a list action (``confirmed``: as posted from its confirmation page); the (level,
    text) of each message the next page showed."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], "index": 0}
    if confirmed:
        data["post"] = "yes"
    response = client.post(url, data, follow=True)
    assert response.redirect_chain == [(url, 302)]
    return [(m.level_tag, m.message) for m in response.context["messages"]]


def test_retry_reports_each_case_and_the_conductors_refusal(operator_client: Client):
    make_gpus(2)
    failed = failed_case("f-1")
    running = processing_case("r-1")

    messages = list_action(operator_client, CASE_LIST, "retry_failed_step", [failed, running])

    assert ("success", "Case f-1: folder checked again, retrying from run_interpreter") in messages
    assert (
        "error",
        "case r-1 is PROCESSING; only FAILED or CANCELLED cases can be retried",
    ) in messages
    assert reload(failed).status == Case.Status.PROCESSING
    assert reload(running).steps.count() == 2  # untouched: upload + interpreter


def test_an_action_records_who_did_it(operator_client: Client):
    make_gpus(1)
    case = failed_case("who-1")

    list_action(operator_client, CASE_LIST, "rerun_from_start", [case])

    event = CaseEvent.objects.get(case=case, kind="replayed")
    assert event.actor == "operator"
    entry = LogEntry.objects.get(object_id=str(case.pk))
    assert entry.get_change_message().startswith(
        "Case who-1: folder checked again, re-running from the start as run 2"
    )


def test_priority_changes_refuse_finished_cases(operator_client: Client):
    make_gpus(1)
    done = completed_case("done-1")
    waiting = register("wait-1")

    messages = list_action(operator_client, CASE_LIST, "lower_priority", [done, waiting])

    assert ("success", "Case wait-1: priority 0 -> -1") in messages
    assert ("error", "case done-1 is COMPLETED; priority no longer matters") in messages
    assert reload(done).priority == 0


def test_many_cases_give_a_bounded_number_of_messages(operator_client: Client):
    cases = [register(f"many-{i:02d}") for i in range(MAX_MESSAGES_PER_KIND + 5)]

    messages = list_action(operator_client, CASE_LIST, "raise_priority", cases)

    assert len(messages) == MAX_MESSAGES_PER_KIND + 1
    assert messages[-1] == ("success", "... and 5 more like these")
    assert set(Case.objects.values_list("priority", flat=True)) == {1}


def test_maintenance_of_a_reserved_gpu_waits_for_its_case(operator_client: Client):
    gpu = make_gpus(1)[0]
    case = processing_case("busy-1")

    messages = list_action(operator_client, GPU_LIST, "start_maintenance", [gpu], confirmed=True)

    gpu.refresh_from_db()
    assert messages == [
        ("success", f"GPU {gpu}: drain requested; it goes to maintenance when its step finishes")
    ]
    assert (gpu.status, holder(gpu), gpu.drain_requested) == ("RESERVED", case, True)

    messages = list_action(operator_client, GPU_LIST, "end_maintenance", [gpu])

    gpu.refresh_from_db()
    assert messages == [("success", f"GPU {gpu}: drain cancelled; it stays in service")]
    assert (gpu.status, gpu.drain_requested) == ("RESERVED", False)


def test_maintenance_actions_refuse_what_does_not_apply(operator_client: Client):
    in_service, in_maintenance = make_gpus(2)
    GPUResource.objects.filter(pk=in_maintenance.pk).update(status="MAINTENANCE")

    started = list_action(operator_client, GPU_LIST, "start_maintenance", [in_maintenance])
    ended = list_action(operator_client, GPU_LIST, "end_maintenance", [in_service])

    assert started == [("error", f"GPU {in_maintenance} is already in maintenance")]
    assert ended == [("error", f"GPU {in_service} is AVAILABLE, not in maintenance")]


def test_a_detail_action_returns_to_the_detail_page(operator_client: Client):
    make_gpus(1)
    case = processing_case("back-1")

    response = operator_client.post(
        reverse("admin:cases_case_operator_action", args=[case.pk, "cancel"]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:cases_case_change", args=[case.pk])
    assert reload(case).status == Case.Status.CANCELLED


def test_an_unknown_action_or_case_is_not_found(operator_client: Client):
    make_gpus(1)
    case = processing_case("nf-1")

    unknown_action = operator_client.post(
        reverse("admin:cases_case_operator_action", args=[case.pk, "explode"])
    )
    unknown_case = operator_client.post(
        reverse("admin:cases_case_operator_action", args=[case.pk + 1000, "cancel"])
    )

    assert unknown_action.status_code == 404
    assert unknown_case.status_code == 404
    assert reload(case).status == Case.Status.PROCESSING
