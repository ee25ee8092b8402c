"""The one write path: every record change in one unit of work, audited row by row — each test is a
defect that the earlier, several write paths had (cascades without audit entries, hook writes that
outlived a failed request, a hook caller without groups, batch reasons, no-op updates, `@request.data`
in update rules, a 500 for a referenced user, busy and timed-out statements as bare 500s, and masked
values written back)."""

from __future__ import annotations

from typing import Any

import apsw
import pytest
from starlette.testclient import TestClient

from snackbase.db import busy_waiter, fetch_all, fetch_value, statement_budget
from tests.factories import User, add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")


def define(client: TestClient, sa: User, name: str, fields: list[dict], **extra: Any) -> None:
    body = {"name": name, "fields": fields, "rules": PUBLIC, **extra}
    response = client.post(f"{API}/collections", headers=sa.headers, json=body)
    assert response.status_code == 201, response.text


def create(client: TestClient, who: User, collection: str, body: dict, status: int = 201) -> dict:
    response = client.post(f"{API}/records/{collection}", headers=who.headers, json=body)
    assert response.status_code == status, response.text
    return response.json()  # type: ignore[no-any-return]


def entries(client: TestClient, record_id: str) -> list[dict[str, Any]]:
    return fetch_all(
        client.app.state.db.conn,  # type: ignore[attr-defined]
        "SELECT action, changes, reason, extra FROM audit_log WHERE record_id = ? ORDER BY seq",
        (record_id,),
    )


def audit_count(client: TestClient) -> int:
    return int(fetch_value(client.app.state.db.conn, "SELECT count(*) FROM audit_log"))  # type: ignore[attr-defined]


def chain_ok(client: TestClient, sa: User) -> bool:
    return bool(client.get(f"{API}/audit-log/verify", headers=sa.headers).json()["ok"])


@pytest.fixture
def world(client: TestClient) -> tuple[TestClient, User, User]:
    sa = make_superadmin(client)
    return client, sa, make_user(client, make_account(client))


# --- defect 2: cascade and set_null are audited row by row ------------------------------------------


def lab(client: TestClient, sa: User) -> None:
    define(client, sa, "projects", [{"name": "name", "type": "text"}])
    ref = {"name": "project", "type": "reference"}
    define(client, sa, "experiments", [{"name": "title", "type": "text"},
           {**ref, "options": {"collection": "projects", "on_delete": "cascade"}}])  # fmt: skip
    define(client, sa, "runs", [{"name": "n", "type": "number"},
           {"name": "experiment", "type": "reference",
            "options": {"collection": "experiments", "on_delete": "cascade"}}])  # fmt: skip
    define(client, sa, "notes", [{"name": "text", "type": "text"},
           {**ref, "options": {"collection": "projects", "on_delete": "set_null"}}])  # fmt: skip


def test_deleting_a_parent_audits_every_cascaded_and_nulled_row(world: tuple) -> None:
    client, sa, user = world
    lab(client, sa)
    project = create(client, user, "projects", {"name": "P"})
    experiments = [create(client, user, "experiments", {"title": t, "project": project["id"]}) for t in "ab"]
    run = create(client, user, "runs", {"n": 1, "experiment": experiments[0]["id"]})
    note = create(client, user, "notes", {"text": "n", "project": project["id"]})
    deleted = client.delete(f"{API}/records/projects/{project['id']}", headers={**user.headers,
                            "x-audit-reason": "closed"})  # fmt: skip
    assert deleted.status_code == 204
    for child in [*experiments, run]:
        actions = [e["action"] for e in entries(client, child["id"])]
        assert actions == ["record.create", "record.delete"], child
        last = entries(client, child["id"])[-1]
        assert last["reason"] == "closed" and '"on_delete":"cascade"' in last["extra"]
    assert '"record_id":"' + experiments[0]["id"] in entries(client, run["id"])[-1]["extra"]
    nulled = client.get(f"{API}/records/notes/{note['id']}", headers=user.headers).json()
    assert nulled["project"] is None and nulled["updated_at"] > note["updated_at"]
    update = entries(client, note["id"])[-1]
    assert update["action"] == "record.update" and '"new":null' in update["changes"]
    assert '"on_delete":"set_null"' in update["extra"]
    assert chain_ok(client, sa)


