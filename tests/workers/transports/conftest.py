"""Transport tests: a real sshd per test, no Django needed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.transports.ssh import close_thread_connections


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_thread_connections()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder for big files, removed after the test (pytest keeps tmp_path around)."""
    path = tmp_path / "scratch"
    path.mkdir()
    yield path
    shutil.rmtree(path)
