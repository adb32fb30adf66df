"""docker-compose.yml and the Dockerfile, checked statically.

This machine has the docker client but no engine and no compose plugin, so the stack is not
started here; its processes are started one by one by tests/harness.py instead. What can be
checked without an engine is checked: every service, health check, command and file the
stack names exists and agrees with the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

from mqi_site.config import load_config
from mqi_site.messaging import QUEUES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_the_stack_has_every_part_and_each_long_running_one_a_health_check(compose):
    services = compose["services"]

    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "web",
        "conductor",
        "workers",
        "scheduler",
    }
    for name, service in services.items():
        if name != "migrate":
            assert service["healthcheck"]["test"], name


def test_every_command_is_a_management_command_and_every_queue_is_consumed(compose):
    consumed = set()
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[:2] != ["python", "manage.py"]:
            continue
        assert command[2] in get_commands(), f"{name}: no command {command[2]!r}"
        if "--queues" in command:
            consumed.update(command[command.index("--queues") + 1 :])

    assert consumed == set(QUEUES.values())


def test_secrets_come_from_the_environment_and_are_required(compose):
    environment = compose["x-mqi"]["environment"]

    assert environment["DJANGO_SETTINGS_MODULE"] == "mqi_site.settings_production"
    assert environment["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")
    assert "${POSTGRES_PASSWORD:?" in environment["DATABASE_URL"]


def test_the_example_configuration_the_stack_mounts_is_valid(compose):
    config = load_config(REPO / "deploy" / "config.example.yaml")
    mounted = {_container_path(volume) for volume in compose["x-mqi"]["volumes"]}

    assert config.hosts["gpu1"].transport == "ssh"
    assert config.hosts["gpu1"].key_file.startswith("/run/secrets/mqi/")
    assert {config.scanner.watch_dir, config.results.local_dir} <= mounted
    assert compose["x-mqi"]["environment"]["MQI_CONFIG"] in mounted


def _container_path(volume: str) -> str:
    """``SOURCE:TARGET[:MODE]``, where SOURCE may hold ``${VAR:-default}``."""
    rest, _, last = volume.rpartition(":")
    return rest.rpartition(":")[2] if last in ("ro", "rw") else last


def test_the_dockerfile_copies_what_exists_and_runs_as_a_plain_user():
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = [
        path
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for path in line.split()[1:-1]
    ]

    assert copied and all((REPO / path).exists() for path in copied), copied
    assert re.search(r"^USER mqi$", dockerfile, re.MULTILINE)
