from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mqi_site.config import ConfigError, load_config


class Command(BaseCommand):
    help = "Validate config.yaml (or --config PATH) and list every problem with its key."
    requires_system_checks = []  # this command *is* the check; don't fail before it runs

    def add_arguments(self, parser) -> None:
        parser.add_argument("--config", type=Path, help="file to check (default: MQI_CONFIG)")

    def handle(self, *args, config: Path | None = None, **options) -> None:
        path = (config or settings.MQI_CONFIG).resolve()
        try:
            loaded = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                self.stderr.write(f"{path}: {problem}")
            raise CommandError(f"{len(exc.problems)} problem(s) in {path}") from None
        steps = sum(len(steps) for steps in loaded.workflows.values())
        self.stdout.write(
            self.style.SUCCESS(
                f"{path}: OK ({len(loaded.workflows)} workflow(s), {steps} step(s), "
                f"{len(loaded.hosts)} host(s))"
            )
        )
