from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cases.management.commands._selection import parse_when
from cases.models import Case
from conductor.operations import case_retry
from conductor.transitions import CaseStateError
from mqi_site.untrusted_text import printable


class Command(BaseCommand):
    help = (
        "Run failed cases again: all of them, or those picked by case id, time window or "
        "error kind; from the failed step (default) or from the start."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("case_ids", nargs="*", help="case ids (default: every failed case)")
        parser.add_argument("--since", help="failed at or after: 2h, 3d or an ISO time")
        parser.add_argument("--until", help="failed before: 2h, 3d or an ISO time")
        parser.add_argument("--error-kind", help="transient, permanent, timeout, invalid_input")
        parser.add_argument("--include-cancelled", action="store_true")
        parser.add_argument("--from-start", action="store_true", help="re-run every step")
        parser.add_argument("--dry-run", action="store_true", help="list, change nothing")

    def handle(self, *args, **opts) -> None:
        statuses = [Case.Status.FAILED]
        if opts["include_cancelled"]:
            statuses.append(Case.Status.CANCELLED)
        cases = Case.objects.filter(status__in=statuses).order_by("finished_at", "pk")
        if opts["case_ids"]:
            cases = cases.filter(case_id__in=opts["case_ids"])
            missing = set(opts["case_ids"]) - set(cases.values_list("case_id", flat=True))
            if missing:
                raise CommandError(
                    "not failed (or unknown): "
                    + ", ".join(sorted(missing))
                    + " — see `manage.py case_status`"
                )
        if opts["since"]:
            cases = cases.filter(finished_at__gte=parse_when(opts["since"]))
        if opts["until"]:
            cases = cases.filter(finished_at__lt=parse_when(opts["until"]))
        if opts["error_kind"]:
            cases = cases.filter(error_kind=opts["error_kind"])
        where = "the start" if opts["from_start"] else "the failed step"
        selected = list(cases)
        for case in selected:
            # case ids and reasons come from outside: shown with control characters escaped
            line = (
                f"{printable(case.case_id):<40} {case.workflow_step or '-':<20}\n"
                f"    {printable(case.error_message)}"
            )
            if opts["dry_run"]:
                self.stdout.write(f"would replay from {where}: {line}")
                continue
            try:
                _, said = case_retry(
                    case_pk=case.pk, from_start=opts["from_start"], actor="replay_failed"
                )
            except CaseStateError as exc:
                self.stderr.write(f"skipped {printable(case.case_id)}: {printable(exc)}")
                continue
            if opts["verbosity"] >= 1:
                self.stdout.write(f"replaying {case.case_id}: folder checked again, {said}")
        verb = "would replay" if opts["dry_run"] else "replayed"
        self.stdout.write(self.style.SUCCESS(f"{verb} {len(selected)} case(s)"))
