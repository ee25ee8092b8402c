"""One list module: every paged list endpoint takes the same parameters with the same limits, parses
`skip_total` the same way, and follows the same cursor rules (including refusing forged cursors)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.factories import User, make_account, make_superadmin, make_user

API = "/api/v1"
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
LISTS = ["/records/notes", "/audit-log", "/users", "/groups", "/invitations", "/roles", "/accounts"]


@pytest.fixture
def world(client: TestClient) -> tuple[TestClient, User, User]:
    sa = make_superadmin(client)
    body = {"name": "notes", "fields": [{"name": "n", "type": "number"}], "rules": PUBLIC}
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    account = make_account(client)
    admin = make_user(client, account, "admin")
    for i in range(5):
        make_user(client, account)
        client.post(f"{API}/groups", headers=admin.headers, json={"name": f"g{i}"})
        client.post(f"{API}/records/notes", headers=admin.headers, json={"n": i})
        client.post(f"{API}/invitations", headers=admin.headers, json={"email": f"i{i}@example.com"})
    return client, sa, admin


def headers_for(path: str, sa: User, admin: User) -> dict[str, str]:
    return sa.headers if path in ("/roles", "/accounts") else admin.headers


def forged(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize(
    "query",
    ["skip_total=maybe", "per_page=501", "per_page=0", "page=0", "page=abc", "per_page=1e3", "page=²"],
)
def test_bad_paging_parameters_are_400_everywhere(world: tuple, path: str, query: str) -> None:
    client, sa, admin = world
    response = client.get(f"{API}{path}?{query}", headers=headers_for(path, sa, admin))
    assert response.status_code == 400 and response.json()["code"] == "bad_request", response.text


@pytest.mark.parametrize("path", LISTS)
def test_skip_total_and_cursor_paging_behave_the_same_everywhere(world: tuple, path: str) -> None:
    client, sa, admin = world
    headers = headers_for(path, sa, admin)
    full = client.get(f"{API}{path}?per_page=500", headers=headers).json()
    assert full["total_items"] == len(full["items"]) >= 2
    for flag in ("true", "1"):
        skipped = client.get(f"{API}{path}?skip_total={flag}", headers=headers).json()
        assert skipped["total_items"] == -1 and skipped["total_pages"] == -1
    seen: list[Any] = []
    after = ""
    while after is not None:
        page = client.get(f"{API}{path}?per_page=2&after={after}", headers=headers).json()
        assert set(page) == {"items", "next_cursor"}
        seen += [item.get("id", item.get("seq", item.get("name"))) for item in page["items"]]
        after = page["next_cursor"]
    assert seen == [item.get("id", item.get("seq", item.get("name"))) for item in full["items"]]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize(
    "cursor",
    [
        "not-base64!",
        forged(["", {"a": 1}]),
        forged(["", [1, 2, 3]]),
        "WyIiLDk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5XQ",  # ["",99999999999999999999999999]
        "x" * 5000,
    ],
)
def test_forged_cursors_are_400_invalid_cursor(world: tuple, path: str, cursor: str) -> None:
    client, sa, admin = world
    response = client.get(f"{API}{path}?after={cursor}", headers=headers_for(path, sa, admin))
    assert response.status_code == 400 and response.json()["code"] == "invalid_cursor", response.text
