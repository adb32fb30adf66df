"""Builders for the admin tests: cases in a given state (made by the conductor), pages."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from playwright.sync_api import BrowserContext, Page

from cases.models import Case, WorkflowStep
from conductor import maintenance, transitions
from gpus.models import GPUResource
from tests.conductor.helpers import (
    active_run,
    fail,
    make_gpus,
    register_sample,
    run_to_completion,
    succeed,
)

REPO_DIR = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_DIR / "artifacts" / "screenshots"
PASSWORD = "a-test-password-1"  # a throw-away test user


def case_at_step(case_id: str, steps_done: int) -> Case:
    """A registered case (from a sample folder) whose first ``steps_done`` steps succeeded."""
    case = register_sample(case_id)
    for _ in range(steps_done):
        succeed(active_run(case), exit_code=0, stdout_tail=f"{case_id}: step done\n")
    case.refresh_from_db()
    return case


def processing_case(case_id: str) -> Case:
    """A case running its interpreter (its upload succeeded)."""
    return case_at_step(case_id, 1)


def failed_case(case_id: str) -> Case:
    """A case whose interpreter failed with an exit code and output."""
    case = processing_case(case_id)
    fail(
        active_run(case),
        message="interpreter exited with 2",
        exit_code=2,
        stdout_tail="reading plan\nreading logs\n",
        stderr_tail="Traceback (most recent call last):\nValueError: no beam in the plan\n",
    )
    case.refresh_from_db()
    return case


def completed_case(case_id: str) -> Case:
    return run_to_completion(register_sample(case_id))


def cancelled_case(case_id: str) -> Case:
    case = register_sample(case_id)
    return transitions.case_cancel(case_pk=case.pk, actor="operator")


def populate_demo() -> dict[str, Case]:
    """A small clinic: two GPU servers, cases in every state, a GPU in maintenance."""
    make_gpus(3, host="local")
    make_gpus(2, host="gpu-node-2")
    node2 = GPUResource.objects.filter(host="gpu-node-2")
    maintenance.gpu_start_maintenance(gpu_pk=node2.get(index=1).pk, actor="operator")
    completed_case("QA-2025-0100")
    cases = {
        "failed": failed_case("QA-2025-0101"),
        "completed": completed_case("QA-2025-0102"),
        "cancelled": cancelled_case("QA-2025-0103"),
        "uploading": case_at_step("QA-2025-0104", 0),
        "interpreting": case_at_step("QA-2025-0105", 1),
        "simulating": case_at_step("QA-2025-0106", 2),
        "downloading": case_at_step("QA-2025-0107", 3),
        "waiting": register_sample("QA-2025-0108"),
    }
    _gpu_readings()
    return cases


def _gpu_readings() -> None:
    now = timezone.now()
    for gpu in GPUResource.objects.all():
        busy = gpu.status == GPUResource.Status.RESERVED
        GPUResource.objects.filter(pk=gpu.pk).update(
            utilization_pct=97 if busy else 0,
            memory_used_mib=18_432 if busy else 310,
            memory_total_mib=24_576,
            temperature_c=78 if busy else 41,
            last_seen=now,
        )


def bulk_cases(count: int, *, start: int = 0) -> list[Case]:
    """``count`` cases in a mix of states, written in one go (no conductor: speed)."""
    statuses = [Case.Status.COMPLETED, Case.Status.FAILED, Case.Status.PROCESSING]
    cases = [
        Case(
            case_id=f"bulk-{start + i:05d}",
            source_path=f"/incoming/bulk-{start + i:05d}",
            workflow="default_qa",
            status=statuses[i % 3],
            workflow_step="run_moqui_sim",
            progress=70,
            host="local",
        )
        for i in range(count)
    ]
    return Case.objects.bulk_create(cases, batch_size=2000)


def hold_gpus(cases: list[Case], gpus: list[GPUResource]) -> None:
    """Give each GPU to a step run of one of the PROCESSING ``cases`` (as the conductor
    would)."""
    running = [case for case in cases if case.status == Case.Status.PROCESSING]
    for gpu, case in zip(gpus, running, strict=False):
        run = WorkflowStep.objects.create(
            case=case, name="run_moqui_sim", type="execute", status=WorkflowStep.Status.RUNNING
        )
        GPUResource.objects.filter(pk=gpu.pk).update(
            status=GPUResource.Status.RESERVED, step_run=run
        )


def reload(case: Case) -> Case:
    return Case.objects.get(pk=case.pk)


# --- pages ----------------------------------------------------------------------------


def logged_in_page(context: BrowserContext, live_server, user: User) -> Page:
    """A page whose session is already logged in as ``user`` (skips the login form)."""
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    return context.new_page()


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