def test_restrict_refuses_with_409_naming_the_field_and_changes_nothing(world: tuple) -> None:
    client, sa, user = world
    define(client, sa, "projects", [{"name": "name", "type": "text"}])
    define(client, sa, "samples", [{"name": "project", "type": "reference",
                                    "options": {"collection": "projects"}}])  # fmt: skip
    project = create(client, user, "projects", {"name": "P"})
    create(client, user, "samples", {"project": project["id"]})
    before = audit_count(client)
    refused = client.delete(f"{API}/records/projects/{project['id']}", headers=user.headers)
    assert refused.status_code == 409 and refused.json()["code"] == "record_in_use"
    assert "samples.project" in refused.json()["fields"]
    assert audit_count(client) == before
    assert client.get(f"{API}/records/projects/{project['id']}", headers=user.headers).status_code == 200


def test_a_self_referencing_cascade_cycle_ends(world: tuple) -> None:
    client, sa, user = world
    define(client, sa, "nodes", [{"name": "name", "type": "text"}])
    options = {"collection": "nodes", "on_delete": "cascade"}
    parent = {"name": "parent", "type": "reference", "options": options}
    fields = [{"name": "name", "type": "text"}, parent]
    client.patch(f"{API}/collections/nodes", headers=sa.headers, json={"fields": fields})
    a = create(client, user, "nodes", {"name": "a"})
    b = create(client, user, "nodes", {"name": "b", "parent": a["id"]})
    assert client.patch(f"{API}/records/nodes/{a['id']}", headers=user.headers,
                        json={"parent": b["id"]}).status_code == 200  # fmt: skip
    assert client.delete(f"{API}/records/nodes/{a['id']}", headers=user.headers).status_code == 204
    assert client.get(f"{API}/records/nodes", headers=user.headers).json()["total_items"] == 0
    assert [e["action"] for e in entries(client, b["id"])][-1] == "record.delete"
    assert chain_ok(client, sa)


# --- defect 9: deleting a referenced user ------------------------------------------------------------


@pytest.mark.sqlite_only  # DELETE /users is not ported to PostgreSQL yet
def test_deleting_a_user_a_record_references(world: tuple) -> None:
    client, sa, user = world
    admin = make_user(client, user.account_id, "admin")
    define(client, sa, "reviews", [{"name": "reviewer", "type": "user"}])
    define(client, sa, "tasks", [{"name": "owner", "type": "user", "options": {"on_delete": "set_null"}}])
    review = create(client, user, "reviews", {"reviewer": user.id})
    task = create(client, user, "tasks", {"owner": user.id})
    before = audit_count(client)
    refused = client.delete(f"{API}/users/{user.id}", headers=admin.headers)
    assert refused.status_code == 409 and refused.json()["code"] == "record_in_use"
    assert "reviews.reviewer" in refused.json()["fields"] and audit_count(client) == before
    client.delete(f"{API}/records/reviews/{review['id']}", headers=user.headers)
    assert client.delete(f"{API}/users/{user.id}", headers=admin.headers).status_code == 204
    cleared = client.get(f"{API}/records/tasks/{task['id']}", headers=admin.headers).json()
    assert cleared["owner"] is None and cleared["updated_by"] == admin.id
    assert entries(client, task["id"])[-1]["action"] == "record.update"
    assert chain_ok(client, sa)


# --- defects 3 and 4: hooks write inside the request's unit of work, as the request's caller --------


def test_a_hook_write_is_rolled_back_with_the_request_that_failed(world: tuple, hook_registry: Any) -> None:
    client, sa, user = world
    define(client, sa, "posts", [{"name": "title", "type": "text", "required": True}])
    define(client, sa, "logs", [{"name": "what", "type": "text"}])

    @hook_registry.on("record.before_create", collection="posts")
    def log(event: Any) -> None:
        event.records.create("logs", {"what": "post attempted"})

    before = audit_count(client)
    create(client, user, "posts", {"title": 5}, status=400)  # the hook ran, then validation failed
    assert fetch_value(client.app.state.db.conn, "SELECT count(*) FROM c_logs") == 0  # type: ignore[attr-defined]
    assert audit_count(client) == before
    create(client, user, "posts", {"title": "ok"})
    assert fetch_value(client.app.state.db.conn, "SELECT count(*) FROM c_logs") == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("event_name", ["record.before_create", "record.after_create", "request.after"])
