"""The production shape as real processes, for end-to-end and fault-injection tests.

:class:`ProductionSystem` runs what ``docker-compose.yml`` runs, each as its own process
group on this machine:

- ``conductor``: ``manage.py rundramatiq -Q conductor_queue notifications_queue``
- ``workers``: ``manage.py rundramatiq -Q file_transfer_queue remote_executor_queue
  scanner_queue evaluation_queue``
- ``scheduler``: ``manage.py runscheduler``

on a real PostgreSQL database and a real Redis, with one or more real ``sshd`` as the GPU
servers (static GPUs, the stand-in interpreter and MOQUI simulation run by this venv's
python), and a configuration in a temporary folder with short intervals so that a lost
message is re-driven within seconds.  Processes log to ``<root>/logs/<name>.log``.

The test reads the state straight from the database (psycopg2, autocommit), so it can also
watch a private PostgreSQL that the test restarts.  :meth:`ProductionSystem.check` compares
the end state with what each case would reach without any fault and returns
:class:`Figures`: lost cases, GPUs still booked, remote steps started twice, results that do
not match the GPU server's files, duplicate result files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
import redis
import yaml

from tests import paths
from tests.brokers import test_redis_url
from tests.conftest import REPO_DIR
from tests.ports import free_port
from tests.sshd import SSHServer

PYTHON = sys.executable
STANDINS = REPO_DIR / "hpc_standins"
PROGRAMS = ("interpreter", "moquisim")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
STOP_TIMEOUT_SEC = 30.0

ROLES: dict[str, list[str]] = {
    "conductor": ["-Q", "conductor_queue", "notifications_queue"],
    "workers": [
        "-Q",
        "file_transfer_queue",
        "remote_executor_queue",
        "scanner_queue",
        "evaluation_queue",
    ],
}


def database_url_for(db: dict[str, Any]) -> str:
    """A ``DATABASE_URL`` for a Django ``DATABASES`` entry (e.g. pytest-django's test db)."""
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{quote(str(db['NAME']), safe='')}"


def production_worker_timeout_ms() -> str:
    """``dramatiq_worker_timeout`` as ``docker-compose.yml`` sets it, so the processes here
    keep the production's pace."""
    compose = yaml.safe_load((REPO_DIR / "docker-compose.yml").read_text())
    return compose["x-mqi"]["environment"]["dramatiq_worker_timeout"]


def standin(name: str, *args: str) -> str:
    return " ".join(shlex.quote(part) for part in (PYTHON, str(STANDINS / name), *args))


# --- the batch of cases ---------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """Where a case ends when nothing goes wrong, and how often each remote step starts."""

    case_id: str
    status: str
    error_kind: str = ""
    failed_step: str = ""
    starts: tuple[int, int] = (1, 1)  # interpreter, moquisim

    @property
    def has_results(self) -> bool:
        return self.status == "COMPLETED"


@dataclass(frozen=True)
class Batch:
    cases: list[Expected]

    @property
    def ids(self) -> list[str]:
        return [case.case_id for case in self.cases]

    def __len__(self) -> int:
        return len(self.cases)


def standard_batch(tmp_path: Path, seed: int = 1) -> tuple[Path, Batch]:
    """21 cases: 17 succeed, 2 fail in the interpreter, 1 in the simulation, 1 is invalid."""
    return build_batch(
        tmp_path / "staging", succeed=17, fail_interpreter=2, fail_moqui=1, invalid=True, seed=seed
    )


def build_batch(
    staging: Path,
    *,
    succeed: int,
    fail_interpreter: int = 0,
    fail_moqui: int = 0,
    invalid: bool = False,
    seed: int = 1,
    beams: int = 2,
    moqui_starts: int = 1,
) -> tuple[Path, Batch]:
    """Case folders (sample RTPLAN of ``beams`` treatment beams + machine logs + READY)
    under ``staging``, with the stand-ins' fail switches in some of them; drop them with
    :meth:`ProductionSystem.drop`.  ``moqui_starts``: how often a case's simulation starts
    (its beam count when the simulation fans out)."""
    count = succeed + fail_interpreter + fail_moqui
    subprocess.run(
        [
            PYTHON,
            str(STANDINS / "make_sample_cases.py"),
            str(staging),
            "--count",
            str(count),
            "--seed",
            str(seed),
            "--beams",
            str(beams),
            *(["--with-invalid"] if invalid else []),
        ],
        check=True,
        capture_output=True,
    )
    names = [f"case-{number:03d}" for number in range(1, count + 1)]
    expected: list[Expected] = []
    # Spread the failing cases through the batch rather than bunching them at the end.
    failing = names[1 :: max(1, count // max(1, fail_interpreter + fail_moqui))]
    failing = failing[: fail_interpreter + fail_moqui]
    for name in names:
        if name in failing[:fail_interpreter]:
            (staging / name / "MQI_FAIL_INTERPRETER").write_text("3 plan and logs disagree\n")
            expected.append(Expected(name, "FAILED", "permanent", "run_interpreter", (1, 0)))
        elif name in failing[fail_interpreter:]:
            (staging / name / "MQI_FAIL_MOQUI").write_text("4 out of GPU memory\n")
            expected.append(Expected(name, "FAILED", "permanent", "run_moqui_sim", (1, 1)))
        else:
            expected.append(Expected(name, "COMPLETED", starts=(1, moqui_starts)))
    if invalid:
        expected.append(Expected("case-invalid-not-dicom", "FAILED", "invalid_input", "", (0, 0)))
    return staging, Batch(expected)


def fan_out_beams(config: dict) -> None:
    """Edit a :class:`ProductionSystem` config: the simulation runs once per treatment beam,
    each beam reading the interpreter's output and writing a folder of its own."""
    config["workflows"]["default_qa"][2]["fan_out"] = "beams"
    config["remote_commands"]["run_moqui_sim"] += (
        " --beam {beam_number} --input-dir {run_output_dir}"
    )


# --- reading the state ----------------------------------------------------------------------


class Database:
    """Autocommit reads of the system's tables; reconnects after a database restart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection = None

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        for attempt in range(2):
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = psycopg2.connect(self.url, connect_timeout=5)
                    self._connection.autocommit = True
                with self._connection.cursor() as cursor:
                    cursor.execute(sql, tuple(params))
                    return cursor.fetchall()
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg2.Error):
                self._connection.close()
            self._connection = None


@dataclass
class CaseRow:
    case_id: str
    status: str
    workflow_step: str
    error_kind: str
    error_message: str


@dataclass(frozen=True)
class LogRecord:
    """One record of a process's log: its first line and whatever follows it (a traceback)."""

    process: str
    at: datetime  # the process's local time, as it wrote it
    level: str
    text: str


# Both formats a worker process writes: the project's (LOGGING) and Dramatiq's command line's.
_RECORD_START = re.compile(
    r"^\[?(?P<at>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3})\]? "
    r"(?:\[PID \d+\] \[[^]]*\] \[[^]]*\] \[(?P<bracketed>[A-Z]+)\]|(?P<plain>[A-Z]+) )"
)


def log_records(process: str, text: str) -> Iterator[LogRecord]:
    """The records of one process's log; lines before the first record are skipped."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if _RECORD_START.match(line):
            records.append([line])
        elif records:
            records[-1].append(line)
    for lines in records:
        head = _RECORD_START.match(lines[0])
        assert head is not None
        at = datetime.strptime(head["at"], "%Y-%m-%d %H:%M:%S,%f")
        yield LogRecord(process, at, head["bracketed"] or head["plain"], "\n".join(lines))


@dataclass
class Figures:
    """What one run of a batch came to; every count but ``cases`` should be 0."""

    scenario: str
    cases: int
    faults: str = ""
    lost: int = 0  # not in the state it reaches without the fault
    leaked_gpus: int = 0
    run_twice: int = 0  # remote steps started more than once
    bad_results: int = 0  # missing, or not matching the GPU server's file
    duplicate_results: int = 0
    wall_sec: float = 0.0
    recovery: str = ""  # what the system did about the faults, from the case histories
    problems: list[str] = field(default_factory=list)


# --- the processes ----------------------------------------------------------------------------


class ProductionSystem:
    """Conductor, workers and scheduler as separate processes on PostgreSQL, Redis and sshd."""

    def __init__(
        self,
        root: Path,
        *,
        database_url: str,
        redis_url: str,
        hosts: list[SSHServer],
        gpus_per_host: int = 2,
        threads: int = 4,
        settings_module: str = "mqi_site.settings",
        env: dict[str, str] | None = None,
        grace_sec: float = 6,
        moqui_batches: int = 4,
        moqui_batch_sec: float = 0.2,
        edit: Callable[[dict], None] | None = None,
    ) -> None:
        self.root = root
        self.database_url = database_url
        self.redis_url = redis_url
        self.hosts = hosts
        self.watch_dir = root / "incoming"
        self.results_dir = root / "results"
        self.upload_dir = root / "hpc" / "upload"
        self.download_dir = root / "hpc" / "download"
        self.logs_dir = root / "logs"
        self.config_path = root / "config.yaml"
        for folder in (self.watch_dir, self.results_dir, self.logs_dir, root / "data"):
            folder.mkdir(parents=True, exist_ok=True)
        self.db = Database(database_url)
        self.threads = threads
        self._settings_module = settings_module
        self._extra_env = env or {}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._expected_running: set[str] = set()
        config = self._config(gpus_per_host, grace_sec, moqui_batches, moqui_batch_sec)
        if edit is not None:
            edit(config)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- configuration ---------------------------------------------------------------------

    def _config(self, gpus: int, grace_sec: float, batches: int, batch_sec: float) -> dict:
        common = "--case {case_id} --gpu {gpu_id} --case-dir {case_dir} --output-dir {output_dir}"
        hosts = {}
        for number, server in enumerate(self.hosts):
            hosts[f"gpu{number + 1}"] = server.host_config(
                connect_timeout_sec=3,
                keepalive_sec=2,
                gpu_discovery="static",
                static_gpus=[
                    {"index": index, "uuid": f"GPU-{number + 1}-{index}", "name": "A100 stand-in"}
                    for index in range(gpus)
                ],
            )
        progress = r"Generating particles for \((?P<done>\d+) of (?P<total>\d+) batches\)"
        return {
            "conductor": {
                "remote_paths": {
                    "upload_dir": str(self.upload_dir),
                    "download_dir": str(self.download_dir),
                },
                "reconcile_interval_sec": 2,
                "dispatch_grace_sec": grace_sec,
                "host_probe_interval_sec": 1,
            },
            "workflows": {
                "default_qa": [
                    {"name": "upload_case_files", "type": "upload", "progress": 10},
                    {"name": "run_interpreter", "type": "execute", "progress": 30},
                    {
                        "name": "run_moqui_sim",
                        "type": "execute",
                        "progress": 70,
                        "progress_pattern": progress,
                    },
                    {"name": "download_results", "type": "download", "progress": 90},
                ]
            },
            "remote_commands": {
                "run_interpreter": standin("interpreter.py") + " " + common,
                "run_moqui_sim": standin(
                    "moquisim.py", "--batches", str(batches), "--batch-seconds", str(batch_sec)
                )
                + " "
                + common,
            },
            "hosts": hosts,
            "scanner": {
                "watch_dir": str(self.watch_dir),
                "quiet_period_sec": 1,
                "scan_interval_sec": 1,
                "rtplan_globs": ["*.dcm"],
                "log_patterns": ["*.ptn"],
            },
            "results": {"local_dir": str(self.results_dir)},
            "gpus": {"discovery_interval_sec": 5},
            "retries": {"backoff_base_sec": 0.2, "backoff_max_sec": 1},
        }

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DATABASE_URL", "REDIS_URL", "MQI_", "DJANGO_"))
        }
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            MQI_CONFIG=str(self.config_path),
            MQI_DATA_DIR=str(self.root / "data"),
            DJANGO_SETTINGS_MODULE=self._settings_module,
            dramatiq_worker_timeout=production_worker_timeout_ms(),
            PYTHONUNBUFFERED="1",
            **self._extra_env,
        )
        return env

    # -- life cycle ----------------------------------------------------------------------------

    def command(self, role: str) -> list[str]:
        if role == "scheduler":
            return [PYTHON, "manage.py", "runscheduler"]
        threads = str(self.threads if role == "workers" else 2)
        return [
            PYTHON,
            "manage.py",
            "rundramatiq",
            "--processes",
            "1",
            "--threads",
            threads,
            *ROLES[role],
        ]

    def migrate(self) -> None:
        done = subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self, *roles: str) -> None:
        for role in roles or ("conductor", "workers", "scheduler"):
            process = self._processes.get(role)
            if process is not None and process.poll() is None:
                continue
            with (self.logs_dir / f"{role}.log").open("ab") as log:
                log.write(f"\n===== start {role} at {time.strftime('%X')} =====\n".encode())
                log.flush()
                self._processes[role] = subprocess.Popen(
                    self.command(role),
                    cwd=REPO_DIR,
                    env=self.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: a kill takes every child too
                )
            self._expected_running.add(role)

    def kill(self, *roles: str) -> None:
        """SIGKILL the whole process group: a crash, nothing is finished or acknowledged."""
        for role in roles or tuple(self._processes):
            self._signal(role, signal.SIGKILL)

    def stop(self, *roles: str) -> None:
        """SIGTERM, as ``docker stop`` does: messages in hand are finished first."""
        for role in roles or tuple(self._processes):
            self._signal(role, signal.SIGTERM)

    def _signal(self, role: str, sig: signal.Signals) -> None:
        self._expected_running.discard(role)
        process = self._processes.get(role)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT_SEC)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # the group may outlive its leader (dramatiq's worker processes): make sure it is gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        self.db.close()

    def process_groups(self) -> dict[str, int]:
        """Role -> process group id of each running role (a role's leader leads its group)."""
        return {role: p.pid for role, p in self._processes.items() if p.poll() is None}

    def dead_processes(self) -> list[str]:
        return [
            role
            for role in sorted(self._expected_running)
            if self._processes[role].poll() is not None
        ]

    def logs(self, lines: int = 60) -> str:
        parts = []
        for log in sorted(self.logs_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {log.name} (last {lines} lines) -----\n" + "\n".join(tail))
        return "\n".join(parts)

    def errors(self) -> list[LogRecord]:
        """Every ERROR and CRITICAL record the processes logged, with its traceback."""
        return [
            record
            for log in sorted(self.logs_dir.glob("*.log"))
            for record in log_records(log.stem, log.read_text(errors="replace"))
            if record.level in ("ERROR", "CRITICAL")
        ]

    # -- cases ---------------------------------------------------------------------------------

    def drop(self, staging: Path, batch: Batch) -> None:
        """Move the batch's complete folders into the watched directory (one rename each)."""
        for case_id in batch.ids:
            os.rename(staging / case_id, self.watch_dir / case_id)

    def cases(self) -> dict[str, CaseRow]:
        rows = self.db.query(
            "SELECT case_id, status, workflow_step, error_kind, error_message FROM cases_case"
        )
        return {row[0]: CaseRow(*row) for row in rows}

    def history(self, case_id: str, last: int = 6) -> list[str]:
        events = self.db.query(
            "SELECT e.kind, e.message FROM cases_caseevent e JOIN cases_case c ON c.id = e.case_id"
            " WHERE c.case_id = %s ORDER BY e.id DESC LIMIT %s",
            (case_id, last),
        )
        runs = self.db.query(
            "SELECT s.name, s.attempt, s.status, s.deadline FROM cases_workflowstep s"
            " JOIN cases_case c ON c.id = s.case_id WHERE c.case_id = %s ORDER BY s.id",
            (case_id,),
        )
        return [f"event {kind}: {message}" for kind, message in reversed(events)] + [
            f"run {name}#{attempt} {status} deadline {deadline}"
            for name, attempt, status, deadline in runs
        ]

    def wait_until(
        self, predicate: Callable[[], bool], what: str, timeout: float = 60, poll: float = 0.2
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            dead = self.dead_processes()
            assert not dead, f"{dead} exited on their own while waiting for {what}\n{self.logs()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.logs()}"
            time.sleep(poll)

    def wait_all_terminal(self, batch: Batch, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.cases()
            open_cases = [
                case_id
                for case_id in batch.ids
                if case_id not in rows or rows[case_id].status not in TERMINAL
            ]
            if not open_cases:
                return
            dead = self.dead_processes()
            if dead or time.monotonic() > deadline:
                why = f"{dead} exited on their own" if dead else f"after {timeout:g} s"
                report = []
                for case_id in open_cases:
                    row = rows.get(case_id)
                    report.append(
                        f"{case_id}: "
                        + (f"{row.status} at {row.workflow_step!r}" if row else "never registered")
                    )
                    if row:
                        report += [f"    {line}" for line in self.history(case_id)]
                raise AssertionError(
                    f"{len(open_cases)} of {len(batch)} cases not finished {why}:\n"
                    + "\n".join(report)
                    + "\n"
                    + self.logs()
                )
            time.sleep(0.3)

    def wait_for_step(self, step: str, running: int = 1, timeout: float = 60) -> None:
        """Until ``running`` step runs of ``step`` are in flight (dispatched or running)."""

        def in_flight() -> bool:
            (count,) = self.db.query(
                "SELECT count(*) FROM cases_workflowstep WHERE name = %s"
                " AND status IN ('DISPATCHED', 'RUNNING')",
                (step,),
            )[0]
            return count >= running

        self.wait_until(in_flight, f"{running} {step} in flight", timeout)

    def intervals(self, step: str) -> list[tuple[int, Any, Any]]:
        """``(beam, started, finished)`` of every step run of ``step`` that ran, by start."""
        return self.db.query(
            "SELECT beam_number, started_at, finished_at FROM cases_workflowstep"
            " WHERE name = %s AND started_at IS NOT NULL ORDER BY started_at",
            (step,),
        )

    def step_runs(self) -> list[tuple[str, str, int, str, str, str]]:
        """Every step run: case id, step, attempt, status, error kind, host."""
        return self.db.query(
            "SELECT c.case_id, s.name, s.attempt, s.status, s.error_kind, s.host"
            " FROM cases_workflowstep s JOIN cases_case c ON c.id = s.case_id ORDER BY s.id"
        )

    def events(self, kind: str) -> list[tuple[str, str]]:
        """``(case id, message)`` of every history row of ``kind``."""
        return self.db.query(
            "SELECT c.case_id, e.message FROM cases_caseevent e"
            " JOIN cases_case c ON c.id = e.case_id WHERE e.kind = %s ORDER BY e.id",
            (kind,),
        )

    def in_flight(self) -> dict[str, int]:
        """Step runs dispatched or running, by step name."""
        rows = self.db.query(
            "SELECT name, count(*) FROM cases_workflowstep"
            " WHERE status IN ('DISPATCHED', 'RUNNING') GROUP BY name"
        )
        return dict(rows)

    def finish(
        self, scenario: str, batch: Batch, *, started: float, faults: str = "", timeout: float = 150
    ) -> Figures:
        """Wait for every case to end, stop every process, check, and record the figures."""
        self.wait_all_terminal(batch, timeout=timeout)
        wall_sec = time.monotonic() - started
        self.stop()
        figures = self.check(scenario, batch, faults=faults, wall_sec=wall_sec)
        record_figures(figures)
        print(f"{scenario}: {len(batch)} cases in {wall_sec:.1f} s; {faults or 'no fault'}")
        return figures

    def finished(self) -> int:
        return self.db.query(
            "SELECT count(*) FROM cases_case WHERE status IN %s", (tuple(TERMINAL),)
        )[0][0]

    # -- checks --------------------------------------------------------------------------------

    def starts(self, case_id: str, program: str) -> int:
        return paths.starts(self.upload_dir, case_id, program)

    def check(self, scenario: str, batch: Batch, *, faults: str = "", wall_sec: float = 0):
        """Compare the end state with what every case reaches without any fault."""
        figures = Figures(scenario, len(batch), faults=faults, wall_sec=round(wall_sec, 1))
        rows = self.cases()
        problems = figures.problems
        for case in batch.cases:
            row = rows.get(case.case_id)
            got = (row.status, row.error_kind) if row else ("(not registered)", "")
            step_ok = not case.failed_step or (
                row is not None and row.workflow_step == case.failed_step
            )
            if got != (case.status, case.error_kind) or not step_ok:
                figures.lost += 1
                problems.append(
                    f"{case.case_id}: expected {case.status} {case.error_kind} "
                    f"{case.failed_step}, got {got} at {row.workflow_step if row else ''!r}: "
                    f"{row.error_message if row else ''}"
                )
            for program, wanted in zip(PROGRAMS, case.starts, strict=True):
                started = self.starts(case.case_id, program)
                if started > max(1, wanted):  # a fanned-out simulation starts once per beam
                    figures.run_twice += 1
                if started != wanted:
                    problems.append(f"{case.case_id}: {program} started {started} times")
            if case.has_results:
                self._check_results(case.case_id, figures)
        booked = self.db.query(
            "SELECT host, index, status FROM gpus_gpuresource"
            " WHERE status = 'RESERVED' OR step_run_id IS NOT NULL"
        )
        figures.leaked_gpus = len(booked)
        problems += [f"GPU {host}:{index} still {status}" for host, index, status in booked]
        (gpus,) = self.db.query("SELECT count(*) FROM gpus_gpuresource")[0]
        if gpus != sum(1 for _ in self._static_gpus()):
            problems.append(f"{gpus} GPU rows, expected {sum(1 for _ in self._static_gpus())}")
        problems += self._unfinished_remote_runs()
        kinds = dict(
            self.db.query(
                "SELECT kind, count(*) FROM cases_caseevent WHERE kind IN"
                " ('redriven', 'retry_scheduled', 'ignored_outcome') GROUP BY kind"
            )
        )
        figures.recovery = (
            f"{kinds.get('redriven', 0)} re-driven, {kinds.get('retry_scheduled', 0)} retried, "
            f"{kinds.get('ignored_outcome', 0)} stale outcomes ignored"
        )
        return figures

    def _static_gpus(self) -> Iterator[dict]:
        config = yaml.safe_load(self.config_path.read_text())
        for host in config["hosts"].values():
            yield from host["static_gpus"]

    def _check_results(self, case_id: str, figures: Figures) -> None:
        remote = _digests(self.download_dir / case_id)
        local = _digests(self.results_dir / case_id)
        if not any(name.endswith("/RTDOSE.dcm") for name in remote):
            figures.bad_results += 1
            figures.problems.append(f"{case_id}: no RTDOSE.dcm on the GPU server")
        for name, digest in remote.items():
            if local.get(name) != digest:
                figures.bad_results += 1
                figures.problems.append(f"{case_id}: result {name} missing or different")
        extra = sorted(set(local) - set(remote))
        if extra:
            figures.duplicate_results += len(extra)
            figures.problems.append(f"{case_id}: result files the GPU server lacks: {extra}")

    def _unfinished_remote_runs(self) -> list[str]:
        """Remote commands with no exit code: still running, or killed behind our back."""
        return [
            f"remote run {run} has no exit code"
            for run in sorted(self.upload_dir.glob("*/run-*/.mqi/runs/*"))
            if not (run / "exit_code").exists()
        ]


def _digests(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() or path.is_symlink()
    }


# --- the reliability report ---------------------------------------------------------------

REPORT = REPO_DIR / "docs" / "reliability.md"
TABLE_BEGIN = "<!-- figures:begin (rewritten by tests/harness.py record_figures) -->"
TABLE_END = "<!-- figures:end -->"
HEADER = (
    "| scenario | faults injected | cases | lost | leaked GPUs | run twice | bad results "
    "| duplicate results | wall time | how it recovered |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)
_ROW = re.compile(r"^\| (?P<scenario>[^|]+?) \|")


def record_figures(figures: Figures, report: Path = REPORT) -> None:
    """Put this run's figures into the table in ``docs/reliability.md`` (one row a scenario),
    when ``bin/reliability`` asks for it (``MQI_RECORD_RELIABILITY=1``): a plain test run
    changes no tracked file."""
    if os.environ.get("MQI_RECORD_RELIABILITY") != "1":
        return
    text = report.read_text() if report.exists() else f"{TABLE_BEGIN}\n{TABLE_END}\n"
    before, _, rest = text.partition(TABLE_BEGIN)
    table, _, after = rest.partition(TABLE_END)
    rows = {}
    for line in table.splitlines():
        match = _ROW.match(line)
        if match and not line.startswith(("| scenario ", "|---")):
            rows[match["scenario"]] = line
    f = figures
    rows[f.scenario] = (
        f"| {f.scenario} | {f.faults or 'none'} | {f.cases} | {f.lost} | {f.leaked_gpus} "
        f"| {f.run_twice} | {f.bad_results} | {f.duplicate_results} | {f.wall_sec:.0f} s "
        f"| {f.recovery} |"
    )
    ordered = [rows[key] for key in sorted(rows)]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        before + TABLE_BEGIN + "\n" + HEADER + "\n" + "\n".join(ordered) + "\n" + TABLE_END + after
    )


# --- private services (for the tests that restart them) ------------------------------------


class PrivateRedis:
    """A ``redis-server`` of this test's own on a free port, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (bin/test installs it)"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._process = subprocess.Popen(
            [*command, "--appendonly", "no", "--dir", str(self.directory)],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_for_port(self.port, "redis-server")

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own in a temporary folder on a free port.

    ``initdb`` refuses to run as root, so the cluster belongs to the ``postgres`` user and
    every command runs through ``runuser -u postgres --``.
    """

    BIN = Path("/usr/lib/postgresql")

    def __init__(self, directory: Path) -> None:
        versions = sorted(self.BIN.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        assert versions, "PostgreSQL server binaries are missing (bin/test installs them)"
        self.bin = versions[-1].parent
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/mqi"
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o777)
        _as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )

    def pg_ctl(self, *args: str) -> None:
        _as_postgres(
            str(self.bin / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.directory / "postgres.log")),
            *args,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self.pg_ctl("-w", "-o", options, "start")

    def create_database(self) -> None:
        with contextlib.closing(
            psycopg2.connect(f"postgres://postgres@127.0.0.1:{self.port}/postgres")
        ) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE mqi")

    def restart(self, *, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-m", mode, "restart")

    def stop(self, *, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-m", mode, "stop")


def _as_postgres(*command: str) -> None:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"


def _wait_for_port(port: int, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not listen on port {port}"
            time.sleep(0.05)


# --- the fixture ----------------------------------------------------------------------------


@pytest.fixture
def production(
    transactional_db, sshd_factory, tmp_path
) -> Iterator[Callable[..., ProductionSystem]]:
    """Make a :class:`ProductionSystem` (not started) on pytest-django's test database and
    the test Redis db, with ``hosts`` sshd GPU servers; everything is stopped afterwards and
    the processes' logs printed (pytest shows them when the test fails)."""
    from django.conf import settings

    systems: list[ProductionSystem] = []
    servers: list[SSHServer] = []
    flushed: list[str] = []

    def make(
        *, hosts: int = 2, database_url: str = "", redis_url: str = "", **options: Any
    ) -> ProductionSystem:
        new = [sshd_factory() for _ in range(hosts)]
        servers.extend(new)
        if not redis_url:
            redis_url = test_redis_url()
            redis.Redis.from_url(redis_url).flushdb()  # the test db only, never FLUSHALL
            flushed.append(redis_url)
        system = ProductionSystem(
            tmp_path / f"system{len(systems) + 1}",
            database_url=database_url or database_url_for(settings.DATABASES["default"]),
            redis_url=redis_url,
            hosts=new,
            **options,
        )
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.close()
        print(system.logs(lines=300))
    for server in servers:
        server.stop()
    for url in flushed:
        redis.Redis.from_url(url).flushdb()
