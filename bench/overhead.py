"""Per-case orchestration overhead: a 4-step case's turnaround beyond its own work.

Cases go one at a time through the production shape (:mod:`bench.system`): upload over
SFTP, the stand-in interpreter and MOQUI simulation over SSH, download.  For each case::

    overhead = turnaround (found -> completed)
               - the remote commands' own time (their wrapper's start and end files)
               - the transfers' raw time (the same upload and download, timed alone)

and the overhead is split into where it went, from the step runs' timestamps.
"""

from __future__ import annotations

import itertools
import shutil
import time

from bench import system
from bench.infra import Context, Outcome, Row, at_most, median, percentile
from workers.executor import FIRST_POLL_MS, MAX_POLL_MS
from workers.transports import SSHTransport
from workers.transports.ssh import close_thread_connections
from workers.transports.transfer import download_tree, upload_tree

TARGET_SEC = 1.0
INTERPRETER_SEC = (1.0, 3.0)  # each case's sleep before the stand-in works, seeded
MOQUI_SEC = (3.0, 8.0)

# part of the overhead -> how a case's share is taken from its timeline
PARTS = {
    "found → upload dispatched": "first dispatch",
    "transfer dispatched → a transfer worker takes it (message hop)": "to worker",
    "execute dispatched → its command started (message hop, SSH start)": "to command",
    "command ended → outcome recorded (poll wait, poll, hop back)": "command to outcome",
    "  (for comparison: the back-off schedule, every poll on time)": "poll schedule",
    "transfer steps beyond their raw time (hop back, checks, manifest)": "transfer extra",
    "outcome recorded → next step dispatched": "between steps",
    "download recorded → case completed": "completion",
}


def _poll_wait(length: float) -> float:
    """How long after a command of ``length`` seconds ends the executor's polls see it,
    by the back-off schedule alone (first poll after FIRST_POLL_MS, doubling, capped)."""
    at, delay = 0.0, FIRST_POLL_MS / 1000
    while at < length:
        at += delay
        delay = min(MAX_POLL_MS / 1000, delay * 2)
    return at - length


def _raw_transfers(ctx: Context, running: system.ProductionSystem, case_id: str) -> float:
    """Upload of the case folder and download of its results, alone, warm connection.

    The run's output folder on the GPU server is gone once downloaded, so the results are
    put back there first (untimed) and downloaded again.
    """
    transport = SSHTransport(ctx.sshd.target)
    transport.stat("/")
    scratch = ctx.root / "overhead-raw"
    results = running.results_dir / case_id
    upload_tree(transport, results, str(scratch / "outputs"))
    start = time.perf_counter()
    upload_tree(transport, running.watch_dir / case_id, str(scratch / "up"))
    download_tree(transport, str(scratch / "outputs"), scratch / "down")
    elapsed = time.perf_counter() - start
    shutil.rmtree(scratch)
    return elapsed


def _parts(case: system.CaseTiming, raw: float) -> dict[str, float]:
    steps = case.steps
    executes = [s for s in steps if s.type == "execute"]
    transfers = [s for s in steps if s.type != "execute"]
    return {
        "first dispatch": steps[0].dispatched - case.found,
        "to worker": sum(s.started - s.dispatched for s in transfers),
        "to command": sum(s.command[0] - s.dispatched for s in executes),
        "command to outcome": sum(s.finished - s.command[1] for s in executes),
        "poll schedule": sum(_poll_wait(s.command[1] - s.command[0]) for s in executes),
        "transfer extra": sum(s.finished - s.started for s in transfers) - raw,
        "between steps": sum(b.dispatched - a.finished for a, b in itertools.pairwise(steps)),
        "completion": case.completed - steps[-1].finished,
    }


def _measure(ctx: Context, count: int) -> tuple[list[system.CaseTiming], list[float]]:
    staging = ctx.root / "overhead-staging"
    batch = system.sleepy_cases(staging, count, interpreter=INTERPRETER_SEC, moqui=MOQUI_SEC)
    with system.production_system(ctx, "overhead", gpus=2) as running:
        system.settle(5)
        for case_id in batch.ids:
            system.drop_one(running, staging, case_id)
            system.wait_terminal(running, [case_id], timeout=120)
        cases = system.timings(running, batch.ids)
        raw = [_raw_transfers(ctx, running, case.case_id) for case in cases]
    close_thread_connections()
    return cases, raw


def run(ctx: Context) -> Outcome:
    count = ctx.options.scaled(8, 3)
    cases, raw = _measure(ctx, count)
    own = [sum(s.command[1] - s.command[0] for s in c.steps if s.command) for c in cases]
    overhead = [c.turnaround - o - r for c, o, r in zip(cases, own, raw, strict=True)]
    parts = [_parts(c, r) for c, r in zip(cases, raw, strict=True)]
    p50, p95 = median(overhead), percentile(overhead, 95)
    spread = ", ".join(f"{v:.2f}" for v in overhead)
    rows = [
        Row("overhead", "per 4-step case, p50", p50, "s", "≤ 1", at_most(p50, TARGET_SEC), spread),
        Row("overhead", "per 4-step case, p95", p95, "s", "≤ 1", at_most(p95, TARGET_SEC)),
        Row("overhead", "  turnaround, p50", median([c.turnaround for c in cases]), "s"),
        Row("overhead", "  remote commands' own time, p50", median(own), "s"),
        Row("overhead", "  transfers' raw time, p50", median(raw), "s"),
    ]
    for label, key in PARTS.items():
        rows.append(Row("overhead", f"  {label}, p50", median([p[key] for p in parts]), "s"))
    note = (
        f"Overhead: {count} sample cases (RTPLAN + machine logs), one at a time, through "
        "the production shape (`tests/harness.py` `ProductionSystem`: `rundramatiq` conductor "
        f"and workers processes, the workers with {system.THREADS} threads as in production, the "
        "conductor with the harness's 2 (production: 4), `runscheduler`, the "
        "production `dramatiq_worker_timeout`), a real sshd as the GPU server (2 GPUs), the "
        "stand-in interpreter and MOQUI simulation told to sleep first (seeded, "
        f"{INTERPRETER_SEC[0]:g}-{INTERPRETER_SEC[1]:g} s and {MOQUI_SEC[0]:g}-"
        f"{MOQUI_SEC[1]:g} s). Turnaround = case `created_at` (the conductor took "
        "`new_case_found`) → `finished_at`. Commands' own time = mtime of the run folder's "
        "`exit_code` - mtime of its `pgid` (written by the detached wrapper as the command "
        "starts and ends). Transfers' raw time = `upload_tree` of the case folder plus "
        "`download_tree` of its outputs, timed alone in the bench process on a warm SSH "
        "connection (SHA-256 and renames included: that is the transfer's own work). The "
        "parts below come from the step runs' `dispatched_at` / `started_at` / "
        "`finished_at`; the comparison row is how late the executor's polls "
        f"({FIRST_POLL_MS} ms, doubling, at most {MAX_POLL_MS} ms) see a command of that "
        "length end if every delayed poll message were taken on time (they are not: each "
        "is taken up to a worker timeout late, which shifts the later polls)."
    )
    return Outcome(rows, [note])