def test_a_hook_writes_as_the_request_caller_with_its_groups(
    world: tuple, hook_registry: Any, event_name: str
) -> None:
    client, sa, user = world
    add_to_group(client, user, "editors")
    define(client, sa, "posts", [{"name": "title", "type": "text"}])
    define(client, sa, "logs", [{"name": "what", "type": "text"}],
           rules={**PUBLIC, "create": '@has_group("editors")'})  # fmt: skip
    assert create(client, user, "logs", {"what": "over REST"})  # the rule holds for this user
    outcomes: list[str] = []

    def log(event: Any) -> None:
        if event_name == "request.after" and event.path != f"{API}/records/posts":
            return
        try:
            event.records.create("logs", {"what": event_name})
            outcomes.append("created")
        except Exception as exc:
            outcomes.append(repr(exc))

    hook_registry.register(event_name, log, **({"collection": "posts"} if "record" in event_name else {}))
    create(client, user, "posts", {"title": "x"})
    assert outcomes == ["created"]
    whats = fetch_all(client.app.state.db.conn, "SELECT what, created_by FROM c_logs")  # type: ignore[attr-defined]
    assert {"what": event_name, "created_by": user.id} in whats


# --- defect 5: batch reasons -------------------------------------------------------------------------


def test_each_batch_operation_carries_its_own_reason(world: tuple) -> None:
    client, sa, user = world
    define(client, sa, "doses", [{"name": "mg", "type": "number"}], audit={"require_reason": True})
    url = f"{API}/records/doses/batch"
    before = audit_count(client)
    missing = client.post(url, headers=user.headers,
                          json={"create": [{"mg": 1, "_reason": "first"}, {"mg": 2}]})  # fmt: skip
    assert missing.status_code == 400 and missing.json()["code"] == "reason_required"
    assert "create.1" in missing.json()["fields"] and audit_count(client) == before
    done = client.post(url, headers=user.headers, json={
        "_reason": "batch reason", "create": [{"mg": 1, "_reason": "first"}, {"mg": 2}]})  # fmt: skip
    assert done.status_code == 200, done.text
    reasons = [entries(client, r["id"])[0]["reason"] for r in done.json()["create"]]
    assert reasons == ["first", "batch reason"]


# --- defect 6: a PATCH that changes nothing writes nothing --------------------------------------------


def test_a_no_op_patch_writes_no_entry_and_keeps_updated_at(world: tuple) -> None:
    client, sa, user = world
    define(client, sa, "items", [{"name": "title", "type": "text"}, {"name": "n", "type": "number"}])
    item = create(client, user, "items", {"title": "same", "n": 5})
    before = audit_count(client)
    same = client.patch(f"{API}/records/items/{item['id']}", headers=user.headers,
                        json={"title": "same", "n": 5})  # fmt: skip
    assert same.status_code == 200 and same.json()["updated_at"] == item["updated_at"]
    assert audit_count(client) == before
    changed = client.patch(f"{API}/records/items/{item['id']}", headers=user.headers, json={"n": 5.5})
    assert changed.json()["n"] == 5.5 and audit_count(client) == before + 1


# --- defect 7: @request.data in an update rule --------------------------------------------------------


def test_an_update_rule_on_request_data_sees_the_body(world: tuple) -> None:
    client, sa, user = world
    define(client, sa, "drafts", [{"name": "status", "type": "text"}],
           rules={**PUBLIC, "update": '@request.data.status = "draft"'})  # fmt: skip
    draft = create(client, user, "drafts", {"status": "draft"})
    url = f"{API}/records/drafts/{draft['id']}"
    assert (
        client.patch(url, headers=user.headers, json={"status": "draft", "_reason": "x"}).status_code == 200
    )
    assert client.patch(url, headers=user.headers, json={"status": "final"}).status_code == 404


# --- defect 10: busy and timed-out statements are 503s in the envelope --------------------------------


