from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from gpus.models import GPUResource
from mqi_site.config import get_config
from mqi_site.untrusted_text import printable
from workers.gpu_discovery.sync import sync_gpus


class Command(BaseCommand):
    help = "Run GPU discovery on every configured host now and show the GPUs."

    def handle(self, *args, **opts) -> None:
        reports = sync_gpus(get_config())
        for report in reports:
            line = (
                f"{report.host}: {report.seen} seen, {report.added} new, {report.back} back, "
                f"{report.offline} offline"
            )
            if report.foreign_busy:
                line += f", busy with foreign processes: {report.foreign_busy}"
            # what nvidia-smi printed (in errors, GPU names) is shown with controls escaped
            self.stdout.write(
                line + (f" — ERROR: {printable(report.error)}" if report.error else "")
            )
        self.stdout.write(f"\n{'GPU':<16} {'status':<12} {'case':<30} {'util':>5} {'temp':>5}")
        for gpu in GPUResource.objects.select_related("step_run__case"):
            case = gpu.step_run.case.case_id if gpu.step_run else "-"
            util = "-" if gpu.utilization_pct is None else f"{gpu.utilization_pct}%"
            temp = "-" if gpu.temperature_c is None else f"{gpu.temperature_c}C"
            self.stdout.write(
                f"{printable(gpu):<16} {gpu.status:<12} {printable(case):<30} {util:>5} {temp:>5}"
            )
        if all(report.error and not report.seen for report in reports):
            raise CommandError("GPU discovery failed on every host")
