"""An idle embedded system (runmqi --web, nothing to do) is quiet at INFO: nothing that
repeats while it waits (the scheduler's own lines every 200 ms drowned the case events);
and a case's events are one INFO line each, with the case id."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_DIR, base_config
from tests.ports import free_port

pytestmark = pytest.mark.slow

IDLE_SECONDS = 6
INFO_LINE = re.compile(r"^\S+ \S+ INFO (?P<logger>\S+?)(?: \[[^\]]*\])?: (?P<message>.*)$")


def embedded_env(tmp_path: Path) -> dict[str, str]:
    raw = base_config(tmp_path)
    raw["scanner"]["scan_interval_sec"] = 0.5
    raw["conductor"]["reconcile_interval_sec"] = 1
    Path(raw["scanner"]["watch_dir"]).mkdir(parents=True)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "MQI_LOG_LEVEL")
    }
    env.update(MQI_CONFIG=str(config), MQI_DATA_DIR=str(tmp_path / "data"))
    return env


def answers(url: str) -> bool:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(url, timeout=5)  # the login page, after a redirect
        return True
    return False


def run_idle(env: dict[str, str], seconds: float) -> str:
    """runmqi --web's output over ``seconds`` with nothing to do but a page open: the
    overview, asked for every second (as its self-updates would)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runmqi", "--web", "--addr", f"127.0.0.1:{port}"],
        cwd=REPO_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    overview = f"http://127.0.0.1:{port}/admin/overview/"
    started = time.monotonic() + 60
    while not answers(overview):
        assert time.monotonic() < started and process.poll() is None, "runmqi did not start"
        time.sleep(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # idle on purpose: what it logs then is the subject
        time.sleep(1)
        answers(overview)
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("runmqi did not stop: " + process.communicate()[0][-4000:]) from None
    return output


def test_an_idle_system_repeats_nothing_at_info(tmp_path):
    output = run_idle(embedded_env(tmp_path), IDLE_SECONDS)

    info = [match for line in output.splitlines() if (match := INFO_LINE.match(line))]
    repeated = {
        line: n for line, n in Counter((m["logger"], m["message"]) for m in info).items() if n > 1
    }
    print(f"\n{len(info)} INFO lines in {IDLE_SECONDS} s idle:\n" + "\n".join(m[0] for m in info))
    assert "apscheduler" not in output
    assert repeated == {}


def test_each_case_event_is_one_info_line_with_the_case_id(tmp_path):
    env = embedded_env(tmp_path)
    watch_dir = yaml.safe_load(Path(env["MQI_CONFIG"]).read_text())["scanner"]["watch_dir"]
    make_samples = [sys.executable, str(REPO_DIR / "hpc_standins/make_sample_cases.py")]
    subprocess.run([*make_samples, watch_dir, "--count", "1"], check=True, capture_output=True)

    done = subprocess.run(
        [sys.executable, "manage.py", "runmqi", "--once", "--timeout", "120"],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = [
        m["message"]
        for line in (done.stdout + done.stderr).splitlines()
        if (m := INFO_LINE.match(line)) and m["message"].startswith("case case-001: ")
    ]
    print("\n".join(events))
    expected = ["case case-001: created: found at"]
    for step in ("upload_case_files", "run_interpreter", "run_moqui_sim", "download_results"):
        expected += [
            f"case case-001: step started: case-001:{step}#1 on ",
            f"case case-001: step done: case-001:{step}#1",
        ]
    expected.append("case case-001: completed: all steps succeeded")
    for start in expected:
        assert sum(event.startswith(start) for event in events) == 1, start
