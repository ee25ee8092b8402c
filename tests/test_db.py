"""The database core: pragmas, migrations, the statement time budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import apsw
import pytest

from snackbase.db import Database, connect, fetch_all, fetch_one, fetch_value
from snackbase.migrations import SchemaTooNewError, current_version, latest_version, migrate


def test_pragmas(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    assert fetch_value(conn, "PRAGMA journal_mode") == "wal"
    assert fetch_value(conn, "PRAGMA foreign_keys") == 1
    assert fetch_value(conn, "PRAGMA synchronous") == 1  # NORMAL


def test_double_quoted_strings_are_not_literals(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    with pytest.raises(apsw.SQLError):
        conn.execute('SELECT "no_such_column"').fetchall()


def test_migrations_apply_once_and_create_the_system_account(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    assert migrate(conn) == list(range(1, latest_version() + 1))
    assert migrate(conn) == []
    assert current_version(conn) == latest_version()
    assert fetch_one(conn, "SELECT id, slug FROM accounts WHERE id = 'SY0000'") == {
        "id": "SY0000",
        "slug": "system",
    }


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    conn.execute(f"PRAGMA user_version = {latest_version() + 5}")
    with pytest.raises(SchemaTooNewError, match="newer"):
        migrate(conn)
    assert fetch_all(conn, "SELECT name FROM sqlite_master") == []


def test_runaway_statement_is_interrupted(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db", statement_timeout_ms=100)
    runaway = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    with pytest.raises(apsw.InterruptError):
        conn.execute(runaway).fetchall()
    assert fetch_value(conn, "SELECT 41 + 1") == 42  # the next statement gets a fresh budget


def test_fetch_helpers(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    assert fetch_all(conn, "SELECT * FROM t") == [] and fetch_one(conn, "SELECT * FROM t") is None
    conn.execute("INSERT INTO t VALUES (?, ?)", (1, "x"))
    assert fetch_all(conn, "SELECT * FROM t WHERE a = ?", (1,)) == [{"a": 1, "b": "x"}]


def test_worker_thread_has_its_own_connection(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db")
    migrate(db.conn)
    count = asyncio.run(db.in_worker(lambda conn: fetch_value(conn, "SELECT count(*) FROM accounts")))
    assert count == 1
    db.close()
    assert not (tmp_path / "x.db-wal").exists() or (tmp_path / "x.db-wal").stat().st_size == 0
