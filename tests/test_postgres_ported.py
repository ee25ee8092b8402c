"""What issue 20's later ports bring to PostgreSQL (a real cluster from tests/pg.py), where the shared
API tests cannot say it: what still refuses with 501 `not_on_postgresql` inside a ported area, and the
PostgreSQL-only parts (the macro fence's role and read-only transaction)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.backends import macro_fence
from snackbase.backends.postgres import PgConnection
from snackbase.hook_loader import HookLoadError
from tests.conftest import make_settings
from tests.factories import make_account, make_superadmin, make_user

API = "/api/v1"
_plain_users = itertools.count(1)


@pytest.fixture
def pg_client(tmp_path: Path, pg_url: str) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", database_url=pg_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


# --- custom SQL macros: the fence's PostgreSQL layers (snackbase/backends/macro_fence.py) ----------------

INSERT_MACRO = "INSERT INTO macros (name, sql, params, created_at, updated_at) VALUES (?, ?, 0, 'x', 'y')"
MEMBERS = {
    "name": "members",
    "fields": [{"name": "user_id", "type": "text"}, {"name": "project", "type": "text"}],
    "rules": dict.fromkeys(("list", "view", "create", "update", "delete"), ""),
}


def test_the_macro_role_reads_collections_and_public_columns_only(pg_client: TestClient, pg_url: str) -> None:
    """The role every macro runs as: SELECT on collection tables (new ones too) and the public columns
    of five system tables; no write, no secret, no other system table."""
    sa = make_superadmin(pg_client)
    assert pg_client.post(f"{API}/collections", headers=sa.headers, json=MEMBERS).status_code == 201
    conn = PgConnection(pg_url)
    role = macro_fence.role_name(conn)
    assert role.startswith("snackbase_macros_")
    allowed = [
        "SELECT count(*) FROM c_members",
        "SELECT id, email, role FROM users",
        "SELECT name FROM accounts",
        "SELECT group_id FROM group_members",
    ]
    refused = [
        "SELECT password_hash FROM users",
        "SELECT count(*) FROM sessions",
        "SELECT count(*) FROM audit_log",
        "SELECT count(*) FROM refresh_tokens",
        "SELECT count(*) FROM macros",
        "INSERT INTO c_members (id, account_id, created_at, updated_at) VALUES ('x', 'y', 'z', 'z')",
        "DELETE FROM c_members",
        "CREATE TABLE c_evil (a int)",
    ]
    for sql in allowed + refused:
        conn.execute("BEGIN")
        conn.execute(f'SET LOCAL ROLE "{role}"')
        try:
            conn.execute(sql)
            ok = True
        except Exception:
            ok = False
        conn.execute("ROLLBACK")
        assert ok == (sql in allowed), sql
    conn.close()


def test_macros_in_rules_of_reads_and_writes_and_the_fence_at_run_time(
    pg_client: TestClient, pg_url: str
) -> None:
    """A macro in a write's rule runs in a savepoint of the write's transaction, which goes on; a macro
    row written around the API (by hand, a copy) is checked before it first runs and fails closed."""
    sa = make_superadmin(pg_client)
    assert pg_client.post(f"{API}/collections", headers=sa.headers, json=MEMBERS).status_code == 201
    member_sql = "SELECT count(*) > 0 FROM c_members WHERE user_id = ? AND project = ?"
    body = {"name": "is_member", "sql": member_sql}
    assert pg_client.post(f"{API}/macros", headers=sa.headers, json=body).status_code == 201
    rule = '@is_member(@request.auth.id, "apollo")'
    docs = {"name": "docs", "fields": [{"name": "title", "type": "text"}],
            "rules": {"list": rule, "view": rule, "create": "", "update": rule, "delete": rule}}  # fmt: skip
    assert pg_client.post(f"{API}/collections", headers=sa.headers, json=docs).status_code == 201
    account = make_account(pg_client)
    member, outsider = make_user(pg_client, account), make_user(pg_client, account)
    pg_client.post(f"{API}/records/members", headers=member.headers,
                   json={"user_id": member.id, "project": "apollo"})  # fmt: skip
    doc = pg_client.post(f"{API}/records/docs", headers=member.headers, json={"title": "plan"}).json()
    url = f"{API}/records/docs/{doc['id']}"
    assert pg_client.patch(url, headers=outsider.headers, json={"title": "x"}).status_code == 404
    changed = pg_client.patch(url, headers=member.headers, json={"title": "plan B"})
    assert changed.status_code == 200 and changed.json()["title"] == "plan B"
    assert pg_client.get(f"{API}/audit-log/verify", headers=sa.headers).json()["ok"] is True
    # Rows written around the API: checked when they first run, false whatever they hold.
    conn = PgConnection(pg_url)
    for name, sql in (("sneaky", "SELECT length(pg_read_file('/etc/passwd')) > 0"),
                      ("escape", "SELECT set_config('role', 'postgres', true) IS NOT NULL"),
                      ("writer", "WITH d AS (DELETE FROM c_docs RETURNING 1) SELECT count(*) >= 0 FROM d"),
                      ("secret", "SELECT count(*) >= 0 FROM sessions")):  # fmt: skip
        conn.execute(INSERT_MACRO, (name, sql))
        answer = pg_client.post(f"{API}/macros/{name}/test", headers=sa.headers, json={"args": []})
        assert answer.status_code == 200 and answer.json() == {"result": False}, name
    assert conn.execute("SELECT count(*) FROM c_docs").fetchone() == (1,)
    conn.close()


def test_macro_parameters_are_question_marks(pg_client: TestClient) -> None:
    """PostgreSQL's own `$1` is refused (its count would not be the arguments'); `?` and `?N` work."""
    sa = make_superadmin(pg_client)
    answer = pg_client.post(f"{API}/macros", headers=sa.headers, json={"name": "d", "sql": "SELECT $1 = 'x'"})
    assert answer.status_code == 400 and answer.json()["fields"]["sql"]["code"] == "invalid_macro"
    body = {"name": "n", "sql": "SELECT ?1 > 0 AND ?2 > ?1"}  # ?1 is an integer from its first use
    created = pg_client.post(f"{API}/macros", headers=sa.headers, json=body)
    assert created.status_code == 201 and created.json()["params"] == 2, created.text
    for args, result in (([1, 5], True), ([5, 1], False), ([0, 5], False)):
        answer = pg_client.post(f"{API}/macros/n/test", headers=sa.headers, json={"args": args})
        assert answer.json() == {"result": result}, args


def test_without_createrole_macros_are_off_and_say_why(pg_cluster: Any, tmp_path: Path) -> None:
    """A database user that may not create roles: the server starts, /macros answers 501 saying what is
    missing, collections and records work, and nothing is half-done."""
    import psycopg

    user = f"plain_{os.getpid()}_{next(_plain_users)}"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{user}" LOGIN')
        admin.execute(f'CREATE SCHEMA "{user}" AUTHORIZATION "{user}"')
    url = pg_cluster.url().replace("//postgres@", f"//{user}@") + f"?options=-csearch_path%3D{user}"
    settings = make_settings(tmp_path / "data", database_url=url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sa = make_superadmin(client)
        answer = client.get(f"{API}/macros", headers=sa.headers)
        assert answer.status_code == 501 and answer.json()["code"] == "not_on_postgresql"
        assert "permission denied to create role" in answer.json()["message"]
        answer = client.post(f"{API}/macros", headers=sa.headers, json={"name": "m", "sql": "SELECT 1"})
        assert answer.status_code == 501
        assert client.post(f"{API}/collections", headers=sa.headers, json=MEMBERS).status_code == 201
        # A rule naming a macro cannot be saved (no macro exists), and a stored one fails closed.
        conn = PgConnection(url)
        conn.execute(INSERT_MACRO, ("m", "SELECT 1"))
        conn.close()
        account = make_account(client)
        body = {"name": "gated", "fields": [{"name": "t", "type": "text"}],
                "rules": {"list": "@m()", "view": "@m()", "create": ""}}  # fmt: skip
        assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
        someone = make_user(client, account)
        assert (
            client.post(f"{API}/records/gated", headers=someone.headers, json={"t": "a"}).status_code == 201
        )
        assert client.get(f"{API}/records/gated", headers=someone.headers).json()["items"] == []


def test_rules_comparing_request_values_with_null(pg_client: TestClient) -> None:
    """`@request.* = null` gives PostgreSQL no type for its parameter: it is decided when compiled, and
    a create with NULL values checks its rule against typed values."""
    sa = make_superadmin(pg_client)
    create = "@request.auth.id != null && @request.data.t != null && n = null"
    rules = {"list": "@request.auth.id != null", "view": "", "update": "", "create": create}
    body = {"name": "notes", "fields": [{"name": "t", "type": "text"}, {"name": "n", "type": "number"}],
            "rules": rules}  # fmt: skip
    assert pg_client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    user = make_user(pg_client, make_account(pg_client))
    assert pg_client.post(f"{API}/records/notes", headers=user.headers, json={"n": 1}).status_code == 403
    assert pg_client.post(f"{API}/records/notes", headers=user.headers, json={"t": "a"}).status_code == 201
    assert pg_client.get(f"{API}/records/notes", headers=user.headers).json()["total_items"] == 1
    anonymous = {"x-account-id": user.account_id}
    assert pg_client.get(f"{API}/records/notes", headers=anonymous).json()["total_items"] == 0


# --- hook files -------------------------------------------------------------------------------------------

HOOK_FILE = """
from snackbase.hooks import hooks, HookAbort

