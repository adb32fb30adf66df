"""Fixtures for the admin tests: users, cases in every state, and a headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from playwright.sync_api import Browser, BrowserContext, sync_playwright

from tests.admin.helpers import PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# --- users ----------------------------------------------------------------------------


@pytest.fixture
def operator(django_user_model) -> User:
    """A superuser: may look and act."""
    return django_user_model.objects.create_superuser("operator", "op@example.org", PASSWORD)


@pytest.fixture
def viewer(django_user_model) -> User:
    """Staff with view permission only: may look, may not act."""
    user = django_user_model.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    codenames = ["view_case", "view_gpuresource"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator_client(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(viewer) -> Client:
    client = Client()
    client.force_login(viewer)
    return client


# --- browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per module.

    Playwright's sync API keeps an event loop running in this thread, which makes Django's
    ORM refuse to run ("async context"); the tests call the ORM only between page actions,
    never concurrently with them, so that guard is lifted while the browser is open.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield browser
            browser.close()


@pytest.fixture
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(10_000)
    yield context
    context.close()
