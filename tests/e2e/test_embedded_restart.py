"""The embedded run (runmqi, SQLite, in-memory broker) shuts down cleanly and, after a
crash, picks up where it stopped without starting any remote step twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_DIR, base_config
from tests.paths import last_run_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(tmp_path):
    raw = base_config(tmp_path)
    raw["scanner"]["scan_interval_sec"] = 0.5
    raw["conductor"]["reconcile_interval_sec"] = 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(MQI_CONFIG=str(config), MQI_DATA_DIR=str(tmp_path / "data"))
    subprocess.run(
        [
            sys.executable,
            str(REPO_DIR / "hpc_standins/make_sample_cases.py"),
            raw["scanner"]["watch_dir"],
            "--count",
            "3",
        ],
        check=True,
        capture_output=True,
    )
    (Path(raw["scanner"]["watch_dir"]) / "case-002" / "MQI_SLEEP_MOQUI").write_text("4")
    return env, tmp_path


def runmqi(env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "runmqi", *args],
        cwd=REPO_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def starts(tmp_path: Path, case_id: str, program: str) -> int:
    marker = last_run_dir(tmp_path / "gpu-server" / "upload", case_id) / ".mqi_starts" / program
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def statuses(tmp_path: Path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "data" / "mqi.sqlite3") as db:
        return dict(db.execute("SELECT case_id, status FROM cases_case"))


def wait_until(predicate, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.1)


def test_sigterm_stops_the_embedded_run_cleanly(embedded):
    env, tmp_path = embedded
    process = runmqi(env)
    wait_until(lambda: starts(tmp_path, "case-002", "moquisim") == 1, process, "work in flight")

    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("runmqi did not stop: " + process.communicate()[0][-4000:]) from None

    assert process.returncode == 0, output
    assert "stopping: finishing messages in hand" in output


def test_after_a_crash_the_next_run_picks_up_and_runs_nothing_twice(embedded):
    env, tmp_path = embedded
    process = runmqi(env)
    wait_until(lambda: starts(tmp_path, "case-002", "moquisim") == 1, process, "the simulation")

    process.kill()  # a crash: no clean shutdown, the in-memory broker's messages are gone
    process.wait()
    assert statuses(tmp_path)["case-002"] == "PROCESSING"

    rerun = runmqi(env, "--once", "--timeout", "120")
    output, _ = rerun.communicate(timeout=180)

    assert rerun.returncode == 0, output
    assert "picked up where the last run stopped" in output
    assert statuses(tmp_path) == {f"case-00{n}": "COMPLETED" for n in (1, 2, 3)}
    for case_id in ("case-001", "case-002", "case-003"):
        assert starts(tmp_path, case_id, "interpreter") == 1
        assert starts(tmp_path, case_id, "moquisim") == 1
        assert (last_run_dir(tmp_path / "results", case_id) / "RTDOSE.dcm").exists()
