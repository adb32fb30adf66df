"""Mail to the configured addresses when a case fails or fails its QA (and optionally
when it completes); every mail says the case's QA verdict.

At most one mail per event: the event row is claimed (``notified_at``) before sending, and
released again if the mail server refuses, so a retry can send it.
"""

from __future__ import annotations

import logging

from django.core.mail import send_mail
from django.urls import reverse
from django.utils import timezone

from cases.models import CaseEvent
from cases.statuses import QAVerdict
from mqi_site.config import get_config
from mqi_site.times import format_time

log = logging.getLogger(__name__)


def wants_notification(kind: str) -> bool:
    settings = get_config().notifications
    # A failed QA is always mailed; with on_complete the "completed" mail says it instead,
    # so a case's end is one mail either way.
    return bool(settings.email_to) and (
        kind == "failed"
        or (kind == "completed" and settings.on_complete)
        or (kind == "qa_failed" and not settings.on_complete)
    )


def notify_case_event(event_pk: int) -> bool:
    """Mail the event; False when there is nobody to mail or it was mailed already."""
    settings = get_config().notifications
    if not settings.email_to:
        return False
    claimed = CaseEvent.objects.filter(pk=event_pk, notified_at__isnull=True).update(
        notified_at=timezone.now()
    )
    if claimed != 1:
        return False
    event = CaseEvent.objects.select_related("case", "step_run").get(pk=event_pk)
    case = event.case
    link = settings.admin_base_url.rstrip("/") + reverse("admin:cases_case_change", args=[case.pk])
    step = event.step_run.name if event.step_run else case.workflow_step
    reason = case.error_message or event.message
    if case.qa_verdict == QAVerdict.FAILED:
        subject = f"[MQI] case {case.case_id} {case.status.lower()}, QA FAILED"
    elif step:
        subject = f"[MQI] case {case.case_id} {case.status.lower()} at {step}"
    else:
        # it never reached a step: the folder itself was found wanting, say how
        subject = f"[MQI] case {case.case_id} {case.status.lower()}: {_first_line(reason)}"
    body = (
        f"Case:    {case.case_id}\n"
        f"Status:  {case.get_status_display()}\n"
        f"QA:      {case.qa_said()}\n"
        f"Step:    {step or 'none (the case folder was checked before any step)'}\n"
        f"Reason:  {reason}\n"
        f"Kind:    {case.error_kind or '-'}\n"
        f"Folder:  {case.source_path}\n"
        f"Time:    {format_time(event.created_at)}\n\n"
        f"Open the case: {link}\n"
    )
    try:
        send_mail(subject, body, None, settings.email_to)
    except OSError:
        CaseEvent.objects.filter(pk=event_pk).update(notified_at=None)
        raise
    log.info("case %s: mailed %s about %s", case.case_id, ", ".join(settings.email_to), event.kind)
    return True


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no reason recorded"
    return line if len(line) <= limit else line[: limit - 1] + "…"
