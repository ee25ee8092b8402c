"""The rules matrix: rule kind × caller kind × operation → the outcome SPEC section 7 promises."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.ids import uuid7
from snackbase.times import now_iso
from tests.conftest import make_settings
from tests.factories import User, add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
RULES = {
    "null": None,
    "anyone": "",
    "authenticated": "@is_authenticated()",
    "owner": "@owns_record()",
    "admin_role": '@has_role("admin")',
    "editors_group": '@has_group("editors")',
}
CALLERS = ["anonymous", "user", "owner", "admin", "editor", "pii_member", "other_tenant", "superadmin"]
OPS = ["list", "view", "create", "update", "delete"]


def rule_allows(rule: str, caller: str, creating: bool) -> bool:
    """Whether the rule holds for the caller on a record owned by `owner` (or on its own new record)."""
    if rule == "anyone":
        return True
    if caller == "anonymous":
        return False
    return {
        "authenticated": True,
        "owner": caller == "owner" or creating,
        "admin_role": caller == "admin",
        "editors_group": caller == "editor",
    }[rule]


def expected(rule: str, caller: str, op: str) -> str:
    """'ok', 'hidden' (404, or not listed) or 'forbidden' (403)."""
    if caller == "superadmin":
        return "ok"
    if rule == "null":
        return "forbidden"
    if op == "create":
        return "ok" if rule_allows(rule, caller, creating=True) else "forbidden"
    if caller == "other_tenant":
        return "hidden"
    return "ok" if rule_allows(rule, caller, creating=False) else "hidden"


class Matrix:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.account = make_account(client, "Acme")
        sa = make_superadmin(client)
        self.owner = make_user(client, self.account)
        editor = make_user(client, self.account)
        add_to_group(client, editor, "editors")
        pii = make_user(client, self.account)
        add_to_group(client, pii, "pii_access")
        self.users: dict[str, User | None] = {
            "anonymous": None, "user": make_user(client, self.account), "owner": self.owner,
            "admin": make_user(client, self.account, "admin"), "editor": editor, "pii_member": pii,
            "other_tenant": make_user(client, make_account(client, "Globex")), "superadmin": sa,
        }  # fmt: skip
        for name, rule in RULES.items():
            body = {
                "name": f"m_{name}",
                "fields": [{"name": "text", "type": "text"}],
                "rules": dict.fromkeys(OPS, rule),
            }
            assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201

    def headers(self, caller: str) -> dict[str, str]:
        user = self.users[caller]
        if user is None:
            return {"x-account-id": self.account}
        if caller == "superadmin":
            return {**user.headers, "x-account-id": self.account}
        return user.headers

    def seed(self, collection: str) -> str:
        record_id, now = uuid7(), now_iso()
        with self.client.app.state.db.conn as conn:  # type: ignore[attr-defined]
            conn.execute(
                f"INSERT INTO c_{collection} (id, account_id, created_at, created_by, updated_at, text) "
                "VALUES (?, ?, ?, ?, ?, 'seed')",
                (record_id, self.account, now, self.owner.id, now),
            )
        return record_id


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    data: Path = tmp_path_factory.mktemp("matrix")
    with TestClient(create_app(make_settings(data)), raise_server_exceptions=False) as client:
        yield Matrix(client)


def outcome(m: Matrix, rule: str, caller: str, op: str) -> str:
    collection = f"m_{rule}"
    record_id = m.seed(collection)
    url = f"{API}/records/{collection}"
    headers = m.headers(caller)
    if op == "list":
        response = m.client.get(url, headers=headers, params={"filter": f"id = '{record_id}'"})
        if response.status_code == 200:
            return "ok" if response.json()["total_items"] == 1 else "hidden"
    elif op == "create":
        response = m.client.post(url, headers=headers, json={"text": "new"})
    else:
        method = {"view": "GET", "update": "PATCH", "delete": "DELETE"}[op]
        response = m.client.request(
            method,
            f"{url}/{record_id}",
            headers=headers,
            json={"text": "changed"} if op == "update" else None,
        )
    return {200: "ok", 201: "ok", 204: "ok", 403: "forbidden", 404: "hidden"}.get(
        response.status_code, str(response.status_code)
    )


CASES = [(rule, caller, op) for rule in RULES for caller in CALLERS for op in OPS]


@pytest.mark.parametrize(("rule", "caller", "op"), CASES, ids=["-".join(c) for c in CASES])
def test_rules_matrix(matrix: Matrix, rule: str, caller: str, op: str) -> None:
    assert outcome(matrix, rule, caller, op) == expected(rule, caller, op)