@hooks.on("record.before_create", collection="posts")
def no_shouting(event):
    if event.data.get("title", "").isupper():
        raise HookAbort(400, "No shouting.")

@hooks.on("record.after_create", collection="posts")
def notify(event):
    event.records.create("notifications", {"text": "new: " + event.record["title"]}, bypass_rules=True)
"""


def test_hook_files_run_on_postgresql(tmp_path: Path, pg_url: str, hook_registry: Any) -> None:
    """A hook file in the hooks dir loads at start, aborts a write before it happens and writes through
    `event.records` after one commits, on PostgreSQL as on SQLite; a broken one refuses the start."""
    hooks_dir = tmp_path / "data" / "hooks"
    hooks_dir.mkdir(parents=True)
    (hooks_dir / "10-posts.py").write_text(HOOK_FILE, encoding="utf-8")
    settings = make_settings(tmp_path / "data", database_url=pg_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sa = make_superadmin(client)
        public = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
        for name, field in (("posts", "title"), ("notifications", "text")):
            body = {"name": name, "fields": [{"name": field, "type": "text"}], "rules": public}
            assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
        user = make_user(client, make_account(client))
        refused = client.post(f"{API}/records/posts", headers=user.headers, json={"title": "HELLO"})
        assert refused.status_code == 400 and refused.json()["message"] == "No shouting."
        created = client.post(f"{API}/records/posts", headers=user.headers, json={"title": "Hello"})
        assert created.status_code == 201, created.text
        listed = client.get(f"{API}/records/notifications", headers=user.headers).json()["items"]
        assert [item["text"] for item in listed] == ["new: Hello"]
        assert client.get(f"{API}/records/posts", headers=user.headers).json()["total_items"] == 1
    (hooks_dir / "20-broken.py").write_text("this is not python\n", encoding="utf-8")
    with pytest.raises(HookLoadError, match=r"20-broken\.py"):
        create_app(settings)


def test_rate_limits_apply_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """SNACKBASE_RATE_LIMIT_* is honoured (never ignored): per address, per user, per class."""
    settings = make_settings(tmp_path / "data", database_url=pg_url, rate_limit_reads="3/60",
                             rate_limit_writes="1/60")  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert [client.get(f"{API}/collections").status_code for _ in range(4)][-1] == 429
        limited = client.get(f"{API}/collections")
        assert limited.json()["code"] == "rate_limited" and "retry-after" in limited.headers
        assert all(client.get("/health").status_code == 200 for _ in range(5))  # probes never
        sa, other = make_superadmin(client), make_superadmin(client)
        assert client.post(f"{API}/accounts", headers=sa.headers, json={"name": "One"}).status_code == 201
        assert client.post(f"{API}/accounts", headers=sa.headers, json={"name": "Two"}).status_code == 429
        assert (
            client.post(f"{API}/accounts", headers=other.headers, json={"name": "Three"}).status_code == 201
        )
        conn = PgConnection(pg_url)
        assert conn.execute("SELECT count(*) FROM accounts WHERE name = 'Two'").fetchone() == (0,)
        conn.close()


# --- the command line --------------------------------------------------------------------------------------


def test_collections_import_export_and_superadmin_create_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """`collections import/export` and `superadmin create` act on PostgreSQL when given its URL (never
    on a SQLite file in the data dir instead)."""
    from tests.test_cli_collections import DEFINITIONS

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "snackbase", *args, "--data-dir", str(tmp_path / "d")]
        return subprocess.run([*command, "--database-url", pg_url], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)  # fmt: skip

    source = tmp_path / "schema.json"
    source.write_text(json.dumps(DEFINITIONS))
    first = run("collections", "import", str(source))
    assert first.returncode == 0, first.stderr
    assert "created: authors, books" in first.stdout
    assert "unchanged: authors, books" in run("collections", "import", str(source)).stdout
    exported = tmp_path / "out.json"
    assert run("collections", "export", str(exported)).returncode == 0
    assert sorted(d["name"] for d in json.loads(exported.read_text())) == ["authors", "books"]
    made = run(
        "superadmin", "create", "--email", "root@example.com", "--password", "Correct horse battery 42"
    )
    assert made.returncode == 0, made.stderr
    info = json.loads(run("info").stdout)["database"]
    assert info["macro_role"]["name"].startswith("snackbase_macros_") and info["macro_role"]["ready"] is False
    with TestClient(create_app(make_settings(tmp_path / "d", database_url=pg_url))):
        pass  # the server's start sets the role up
    assert json.loads(run("info").stdout)["database"]["macro_role"]["ready"] is True
    conn = PgConnection(pg_url)
    assert conn.execute("SELECT count(*) FROM c_books").fetchone() == (0,)
    assert conn.execute("SELECT role FROM users WHERE email = 'root@example.com'").fetchone() == ("admin",)
    conn.close()
    assert not (tmp_path / "d" / "snackbase.db").exists()
