from __future__ import annotations

from django.core.management.base import BaseCommand

from mqi_site.config import get_config
from mqi_site.untrusted_text import printable
from workers.scanner.scan import scan_cases


class Command(BaseCommand):
    help = (
        "Scan the watched directory once now and report every complete, new case folder to "
        "the conductor (invalid folders become FAILED cases with the reason)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("folders", nargs="*", help="only these folder names")

    def handle(self, *args, folders: list[str], **opts) -> None:
        config = get_config()
        result = scan_cases(config, folders=folders or None)
        valid = [case for case in result.reported if case not in result.invalid]
        self.stdout.write(f"scanned {config.scanner.watch_dir} in {result.seconds * 1000:.0f} ms")
        for label, names in (
            ("new", valid),
            ("invalid (reported as failed)", result.invalid),
            ("not complete yet", result.incomplete),
        ):
            if names:
                # folder names: shown with their control characters escaped
                self.stdout.write(f"{label}: {', '.join(map(printable, names))}")
        self.stdout.write(self.style.SUCCESS(f"reported {len(result.reported)} case(s)"))
