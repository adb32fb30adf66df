"""The benchmark command is not run by the suite (bench/run, ~8 min); its parts must load."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from bench.__main__ import BENCHMARKS

REPO = Path(__file__).resolve().parents[2]


def test_every_benchmark_names_a_function_that_exists():
    for name, (module, function) in BENCHMARKS.items():
        assert callable(getattr(importlib.import_module(module), function)), name


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
