"""The results table (stdout) and bench/RESULTS.md.

RESULTS.md is rewritten down to the line ``KEEP_MARKER``; what follows it (the analysis of
the misses, written by hand) is kept across runs.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from bench.infra import REDIS_URL, REPO, Options, Outcome, Row

RESULTS = REPO / "bench" / "RESULTS.md"
KEEP_MARKER = "<!-- Everything below this line is kept when bench/run rewrites this file. -->"


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "?"
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False)
    return (done.stdout or done.stderr).strip()


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _cpu() -> str:
    for line in _run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _memory_gib() -> str:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    return "?"


def _commit() -> str:
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout  # not stripped: each line starts with its two status columns
    changed = [line[3:] for line in status.splitlines() if line]
    if changed:
        shown = ", ".join(changed[:12]) + (" …" if len(changed) > 12 else "")
        return f"{commit} + {len(changed)} uncommitted path(s): {shown}"
    return commit


def software_versions() -> str:
    """Needs Django set up and the bench database still there: call it before the end."""
    import redis
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0].split()[0]
    redis_version = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    openssh = _run(["ssh", "-V"]).split(",")[0]
    packages = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("Django", "dramatiq", "paramiko")
    )
    return (
        f"Python {platform.python_version()}, PostgreSQL {postgres}, Redis {redis_version}, "
        f"{openssh}, {packages}"
    )


def machine_facts() -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (
            f"{socket.gethostname()}: {_cpu()}, {os.cpu_count()} cores, {_memory_gib()} RAM, "
            f"Linux {platform.release()}"
        ),
        "commit": _commit(),
        "load_start": load_average(),
    }


def _rows(results: list[tuple[str, Outcome | None, str]]) -> list[Row]:
    rows: list[Row] = []
    for name, outcome, error in results:
        if outcome is None:
            rows.append(Row(name, "FAILED TO RUN", None, "", "", False, error[:200]))
        else:
            rows.extend(outcome.rows)
    return rows


def table(results: list[tuple[str, Outcome | None, str]]) -> str:
    rows = _rows(results)
    header = ("benchmark", "metric", "value", "unit", "target", "result", "detail")
    cells = [header] + [
        (r.benchmark, r.metric, r.shown(), r.unit, r.target, r.verdict, r.detail) for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header) - 1)]
    lines = []
    for number, line in enumerate(cells):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
            + "  "
            + line[-1]
        )
        if number == 0:
            lines.append("  ".join("-" * width for width in widths) + "  ------")
    return "\n".join(lines)


def _markdown_table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | metric | value | unit | target | result | detail |",
        "|---|---|--:|---|---|---|---|",
    ]
    for r in rows:
        verdict = {True: "pass", False: "**MISS**", None: ""}[r.ok]
        lines.append(
            f"| {r.benchmark} | {r.metric} | {r.shown()} | {r.unit} | {r.target} | {verdict} "
            f"| {r.detail} |"
        )
    return "\n".join(lines)


def write_results(
    results: list[tuple[str, Outcome | None, str]], machine: dict[str, str], options: Options
) -> Path:
    kept = ""
    if RESULTS.exists():
        text = RESULTS.read_text()
        if KEEP_MARKER in text:
            kept = text[text.index(KEEP_MARKER) + len(KEEP_MARKER) :].lstrip("\n")
    notes = [note for _, outcome, _ in results if outcome is not None for note in outcome.notes]
    rows = _rows(results)
    missed = [f"{r.benchmark}: {r.metric}" for r in rows if r.ok is False]
    body = [
        "# Benchmark results",
        "",
        "Written by `bench/run` (do not edit above the marker line; the next run rewrites it).",
        "",
        "| | |",
        "|---|---|",
        f"| date | {machine['date']} |",
        f"| machine | {machine['machine']} |",
        f"| commit | {machine['commit']} |",
        f"| software | {machine.get('software', '?')} |",
        f"| load average (1/5/15 min) | start {machine['load_start']}, end "
        f"{machine.get('load_end', '?')} — other engineers' test runs share this machine, so "
        "figures are medians and percentiles over repeated runs |",
        f"| run | `bench/run {machine.get('options', '')}`, "
        f"`dramatiq_worker_timeout={options.worker_timeout_ms}` ms, took "
        f"{machine.get('duration', '?')} |",
        "",
        "## Figures",
        "",
        _markdown_table(rows),
        "",
        f"Targets missed: {', '.join(missed) if missed else 'none'}.",
        "",
        "## How each figure is measured",
        "",
        *[f"- {note}" for note in notes],
        "",
        KEEP_MARKER,
        "",
        kept or "## What limits the misses\n\n(not written yet)\n",
    ]
    RESULTS.write_text("\n".join(body).rstrip("\n") + "\n")
    return RESULTS
