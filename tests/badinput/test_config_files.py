"""Configuration files that are hostile as files: not UTF-8, nested or aliased to blow up
the loader, or with durations YAML can spell but no clock can wait.  Each is a problem line
from ``check_config`` and the system check, never a traceback or a hang."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError

from tests.conftest import base_config


def shipped() -> bytes:
    return yaml.safe_dump(base_config(Path("/tmp/mqi-unused")), sort_keys=False).encode()


def retries(value: str, key: str = "backoff_max_sec") -> bytes:
    raw = base_config(Path("/tmp/mqi-unused"))
    raw.pop("retries")
    text = yaml.safe_dump(raw, sort_keys=False) + f"retries:\n  {key}: {value}\n"
    return text.encode()


ALIASES = "".join(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]\n" for n in range(1, 8)).replace(
    "*l0", "x"
)

FILES = [
    (
        "latin-1",
        "# Universitätsklinik\n".encode("latin-1") + shipped(),
        "(file): not UTF-8 text: byte 11 cannot be decoded (invalid continuation byte)",
    ),
    ("binary", b"\x00\xff\xfe" * 100, "(file): not UTF-8 text: byte 1"),
    ("deeply nested", ("a: " + "[" * 5000 + "]" * 5000).encode(), "(file): nested too deeply"),
    ("nested", ("a: " + "[" * 100 + "]" * 100).encode(), "(file): nested more than 20 levels deep"),
    ("aliases", ALIASES.encode(), "(file): more than 100000 values (expanded YAML aliases count)"),
    ("huge", b"# " + b"x" * 2_000_000 + b"\n", "(file): longer than 1000000 characters"),
    (
        "infinite backoff",
        retries(".inf"),
        "retries.backoff_max_sec: Input should be a finite number",
    ),
    (
        "NaN backoff",
        retries(".nan", "backoff_base_sec"),
        "retries.backoff_base_sec: Input should be a finite number",
    ),
    (
        "1e308 backoff",
        retries("1e308"),
        "retries.backoff_max_sec: Input should be less than or equal to 86400",
    ),
    (
        "backoff over a day",
        retries("86401", "backoff_base_sec"),
        "retries.backoff_base_sec: Input should be less than or equal to 86400",
    ),
]


@pytest.fixture
def hostile_file(request, tmp_path, settings) -> tuple[Path, str]:
    _what, content, problem = request.param
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    settings.MQI_CONFIG = path
    return path, problem


every_file = pytest.mark.parametrize(
    "hostile_file", FILES, ids=[what for what, *_ in FILES], indirect=True
)


@every_file
def test_check_config_names_the_problem(hostile_file, capsys):
    path, problem = hostile_file

    with pytest.raises(CommandError, match=r"problem\(s\) in "):
        call_command("check_config", "--config", str(path))

    assert f"{path}: {problem}" in capsys.readouterr().err


@every_file
def test_the_system_check_names_the_problem(hostile_file):
    _, problem = hostile_file

    with pytest.raises(SystemCheckError) as refused:
        call_command("check", stdout=StringIO(), stderr=StringIO())

    assert problem in str(refused.value)


def test_a_backoff_of_a_day_is_accepted(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_bytes(retries("86400"))

    call_command("check_config", "--config", str(path))

    assert ": OK (" in capsys.readouterr().out
