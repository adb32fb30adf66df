"""Shared fixtures: configuration files, the in-memory broker, GPUs and cases."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import yaml
from dramatiq import Message

from mqi_site.config import clear_config_cache

REPO_DIR = Path(__file__).resolve().parent.parent


def base_config(tmp_path: Path) -> dict[str, Any]:
    """The shipped config.yaml with every local path moved under ``tmp_path``."""
    raw = yaml.safe_load((REPO_DIR / "config.yaml").read_text())
    raw["conductor"]["remote_paths"] = {
        "upload_dir": str(tmp_path / "gpu-server" / "upload"),
        "download_dir": str(tmp_path / "gpu-server" / "download"),
    }
    raw["scanner"]["watch_dir"] = str(tmp_path / "incoming")
    raw["results"]["local_dir"] = str(tmp_path / "results")
    return raw


FAULTS_DIR = REPO_DIR / "tests" / "faults"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault suite first, as one xdist group: with ``bin/test``'s workers its
    production systems run one at a time on one worker (their processes and timings stay
    as when run alone) while the other workers take the rest of the suite."""
    faults = [item for item in items if item.path.is_relative_to(FAULTS_DIR)]
    for item in faults:
        item.add_marker(pytest.mark.xdist_group("faults"))
    items[:] = faults + [item for item in items if not item.path.is_relative_to(FAULTS_DIR)]


@pytest.fixture
def use_config(settings, tmp_path) -> Iterator[Callable[..., Path]]:
    """Write a config (the shipped one, changed by ``edit``) and make it the active one."""

    def use(edit: Callable[[dict[str, Any]], None] | None = None, *, text: str | None = None):
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.yaml')))}.yaml"
        if text is None:
            raw = base_config(tmp_path)
            if edit is not None:
                edit(raw)
            text = yaml.safe_dump(raw, sort_keys=False)
        path.write_text(text)
        settings.MQI_CONFIG = path
        clear_config_cache()
        return path

    yield use
    clear_config_cache()


@pytest.fixture(autouse=True)
def _default_config(request, tmp_path) -> Iterator[None]:
    """Every test starts from the shipped config with its paths under tmp_path.

    Pure tests (scanner rules, parsers, stand-ins) also run with ``-p no:django``.
    """
    if not request.config.pluginmanager.has_plugin("django"):
        yield
        return
    settings = request.getfixturevalue("settings")
    path = tmp_path / "config-default.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path), sort_keys=False))
    settings.MQI_CONFIG = path
    clear_config_cache()
    yield
    clear_config_cache()


@pytest.fixture
def stub_broker() -> Iterator[dramatiq.Broker]:
    broker = dramatiq.get_broker()
    broker.flush_all()
    yield broker
    broker.flush_all()


def drain(broker: dramatiq.Broker, queue_name: str) -> list[Message]:
    """Every message waiting on ``queue_name`` (and its delay queue), oldest first."""
    messages = []
    for name in (queue_name, f"{queue_name}.DQ"):
        queue = broker.queues.get(name)
        while queue is not None and not queue.empty():
            messages.append(Message.decode(queue.get_nowait()))
    return messages
