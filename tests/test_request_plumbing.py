"""The small pieces every request passes: the app's state, header lookup, and the shared anonymous caller."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.stack import AppState
from snackbase.web import header
from tests.conftest import make_settings


def test_app_state_keeps_values_as_plain_attributes() -> None:
    state = AppState()
    state.db = "the database"
    assert vars(state)["db"] == "the database"  # found by the ordinary lookup, no __getattr__ call
    assert state._state is vars(state)
    assert state["db"] == "the database"
    del state.db
    with pytest.raises(AttributeError, match="'AppState' object has no attribute 'db'"):
        _ = state.db


def test_the_server_uses_app_state(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "data"))
    assert isinstance(app.state, AppState)
    assert "db" in vars(app.state) and "settings" in vars(app.state)


def test_header_answers_the_first_value_of_a_lowercase_name() -> None:
    scope = {"headers": [(b"x-a", b"1"), (b"if-match", b'"v1"'), (b"x-a", b"2"), (b"caf\xe9", b"\xe9t\xe9")]}
    assert header(scope, b"x-a") == "1"
    assert header(scope, b"if-match") == '"v1"'
    assert header(scope, b"caf\xe9") == "\u00e9t\u00e9"  # latin-1, as Starlette decodes headers
    assert header(scope, b"X-A") is None  # ASGI header names are lowercase; callers ask in lowercase
    assert header(scope, b"missing") is None


def test_anonymous_callers_of_an_account_are_shared_and_still_checked(client: TestClient) -> None:
    # Two requests naming the same account share one anonymous caller; a bad or unknown reference is
    # still refused on every request, before and after a good one was remembered.
    assert client.get("/api/v1/records/nothing", headers={"x-account-id": "SY0000"}).status_code == 404
    bad = client.get("/api/v1/records/nothing", headers={"x-account-id": "not an id!"})
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"
    unknown = client.get("/api/v1/records/nothing", headers={"x-account-id": "ZZ9999"})
    assert unknown.status_code == 404 and "X-Account-ID" in unknown.json()["message"]
    padded = client.get("/api/v1/records/nothing", headers={"x-account-id": " SY0000 "})
    assert padded.status_code == 404 and padded.json()["message"] != unknown.json()["message"]


def test_a_reference_a_superadmin_looked_up_unchecked_is_still_checked_for_anonymous_callers(
    client: TestClient, superadmin_token: str
) -> None:
    # A superadmin's X-Account-ID is found without the id/slug pattern check ("sy0000" names SY0000).
    # That lookup must not let the same malformed reference pass for an anonymous caller.
    admin = {"authorization": f"Bearer {superadmin_token}"}
    posts = {"name": "posts", "fields": [{"name": "title", "type": "text"}], "rules": {"list": ""}}
    assert client.post("/api/v1/collections", json=posts, headers=admin).status_code == 201
    as_superadmin = {**admin, "x-account-id": "Sy0000"}
    assert client.get("/api/v1/records/posts", headers=as_superadmin).status_code == 200  # found
    anonymous = client.get("/api/v1/records/posts", headers={"x-account-id": "Sy0000"})
    assert anonymous.status_code == 400 and anonymous.json()["code"] == "bad_request"
