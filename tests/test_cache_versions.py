"""The per-process caches on the hot path (verified sessions, collection definitions) hold only while
their version counters stand still; every change — made by another process straight in SQL, cascades
included — takes effect on the very next request, exactly as when every request re-read everything."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import apsw
import pytest
from starlette.testclient import TestClient

from snackbase import auth

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def other_process(client: TestClient, backend: str) -> Iterator[Any]:
    """A second connection to the same database: what another worker process, another node or the CLI
    would write with."""
    settings: Any = client.app.state.settings  # type: ignore[attr-defined]
    if backend == "postgresql":
        from snackbase.backends.postgres import PgConnection

        pg = PgConnection(settings.database_url)
        yield pg
        pg.close()
        return
    conn = apsw.Connection(str(settings.db_path))
    conn.set_busy_timeout(5_000)
    conn.execute("PRAGMA foreign_keys=ON")
    yield conn
    conn.close()


def me(client: TestClient, user: dict[str, Any]) -> Any:
    return client.get("/api/v1/auth/me", headers=user["headers"])


def caller(client: TestClient, user: dict[str, Any]) -> auth.Auth:
    """The request's caller as the auth middleware resolves it (from memory when it can)."""
    app: Any = client.app
    return auth.resolve_auth(app.state.settings, app.state.db.conn, user["headers"]["authorization"], None)


@pytest.mark.sqlite_only
def test_a_verified_token_is_served_from_memory(
    client: TestClient, make_user: Callable[..., dict[str, Any]]
) -> None:
    user = make_user()
    assert me(client, user).status_code == 200
    cache = auth._verified[client.app.state.db.conn]  # type: ignore[attr-defined]
    assert cache[user["token"]].auth == caller(client, user)
    assert caller(client, user).email == user["email"]


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE sessions SET revoked_at = '2026-01-01T00:00:00.000Z' WHERE id = :session",
        "UPDATE sessions SET expires_at = '2020-01-01T00:00:00.000Z' WHERE id = :session",
        "DELETE FROM sessions WHERE id = :session",
        "UPDATE users SET is_active = 0 WHERE id = :user",
        "DELETE FROM users WHERE id = :user",
        "DELETE FROM accounts WHERE id = :account",  # cascades to the user and the session
    ],
)
def test_an_ended_session_is_refused_on_the_next_request(
    client: TestClient, make_user: Callable[..., dict[str, Any]], other_process: Any, change: str
) -> None:
    user = make_user()
    assert me(client, user).status_code == 200
    other_process.execute(
        change, {"session": user["session_id"], "user": user["id"], "account": user["account_id"]}
    )
    answer = me(client, user)
    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == "unauthorized"


def test_role_email_and_pii_access_changes_apply_on_the_next_request(
    client: TestClient, make_user: Callable[..., dict[str, Any]], other_process: Any
) -> None:
    user = make_user(role="user")
    assert caller(client, user).role == "user"
    other_process.execute(
        "UPDATE users SET role = 'admin', email = 'new@example.com' WHERE id = ?", (user["id"],)
    )
    assert (caller(client, user).role, caller(client, user).email) == ("admin", "new@example.com")

    assert caller(client, user).pii_access is False
    (group,) = other_process.execute(
        "SELECT id FROM groups WHERE account_id = ? AND name = 'pii_access'", (user["account_id"],)
    ).fetchone()
    other_process.execute(
        "INSERT INTO group_members (group_id, user_id, created_at) VALUES (?, ?, 'x')", (group, user["id"])
    )
    assert caller(client, user).pii_access is True
    other_process.execute("UPDATE groups SET name = 'readers' WHERE id = ?", (group,))
    assert caller(client, user).pii_access is False


def test_writes_that_cannot_change_the_answer_keep_the_cache(
    client: TestClient, make_user: Callable[..., dict[str, Any]], other_process: Any
) -> None:
    """A refresh extends a session and records its use: no reason to verify every token again."""
    user = make_user()
    me(client, user)
    before = other_process.execute("SELECT version FROM auth_version").fetchone()
    other_process.execute(
        "UPDATE sessions SET last_used_at = '2030-01-01T00:00:00.000Z', "
        "expires_at = '2099-01-01T00:00:00.000Z' WHERE id = ?",
        (user["session_id"],),
    )
    other_process.execute("UPDATE users SET last_login_at = 'x' WHERE id = ?", (user["id"],))
    assert other_process.execute("SELECT version FROM auth_version").fetchone() == before


def test_a_forged_token_never_matches_a_remembered_one(
    client: TestClient, make_user: Callable[..., dict[str, Any]]
) -> None:
    user = make_user()
    assert me(client, user).status_code == 200
    header, payload, signature = user["token"].split(".")
    forged = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    answer = client.get("/api/v1/auth/me", headers={"authorization": f"Bearer {forged}"})
    assert answer.status_code == 401


def test_a_collection_changed_by_another_process_is_used_on_the_next_request(
    client: TestClient, superadmin_token: str, other_process: Any
) -> None:
    admin = {"authorization": f"Bearer {superadmin_token}"}
    rules = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
    body = {"name": "notes", "rules": rules, "fields": [{"name": "title", "type": "text"}]}
    assert client.post("/api/v1/collections", json=body, headers=admin).status_code == 201
    account = client.post("/api/v1/accounts", json={"name": "Other"}, headers=admin).json()["id"]
    public = {"x-account-id": account}
    assert client.get("/api/v1/records/notes", headers=public).status_code == 200
    other_process.execute("DELETE FROM collections WHERE name = 'notes'")  # as `serve` elsewhere would
    other_process.execute("UPDATE collections_version SET version = version + 1")
    assert client.get("/api/v1/records/notes", headers=public).json()["code"] == "not_found"


@pytest.mark.sqlite_only
def test_definitions_read_inside_a_rolled_back_transaction_are_not_kept(client: TestClient) -> None:
    app: Any = client.app
    conn, registry = app.state.db.conn, app.state.registry
    registry.refresh(conn)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO collections (id, name, fields, rules, field_access, audit, created_at, updated_at) "
        "VALUES ('c1', 'phantom', '[]', '{}', '{}', '{}', 'x', 'x')"
    )
    conn.execute("UPDATE collections_version SET version = version + 1")
    registry.refresh(conn)
    assert "phantom" in registry.by_name  # the transaction sees its own change
    conn.execute("ROLLBACK")
    committed = conn.execute("SELECT version FROM collections_version").fetchone()[0]
    registry.refresh(conn, seen=committed)  # what the next request does
    assert "phantom" not in registry.by_name
