"""A site for bad-input tests, and the whole system run on it in this process.

A *site* is the shipped ``config.yaml`` with every path under one folder: the watch
directory, the GPU server's upload and download trees (the ``local`` transport), the
results, and ``outside/``, a sentinel folder next to the watch directory that no case may
read or write (bad folders link into it).  :func:`run_mqi` runs ``manage.py runmqi`` in
this process (worker threads on the in-memory broker, the stand-in interpreter and MOQUI
simulation), and hands back its exit code, its output and every log record it wrote.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import yaml
from django.core.management import call_command

from mqi_site.config import clear_config_cache
from tests import paths
from tests.conftest import base_config
from tests.workers.conftest import make_case
from tests.workers.conftest import workers as workers  # the fixture: worker threads

# Names of files an injected shell command would create; no test ever creates them.
INJECTED = [f"INJECTED_{n}" for n in range(1, 9)]


@dataclass(frozen=True)
class Site:
    root: Path

    @property
    def watch_dir(self) -> Path:
        return self.root / "incoming"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def upload_dir(self) -> Path:
        return self.root / "gpu-server" / "upload"

    @property
    def download_dir(self) -> Path:
        return self.root / "gpu-server" / "download"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def written_trees(self) -> list[Path]:
        """Where the system writes: the GPU server's trees and the results."""
        return [self.upload_dir, self.download_dir, self.results_dir]

    def sample(self, name: str | bytes, **switches: str) -> Path:
        """A valid sample case named ``name`` in the watch directory (READY marker included),
        its plan renamed ``RP.plan.dcm`` so reasons read the same in every test."""
        folder = make_case(self.watch_dir, os.fsdecode(name), switches=switches)
        next(folder.glob("RP.*.dcm")).rename(folder / "RP.plan.dcm")
        return folder

    def starts(self, case_id: str, program: str) -> int:
        """How often the stand-in ``program`` started for the case (its ``.mqi_starts``)."""
        return paths.starts(self.upload_dir, case_id, program)

    def results(self, case_id: str) -> Path:
        """The case's newest run's local results folder."""
        return paths.last_run_dir(self.results_dir, case_id)

    def case_dir(self, case_id: str) -> Path:
        """The case's newest run folder on the GPU server."""
        return paths.last_run_dir(self.upload_dir, case_id)


def site_config(site: Site, gpus: int = 8) -> dict[str, Any]:
    """The shipped config on ``site``: fast stand-ins, ``gpus`` static GPUs, short backoff."""
    raw = base_config(site.root)
    raw["remote_commands"]["run_moqui_sim"] += " --batches 2 --batch-seconds 0.05"
    raw["hosts"]["local"].update(
        gpu_discovery="static",
        static_gpus=[{"index": i, "uuid": f"GPU-static-{i}"} for i in range(gpus)],
    )
    raw["retries"] = {"backoff_base_sec": 0.1, "backoff_max_sec": 0.5}
    return raw


def make_site(root: Path, **config: Any) -> Site:
    site = Site(root)
    site.watch_dir.mkdir(parents=True)
    site.outside.mkdir()
    site.config_path.write_text(yaml.safe_dump(site_config(site, **config), sort_keys=False))
    return site


@pytest.fixture
def site(tmp_path, settings) -> Iterator[Site]:
    """A fresh site with one GPU, its config the active one."""
    made = make_site(tmp_path / "site", gpus=1)
    settings.MQI_CONFIG = made.config_path
    clear_config_cache()
    yield made
    clear_config_cache()


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    records: list[logging.LogRecord] = field(default_factory=list)

    @property
    def log_text(self) -> str:
        return "\n".join(
            logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
            for record in self.records
        )

    def crashes(self) -> list[str]:
        """Log lines that mean a handler blew up (a worker's traceback, a lost message)."""
        return [
            record.getMessage()
            for record in self.records
            if record.exc_info is not None
            or (record.levelno >= logging.ERROR and record.name.startswith("dramatiq"))
        ]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_mqi(*args: str, level: int | None = None) -> Run:
    """``manage.py runmqi ARGS`` in this process; the signal handlers and the broker's
    middleware it installs are put back afterwards, and nothing is left on the broker."""
    out, err = StringIO(), StringIO()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    broker = dramatiq.get_broker()
    middleware = list(broker.middleware)
    collect = _Collect()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(collect)
    if level is not None:
        root.setLevel(level)
    code = 0
    try:
        call_command("runmqi", *args, stdout=out, stderr=err)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        root.removeHandler(collect)
        root.setLevel(previous_level)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        broker.middleware[:] = middleware
        broker.flush_all()
    return Run(code, out.getvalue(), err.getvalue(), collect.records)


# --- looking at the file system ---------------------------------------------------------------


def listing(root: Path) -> dict[str, tuple[int, float]]:
    """Every entry under ``root`` (links not followed): size and mtime, by relative path."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime)
    return found


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.exists():
            yield from (path for path in root.rglob("*") if path.is_file())


def injected_files(*roots: Path) -> list[Path]:
    """Files an injected ``touch INJECTED_n`` made, anywhere under ``roots`` (and directly in
    them), in the current directory and in the home directory."""
    found = []
    for root in {*roots, Path.cwd(), Path.home()}:
        shallow = root in (Path.cwd(), Path.home())
        candidates = root.glob("INJECTED_*") if shallow else root.rglob("INJECTED_*")
        found += [path for path in candidates if path.name in INJECTED]
    return found
