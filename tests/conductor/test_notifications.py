"""Failure mails: one per failure, with case, step, reason and a link to the case."""

from __future__ import annotations

import pytest

from conductor.actors import notifier
from mqi_site.messaging import QUEUES, ErrorKind
from tests.conductor.helpers import (
    active_run,
    fail,
    make_gpus,
    register,
    run_to_completion,
    succeed,
)
from tests.conftest import drain
from tests.qa_cases import evaluated_case

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def mail_to(use_config):
    def edit(raw):
        raw["notifications"] = {
            "email_to": ["physics@clinic.example"],
            "admin_base_url": "https://mqi.clinic.example",
        }

    use_config(edit)


def deliver_notifications(broker) -> int:
    messages = drain(broker, QUEUES["notifier"])
    for message in messages:
        notifier.fn(*message.args)
    return len(messages)


def test_a_failed_case_mails_once_with_the_reason_and_a_link(stub_broker, mail_to, mailoutbox):
    make_gpus(1)
    case = register("case-7")
    succeed(active_run(case))
    fail(active_run(case), ErrorKind.PERMANENT, "interpreter exited with 2: no beams")

    assert deliver_notifications(stub_broker) == 1
    (mail,) = mailoutbox
    assert mail.to == ["physics@clinic.example"]
    assert mail.subject == "[MQI] case case-7 failed at run_interpreter"
    assert "run_interpreter failed: interpreter exited with 2: no beams" in mail.body
    assert f"https://mqi.clinic.example/admin/cases/case/{case.pk}/change/" in mail.body


def test_a_notification_delivered_twice_sends_one_mail(stub_broker, mail_to, mailoutbox):
    make_gpus(1)
    fail(active_run(register("case-1")), ErrorKind.PERMANENT, "bad")
    (message,) = drain(stub_broker, QUEUES["notifier"])

    notifier.fn(*message.args)
    notifier.fn(*message.args)

    assert len(mailoutbox) == 1


def test_completion_mails_only_when_asked(stub_broker, mail_to, mailoutbox):
    make_gpus(1)
    run_to_completion(register("case-1"))

    assert deliver_notifications(stub_broker) == 0
    assert mailoutbox == []


def test_no_addresses_no_mail(stub_broker, mailoutbox):
    make_gpus(1)
    fail(active_run(register("case-1")), ErrorKind.PERMANENT, "bad")

    assert deliver_notifications(stub_broker) == 0


def test_a_mail_about_an_invalid_folder_says_what_was_wrong(stub_broker, mail_to, mailoutbox):
    register("case-bad", problems=["RP.plan.dcm is not a DICOM file"])

    assert deliver_notifications(stub_broker) == 1
    (mail,) = mailoutbox
    assert "failed at -" not in mail.subject
    assert mail.subject.startswith("[MQI] case case-bad failed: ")
    assert "RP.plan.dcm is not a DICOM file" in mail.subject
    assert "RP.plan.dcm is not a DICOM file" in mail.body
    assert "Status:  Failed" in mail.body


def test_a_case_that_fails_its_qa_completes_and_mails_qa_failed_with_the_rates(
    stub_broker, mail_to, mailoutbox
):
    make_gpus(1)

    case = evaluated_case("case-qa", stub_broker, factor=1.1)

    assert (case.status, case.qa_verdict) == ("COMPLETED", "FAILED")
    assert deliver_notifications(stub_broker) == 1
    (mail,) = mailoutbox
    assert mail.subject == "[MQI] case case-qa completed, QA FAILED"
    assert "QA:      QA failed (pass rate >= 95%): gamma 3%/2mm " in mail.body


def test_with_mails_on_completion_a_failed_qa_is_one_mail_that_says_so(
    stub_broker, use_config, mailoutbox
):
    use_config(
        lambda raw: raw.update(notifications={"email_to": ["qa@x.example"], "on_complete": True})
    )
    make_gpus(1)

    evaluated_case("case-qa", stub_broker, factor=1.1)

    assert deliver_notifications(stub_broker) == 1
    (mail,) = mailoutbox
    assert mail.subject == "[MQI] case case-qa completed, QA FAILED"


def test_a_case_that_passes_its_qa_mails_nobody_and_its_completion_mail_says_so(
    stub_broker, use_config, mailoutbox
):
    use_config(
        lambda raw: raw.update(notifications={"email_to": ["qa@x.example"], "on_complete": True})
    )
    make_gpus(1)

    evaluated_case("case-ok", stub_broker)

    assert deliver_notifications(stub_broker) == 1
    (mail,) = mailoutbox
    assert mail.subject == "[MQI] case case-ok completed at evaluate_dose"
    assert "QA:      QA passed (pass rate >= 95%): gamma 3%/2mm 100.0%" in mail.body