@pytest.mark.sqlite_only  # holds SQLite's write lock (PostgreSQL: tests/test_postgres.py)
def test_a_busy_database_answers_503_busy_and_writes_nothing(world: tuple) -> None:
    client, sa, user = world
    define(client, sa, "items", [{"name": "title", "type": "text"}])
    app: Any = client.app
    busy_waiter(app.state.db.conn).limit_s = 0.05  # the synchronous wait and write_turn's alike
    other = apsw.Connection(str(app.state.settings.db_path))
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        busy = client.post(f"{API}/records/items", headers=user.headers, json={"title": "x"})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert busy.status_code == 503 and busy.json()["code"] == "busy"
    assert busy.headers["retry-after"] == "1"
    assert client.get(f"{API}/records/items", headers=user.headers).json()["total_items"] == 0


@pytest.mark.sqlite_only  # SQLite's progress handler (PostgreSQL: statement_timeout, tests/test_postgres.py)
def test_the_statement_budget_answers_503_statement_timeout(world: tuple) -> None:
    client, sa, user = world
    define(client, sa, "items", [{"name": "title", "type": "text"}])
    conn: Any = client.app.state.db.conn  # type: ignore[attr-defined]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO c_items (id, account_id, created_at, updated_at, title) VALUES (?, ?, 'x', 'x', ?)",
        [(f"id{i}", user.account_id, f"t{i}") for i in range(5000)],
    )
    conn.execute("COMMIT")
    budget = statement_budget(conn)
    assert budget is not None
    budget.limit_s = 0.0
    try:
        slow = client.get(f"{API}/records/items?filter=title~'9'", headers=user.headers)
    finally:
        budget.limit_s = 5.0
    assert slow.status_code == 503 and slow.json()["code"] == "statement_timeout"


# --- defect 13: the caller's own masked rendering is never stored -------------------------------------


def test_sending_back_a_masked_value_keeps_the_real_one(world: tuple) -> None:
    client, sa, user = world
    admin = make_user(client, user.account_id, "admin")  # an account admin outside pii_access
    define(client, sa, "patients", [{"name": "ssn", "type": "text", "pii": True, "mask": "ssn"},
                                    {"name": "notes", "type": "text", "pii": True, "mask": "full"},
                                    {"name": "ward", "type": "text"}])  # fmt: skip
    patient = create(client, user, "patients", {"ssn": "123-45-6789", "notes": "allergic", "ward": "A"})
    shown = client.get(f"{API}/records/patients/{patient['id']}", headers=admin.headers).json()
    assert shown["ssn"] == "***-**-6789" and shown["notes"] == "******"
    body = {k: shown[k] for k in ("ssn", "notes")} | {"ward": "B"}
    saved = client.patch(f"{API}/records/patients/{patient['id']}", headers=admin.headers, json=body)
    assert saved.status_code == 200 and saved.json()["ward"] == "B"
    clear = client.get(f"{API}/records/patients/{patient['id']}", headers=sa.headers | {
        "x-account-id": user.account_id}).json()  # fmt: skip
    assert clear["ssn"] == "123-45-6789" and clear["notes"] == "allergic"
    assert set(entries(client, patient["id"])[-1]["changes"].split('"')) >= {"ward"}
    assert "ssn" not in entries(client, patient["id"])[-1]["changes"]


def test_a_hook_bypassing_rules_is_recorded_as_the_user_it_acts_for(world: tuple, hook_registry: Any) -> None:
    client, sa, user = world
    define(client, sa, "posts", [{"name": "title", "type": "text"}])
    define(client, sa, "logs", [{"name": "what", "type": "text"}], rules={**PUBLIC, "create": None})

    @hook_registry.on("record.after_create", collection="posts")
    def log(event: Any) -> None:
        event.records.create("logs", {"what": "x"}, bypass_rules=True)

    create(client, user, "posts", {"title": "p"})
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    sql = "SELECT actor_user_id, actor_role, auth_method FROM audit_log WHERE action = 'record.create'"
    sql += " AND collection = 'logs'"
    row = fetch_all(conn, sql)
    assert row == [{"actor_user_id": user.id, "actor_role": "user", "auth_method": "hook"}]
