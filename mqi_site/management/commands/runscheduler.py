"""``manage.py runscheduler``: the periodic triggers and file events, for production.

Run one or more (for availability); exactly one leads at a time (see mqi_site.triggers).
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from mqi_site.config import get_config
from mqi_site.triggers import Triggers


class Command(BaseCommand):
    help = (
        "Send the periodic ticks (scan, reconcile, GPU discovery) and folder events to the "
        "workers. Several may run; one leads, the others stand by."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--no-watch", action="store_true", help="no file events (periodic scans only)"
        )

    def handle(self, *args, no_watch: bool, **opts) -> None:
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        triggers = Triggers(get_config())
        triggers.start(watch=not no_watch)
        self.stdout.write("scheduler started")
        stop.wait()
        triggers.stop()
        self.stdout.write("scheduler stopped")
