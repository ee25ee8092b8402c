"""Custom SQL macros: validation at save time, the fence at run time, use in rules, the test endpoints."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from snackbase.db import fetch_value
from tests.factories import User, add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PROJECT_MEMBER = "SELECT count(*) > 0 FROM c_members WHERE user_id = ? AND project = ?"


@pytest.fixture
def sa(client: TestClient) -> User:
    return make_superadmin(client)


def define_members(client: TestClient, sa: User) -> None:
    body = {
        "name": "members",
        "fields": [{"name": "user_id", "type": "text"}, {"name": "project", "type": "text"}],
        "rules": dict.fromkeys(("list", "view", "create", "update", "delete"), ""),
    }
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201


def test_create_list_get_patch_delete(client: TestClient, sa: User) -> None:
    define_members(client, sa)
    created = client.post(
        f"{API}/macros",
        headers=sa.headers,
        json={"name": "is_member", "sql": PROJECT_MEMBER, "description": "membership"},
    )
    assert created.status_code == 201 and created.json()["params"] == 2
    assert [m["name"] for m in client.get(f"{API}/macros", headers=sa.headers).json()["items"]] == [
        "is_member"
    ]
    patched = client.patch(f"{API}/macros/is_member", headers=sa.headers, json={"description": "who is in"})
    assert patched.json()["description"] == "who is in" and patched.json()["sql"] == PROJECT_MEMBER
    assert client.delete(f"{API}/macros/is_member", headers=sa.headers).status_code == 204
    assert client.get(f"{API}/macros/is_member", headers=sa.headers).status_code == 404
    actions = [
        r[0]
        for r in client.app.state.db.conn.execute(  # type: ignore[attr-defined]
            "SELECT action FROM audit_log WHERE action LIKE 'macro.%' ORDER BY seq"
        )
    ]
    assert actions == ["macro.create", "macro.update", "macro.delete"]


BAD_SQL = [
    ("write", "DELETE FROM c_members"),
    ("insert", "INSERT INTO c_members (id) VALUES ('x')"),
    ("pragma", "PRAGMA user_version"),
    ("attach", "ATTACH DATABASE '/tmp/x.db' AS x"),
    ("two statements", "SELECT 1; DELETE FROM c_members"),
    ("password hashes", "SELECT password_hash FROM users WHERE id = ?"),
    ("sessions", "SELECT count(*) FROM sessions"),
    ("refresh tokens", "SELECT count(*) FROM refresh_tokens"),
    ("audit log", "SELECT count(*) FROM audit_log"),
    ("schema", "SELECT sql FROM sqlite_master"),
    ("load extension", "SELECT load_extension('evil')"),
    ("not sql", "this is not sql"),
    ("empty", "   "),
    ("create", "CREATE TABLE x (a)"),
]


# What PostgreSQL has (snackbase/backends/macro_fence.py refuses it); SQLite knows none of it.
BAD_SQL_POSTGRESQL = [
    ("pg_sleep", "SELECT pg_sleep(10) IS NULL"),
    ("pg_read_file", "SELECT length(pg_read_file('/etc/passwd')) > 0"),
    ("set_config", "SELECT set_config('role', 'postgres', true) = ''"),
    ("set_config in LIMIT", "SELECT 1 LIMIT length(set_config('role', 'postgres', true))"),
    ("set_config in VALUES", "VALUES (set_config('role', 'postgres', true))"),
    ("sql as text", "SELECT query_to_xml('SELECT 1', true, true, '') IS NOT NULL"),
    ("advisory lock", "SELECT pg_advisory_lock(1) IS NULL"),
    ("pg_notify", "SELECT pg_notify('x', 'y') IS NULL"),
    ("pg_catalog", "SELECT count(*) > 0 FROM pg_authid"),
    ("pg_class", "SELECT count(*) > 0 FROM pg_class"),
    ("information_schema", "SELECT count(*) > 0 FROM information_schema.tables"),
    ("pg_settings", "SELECT count(*) > 0 FROM pg_settings"),
    ("modifying cte", "WITH d AS (DELETE FROM c_members RETURNING 1) SELECT count(*) FROM d"),
    ("for update", "SELECT 1 FROM c_members FOR UPDATE"),
    ("update", "UPDATE c_members SET project = 'x'"),
    ("truncate", "TRUNCATE c_members"),
    ("copy", "COPY c_members TO '/tmp/x'"),
    ("set role", "SET ROLE postgres"),
    ("users email via cte", "WITH x AS (SELECT password_hash FROM users) SELECT count(*) > 0 FROM x"),
    ("closing the probe", "SELECT 1; END; DROP TABLE c_members; SELECT 1"),
]


@pytest.mark.parametrize(("case", "sql"), BAD_SQL + BAD_SQL_POSTGRESQL,
                         ids=[c[0] for c in BAD_SQL + BAD_SQL_POSTGRESQL])  # fmt: skip
def test_unsafe_or_invalid_sql_is_refused(client: TestClient, sa: User, case: str, sql: str) -> None:
    define_members(client, sa)
    response = client.post(f"{API}/macros", headers=sa.headers, json={"name": "bad", "sql": sql})
    assert response.status_code == 400, response.text
    assert "sql" in response.json()["fields"]
    assert fetch_value(client.app.state.db.conn, "SELECT count(*) FROM macros") == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["owns_record", "Bad", "1x", "a-b", "x" * 64])
def test_bad_names(client: TestClient, sa: User, name: str) -> None:
    assert (
        client.post(f"{API}/macros", headers=sa.headers, json={"name": name, "sql": "SELECT 1"}).status_code
        == 400
    )


@pytest.mark.parametrize("who", ["admin", "user"])
def test_only_superadmins(client: TestClient, who: str) -> None:
    user = make_user(client, make_account(client), who)
    assert (
        client.post(f"{API}/macros", headers=user.headers, json={"name": "m", "sql": "SELECT 1"}).status_code
        == 403
    )
    assert client.get(f"{API}/macros", headers=user.headers).status_code == 403


def test_macro_in_a_rule(client: TestClient, sa: User) -> None:
    define_members(client, sa)
    client.post(f"{API}/macros", headers=sa.headers, json={"name": "is_member", "sql": PROJECT_MEMBER})
    rule = '@is_member(@request.auth.id, "apollo")'
    body = {
        "name": "docs",
        "fields": [{"name": "title", "type": "text"}],
        "rules": {"list": rule, "view": rule, "create": "", "update": rule, "delete": rule},
    }
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    account = make_account(client)
    member, outsider = make_user(client, account), make_user(client, account)
    client.post(
        f"{API}/records/members", headers=member.headers, json={"user_id": member.id, "project": "apollo"}
    )
    doc = client.post(f"{API}/records/docs", headers=member.headers, json={"title": "plan"}).json()
    assert client.get(f"{API}/records/docs/{doc['id']}", headers=member.headers).status_code == 200
    assert client.get(f"{API}/records/docs/{doc['id']}", headers=outsider.headers).status_code == 404
    assert client.get(f"{API}/records/docs", headers=outsider.headers).json()["total_items"] == 0
    in_use = client.delete(f"{API}/macros/is_member", headers=sa.headers)
    assert in_use.status_code == 409 and in_use.json()["code"] == "macro_in_use"
    broken = client.patch(f"{API}/macros/is_member", headers=sa.headers, json={"sql": "SELECT ? = 1"})
    assert broken.status_code == 409


def test_rules_naming_unknown_macros_or_wrong_arity_are_refused(client: TestClient, sa: User) -> None:
    client.post(f"{API}/macros", headers=sa.headers, json={"name": "one_arg", "sql": "SELECT ? = 1"})
    for rule in ("@nope()", "@one_arg()", "@one_arg(1, 2)"):
        body = {"name": "x", "fields": [], "rules": {"view": rule}}
        response = client.post(f"{API}/collections", headers=sa.headers, json=body)
        assert response.status_code == 400 and "rules.view" in response.json()["fields"], rule


@pytest.mark.parametrize(
    ("sql", "args", "result"),
    [
        ("SELECT ? > 5", [7], True),
        ("SELECT ? > 5", [3], False),
        ("SELECT 'yes'", [], True),
        ("SELECT ? > 5;", [7], True),
        ("SELECT 1 FROM c_members", [], False),  # no row: fails closed
        ("SELECT 1 UNION ALL SELECT 1", [], False),  # many rows: fails closed
        ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n", [], False),
    ],
    ids=["true", "false", "text", "semicolon", "no rows", "many rows", "runs forever"],
)
def test_macro_test_endpoint_fails_closed(
    client: TestClient, sa: User, sql: str, args: list, result: bool
) -> None:
    define_members(client, sa)
    assert client.post(f"{API}/macros", headers=sa.headers, json={"name": "m", "sql": sql}).status_code == 201
    response = client.post(f"{API}/macros/m/test", headers=sa.headers, json={"args": args})
    assert response.status_code == 200 and response.json() == {"result": result}


def test_macro_test_checks_arity_and_user(client: TestClient, sa: User) -> None:
    client.post(f"{API}/macros", headers=sa.headers, json={"name": "m", "sql": "SELECT ?"})
    assert client.post(f"{API}/macros/m/test", headers=sa.headers, json={"args": []}).status_code == 400
    missing = client.post(f"{API}/macros/m/test", headers=sa.headers, json={"args": [1], "as_user": "nobody"})
    assert missing.status_code == 404


def test_rules_test_endpoint(client: TestClient, sa: User) -> None:
    body = {
        "name": "notes",
        "fields": [{"name": "level", "type": "number"}],
        "rules": {"view": "@owns_record()"},
    }
    client.post(f"{API}/collections", headers=sa.headers, json=body)
    account = make_account(client)
    owner, other = make_user(client, account), make_user(client, account)
    admin = make_user(client, account, "admin")
    add_to_group(client, other, "editors")
    record = client.post(
        f"{API}/records/notes", headers={**sa.headers, "x-account-id": account}, json={"level": 3}
    ).json()
    client.app.state.db.conn.execute(
        "UPDATE c_notes SET created_by = ? WHERE id = ?",  # type: ignore[attr-defined]
        (owner.id, record["id"]),
    )
    url = f"{API}/collections/notes/rules/test"

    def allowed(payload: dict) -> bool:
        response = client.post(url, headers=sa.headers, json=payload)
        assert response.status_code == 200, response.text
        return bool(response.json()["allowed"])

    assert allowed({"rule": "@owns_record()", "as_user": owner.id, "record_id": record["id"]})
    assert not allowed({"rule": "@owns_record()", "as_user": other.id, "record_id": record["id"]})
    assert allowed({"rule": '@has_group("editors")', "as_user": other.id, "record_id": record["id"]})
    assert allowed({"rule": "level < 5", "operation": "create", "as_user": admin.id, "data": {"level": 4}})
    assert not allowed(
        {"rule": "level < 5", "operation": "create", "as_user": admin.id, "data": {"level": 9}}
    )
    assert not allowed({"rule": None, "as_user": admin.id, "record_id": record["id"]})
    assert allowed({"rule": "", "record_id": record["id"]})
    bad = client.post(
        url, headers=sa.headers, json={"rule": "level >", "as_user": owner.id, "record_id": record["id"]}
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_rule"
    assert client.post(url, headers=owner.headers, json={"rule": ""}).status_code == 403
