"""Secrets come from the environment or from files (``NAME_FILE``), never from config.yaml;
they never reach a log line, an output, a stored message or a written file; production
settings refuse to start without them and pass ``check --deploy`` with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from cases.models import Case, CaseEvent, WorkflowStep
from mqi_site.config import ConfigError, parse_config
from mqi_site.env import env_str
from tests.badinput.conftest import Site, files_under, make_site
from tests.conftest import REPO_DIR, base_config
from tests.ports import free_port

MARKER = "S3CRET-MARKER-d41d8cd98f"
SECRET_KEY = MARKER + "-secret-key-" + "k" * 40


def manage(*args: str, env: dict[str, str], cwd: Path = REPO_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_DIR / "manage.py"), *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- where secrets come from ------------------------------------------------------------------


def test_a_secret_is_read_from_the_file_named_by_name_file(monkeypatch, tmp_path):
    (tmp_path / "password").write_text(MARKER + "\n")
    monkeypatch.setenv("EMAIL_HOST_PASSWORD", "from-the-variable")
    monkeypatch.setenv("EMAIL_HOST_PASSWORD_FILE", str(tmp_path / "password"))

    assert env_str("EMAIL_HOST_PASSWORD") == MARKER  # the file wins, without its newline


def test_an_unreadable_secret_file_names_the_variable_not_the_content(monkeypatch, tmp_path):
    monkeypatch.setenv("DJANGO_SECRET_KEY_FILE", str(tmp_path / "missing"))

    with pytest.raises(ImproperlyConfigured) as refused:
        env_str("DJANGO_SECRET_KEY")

    assert str(refused.value) == (
        f"DJANGO_SECRET_KEY_FILE={tmp_path / 'missing'}: cannot read it (No such file or directory)"
    )


def test_config_yaml_has_no_place_for_a_password(tmp_path):
    raw = base_config(tmp_path)
    raw["hosts"]["gpu1"] = {
        "transport": "ssh",
        "username": "mqi",
        "key_file": "/etc/mqi/id_ed25519",
        "known_hosts_file": "/etc/mqi/known_hosts",
        "password": MARKER,
    }

    with pytest.raises(ConfigError) as refused:
        parse_config(yaml.safe_dump(raw), source="config.yaml")

    assert refused.value.problems == ["hosts.gpu1.password: unknown key"]
    assert MARKER not in str(refused.value)


# --- production settings ------------------------------------------------------------------------


@pytest.fixture
def production_env(tmp_path) -> dict[str, str]:
    secret_file = tmp_path / "django_secret_key"
    secret_file.write_text(SECRET_KEY + "\n")
    return {
        "DJANGO_SETTINGS_MODULE": "mqi_site.settings_production",
        "DJANGO_SECRET_KEY_FILE": str(secret_file),
        "DATABASE_URL": f"postgres://postgres:{MARKER}@127.0.0.1:5432/postgres",
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "MQI_DATA_DIR": str(tmp_path / "data"),
        "MQI_CONFIG": str(REPO_DIR / "config.yaml"),
    }


def test_production_settings_pass_check_deploy_with_the_key_in_a_file(production_env):
    done = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout
    assert MARKER not in done.stdout + done.stderr


NO_KEY = "set DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) to 50+ random characters"


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"DJANGO_SECRET_KEY_FILE": None}, NO_KEY),
        ({"DJANGO_SECRET_KEY_FILE": None, "DJANGO_SECRET_KEY": "short"}, NO_KEY),
        ({"DATABASE_URL": None}, "production needs DATABASE_URL (PostgreSQL)"),
        ({"REDIS_URL": None}, "production needs REDIS_URL"),
        ({"DJANGO_SECRET_KEY_FILE": "/nonexistent/key"}, "DJANGO_SECRET_KEY_FILE=/nonexistent"),
    ],
    ids=["no secret key", "short secret key", "no DATABASE_URL", "no REDIS_URL", "no key file"],
)
def test_production_settings_refuse_to_start_without(production_env, change, refusal):
    env = {**production_env, **change}
    env = {name: value for name, value in env.items() if value is not None}

    done = manage("check", env=env)

    assert done.returncode != 0
    assert f"ImproperlyConfigured: {refusal}" in done.stderr
    assert MARKER not in done.stdout + done.stderr


# --- a whole run with every secret set and DEBUG logging ---------------------------------------


def secrets_site(root: Path) -> Site:
    site = make_site(root / "site", gpus=2)
    raw = yaml.safe_load(site.config_path.read_text())
    raw["notifications"] = {"email_to": ["physics@example.org"]}
    site.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    site.sample("QA-ok")
    site.sample("QA-fails", MQI_FAIL_INTERPRETER="3 beam 2 log does not match the plan")
    (site.sample("QA-invalid") / "RP.plan.dcm").write_text("not a plan")
    return site


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_no_secret_reaches_a_log_an_output_a_stored_message_or_a_file(tmp_path):
    site = secrets_site(tmp_path)
    (tmp_path / "secret_key").write_text(SECRET_KEY)
    database = settings.DATABASES["default"]
    env = {
        "DJANGO_SETTINGS_MODULE": "mqi_site.settings",
        "MQI_CONFIG": str(site.config_path),
        "MQI_DATA_DIR": str(tmp_path / "data"),
        "MQI_LOG_LEVEL": "DEBUG",
        "DATABASE_URL": (
            f"postgres://{database['USER']}:{MARKER}@{database['HOST']}:{database['PORT']}/"
            f"{database['NAME']}"
        ),
        "DJANGO_SECRET_KEY_FILE": str(tmp_path / "secret_key"),
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(free_port()),  # nobody listens: sending the failure mail fails
        "EMAIL_HOST_USER": "mqi",
        "EMAIL_HOST_PASSWORD": MARKER + "-mail",
        "MQI_METRICS_TOKEN": MARKER + "-metrics",
    }
    loaded = manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings as s; "
        f"print(s.SECRET_KEY == {SECRET_KEY!r}, s.EMAIL_HOST_PASSWORD == {MARKER + '-mail'!r}, "
        f"s.DATABASES['default']['PASSWORD'] == {MARKER!r})",
        env=env,
    )

    done = manage("runmqi", "--once", "--timeout", "90", env=env, cwd=tmp_path)

    assert loaded.stdout.split() == ["True", "True", "True"], loaded.stderr
    output = done.stdout + done.stderr
    assert "Completed  QA-ok" in done.stdout, output
    assert "Failed     QA-fails  run_interpreter failed: exited with code 3" in done.stdout
    assert "Failed     QA-invalid  invalid case folder" in done.stdout
    assert " DEBUG " in output and "notifier" in output  # DEBUG lines, and the mail failed
    assert MARKER not in output
    stored = [
        *Case.objects.values_list("error_message", "source_path"),
        *CaseEvent.objects.values_list("message", flat=True),
        *WorkflowStep.objects.values_list("command", "stdout_tail", "stderr_tail"),
    ]
    assert MARKER not in repr(stored)
    secret_files = {tmp_path / "secret_key"}
    leaked = [
        path
        for path in files_under(tmp_path)
        if path not in secret_files and MARKER.encode() in path.read_bytes()
    ]
    assert leaked == []
