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
