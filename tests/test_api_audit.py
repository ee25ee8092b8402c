"""GET /audit-log, /audit-log/{seq}, /audit-log/verify, /audit-log/export through the real app."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.unit_of_work import unit_of_work
from snackbase.users import group_ids, set_groups
from tests.factories import User, make_account, make_superadmin, make_user

API = "/api/v1"
# Every test runs on SQLite and on PostgreSQL (tests/conftest.py, `backend`).
BACKENDS = ("sqlite", "postgresql")
PATIENTS = {
    "name": "patients",
    "fields": [{"name": "name", "type": "text"},
               {"name": "email", "type": "email", "pii": True, "mask": "email"},
               {"name": "ssn", "type": "text", "pii": True, "mask": "ssn"}],
    "rules": {"list": "", "view": "", "create": "", "update": "", "delete": ""},
}  # fmt: skip


@dataclass
class World:
    client: TestClient
    root: User
    admin: User  # account admin of `account`, not in pii_access
    pii_admin: User  # account admin of `account`, in pii_access
    member: User  # plain user of `account`
    other_admin: User  # admin of `other`
    account: str
    other: str
    record_id: str

    def get(self, path: str, user: User | None, **headers: str) -> Any:
        return self.client.get(API + path, headers={**(user.headers if user else {}), **headers})


@pytest.fixture
def world(client: TestClient) -> World:
    account, other = make_account(client, "Lab A"), make_account(client, "Lab B")
    root = make_superadmin(client)
    admin, pii_admin = make_user(client, account, "admin"), make_user(client, account, "admin")
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    with unit_of_work(conn):
        set_groups(conn, pii_admin.id, group_ids(conn, account, ["pii_access"]))
    assert client.post(f"{API}/collections", json=PATIENTS, headers=root.headers).status_code == 201
    body = {"name": "Jane Doe", "email": "jane@example.com", "ssn": "123-45-6789"}
    created = client.post(
        f"{API}/records/patients",
        json=body,
        headers={**admin.headers, "x-audit-reason": "Intake%20form%20%E2%84%965"},
    )
    assert created.status_code == 201, created.text
    record_id = created.json()["id"]
    patched = client.patch(
        f"{API}/records/patients/{record_id}",
        json={"email": "jd@example.com", "_reason": "Typo in email"},
        headers=admin.headers,
    )
    assert patched.status_code == 200, patched.text
    other_admin = make_user(client, other, "admin")
    other_body = {"name": "Max", "email": "max@example.com", "ssn": "987-65-4321"}
    assert (
        client.post(f"{API}/records/patients", json=other_body, headers=other_admin.headers).status_code
        == 201
    )
    member = make_user(client, account, "user")
    return World(client, root, admin, pii_admin, member, other_admin, account, other, record_id)


def actions(response: Any) -> list[str]:
    return [item["action"] for item in response.json()["items"]]


# --- who may read -------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "path", "status"), [
    (None, "/audit-log", 401), ("member", "/audit-log", 403), ("admin", "/audit-log", 200),
    ("root", "/audit-log", 200), ("admin", "/audit-log?account=OTHER", 403),
    ("admin", "/audit-log?account=SELF", 200), ("root", "/audit-log?account=nope!", 400),
    (None, "/audit-log/verify", 401), ("member", "/audit-log/verify", 403),
    (None, "/audit-log/export", 401), ("member", "/audit-log/export?format=csv", 403),
    ("member", "/audit-log/1", 403), ("admin", "/audit-log/export?format=xml", 400),
    ("admin", "/audit-log?sort=action", 400), ("admin", "/audit-log?from=yesterday", 400),
    ("admin", "/audit-log?per_page=501", 400), ("admin", "/audit-log?after=abc", 400),
])  # fmt: skip
def test_access(world: World, who: str | None, path: str, status: int) -> None:
    path = path.replace("OTHER", world.other).replace("SELF", world.account)
    response = world.get(path, getattr(world, who) if who else None)
    assert response.status_code == status, response.text
    if status >= 400:
        assert set(response.json()) == {"status", "code", "message", "fields", "request_id"}


def test_account_admin_sees_only_own_account(world: World) -> None:
    response = world.get("/audit-log", world.admin)
    items = response.json()["items"]
    assert {i["account_id"] for i in items} == {world.account}
    assert actions(response) == ["record.update", "record.create"]  # newest first
    assert response.json()["total_items"] == 2 and response.json()["total_pages"] == 1


def test_superadmin_sees_every_account_and_can_narrow(world: World) -> None:
    everything = world.get("/audit-log?sort=seq", world.root).json()["items"]
    assert [i["action"] for i in everything] == [
        "collection.create",
        "record.create",
        "record.update",
        "record.create",
    ]
    assert {i["account_id"] for i in everything} == {"SY0000", world.account, world.other}
    narrowed = world.get(f"/audit-log?account={world.other.lower()}", world.root).json()["items"]
    assert [(i["account_id"], i["action"]) for i in narrowed] == [(world.other, "record.create")]


# --- contents and PII ---------------------------------------------------------------------------


def test_entry_contents_and_reasons(world: World) -> None:
    items = world.get("/audit-log?sort=seq", world.pii_admin).json()["items"]
    create, update = items
    assert create["reason"] == "Intake form №5" and update["reason"] == "Typo in email"
    assert create["target"] == {"collection": "patients", "record_id": world.record_id}
    assert create["actor"] == {
        "user_id": world.admin.id,
        "email": world.admin.email,
        "role": "admin",
        "method": "token",
    }
    assert update["changes"] == {
        "email": {"old": "jane@example.com", "new": "jd@example.com", "mask": "email"}
    }
    assert create["changes"]["name"] == {"old": None, "new": "Jane Doe"}
    assert update["prev_hash"] == create["hash"] and create["account_seq"] == 1
    assert create["request_id"] and create["ip"] and create["user_agent"] == "testclient"


def test_pii_is_masked_without_pii_access(world: World) -> None:
    create = world.get("/audit-log?action=record.create", world.admin).json()["items"][0]
    assert create["changes"]["email"]["new"] == "j***@example.com"
    assert create["changes"]["ssn"]["new"] == "***-**-6789"
    assert create["changes"]["name"]["new"] == "Jane Doe"
    for who in (world.pii_admin, world.root):
        shown = world.get(f"/audit-log?action=record.create&account={world.account}", who).json()["items"][0]
        assert shown["changes"]["email"]["new"] == "jane@example.com"


# --- filters and paging -------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ("collection=patients", ["record.update", "record.create"]),
    ("collection=nope", []),
    ("action=record.update", ["record.update"]),
    ("action=record.*", ["record.update", "record.create"]),
    ("action=record", []),
    ("record_id=RID", ["record.update", "record.create"]),
    ("user_id=ADMIN", ["record.update", "record.create"]),
    ("user_id=MEMBER", []),
    ("from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00%2B02:00", ["record.update", "record.create"]),
    ("from=2999-01-01T00:00:00Z", []),
    ("to=2000-01-01T00:00:00Z", []),
    ("sort=seq", ["record.create", "record.update"]),
])  # fmt: skip
def test_filters(world: World, query: str, expected: list[str]) -> None:
    query = (
        query.replace("RID", world.record_id)
        .replace("ADMIN", world.admin.id)
        .replace("MEMBER", world.member.id)
    )
    response = world.get(f"/audit-log?{query}", world.admin)
    assert response.status_code == 200, response.text
    assert actions(response) == expected


def test_page_and_cursor_paging(world: World) -> None:
    conn = world.client.app.state.db.conn  # type: ignore[attr-defined]
    for i in range(7):
        world.client.patch(
            f"{API}/records/patients/{world.record_id}", json={"name": f"n{i}"}, headers=world.admin.headers
        )
    page2 = world.get("/audit-log?per_page=4&page=2", world.admin).json()
    assert (page2["total_items"], page2["total_pages"], len(page2["items"])) == (9, 3, 4)
    skipped = world.get("/audit-log?per_page=4&skip_total=true", world.admin).json()
    assert (skipped["total_items"], skipped["total_pages"]) == (-1, -1)
    seen, cursor = [], ""
    while cursor is not None:
        body = world.get(f"/audit-log?per_page=4&sort=seq&after={cursor}", world.admin).json()
        seen += [i["seq"] for i in body["items"]]
        cursor = body["next_cursor"]
    expected = [
        r[0]
        for r in conn.execute("SELECT seq FROM audit_log WHERE account_id = ? ORDER BY seq", (world.account,))
    ]
    assert seen == expected and len(seen) == 9


def test_get_one_entry(world: World) -> None:
    items = world.get("/audit-log?sort=seq", world.root).json()["items"]
    mine = next(i for i in items if i["account_id"] == world.account)
    theirs = next(i for i in items if i["account_id"] == world.other)
    assert world.get(f"/audit-log/{mine['seq']}", world.pii_admin).json()["hash"] == mine["hash"]
    # The first entry creates a record with PII: shown masked, it carries no hash (no oracle).
    assert world.get(f"/audit-log/{mine['seq']}", world.admin).json()["hash"] is None
    assert world.get(f"/audit-log/{theirs['seq']}", world.admin).status_code == 404
    assert world.get(f"/audit-log/{theirs['seq']}", world.root).status_code == 200
    assert world.get("/audit-log/999999", world.root).status_code == 404
    assert world.get("/audit-log/abc", world.root).status_code == 404


# --- the trail is complete and only written by committed changes ---------------------------------


def test_refused_writes_leave_no_entry(world: World) -> None:
    before = world.get("/audit-log", world.root).json()["total_items"]
    headers = world.admin.headers
    refused = [
        world.client.post(f"{API}/records/patients", json={"email": "not-an-email"}, headers=headers),
        world.client.post(
            f"{API}/records/patients",
            json={"name": "x"},
            headers={**headers, "x-audit-reason": "bad%0Areason"},
        ),
        world.client.post(
            f"{API}/records/patients", json={"name": "x", "_reason": "r" * 1001}, headers=headers
        ),
        world.client.patch(f"{API}/records/patients/{world.record_id}", json={"nope": 1}, headers=headers),
    ]
    assert [r.status_code for r in refused] == [400, 400, 400, 400]
    assert [r.json()["code"] for r in refused[1:3]] == ["invalid_reason", "invalid_reason"]
    assert world.get("/audit-log", world.root).json()["total_items"] == before


def test_entries_outlive_their_record_and_collection(world: World) -> None:
    client, root = world.client, world.root
    assert (
        client.delete(f"{API}/records/patients/{world.record_id}", headers=world.admin.headers).status_code
        == 204
    )
    for record in client.get(f"{API}/records/patients", headers=world.other_admin.headers).json()["items"]:
        client.delete(f"{API}/records/patients/{record['id']}", headers=world.other_admin.headers)
    assert client.delete(f"{API}/collections/patients", headers=root.headers).status_code == 204
    history = world.get(f"/audit-log?record_id={world.record_id}&sort=seq", world.admin)
    assert actions(history) == ["record.create", "record.update", "record.delete"]
    assert (
        history.json()["items"][2]["changes"]["email"]["old"] == "j***@example.com"
    )  # mask kept in the entry
    assert world.get("/audit-log/verify", world.root).json()["ok"] is True


# --- verify -------------------------------------------------------------------------------------


def test_verify(world: World) -> None:
    mine = world.get("/audit-log/verify", world.admin).json()
    assert mine == {
        "ok": True,
        "entries_checked": 2,
        "first_bad_seq": None,
        "account_id": None,
        "problem": None,
    }
    assert world.get("/audit-log/verify", world.root).json()["entries_checked"] == 4
    assert world.get(f"/audit-log/verify?account={world.other}", world.root).json()["entries_checked"] == 1
    conn = world.client.app.state.db.conn  # type: ignore[attr-defined]
    if world.client.app.state.db.__class__.__name__ == "PgDatabase":  # type: ignore[attr-defined]
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
    else:
        conn.execute("DROP TRIGGER audit_log_no_update")
    seq = conn.execute("SELECT max(seq) FROM audit_log WHERE account_id = ?", (world.account,)).fetchone()[0]
    conn.execute("UPDATE audit_log SET reason = 'a nicer reason' WHERE seq = ?", (seq,))
    broken = world.get("/audit-log/verify", world.admin).json()
    assert (broken["ok"], broken["first_bad_seq"], broken["account_id"]) == (False, seq, world.account)
    assert world.get(f"/audit-log/verify?account={world.other}", world.root).json()["ok"] is True
    assert world.get("/audit-log/verify", world.other_admin).json()["ok"] is True


# --- export -------------------------------------------------------------------------------------


def test_csv_export_is_audited_and_masked(world: World) -> None:
    response = world.get(
        "/audit-log/export?format=csv&collection=patients",
        world.admin,
        **{"x-audit-reason": "Quarterly review"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith(
        f'attachment; filename="audit-log-{world.account}-'
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["action"] for r in rows] == ["record.create", "record.update"]  # chronological, without itself
    assert json.loads(rows[0]["changes"])["email"]["new"] == "j***@example.com"
    assert list(rows[0])[:2] == ["seq", "account_id"] and list(rows[0])[-2:] == ["prev_hash", "hash"]
    logged = world.get("/audit-log?action=audit.export", world.admin).json()["items"]
    assert len(logged) == 1 and logged[0]["reason"] == "Quarterly review"
    assert logged[0]["extra"] == {
        "format": "csv",
        "filters": {"collection": "patients"},
        "scope": world.account,
        "pii_masked": True,
    }
    assert world.get("/audit-log/verify", world.admin).json()["ok"] is True


def test_json_export_verifies_with_the_documented_recipe(world: World) -> None:
    response = world.get("/audit-log/export?format=json", world.root)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    entries = response.json()
    assert len(entries) == 4 and entries[1]["changes"].startswith("{")  # changes as the stored JSON text
    heads: dict[str, str] = {}
    for entry in sorted(entries, key=lambda e: (e["account_id"], e["account_seq"])):
        stored = entry.pop("hash")
        assert entry["prev_hash"] == heads.get(entry["account_id"], "0" * 64)
        text = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(text.encode()).hexdigest() == stored
        heads[entry["account_id"]] = stored
    export_entry = world.get("/audit-log?action=audit.export", world.root).json()["items"][0]
    assert export_entry["account_id"] == "SY0000" and export_entry["extra"]["scope"] == "all"


def test_empty_export(world: World) -> None:
    response = world.get("/audit-log/export?format=json&collection=none", world.admin)
    assert response.json() == []
    response = world.get("/audit-log/export?format=csv&collection=none", world.admin)
    assert response.text.startswith("seq,account_id,") and response.text.count("\r\n") == 1
