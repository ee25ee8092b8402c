"""/users: who may do what (table of role x endpoint), tenancy, deactivation, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import TEST_PASSWORD

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
ROLES = ["anonymous", "user", "admin", "other_admin", "superadmin"]
NEW_PASSWORD = "Lantern over the harbour 9"

# (method, path template, body, expected status per role in ROLES order)
MATRIX = [
    ("GET", "/users", None, [401, 403, 200, 200, 200]),
    ("GET", "/users/{target}", None, [401, 403, 200, 404, 200]),
    ("PATCH", "/users/{target}", {"role": "admin"}, [401, 403, 200, 404, 200]),
    ("PATCH", "/users/{target}", {"groups": ["pii_access"]}, [401, 403, 200, 404, 200]),
    ("DELETE", "/users/{target}", None, [401, 403, 204, 404, 204]),
    ("POST", "/users/{target}/unlock", None, [401, 403, 204, 404, 204]),
    ("POST", "/users", {"email": "new@example.com", "password": NEW_PASSWORD}, [401, 403, 201, 201, 201]),
    (
        "POST",
        "/users",
        {"email": "new@example.com", "password": NEW_PASSWORD, "account_id": "{account}"},
        [401, 403, 201, 404, 201],
    ),
    (
        "POST",
        "/users",
        {"email": "new@example.com", "password": NEW_PASSWORD, "account_id": "SY0000"},
        [401, 403, 404, 404, 201],
    ),
    ("GET", "/users?account_id={account}", None, [401, 403, 200, 404, 200]),
]
CASES = [(m, p, b, role, statuses[i]) for m, p, b, statuses in MATRIX for i, role in enumerate(ROLES)]


def fill(value: Any, actors: dict[str, Any]) -> Any:
    names = {"target": actors["target"]["id"], "account": actors["admin"]["account_id"]}
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: fill(v, actors) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("method", "path", "body", "role", "status"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES]
)
def test_permissions(
    client: TestClient, actors: dict[str, Any], method: str, path: str, body: Any, role: str, status: int
) -> None:
    response = client.request(
        method, API + fill(path, actors), json=fill(body, actors), headers=actors[role]["headers"]
    )
    assert response.status_code == status, response.text
    if status >= 400:
        assert set(response.json()) == {"status", "code", "message", "fields", "request_id"}


def test_admin_lists_only_its_account(client: TestClient, actors: dict[str, Any]) -> None:
    page = client.get(f"{API}/users", headers=actors["admin"]["headers"]).json()
    assert set(page) == {"items", "page", "per_page", "total_items", "total_pages"}
    assert {u["account_id"] for u in page["items"]} == {actors["admin"]["account_id"]}
    assert page["total_items"] == 3 and page["total_pages"] == 1
    everyone = client.get(
        f"{API}/users?per_page=2&skip_total=true", headers=actors["superadmin"]["headers"]
    ).json()
    assert len(everyone["items"]) == 2 and everyone["total_items"] == -1


def test_created_user_can_log_in_and_superadmin_creation(client: TestClient, actors: dict[str, Any]) -> None:
    body = {"email": "Root2@Example.com", "password": NEW_PASSWORD, "account_id": "SY0000"}
    created = client.post(f"{API}/users", json=body, headers=actors["superadmin"]["headers"]).json()
    assert created["is_superadmin"] is True and created["email"] == "root2@example.com"
    login = client.post(
        f"{API}/auth/login",
        json={"email": "root2@example.com", "password": NEW_PASSWORD, "account_identifier": "system"},
    )
    assert login.status_code == 200


def test_deactivation_ends_sessions_and_reactivation(client: TestClient, actors: dict[str, Any]) -> None:
    target = actors["target"]
    assert client.get(f"{API}/auth/me", headers=target["headers"]).status_code == 200
    patched = client.patch(
        f"{API}/users/{target['id']}", json={"is_active": False}, headers=actors["admin"]["headers"]
    )
    assert patched.json()["is_active"] is False
    assert client.get(f"{API}/auth/me", headers=target["headers"]).status_code == 401
    assert (
        client.post(f"{API}/auth/refresh", json={"refresh_token": target["refresh_token"]}).status_code == 401
    )
    client.patch(f"{API}/users/{target['id']}", json={"is_active": True}, headers=actors["admin"]["headers"])
    login = client.post(
        f"{API}/auth/login",
        json={
            "email": target["email"],
            "password": TEST_PASSWORD,
            "account_identifier": target["account_id"],
        },
    )
    assert login.status_code == 200


def test_role_change_applies_on_next_request(client: TestClient, actors: dict[str, Any]) -> None:
    user = actors["user"]
    assert client.get(f"{API}/users", headers=user["headers"]).status_code == 403
    client.patch(f"{API}/users/{user['id']}", json={"role": "admin"}, headers=actors["admin"]["headers"])
    assert client.get(f"{API}/users", headers=user["headers"]).status_code == 200


def test_admin_cannot_demote_or_delete_itself(client: TestClient, actors: dict[str, Any]) -> None:
    admin = actors["admin"]
    for method, body in (("PATCH", {"role": "user"}), ("PATCH", {"is_active": False}), ("DELETE", None)):
        response = client.request(method, f"{API}/users/{admin['id']}", json=body, headers=admin["headers"])
        assert response.status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"email": "x@example.com"}, 400, "password"),
        ({"email": "nope", "password": NEW_PASSWORD}, 400, "email"),
        ({"email": "x@example.com", "password": NEW_PASSWORD, "role": "wizard"}, 400, "role"),
        ({"email": "x@example.com", "password": NEW_PASSWORD, "groups": ["no-such"]}, 400, "groups"),
        ({"email": "x@example.com", "password": NEW_PASSWORD, "groups": "pii_access"}, 400, "groups"),
        ({"email": "x@example.com", "password": NEW_PASSWORD, "is_superadmin": True}, 400, "is_superadmin"),
        ({"email": "x@example.com", "password": NEW_PASSWORD, "role": "r" * 65}, 400, "role"),
        ({"email": "xavier@example.com", "password": "Xavier loves long walks"}, 400, "password"),
    ],
)
def test_create_bad_input_changes_nothing(
    client: TestClient, actors: dict[str, Any], body: dict[str, Any], status: int, field: str
) -> None:
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    before = conn.execute("SELECT count(*) FROM users").fetchall()
    response = client.post(f"{API}/users", json=body, headers=actors["admin"]["headers"])
    assert response.status_code == status and field in response.json()["fields"], response.text
    assert conn.execute("SELECT count(*) FROM users").fetchall() == before


def test_duplicate_email_in_account_is_409_but_other_account_is_fine(
    client: TestClient, actors: dict[str, Any]
) -> None:
    email = actors["target"]["email"]
    body = {"email": email.upper(), "password": NEW_PASSWORD}
    assert client.post(f"{API}/users", json=body, headers=actors["admin"]["headers"]).status_code == 409
    assert client.post(f"{API}/users", json=body, headers=actors["other_admin"]["headers"]).status_code == 201


def test_patch_groups_and_unknown_keys(client: TestClient, actors: dict[str, Any]) -> None:
    target, headers = actors["target"], actors["admin"]["headers"]
    response = client.patch(f"{API}/users/{target['id']}", json={"groups": ["pii_access"]}, headers=headers)
    assert response.json()["groups"] == ["pii_access"]
    from snackbase.auth import user_groups

    assert user_groups(client.app.state.db.conn, target["id"]) == {"pii_access"}  # type: ignore[attr-defined]
    bad = client.patch(f"{API}/users/{target['id']}", json={"account_id": "SY0000"}, headers=headers)
    assert bad.status_code == 400 and "account_id" in bad.json()["fields"]
