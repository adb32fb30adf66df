"""Idle CPU of the whole system: web, conductor, workers and scheduler, nothing to do.

The processes run as in production (``docker-compose.yml``): gunicorn with 3 workers for
the admin, ``rundramatiq`` conductor and workers processes at the production
``dramatiq_worker_timeout``, ``runscheduler`` with the configuration's default intervals
(reconciler, host probes, GPU discovery, folder scans), one GPU server over SSH and an
empty watched directory.  After they have settled, the CPU time (user + system) of all
their process groups together over a stretch is the share of one core they take.
"""

from __future__ import annotations

import time

from bench import system
from bench.infra import PYTHON, Context, Outcome, Row, at_most, cpu_seconds
from tests.harness import free_port

TARGET_PERCENT = 2.0
SETTLE_SEC = 15


def _production_intervals(config: dict) -> None:
    """The defaults instead of the test harness's short intervals."""
    for key in ("reconcile_interval_sec", "dispatch_grace_sec", "host_probe_interval_sec"):
        config["conductor"].pop(key, None)
    for key in ("quiet_period_sec", "scan_interval_sec"):
        config["scanner"].pop(key, None)
    config["gpus"].pop("discovery_interval_sec", None)
    config.pop("retries", None)


def run(ctx: Context) -> Outcome:
    seconds = ctx.options.scaled(30, 10)
    with system.production_system(ctx, "idle", gpus=4, edit=_production_intervals) as running:
        gunicorn = str(PYTHON).rsplit("/", 1)[0] + "/gunicorn"
        web = ctx.processes.start(
            "web",
            [gunicorn, "mqi_site.wsgi", "--bind", f"127.0.0.1:{free_port()}", "--workers", "3"],
            running.env(),
        )
        time.sleep(SETTLE_SEC)
        groups = {**running.process_groups(), "web": web.pid}
        before = {role: cpu_seconds(group) for role, group in groups.items()}
        start = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - start
        used = {role: cpu_seconds(group) - before[role] for role, group in groups.items()}
        ctx.processes.stop(web)
    total = 100 * sum(used.values()) / elapsed
    parts = ", ".join(f"{role} {100 * cpu / elapsed:.2f} %" for role, cpu in sorted(used.items()))
    rows = [
        Row(
            "idle",
            "CPU of all processes together, nothing to do",
            total,
            "% core",
            "≤ 2",
            at_most(total, TARGET_PERCENT),
            parts,
        )
    ]
    note = (
        f"Idle: web (gunicorn, 3 workers), conductor and workers (`rundramatiq`, production "
        "`dramatiq_worker_timeout`), scheduler (`runscheduler`, default intervals), one GPU "
        f"server with 4 GPUs, no case; {SETTLE_SEC} s to settle, then user + system CPU "
        f"time of all their process groups over {seconds} s (clock ticks of 10 ms). "
        "PostgreSQL and Redis serve everyone on this machine, so their CPU is not counted."
    )
    return Outcome(rows, [note])
