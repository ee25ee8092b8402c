"""/accounts: superadmins manage accounts; account admins read and rename their own."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
ROLES = ["anonymous", "user", "admin", "other_admin", "superadmin"]

MATRIX = [
    ("GET", "/accounts", None, [401, 403, 403, 403, 200]),
    ("POST", "/accounts", {"name": "New Co"}, [401, 403, 403, 403, 201]),
    ("GET", "/accounts/{account}", None, [401, 403, 200, 404, 200]),
    ("PATCH", "/accounts/{account}", {"name": "Renamed"}, [401, 403, 200, 404, 200]),
    ("PATCH", "/accounts/{account}", {"slug": "new-slug"}, [401, 403, 403, 404, 200]),
    ("DELETE", "/accounts/{account}", None, [401, 403, 403, 403, 204]),
    ("DELETE", "/accounts/SY0000", None, [401, 403, 403, 403, 409]),
    ("GET", "/accounts/SY0000", None, [401, 403, 404, 404, 200]),
]
CASES = [(m, p, b, role, statuses[i]) for m, p, b, statuses in MATRIX for i, role in enumerate(ROLES)]


@pytest.mark.parametrize(
    ("method", "path", "body", "role", "status"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES]
)
def test_permissions(
    client: TestClient, actors: dict[str, Any], method: str, path: str, body: Any, role: str, status: int
) -> None:
    url = API + path.format(account=actors["admin"]["account_id"])
    response = client.request(method, url, json=body, headers=actors[role]["headers"])
    assert response.status_code == status, response.text


def test_create_derives_slug_and_pii_group(client: TestClient, actors: dict[str, Any]) -> None:
    headers = actors["superadmin"]["headers"]
    first = client.post(f"{API}/accounts", json={"name": "Ünïcode Café"}, headers=headers).json()
    second = client.post(f"{API}/accounts", json={"name": "Ünïcode Café"}, headers=headers).json()
    assert (first["slug"], second["slug"]) == ("unicode-cafe", "unicode-cafe-2")
    groups = client.get(f"{API}/groups?account_id={first['id']}", headers=headers).json()["items"]
    assert [g["name"] for g in groups] == ["pii_access"]
    taken = client.post(f"{API}/accounts", json={"name": "X", "slug": "unicode-cafe"}, headers=headers)
    assert taken.status_code == 409 and taken.json()["code"] == "slug_taken"


def test_delete_removes_users_and_their_sessions(client: TestClient, actors: dict[str, Any]) -> None:
    account = actors["admin"]["account_id"]
    assert (
        client.delete(f"{API}/accounts/{account}", headers=actors["superadmin"]["headers"]).status_code == 204
    )
    assert client.get(f"{API}/auth/me", headers=actors["admin"]["headers"]).status_code == 401
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    assert conn.execute("SELECT count(*) FROM users WHERE account_id = ?", (account,)).fetchall()[0][0] == 0


def test_account_id_generator_retries_and_reports_exhaustion(client: TestClient, monkeypatch: Any) -> None:
    from snackbase import accounts

    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    ids = iter(["SY0000", "SY0000", "AB1234"])
    monkeypatch.setattr(accounts, "random_account_id", lambda: next(ids))
    assert accounts.new_account_id(conn) == "AB1234"
    monkeypatch.setattr(accounts, "random_account_id", lambda: "SY0000")
    with pytest.raises(accounts.AccountIdsExhausted, match="id space is full"):
        accounts.new_account_id(conn)


@pytest.mark.parametrize("name", ["", "  ", "x" * 101, "tab\there"])
def test_bad_names(client: TestClient, actors: dict[str, Any], name: str) -> None:
    response = client.post(f"{API}/accounts", json={"name": name}, headers=actors["superadmin"]["headers"])
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Acme", "acme"),
        ("  42 Things!  ", "things"),
        ("Ω", "account"),
        ("ab", "ab-account"),
        ("A" * 50, "a" * 32),
    ],
)
def test_slugify(name: str, slug: str) -> None:
    from snackbase.accounts import slugify

    assert slugify(name) == slug
