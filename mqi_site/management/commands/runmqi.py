"""``manage.py runmqi``: the whole system in one process.

Workers for every queue run as threads of one Dramatiq ``Worker``, the periodic triggers
and file events run in the same process, and ``--web`` serves the admin.  With no
environment this is the embedded default (SQLite, in-memory broker, local transport);
``DATABASE_URL`` / ``REDIS_URL`` switch to PostgreSQL and Redis.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable

import dramatiq
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.core.servers.basehttp import get_internal_wsgi_application
from django.core.servers.basehttp import run as serve_wsgi
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from cases.models import Case
from conductor.reconcile import reconcile
from mqi_site.config import ConfigError, get_config
from mqi_site.triggers import Triggers
from workers.gpu_discovery.sync import sync_gpus
from workers.scanner.scan import scan_cases

log = logging.getLogger(__name__)

# How long an idle consumer waits between looks at an empty queue (ms); small, so an idle
# system still answers within tens of milliseconds.
WORKER_IDLE_TIMEOUT_MS = 20


class Command(BaseCommand):
    help = (
        "Run MQI Communicator in one process: migrations, workers for every queue, the "
        "periodic triggers (scan, reconcile, GPU discovery) and, with --web, the admin. "
        "--once processes every case that is complete now and exits (0: all completed)."
    )
    requires_system_checks = []  # checked explicitly below, after migrations

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="process complete cases, exit")
        parser.add_argument("--web", action="store_true", help="also serve the admin")
        parser.add_argument("--addr", default="127.0.0.1:8000", help="where --web listens")
        parser.add_argument("--threads", type=int, default=8, help="worker threads")
        parser.add_argument(
            "--timeout", type=float, default=0, help="--once: give up after this many seconds"
        )

    def handle(self, *args, once: bool, web: bool, addr: str, threads: int, **opts) -> None:
        try:
            config = get_config()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        call_command("migrate", interactive=False, verbosity=0)
        call_command("check")
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())

        broker = dramatiq.get_broker()
        # The in-memory broker kept nothing across a restart: re-drive every step in flight.
        startup = reconcile(startup=isinstance(broker, StubBroker))
        if startup:
            self.stdout.write(f"picked up where the last run stopped: {startup.summary()}")
        worker = Worker(broker, worker_threads=threads, worker_timeout=WORKER_IDLE_TIMEOUT_MS)
        worker.start()
        triggers = Triggers(config)
        if web:
            self._serve(addr)
        try:
            if once:
                code = self._once(config, stop, opts["timeout"])
            else:
                triggers.start()
                self.stdout.write(f"MQI Communicator running; watching {config.scanner.watch_dir}")
                stop.wait()
                code = 0
        finally:
            self.stdout.write("stopping: finishing messages in hand ...")
            if triggers.scheduler.running:
                triggers.stop()
            worker.stop(timeout=10_000)
        if code:
            raise SystemExit(code)

    def _serve(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        thread = threading.Thread(
            target=serve_wsgi,
            args=(host or "127.0.0.1", int(port), get_internal_wsgi_application()),
            kwargs={"threading": True},
            daemon=True,
            name="web",
        )
        thread.start()
        self.stdout.write(f"admin at http://{host or '127.0.0.1'}:{port}/admin/")

    def _once(self, config, stop: threading.Event, timeout: float) -> int:
        sync_gpus(config)
        found = scan_cases(config)
        in_flight = list(
            Case.objects.filter(status__in=Case.ACTIVE).values_list("case_id", flat=True)
        )
        wanted = sorted(set(found.reported) | set(in_flight))
        if found.incomplete:
            self.stdout.write(
                f"not complete yet, left for a later run: {', '.join(found.incomplete)}"
            )
        if not wanted:
            self.stdout.write(f"no complete case folders in {config.scanner.watch_dir}")
            return 0
        self.stdout.write(f"processing {len(wanted)} case(s) ...")
        deadline = time.monotonic() + timeout if timeout else None
        while not stop.wait(0.2):
            if _all_terminal(wanted):
                break
            if deadline and time.monotonic() > deadline:
                self.stderr.write(f"gave up waiting after {timeout:g} s")
                break
        return self._report(wanted, config)

    def _report(self, case_ids: Iterable[str], config) -> int:
        cases = (
            Case.objects.filter(case_id__in=list(case_ids))
            .select_related("current_run")
            .order_by("case_id")
        )
        failed = 0
        for case in cases:
            if case.status == Case.Status.COMPLETED:
                run = case.current_run
                where = config.run_paths(case.case_id, run.number, run.host).results_dir
                label = case.get_status_display()
                # a QA that failed is a completed case, and must stand out as much as a failure
                style = self.style.ERROR if case.qa_verdict == "FAILED" else self.style.SUCCESS
                self.stdout.write(style(f"  {label:<9}  {case.case_id}  -> {where}"))
                self.stdout.write(style(f"             {case.qa_said()}"))
            else:
                failed += 1
                reason = case.error_message or case.workflow_step
                label = case.get_status_display()
                self.stdout.write(self.style.ERROR(f"  {label:<9}  {case.case_id}  {reason}"))
        return 1 if failed else 0


def _all_terminal(case_ids: list[str]) -> bool:
    done = Case.objects.filter(case_id__in=case_ids, status__in=Case.TERMINAL).count()
    return done == len(case_ids)
