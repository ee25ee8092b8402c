"""/groups: permissions table, tenancy, unique names, members, the protected pii_access group."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
ROLES = ["anonymous", "user", "admin", "other_admin", "superadmin"]

MATRIX = [
    ("GET", "/groups", None, [401, 403, 200, 200, 200]),
    ("POST", "/groups", {"name": "editors"}, [401, 403, 201, 201, 201]),
    ("POST", "/groups", {"name": "editors", "account_id": "{account}"}, [401, 403, 201, 404, 201]),
    ("GET", "/groups/{group}", None, [401, 403, 200, 404, 200]),
    ("PATCH", "/groups/{group}", {"description": "d"}, [401, 403, 200, 404, 200]),
    ("DELETE", "/groups/{group}", None, [401, 403, 204, 404, 204]),
    ("POST", "/groups/{group}/members/{target}", None, [401, 403, 204, 404, 204]),
    ("DELETE", "/groups/{group}/members/{target}", None, [401, 403, 204, 404, 204]),
]
CASES = [(m, p, b, role, statuses[i]) for m, p, b, statuses in MATRIX for i, role in enumerate(ROLES)]


@pytest.fixture
def group(client: TestClient, actors: dict[str, Any]) -> dict[str, Any]:
    response = client.post(
        f"{API}/groups", json={"name": "reviewers", "description": "QA"}, headers=actors["admin"]["headers"]
    )
    assert response.status_code == 201
    return response.json()  # type: ignore[no-any-return]


def fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: fill(v, names) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("method", "path", "body", "role", "status"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES]
)
def test_permissions(
    client: TestClient,
    actors: dict[str, Any],
    group: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    role: str,
    status: int,
) -> None:
    names = {"group": group["id"], "target": actors["target"]["id"], "account": actors["admin"]["account_id"]}
    response = client.request(
        method, API + fill(path, names), json=fill(body, names), headers=actors[role]["headers"]
    )
    assert response.status_code == status, response.text


def test_names_unique_per_account(client: TestClient, actors: dict[str, Any], group: dict[str, Any]) -> None:
    again = client.post(f"{API}/groups", json={"name": "reviewers"}, headers=actors["admin"]["headers"])
    assert again.status_code == 409 and again.json()["fields"]["name"]["code"] == "not_unique"
    other = client.post(f"{API}/groups", json={"name": "reviewers"}, headers=actors["other_admin"]["headers"])
    assert other.status_code == 201


def test_members(client: TestClient, actors: dict[str, Any], group: dict[str, Any]) -> None:
    headers, target = actors["admin"]["headers"], actors["target"]
    assert (
        client.post(f"{API}/groups/{group['id']}/members/{target['id']}", headers=headers).status_code == 204
    )
    assert (
        client.post(f"{API}/groups/{group['id']}/members/{target['id']}", headers=headers).status_code == 204
    )
    members = client.get(f"{API}/groups/{group['id']}", headers=headers).json()["members"]
    assert members == [{"id": target["id"], "email": target["email"]}]
    outsider = actors["other_admin"]["id"]
    assert client.post(f"{API}/groups/{group['id']}/members/{outsider}", headers=headers).status_code == 404
    superadmin = actors["superadmin"]["headers"]  # even a superadmin cannot mix accounts
    assert (
        client.post(f"{API}/groups/{group['id']}/members/{outsider}", headers=superadmin).status_code == 404
    )
    client.delete(f"{API}/groups/{group['id']}/members/{target['id']}", headers=headers)
    assert client.get(f"{API}/groups/{group['id']}", headers=headers).json()["members"] == []


def test_pii_access_is_protected(client: TestClient, actors: dict[str, Any]) -> None:
    headers = actors["admin"]["headers"]
    pii = next(
        g for g in client.get(f"{API}/groups", headers=headers).json()["items"] if g["name"] == "pii_access"
    )
    assert client.delete(f"{API}/groups/{pii['id']}", headers=headers).status_code == 409
    assert client.patch(f"{API}/groups/{pii['id']}", json={"name": "x"}, headers=headers).status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "has space"},
        {"name": "x" * 65},
        {"name": 5},
        {"name": "ok", "extra": 1},
        {"name": "ok", "description": "d" * 501},
    ],
)
def test_bad_input(client: TestClient, actors: dict[str, Any], body: dict[str, Any]) -> None:
    response = client.post(f"{API}/groups", json=body, headers=actors["admin"]["headers"])
    assert response.status_code == 400
