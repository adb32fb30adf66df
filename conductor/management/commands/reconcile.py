from __future__ import annotations

from django.core.management.base import BaseCommand

from conductor.dry_run import rolled_back
from conductor.reconcile import ReconcileReport, reconcile


class Command(BaseCommand):
    help = (
        "Re-drive step runs past their deadline, advance stalled cases, release GPUs booked "
        "by cases that are not running, and start waiting cases on free GPUs."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="run the real pass, then roll it back: shows what it would do, changes nothing",
        )

    def handle(self, *args, dry_run: bool, **opts) -> None:
        if dry_run:
            with rolled_back():
                report = reconcile()
            self._print(report, "would have: ")
            return
        report = reconcile()
        self._print(report, "")

    def _print(self, report: ReconcileReport, prefix: str) -> None:
        self.stdout.write(self.style.SUCCESS(f"{prefix}{report.summary()}"))
        for label, names in (
            ("re-drive", report.redriven),
            ("fail", report.failed),
            ("advance", report.advanced),
        ):
            for name in names:
                self.stdout.write(f"  {label} {name}")
