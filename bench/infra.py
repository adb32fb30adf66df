"""What every benchmark shares: the services, the database, worker processes, sshd, figures.

The bench owns a PostgreSQL database of its own (``mqi_bench``, created at the start and
dropped at the end) and Redis database 12; it never touches another database and never
flushes anything but db 12.  Worker processes are ``manage.py rundramatiq`` started in
their own process group and stopped by that group's id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import redis
import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PG_SERVER = os.environ.get("MQI_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB_NAME = os.environ.get("MQI_BENCH_DB", "mqi_bench")
DATABASE_URL = f"{PG_SERVER}/{DB_NAME}"
REDIS_URL = os.environ.get("MQI_BENCH_REDIS", "redis://127.0.0.1:6379/12")
NAMESPACE = "dramatiq"  # Dramatiq's Redis key prefix
STANDINS = REPO / "hpc_standins"


# --- the database and Redis ------------------------------------------------------------


def _admin_connection():
    connection = psycopg2.connect(f"{PG_SERVER}/postgres", connect_timeout=10)
    connection.autocommit = True
    return connection


def create_database() -> None:
    """A fresh ``mqi_bench`` (dropped first if a previous run left it)."""
    drop_database()
    with contextlib.closing(_admin_connection()) as connection, connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{DB_NAME}"')


def drop_database() -> None:
    with contextlib.closing(_admin_connection()) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=60)


def queue_key(queue: str) -> str:
    return f"{NAMESPACE}:{queue}"


def reset_state() -> None:
    """Empty the system's tables and Redis db 12 between benchmarks."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE cases_caseevent, cases_workflowstep, gpus_gpuresource, cases_case "
            "RESTART IDENTITY CASCADE"
        )
    redis_client().flushdb()


# --- configuration -----------------------------------------------------------------------


def sample_config(root: Path, **changes: Any) -> dict[str, Any]:
    """A configuration for the bench: everything under ``root``, one host ``gpu1``.

    ``changes`` replace top-level sections or, with ``section__key``, one key.
    """
    config: dict[str, Any] = {
        "conductor": {
            "remote_paths": {
                "upload_dir": str(root / "hpc" / "upload"),
                "download_dir": str(root / "hpc" / "download"),
            },
            "gpu_policy": "every_step",
            "reconcile_interval_sec": 3600,
        },
        "workflows": {
            "default_qa": [
                {"name": "upload_case_files", "type": "upload", "progress": 10},
                {"name": "run_interpreter", "type": "execute", "progress": 30},
                {"name": "run_moqui_sim", "type": "execute", "progress": 70},
                {"name": "download_results", "type": "download", "progress": 90},
            ]
        },
        "remote_commands": {
            "run_interpreter": "true {case_id} {gpu_id}",
            "run_moqui_sim": "true {case_id} {gpu_id}",
        },
        "hosts": {
            "gpu1": {
                "transport": "local",
                "gpu_discovery": "static",
                "static_gpus": [{"index": i, "uuid": f"GPU-{i}"} for i in range(4)],
            }
        },
        "scanner": {
            "watch_dir": str(root / "incoming"),
            "quiet_period_sec": 3600,
            "scan_interval_sec": 3600,
            "rtplan_globs": ["*.dcm"],
            "log_patterns": ["*.ptn"],
        },
        "results": {"local_dir": str(root / "results")},
        "gpus": {"discovery_interval_sec": 3600},
    }
    for key, value in changes.items():
        section, _, item = key.partition("__")
        if item:
            config[section][item] = value
        else:
            config[section] = value
    return config


def point_django_at_the_bench(root: Path) -> None:
    """Environment for Django in this process: the bench's database and Redis, and the
    sample config (written under ``root``)."""
    config = root / "config-initial.yaml"
    config.write_text(yaml.safe_dump(sample_config(root), sort_keys=False))
    os.environ.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        DJANGO_SETTINGS_MODULE="mqi_site.settings",
        MQI_CONFIG=str(config),
        MQI_DATA_DIR=str(root / "data"),
        MQI_LOG_LEVEL="WARNING",
    )


