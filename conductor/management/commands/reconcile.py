from __future__ import annotations

from django.core.management.base import BaseCommand

from conductor.reconcile import ReconcileReport, overdue_step_runs, reconcile, stalled_cases


class Command(BaseCommand):
    help = (
        "Re-drive step runs past their deadline, advance stalled cases, release GPUs booked "
        "by cases that are not running, and start waiting cases on free GPUs."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="show, change nothing")

    def handle(self, *args, dry_run: bool, **opts) -> None:
        if dry_run:
            for run in overdue_step_runs():
                self.stdout.write(f"would re-drive {run} (deadline {run.deadline:%H:%M:%S})")
            for case in stalled_cases():
                self.stdout.write(f"would advance {case.case_id} ({case.status})")
            return
        report: ReconcileReport = reconcile()
        self.stdout.write(self.style.SUCCESS(report.summary()))
