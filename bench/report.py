"""The results table (stdout), bench/results.json and bench/RESULTS.md.

``results.json`` holds, per benchmark, its rows, how it measured them and when: a run of
some benchmarks (``--only a,b --write``) replaces theirs and keeps the others, and
RESULTS.md is rendered from the whole file.  RESULTS.md is rewritten down to the line
``KEEP_MARKER``; what follows it (the analysis of the misses, written by hand) is kept.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from bench.infra import REDIS_URL, REPO, Outcome, Row

RESULTS = REPO / "bench" / "RESULTS.md"
STORE = REPO / "bench" / "results.json"
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
    outputs = {"bench/RESULTS.md", "bench/results.json"}  # what this very run rewrites
    changed = [line[3:] for line in status.splitlines() if line and line[3:] not in outputs]
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


Results = list[tuple[str, Outcome | None, str]]


def _rows(results: Results) -> list[Row]:
    rows: list[Row] = []
    for name, outcome, error in results:
        if outcome is None:
            rows.append(Row(name, "FAILED TO RUN", None, "", "", False, error[:200]))
        else:
            rows.extend(outcome.rows)
    return rows


def table(results: Results) -> str:
    rows = _rows(results)
    header = ("benchmark", "metric", "value", "unit", "target", "result", "detail")
    cells = [header] + [
        (r.benchmark, r.metric, r.shown(), r.unit, r.target, r.verdict, r.detail) for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header) - 1)]
    lines = []
    for number, line in enumerate(cells):
        padded = "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        lines.append(padded + "  " + line[-1])
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


def merged_results(results: Results, machine: dict[str, str]) -> dict:
    """The stored results with this run's benchmarks replaced, in the registry's order."""
    from bench.registry import BENCHMARKS

    stored = json.loads(STORE.read_text()) if STORE.exists() else {"benchmarks": {}}
    for name, outcome, _ in results:
        stored["benchmarks"][name] = {
            "rows": [dataclasses.asdict(row) for row in _rows([(name, outcome, _)])],
            "notes": outcome.notes if outcome is not None else [],
            "date": machine["date"],
            "commit": machine["commit"],
            "load": f"{machine['load_start']} → {machine.get('load_end', '?')}",
        }
    stored["benchmarks"] = {
        name: stored["benchmarks"][name] for name in BENCHMARKS if name in stored["benchmarks"]
    }
    stored["machine"] = machine
    return stored


def _kept() -> str:
    if RESULTS.exists():
        text = RESULTS.read_text()
        if KEEP_MARKER in text:
            return text[text.index(KEEP_MARKER) + len(KEEP_MARKER) :].lstrip("\n")
    return ""


def _header(machine: dict[str, str], benchmarks: dict) -> list[str]:
    runs: dict[str, list[str]] = {}
    for name, b in benchmarks.items():
        run = f"{b['date']} at {b['commit']}, load average {b.get('load', '?')}"
        runs.setdefault(run, []).append(name)
    when = [f"{', '.join(names)}: {run}" for run, names in runs.items()]
    return [
        "| | |",
        "|---|---|",
        f"| date (last write) | {machine['date']} |",
        f"| machine | {machine['machine']} |",
        f"| commit | {machine['commit']} |",
        f"| software | {machine.get('software', '?')} |",
        f"| load average (1/5/15 min) | start {machine['load_start']}, end "
        f"{machine.get('load_end', '?')} — other engineers' test runs share this machine |",
        f"| run | `bench/run {machine.get('options', '')}`, production "
        f"`dramatiq_worker_timeout` ({machine.get('worker_timeout_ms', '?')} ms), took "
        f"{machine.get('duration', '?')} |",
        f"| rows measured | {'; '.join(when)} |",
    ]


def write_results(results: Results, machine: dict[str, str]) -> Path:
    stored = merged_results(results, machine)
    STORE.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
    benchmarks = stored["benchmarks"]
    rows = [Row(**row) for b in benchmarks.values() for row in b["rows"]]
    missed = [f"{r.benchmark}: {r.metric}" for r in rows if r.ok is False]
    body = [
        "# Benchmark results",
        "",
        "Written by `bench/run` from `bench/results.json` (do not edit above the marker "
        "line; the next run rewrites it).",
        "",
        *_header(machine, benchmarks),
        "",
        "## Figures",
        "",
        _markdown_table(rows),
        "",
        f"Targets missed: {', '.join(missed) if missed else 'none'}.",
        "",
        "## How each figure is measured",
        "",
        *[f"- {note}" for b in benchmarks.values() for note in b["notes"]],
        "",
        KEEP_MARKER,
        "",
        _kept() or "## What limits the missed targets\n\n(not written yet)\n",
    ]
    RESULTS.write_text("\n".join(body).rstrip("\n") + "\n")
    return RESULTS
