from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cases.models import Case
from conductor.operations import case_cancel, case_cancel_preview
from conductor.transitions import CaseStateError
from mqi_site.untrusted_text import printable


class Command(BaseCommand):
    help = "Cancel cases: kill their remote process group, release their GPU, mark CANCELLED."

    def add_arguments(self, parser) -> None:
        parser.add_argument("case_ids", nargs="+")
        parser.add_argument("--dry-run", action="store_true", help="show, change nothing")

    def handle(self, *args, case_ids: list[str], dry_run: bool, **opts) -> None:
        cases = {case.case_id: case for case in Case.objects.filter(case_id__in=case_ids)}
        refused = 0
        for case_id in case_ids:
            case = cases.get(case_id)
            shown = printable(case_id)  # a folder name: its control characters escaped
            if case is None:
                self.stderr.write(f"{shown}: no such case")
                refused += 1
                continue
            try:
                if dry_run:
                    # the cancel's own decision, not applied: refused exactly when it would be
                    lines = case_cancel_preview(case_pk=case.pk)
                else:
                    case_cancel(case_pk=case.pk, actor="cancel_case")
            except CaseStateError as exc:
                self.stderr.write(f"{shown}: {printable(exc)}")
                refused += 1
                continue
            if dry_run:
                self.stdout.write(f"would cancel {shown}:")
                for line in lines:
                    self.stdout.write(f"  {printable(line)}")
            else:
                self.stdout.write(self.style.SUCCESS(f"cancelled {shown}"))
        if refused:
            would = " would be" if dry_run else ""
            raise CommandError(f"{refused} of {len(case_ids)} case(s){would} not cancelled")
