"""Every page but ``/healthz`` needs a staff login: the test walks every URL pattern the
project serves (a pattern added later is walked too, or the walk fails until it is given a
sample), and asks for it without a login and as a user who is not staff."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve

pytestmark = pytest.mark.django_db

# Values for the parts of a route, so that each pattern becomes a URL it matches.
SAMPLE_VALUES = {
    "object_id": "1",
    "content_type_id": "1",
    "id": "1",
    "action_name": "cancel",
    "file_pk": "1",
    "criterion_pk": "1",
    "size": "dose",
}
SAMPLE_REGEX = {
    r"^(?P<app_label>auth|cases|gpus)/$": "cases/",
    r"(?P<url>.*)$": "no-such-page/",
}
# Open on purpose: the login form itself, and logging out (which shows nothing).
PUBLIC = {"admin/login/", "admin/logout/"}
ADMIN_LOGIN = "/admin/login/"


def routes(patterns=None, prefix: str = "") -> Iterator[str]:
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            assert isinstance(pattern, URLPattern)
            yield prefix + str(pattern.pattern)


def sample_url(route: str) -> str:
    for regex, sample in SAMPLE_REGEX.items():
        if route.endswith(regex):
            return "/" + route.removesuffix(regex) + sample
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: SAMPLE_VALUES[m[1]], route)


ROUTES = sorted(set(routes()))
PROTECTED = [route for route in ROUTES if route not in PUBLIC | {"", "healthz", "metrics"}]


@pytest.fixture
def not_staff() -> Client:
    client = Client()
    client.force_login(User.objects.create(username="visitor"))  # no password: no hashing
    return client


def test_every_route_has_a_sample_url_that_it_matches():
    for route in ROUTES:
        assert resolve(sample_url(route)).route == route.replace("^", "")


@pytest.mark.parametrize("route", PROTECTED)
@pytest.mark.parametrize("method", ["get", "post"])
def test_an_admin_page_sends_the_anonymous_to_the_login(client, route, method):
    url = sample_url(route)

    response = getattr(client, method)(url)

    assert response.status_code == 302
    assert response["Location"].startswith(f"{ADMIN_LOGIN}?next=")


@pytest.mark.parametrize("route", PROTECTED)
def test_an_admin_page_sends_a_user_who_is_not_staff_to_the_login(not_staff, route):
    response = not_staff.get(sample_url(route))

    assert response.status_code == 302
    assert response["Location"].startswith(f"{ADMIN_LOGIN}?next=")


def test_the_root_only_redirects_to_the_admin(client):
    response = client.get("/")

    assert (response.status_code, response["Location"]) == (302, "/admin/")


def test_the_login_page_is_the_only_admin_page_shown_to_the_anonymous(client):
    assert client.get(ADMIN_LOGIN).status_code == 200
    assert b"Case" not in client.get(ADMIN_LOGIN).content


def test_healthz_answers_anyone_and_says_nothing_else(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("token", "header", "expected"),
    [
        (None, None, 401),
        (None, "Bearer ", 401),  # no token set: an empty bearer is not a match
        (None, "Bearer None", 401),
        ("s3cret-token", None, 401),
        ("s3cret-token", "Bearer wrong", 401),
        ("s3cret-token", "s3cret-token", 401),  # the scheme is part of the header
        ("s3cret-token", "Bearer s3cret-token", 200),
    ],
)
def test_metrics_need_the_bearer_token(client, monkeypatch, token, header, expected):
    if token is None:
        monkeypatch.delenv("MQI_METRICS_TOKEN", raising=False)
    else:
        monkeypatch.setenv("MQI_METRICS_TOKEN", token)
    headers = {} if header is None else {"Authorization": header}

    assert client.get("/metrics", headers=headers).status_code == expected


def test_metrics_token_can_come_from_a_file(client, monkeypatch, tmp_path):
    (tmp_path / "token").write_text("file-token\n")
    monkeypatch.setenv("MQI_METRICS_TOKEN_FILE", str(tmp_path / "token"))

    assert client.get("/metrics", headers={"Authorization": "Bearer file-token"}).status_code == 200


def test_metrics_need_staff_when_logged_in(not_staff, admin_client, monkeypatch):
    monkeypatch.delenv("MQI_METRICS_TOKEN", raising=False)

    assert not_staff.get("/metrics").status_code == 401
    assert admin_client.get("/metrics").status_code == 200
