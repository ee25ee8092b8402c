"""/roles: any user lists; superadmins create and delete; built-ins and roles in use stay."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
ROLES = ["anonymous", "user", "admin", "other_admin", "superadmin"]

MATRIX = [
    ("GET", "/roles", None, [401, 200, 200, 200, 200]),
    ("POST", "/roles", {"name": "auditor"}, [401, 403, 403, 403, 201]),
    ("DELETE", "/roles/editor", None, [401, 403, 403, 403, 204]),
    ("DELETE", "/roles/admin", None, [401, 403, 403, 403, 409]),
    ("DELETE", "/roles/user", None, [401, 403, 403, 403, 409]),
    ("DELETE", "/roles/nope", None, [401, 403, 403, 403, 404]),
]
CASES = [(m, p, b, role, statuses[i]) for m, p, b, statuses in MATRIX for i, role in enumerate(ROLES)]


@pytest.mark.parametrize(
    ("method", "path", "body", "role", "status"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES]
)
def test_permissions(
    client: TestClient, actors: dict[str, Any], method: str, path: str, body: Any, role: str, status: int
) -> None:
    created = client.post(f"{API}/roles", json={"name": "editor"}, headers=actors["superadmin"]["headers"])
    assert created.status_code == 201
    response = client.request(method, API + path, json=body, headers=actors[role]["headers"])
    assert response.status_code == status, response.text


def test_custom_role_in_use_cannot_be_deleted(client: TestClient, actors: dict[str, Any]) -> None:
    headers = actors["superadmin"]["headers"]
    client.post(f"{API}/roles", json={"name": "editor", "description": "Edits"}, headers=headers)
    client.patch(f"{API}/users/{actors['target']['id']}", json={"role": "editor"}, headers=headers)
    response = client.delete(f"{API}/roles/editor", headers=headers)
    assert response.status_code == 409 and response.json()["code"] == "role_in_use"
    names = [r["name"] for r in client.get(f"{API}/roles", headers=actors["user"]["headers"]).json()["items"]]
    assert names == ["admin", "user", "editor"]


@pytest.mark.parametrize(
    "body", [{"name": "Bad"}, {"name": "x" * 33}, {"name": "admin"}, {}, {"name": "a", "x": 1}]
)
def test_bad_input(client: TestClient, actors: dict[str, Any], body: dict[str, Any]) -> None:
    response = client.post(f"{API}/roles", json=body, headers=actors["superadmin"]["headers"])
    assert response.status_code in (400, 409)
