from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from cases import provenance
from cases.models import Case
from mqi_site.times import format_duration, format_time
from mqi_site.untrusted_text import printable


def _time(value) -> str:
    return format_time(value, empty="-")


class Command(BaseCommand):
    """Case ids, folders, error messages and history come from outside (folder names, what
    a command printed): they are shown with control characters escaped, so they cannot
    recolour the terminal, move its cursor or forge lines."""

    help = "One case's timeline (step runs and events), or a summary of all cases."

    def add_arguments(self, parser) -> None:
        parser.add_argument("case_id", nargs="?")
        parser.add_argument("--limit", type=int, default=20, help="active/failed cases listed")

    def handle(self, *args, case_id: str | None, limit: int, **opts) -> None:
        if case_id:
            self._one(case_id)
        else:
            self._summary(limit)

    def _one(self, case_id: str) -> None:
        case = Case.objects.filter(case_id=case_id).with_gpus().first()
        if case is None:
            raise CommandError(f"no case {printable(repr(case_id))}")
        gpu = ", ".join(str(gpu) for gpu in case.gpus)
        out = self.stdout.write
        out(f"case      {printable(case.case_id)}")
        out(f"status    {case.get_status_display()}  {case.progress_caption}")
        out(f"workflow  {case.workflow}   host {case.host or '-'}   GPU {printable(gpu or '-')}")
        out(f"folder    {printable(case.source_path)}")
        out(
            f"times     found {_time(case.created_at)}, waited {format_duration(case.waited)}, "
            f"ran {format_duration(case.run_time)}, ended {_time(case.finished_at)}"
        )
        paths = provenance.run_paths(case)
        run = f"run {case.current_run.number}" if case.current_run else "no run yet"
        out(f"results   {printable(str(paths.results_dir)) if paths else '-'}   ({run})")
        out(f"QA        {printable(case.qa_said())}")
        if case.error_message:
            out(f"error     [{case.error_kind}] {printable(case.error_message)}")
        out("")
        out(
            f"{'step':<20} {'try':>3} {'status':<26} {'gpu':<10} {'started':<23} "
            f"{'finished':<23} exit"
        )
        for run in case.steps.select_related("gpu").order_by("pk"):
            out(
                f"{printable(run.label):<20} {run.attempt:>3} {run.get_status_display():<26} "
                f"{printable(run.gpu or '-'):<10} "
                f"{_time(run.started_at or run.dispatched_at):<23} {_time(run.finished_at):<23} "
                f"{'-' if run.exit_code is None else run.exit_code}"
            )
            if run.error_message:
                out(f"{'':<24}[{run.error_kind}] {printable(run.error_message)}")
        out("")
        for event in case.events.order_by("pk"):
            actor = f" ({printable(event.actor)})" if event.actor else ""
            out(f"{_time(event.created_at)}  {event.kind:<16} {printable(event.message)}{actor}")

    def _summary(self, limit: int) -> None:
        counts = dict(Case.objects.values_list("status").annotate(n=Count("pk")))
        out = self.stdout.write
        out("  ".join(f"{label}: {counts.get(value, 0)}" for value, label in Case.Status.choices))
        active = (
            Case.objects.filter(status__in=Case.ACTIVE)
            .with_gpus()
            .order_by("-priority", "created_at")[:limit]
        )
        if active:
            out("\nactive:")
            for case in active:
                gpu = ", ".join(str(gpu) for gpu in case.gpus)
                out(
                    f"  {printable(case.case_id):<40} {case.get_status_display():<18} "
                    f"{case.progress_caption:<25} {printable(gpu or '-')}"
                )
        failed = Case.objects.filter(status=Case.Status.FAILED).order_by("-finished_at")[:limit]
        if failed:
            out("\nlatest failures:")
            for case in failed:
                out(f"  {printable(case.case_id):<40} {_time(case.finished_at)}")
                out(f"    {printable(case.error_message)}")
