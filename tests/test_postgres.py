"""The PostgreSQL backend against a real PostgreSQL (tests/pg.py): the connection adapter, errors by
kind, the system-table migrations kept in step with SQLite's, the unit of work and the audit chain
with writers on several connections at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import apsw
import pytest

from snackbase import audit
from snackbase.backends import backend_name, redact_url
from snackbase.backends.postgres import (
    PgConnection,
    PgDatabase,
    current_version,
    latest_version,
    migrate,
    migrations,
    translate_placeholders,
)
from snackbase.db import connect, fetch_all, fetch_one, fetch_value
from snackbase.errors import ApiError, constraint_kind, database_error, unique_columns
from snackbase.migrations import migrate as migrate_sqlite
from snackbase.migrations import migrations as sqlite_migrations
from snackbase.unit_of_work import read_snapshot, unit_of_work


def test_backend_from_url() -> None:
    assert backend_name("") == "sqlite"
    assert backend_name("postgresql://u@h/db") == "postgresql"
    assert backend_name("postgres://u@h/db") == "postgresql"
    with pytest.raises(ValueError):
        backend_name("mysql://u@h/db")
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:********@h:5432/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_placeholders_are_rewritten_outside_literals() -> None:
    assert translate_placeholders("SELECT ? WHERE a = :name") == "SELECT %s WHERE a = %(name)s"
    sql = "SELECT '?:x%' || \"a?\" , b::text, c LIKE '%' -- ? :y\n WHERE d % 2 = ?"
    assert translate_placeholders(sql) == (
        "SELECT '?:x%' || \"a?\" , b::text, c LIKE '%' -- ? :y\n WHERE d %% 2 = %s"
    )
    assert translate_placeholders("a = ?1 OR b = ?2 OR c = ?1") == "a = %(p1)s OR b = %(p2)s OR c = %(p1)s"


def test_numbered_parameters_bind_one_value_twice(pg: PgConnection) -> None:
    assert pg.execute("SELECT ?1 || ?2 || ?1", ("a", "b")).fetchone() == ("aba",)


def test_migration_files_match_sqlite_step_for_step() -> None:
    assert [m.name for m in migrations()] == [m.name for m in sqlite_migrations()]


def _sqlite_columns(tmp_path: Path) -> dict[str, set[str]]:
    conn = connect(tmp_path / "schema.db")
    migrate_sqlite(conn)
    tables = [row["name"] for row in fetch_all(conn, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: {c["name"] for c in fetch_all(conn, f'PRAGMA table_info("{t}")')} for t in tables
            if not t.startswith("sqlite_")}  # fmt: skip


def _pg_columns(conn: PgConnection) -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    rows = fetch_all(
        conn,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema()",
    )
    for row in rows:
        tables.setdefault(row["table_name"], set()).add(row["column_name"])
    return tables


def test_schemas_have_the_same_tables_and_columns(tmp_path: Path, pg_url: str) -> None:
    database = PgDatabase.open(pg_url)
    try:
        assert current_version(database.conn) == latest_version()
        pg_tables = _pg_columns(database.conn)
        assert pg_tables.pop("snackbase_schema") == {"id", "version"}  # PostgreSQL's user_version
        assert pg_tables == _sqlite_columns(tmp_path)
    finally:
        database.close()


def test_migrate_is_idempotent_and_refuses_a_newer_schema(pg_url: str) -> None:
    conn = PgConnection(pg_url)
    try:
        assert migrate(conn) == list(range(1, latest_version() + 1))
        assert migrate(conn) == []
        assert fetch_value(conn, "SELECT slug FROM accounts WHERE id = ?", ("SY0000",)) == "system"
        conn.execute("UPDATE snackbase_schema SET version = ?", (latest_version() + 1,))
        from snackbase.migrations import SchemaTooNewError

        with pytest.raises(SchemaTooNewError):
            migrate(conn)
    finally:
        conn.close()


def test_two_nodes_migrating_at_once_apply_each_step_once(pg_url: str) -> None:
    results: list[list[int]] = []

    def start() -> None:
        conn = PgConnection(pg_url)
        results.append(migrate(conn))
        conn.close()

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0, 0, latest_version()]


@pytest.fixture
def pg(pg_url: str) -> Any:
    database = PgDatabase.open(pg_url)
    yield database.conn
    database.close()


def test_fetch_helpers_and_changes(pg: PgConnection) -> None:
    now = "2026-12-01T00:00:00.000Z"
    with unit_of_work(pg):
        pg.execute(
            "INSERT INTO accounts (id, slug, name, created_at, updated_at) VALUES (:id, :slug, :n, :t, :t)",
            {"id": "AB1234", "slug": "acme", "n": "Acme", "t": now},
        )
        pg.execute("UPDATE accounts SET name = ? WHERE id LIKE ?", ("Acme 100%", "AB%"))
        assert pg.changes() == 1
    assert fetch_one(pg, "SELECT id, name FROM accounts WHERE slug = ?", ("acme",)) == {
        "id": "AB1234",
        "name": "Acme 100%",
    }
    assert fetch_all(pg, "UPDATE accounts SET name = name WHERE id = ?", ("XX0000",)) == []
    assert fetch_one(pg, "SELECT id FROM accounts WHERE id = ?", ("XX0000",)) is None


def _insert_account(conn: Any, account_id: str, slug: str) -> None:
    now = "2026-12-01T00:00:00.000Z"
    conn.execute(
        "INSERT INTO accounts (id, slug, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        (account_id, slug, slug, now, now),
    )


def test_errors_leave_by_kind_as_on_sqlite(pg: PgConnection) -> None:
    with unit_of_work(pg):
        _insert_account(pg, "AB1234", "acme")
    with pytest.raises(apsw.ConstraintError) as caught, unit_of_work(pg):
        _insert_account(pg, "AB9999", "acme")
    assert constraint_kind(caught.value) == "unique"
    assert unique_columns(caught.value) == ["slug"]
    assert database_error(caught.value).status == 409
    assert not pg.in_transaction  # rolled back
    with pytest.raises(apsw.ConstraintError) as caught, unit_of_work(pg):
        pg.execute(
            "INSERT INTO groups (id, account_id, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            ("g1", "ZZ0000", "x", "t", "t"),
        )
    assert constraint_kind(caught.value) == "foreign_key"
    with pytest.raises(apsw.InterruptError):
        pg.execute("SET statement_timeout = 50")
        pg.execute("SELECT pg_sleep(1)")
    pg.execute("SET statement_timeout = 5000")
    assert database_error(apsw.InterruptError("x")).code == "statement_timeout"


def test_a_row_locked_by_another_writer_is_busy_after_the_lock_timeout(pg_url: str, pg: PgConnection) -> None:
    """Another node holding the row past lock_timeout: 503 `busy` and nothing written, as on SQLite."""
    with unit_of_work(pg):
        _insert_account(pg, "AB0001", "acme")
    other = PgConnection(pg_url)
    try:
        other.execute("BEGIN")
        other.execute("UPDATE accounts SET name = 'held' WHERE id = 'AB0001'")
        pg.execute("SET lock_timeout = 100")
        with pytest.raises(ApiError) as caught, unit_of_work(pg):
            pg.execute("UPDATE accounts SET name = 'mine' WHERE id = 'AB0001'")
        assert caught.value.status == 503 and caught.value.code == "busy"
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert fetch_value(pg, "SELECT name FROM accounts WHERE id = 'AB0001'") == "acme"


def test_nested_unit_is_a_savepoint_and_failures_roll_back_everything(pg: PgConnection) -> None:
    ran: list[str] = []
    with unit_of_work(pg) as work:
        _insert_account(pg, "AA0001", "one")
        with pytest.raises(apsw.ConstraintError), unit_of_work(pg):
            _insert_account(pg, "AA0002", "one")  # the savepoint alone is undone
        work.after_commit(lambda: ran.append("after"))
    assert ran == ["after"]
    assert fetch_value(pg, "SELECT count(*) FROM accounts WHERE id LIKE 'AA%'") == 1
    with pytest.raises(RuntimeError), unit_of_work(pg) as work:
        _insert_account(pg, "AA0003", "three")
        work.after_commit(lambda: ran.append("never"))
        raise RuntimeError("boom")
    assert ran == ["after"]
    assert fetch_value(pg, "SELECT count(*) FROM accounts WHERE id = 'AA0003'") == 0


def test_audit_chain_appends_and_verifies(pg: PgConnection) -> None:
    for n in range(3):
        with unit_of_work(pg):
            audit.append(pg, account_id="SY0000", actor=audit.CLI_ACTOR, action="test", extra={"n": n})
    with unit_of_work(pg):
        audit.append(pg, account_id="AB0001", actor=audit.CLI_ACTOR, action="test")
    result = audit.verify(pg)
    assert result.ok and result.entries_checked == 4
    with read_snapshot(pg):
        rows = fetch_all(pg, "SELECT account_id, account_seq FROM audit_log ORDER BY seq")
    assert [(r["account_id"], r["account_seq"]) for r in rows] == [
        ("SY0000", 1), ("SY0000", 2), ("SY0000", 3), ("AB0001", 1)
    ]  # fmt: skip


def test_audit_trail_is_append_only_and_the_chain_cannot_fork(pg: PgConnection) -> None:
    with unit_of_work(pg):
        audit.append(pg, account_id="SY0000", actor=audit.CLI_ACTOR, action="test")
    for statement in ("UPDATE audit_log SET reason = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log",
                      "DELETE FROM audit_heads", "UPDATE audit_heads SET account_seq = 5"):  # fmt: skip
        with pytest.raises(apsw.ConstraintError), unit_of_work(pg):
            pg.execute(statement)
    with pytest.raises(apsw.ConstraintError), unit_of_work(pg):  # not at the head: refused
        pg.execute(
            "INSERT INTO audit_log (seq, account_id, account_seq, occurred_at, auth_method, action, "
            "prev_hash, hash) VALUES (999, 'SY0000', 5, 't', 'cli', 'x', 'bad', 'bad')"
        )
    assert audit.verify(pg).ok


def test_writers_on_many_connections_leave_chains_that_verify(pg_url: str, pg: PgConnection) -> None:
    """Eight writers (think: nodes) append to two accounts at once; each account's entries are
    serialized by the head's row lock, so every chain verifies with no gap and no fork."""
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        conn = PgConnection(pg_url)
        try:
            for n in range(15):
                with unit_of_work(conn):
                    account = "AC0001" if (index + n) % 2 else "AC0002"
                    audit.append(conn, account_id=account, actor=audit.CLI_ACTOR, action="w", extra={"n": n})
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = audit.verify(pg)
    assert result.ok, result
    assert result.entries_checked == 8 * 15
    heads = fetch_all(pg, "SELECT account_id, account_seq FROM audit_heads ORDER BY account_id")
    assert sum(h["account_seq"] for h in heads) == 120


def test_verify_finds_a_tampered_entry(pg: PgConnection) -> None:
    for _ in range(3):
        with unit_of_work(pg):
            audit.append(pg, account_id="SY0000", actor=audit.CLI_ACTOR, action="test")
    # An operator with rights to switch the triggers off edits an entry: verify names it.
    pg.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    pg.execute("UPDATE audit_log SET action = 'edited' WHERE account_seq = 2")
    result = audit.verify(pg)
    assert not result.ok and result.account_id == "SY0000"
    assert "edited" in (result.problem or "")
