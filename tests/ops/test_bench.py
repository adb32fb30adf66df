"""The benchmark command is not run by the suite (bench/run, ~10 min); its parts must load,
and a partial run must keep the other benchmarks' figures."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.infra import Outcome, Row
from bench.registry import BENCHMARKS

REPO = Path(__file__).resolve().parents[2]
MACHINE = {"date": "2026-11-30 02:00 UTC", "commit": "abc1234", "machine": "vm", "load_start": "0"}


def test_every_benchmark_is_a_module_with_a_run_function():
    for name, module in BENCHMARKS.items():
        assert callable(importlib.import_module(module).run), name


def test_the_bench_command_explains_itself_and_refuses_unknown_names():
    help_text = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], cwd=REPO, capture_output=True, text=True
    )
    unknown = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nonsense"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )

    assert help_text.returncode == 0 and "--only" in help_text.stdout
    assert unknown.returncode == 2 and "unknown benchmark(s): nonsense" in unknown.stderr


@pytest.mark.pure
def test_a_partial_run_replaces_its_own_rows_and_keeps_the_others(tmp_path, monkeypatch):
    store = tmp_path / "results.json"
    old_idle = {"rows": [{"benchmark": "idle", "metric": "cpu", "value": 3.0, "unit": "%"}]}
    old_overhead = {"rows": [{"benchmark": "overhead", "metric": "p50", "value": 4.0}]}
    store.write_text(json.dumps({"benchmarks": {"idle": old_idle, "overhead": old_overhead}}))
    monkeypatch.setattr(report, "STORE", store)

    outcome = Outcome([Row("idle", "cpu", 1.5, "%", "≤ 2", True)], ["how"])
    merged = report.merged_results([("idle", outcome, "")], MACHINE)

    assert list(merged["benchmarks"]) == ["overhead", "idle"]  # the registry's order
    assert merged["benchmarks"]["overhead"] == old_overhead
    assert merged["benchmarks"]["idle"]["rows"][0]["value"] == 1.5
    assert merged["benchmarks"]["idle"]["notes"] == ["how"]


@pytest.mark.pure
def test_the_busy_share_counts_gpu_work_only_while_a_case_waited():
    from bench.busy import measure
    from bench.system import CaseTiming, StepTiming

    def run(gpu: int, created: float, dispatched: float, command: tuple[float, float]):
        return StepTiming("run_moqui_sim", "execute", gpu, created, dispatched, 0, 0, command)

    first = CaseTiming("a", "COMPLETED", 0, 30, [run(0, 0, 0, (0, 20)), run(1, 0, 0, (0, 15))])
    # the second case's beam waits from 10 s to 20 s: GPU 0 busy all along, GPU 1 until 15 s
    second = CaseTiming("b", "COMPLETED", 10, 40, [run(0, 10, 20, (20, 30))])

    measured = measure([first, second], gpus=2)

    assert (measured.waited, measured.busy, measured.lost) == (10, 15, 5)
    assert (measured.share, measured.handoffs, measured.served) == (0.75, 1, 1)