def use_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` to ``path`` and make it this process's active configuration."""
    from django.conf import settings

    from mqi_site.config import clear_config_cache

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    settings.MQI_CONFIG = path
    os.environ["MQI_CONFIG"] = str(path)
    clear_config_cache()
    return path


# --- worker processes ------------------------------------------------------------------


def production_worker_timeout_ms() -> int:
    """``dramatiq_worker_timeout`` as ``docker-compose.yml`` sets it (the bench keeps it)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return int(compose["x-mqi"]["environment"]["dramatiq_worker_timeout"])


@dataclass
class Options:
    """What the command line chose."""

    worker_timeout_ms: int = field(default_factory=production_worker_timeout_ms)
    quick: bool = False
    only: set[str] = field(default_factory=set)

    def scaled(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def process_env(worker_timeout_ms: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("dramatiq_")}
    env.update(
        DATABASE_URL=DATABASE_URL,
        REDIS_URL=REDIS_URL,
        DJANGO_SETTINGS_MODULE="mqi_site.settings",
        dramatiq_worker_timeout=str(worker_timeout_ms),
        MQI_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Processes:
    """Processes this bench started, each in its own group; stopped by that group's id."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self._running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._running.append(process)
        return process

    def rundramatiq(
        self,
        name: str,
        queues: Sequence[str],
        *,
        processes: int = 1,
        threads: int = 4,
        worker_timeout_ms: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        argv = [
            PYTHON,
            "manage.py",
            "rundramatiq",
            "--processes",
            str(processes),
            "--threads",
            str(threads),
            "-Q",
            *queues,
        ]
        timeout = worker_timeout_ms or production_worker_timeout_ms()
        return self.start(name, argv, env or process_env(timeout))

    def stop(self, process: subprocess.Popen, timeout: float = 20) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process in self._running:
            self._running.remove(process)

    def stop_all(self) -> None:
        for process in list(self._running):
            self.stop(process)


def cpu_seconds(group: int) -> float:
    """CPU time (user + system) used so far by the live processes of process group ``group``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        # after the command name: state ppid pgrp ... utime (12th) stime (13th)
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def wait_for_consumers(count: int, *, timeout: float = 60, exclude: Iterable[str] = ()) -> None:
    """Wait until ``count`` Dramatiq worker processes have looked at Redis db 12.

    Every Dramatiq broker writes its id into the heartbeat set on each call, a worker's
    consumer as soon as it starts fetching; the bench's own broker id is excluded.
    """
    client = redis_client()
    skip = {value.encode() for value in exclude}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = set(client.zrange(f"{NAMESPACE}:__heartbeats__", 0, -1)) - skip
        if len(members) >= count:
            time.sleep(0.5)  # let every consumer thread reach its idle rhythm
            return
        time.sleep(0.05)
    raise TimeoutError(f"{count} worker process(es) did not start within {timeout:g} s")


def own_broker_id() -> str:
    import dramatiq

    return getattr(dramatiq.get_broker(), "broker_id", "")


def sshd_server(root: Path) -> Any:
    """A started OpenSSH sshd on a free loopback port (the test suite's fixture class)."""
    from tests.sshd import SSHServer

    root.mkdir(parents=True, exist_ok=True)
    server = SSHServer(root)
    server.start()
    return server


# --- figures ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    """One line of the results table."""

    benchmark: str
    metric: str
    value: float | None
    unit: str
    target: str = ""
    ok: bool | None = None
    detail: str = ""

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: "—"}[self.ok]

    def shown(self) -> str:
        if self.value is None:
            return "—"
        if abs(self.value) >= 100:
            return f"{self.value:,.0f}"
        if abs(self.value) >= 10:
            return f"{self.value:.1f}"
        return f"{self.value:.2f}"


def at_most(value: float, limit: float) -> bool:
    return value <= limit


def at_least(value: float, limit: float) -> bool:
    return value >= limit


@dataclass
class Outcome:
    """What one benchmark returns: rows for the table and sentences on how it measured."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Context:
    """What a benchmark gets: its work folder, the options, process control, one sshd."""

    def __init__(self, root: Path, options: Options, processes: Processes) -> None:
        self.root = root
        self.options = options
        self.processes = processes
        self._sshd: Any = None

    @property
    def sshd(self) -> Any:
        if self._sshd is None:
            self._sshd = sshd_server(self.root / "sshd")
        return self._sshd

    def close(self) -> None:
        self.processes.stop_all()
        if self._sshd is not None:
            self._sshd.stop()
