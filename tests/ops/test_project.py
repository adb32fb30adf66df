"""The project's own health: migrations, checks, health and metrics endpoints."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection

from tests.conductor.helpers import make_gpus, register
from tests.conftest import REPO_DIR


def test_migrations_match_the_models(db):
    call_command("makemigrations", "--check", "--dry-run", stdout=StringIO())


def test_system_checks_pass_on_the_shipped_config(db):
    call_command("check", stdout=StringIO())


def test_production_settings_pass_check_deploy(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "mqi_site.settings_production",
        "DJANGO_SECRET_KEY": "x" * 20 + "production-secret-key-for-the-deploy-check-0123456789",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "MQI_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


@pytest.mark.django_db
def test_healthz_says_ok_without_login(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_healthz_says_failing_when_the_database_is_down(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", refuse)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "fail"}  # which part: in the log, and for staff


@pytest.mark.django_db(transaction=True)
def test_metrics_count_cases_gpus_and_steps(admin_client, stub_broker):
    make_gpus(2)
    register("case-1")
    register("case-2")
    register("case-3")

    body = admin_client.get("/metrics").content.decode()

    assert 'mqi_cases{status="PROCESSING"} 2.0' in body
    assert 'mqi_cases{status="PENDING_RESOURCE"} 1.0' in body
    assert 'mqi_gpus{host="local",status="RESERVED"} 2.0' in body
    assert 'mqi_step_attempts_total{step="upload_case_files"} 2.0' in body


@pytest.mark.django_db
def test_metrics_need_staff_or_the_token(client, monkeypatch):
    assert client.get("/metrics").status_code == 401
    monkeypatch.setenv("MQI_METRICS_TOKEN", "s3cret")

    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
