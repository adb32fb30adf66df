"""A GPU server over real SSH for worker tests, and the workers running in-process.

The "GPU server" is the test's sshd on 127.0.0.1 with the stand-in interpreter, MOQUI
simulation and nvidia-smi from ``hpc_standins/``; remote paths are folders under tmp_path.
The workers run as threads of a real Dramatiq ``Worker`` on the in-memory broker, so
delayed poll messages, retries and the conductor all behave as in production.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dramatiq import Worker

from cases.models import Case
from mqi_site.config import get_config
from tests import paths
from tests.conftest import REPO_DIR
from tests.sshd import SSHServer
from workers.gpu_discovery.sync import sync_gpus
from workers.probe import probe_hosts
from workers.transports.ssh import close_thread_connections

PYTHON = shlex.quote(sys.executable)
STANDINS = REPO_DIR / "hpc_standins"


def standin(name: str) -> str:
    return f"{PYTHON} {shlex.quote(str(STANDINS / name))}"


@dataclass
class GPUServer:
    sshd: SSHServer
    root: Path
    upload_dir: Path
    download_dir: Path
    watch_dir: Path
    results_dir: Path
    configure: Callable[[Callable[[dict], None] | None], Path]

    def case_dir(self, case_id: str) -> Path:
        """The case's newest run folder on the server."""
        return paths.last_run_dir(self.upload_dir, case_id)

    def results(self, case_id: str) -> Path:
        """The case's newest run's local results folder."""
        return paths.last_run_dir(self.results_dir, case_id)

    def output(self, case_id: str) -> Path:
        """The case's newest run's output folder on the server."""
        return paths.last_run_dir(self.download_dir, case_id)

    def starts(self, case_id: str, program: str) -> int:
        return paths.starts(self.upload_dir, case_id, program)


@pytest.fixture
def gpu_server(sshd_server, use_config, tmp_path) -> Iterator[GPUServer]:
    root = tmp_path / "hpc"

    def edit(raw: dict) -> None:
        raw["conductor"]["remote_paths"] = {
            "upload_dir": str(server.upload_dir),
            "download_dir": str(server.download_dir),
        }
        raw["hosts"] = {
            "gpu1": sshd_server.host_config(connect_timeout_sec=5, nvidia_smi=standin("nvidia-smi"))
        }
        common = "--case {case_id} --gpu {gpu_id} --case-dir {case_dir} --output-dir {output_dir}"
        raw["remote_commands"] = {
            "run_interpreter": f"{standin('interpreter.py')} {common}",
            "run_moqui_sim": f"{standin('moquisim.py')} {common} --batches 4 --batch-seconds 0.1",
        }
        raw["scanner"].update(quiet_period_sec=2, watch_dir=str(server.watch_dir))
        raw["results"]["local_dir"] = str(server.results_dir)
        raw["retries"] = {"backoff_base_sec": 0.1, "backoff_max_sec": 0.5}

    def configure(more: Callable[[dict], None] | None = None) -> Path:
        """Use this server's config, changed further by ``more``."""
        return use_config(lambda raw: (edit(raw), more and more(raw)))

    server = GPUServer(
        sshd=sshd_server,
        root=root,
        upload_dir=root / "upload",
        download_dir=root / "download",
        watch_dir=tmp_path / "incoming",
        results_dir=tmp_path / "results",
        configure=configure,
    )
    server.watch_dir.mkdir()
    configure()
    yield server
    close_thread_connections()


@pytest.fixture
def workers(stub_broker) -> Iterator[Worker]:
    worker = Worker(stub_broker, worker_threads=4, worker_timeout=20)
    worker.start()
    yield worker
    worker.stop(timeout=10_000)
    # A Worker hooks itself into the broker for good; unhook it for the next test's worker.
    stub_broker.middleware[:] = [
        m for m in stub_broker.middleware if getattr(m, "worker", None) is not worker
    ]
    close_thread_connections()


@pytest.fixture
def prober(workers) -> Iterator[None]:
    """The scheduler's host probe, every 0.2 s: brings a GPU server that is down back."""
    stop = threading.Event()

    def probe() -> None:
        while not stop.wait(0.2):
            probe_hosts(get_config())

    thread = threading.Thread(target=probe, name="test-prober", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


@pytest.fixture
def discovered_gpus(gpu_server):
    """The GPU server's GPUs, found over SSH by the stand-in nvidia-smi (two GPUs)."""
    sync_gpus(get_config())


def make_case(watch_dir: Path, name: str, *, switches: dict[str, str] | None = None) -> Path:
    """A valid sample case folder named ``name`` (copied from the sample builder's output)."""
    template = _template_case(watch_dir.parent)
    folder = watch_dir / name
    shutil.copytree(template, folder)
    for switch, content in (switches or {}).items():
        (folder / switch).write_text(content)
    return folder


def _template_case(base: Path) -> Path:
    templates = base / "templates"
    case = templates / "case-001"
    if not case.exists():
        subprocess.run(
            [
                sys.executable,
                str(STANDINS / "make_sample_cases.py"),
                str(templates),
                "--count",
                "1",
            ],
            check=True,
            capture_output=True,
        )
    return case


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def wait_terminal(*case_ids: str, timeout: float = 60) -> list[Case]:
    def done() -> bool:
        return Case.objects.filter(case_id__in=case_ids, status__in=Case.TERMINAL).count() == len(
            case_ids
        )

    try:
        wait_for(done, timeout, f"cases {case_ids} to finish")
    except AssertionError:
        states = list(Case.objects.filter(case_id__in=case_ids).values_list("case_id", "status"))
        raise AssertionError(f"cases not terminal after {timeout} s: {states}") from None
    return list(Case.objects.filter(case_id__in=case_ids).order_by("case_id"))
