"""The database core: pragmas, migrations, the statement time budget."""

from __future__ import annotations

import asyncio
import threading
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


PAGE = 2048
WAL_FRAME = PAGE + 24  # each WAL frame: a 24-byte header and one page


async def _commit_rows(db: Database, commits: int) -> None:
    """One row of ~1.5 KiB per commit (about one new page each), yielding to the loop in between
    as a server does between requests."""
    for _ in range(commits):
        with db.conn:
            db.conn.execute("INSERT INTO t VALUES (randomblob(1500))")
        await asyncio.sleep(0)


def test_checkpoints_run_on_the_worker_thread(tmp_path: Path) -> None:
    # The inline threshold is out of reach: only the worker can have moved pages into the main file.
    db = Database(tmp_path / "x.db", checkpoint_pages=50, wal_reset_pages=1_000_000)

    async def scenario() -> int:
        db.checkpoint_in_background()
        db.conn.execute("CREATE TABLE t (x BLOB)")
        await _commit_rows(db, 400)
        await db.in_worker(lambda conn: None)  # the last checkpoint job has finished
        return (tmp_path / "x.db").stat().st_size

    main_file_bytes = asyncio.run(scenario())
    # At least the first checkpoint (scheduled at 50 WAL pages) copied its pages into the main file;
    # how many later ones ran depends on how fast the worker's fsyncs are on this machine.
    assert main_file_bytes > 40 * PAGE
    assert fetch_value(db.conn, "SELECT count(*) FROM t") == 400
    db.close()


def test_the_wal_stays_bounded_while_the_worker_is_busy(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", checkpoint_pages=20, wal_reset_pages=100)
    release = threading.Event()

    async def scenario() -> int:
        db.checkpoint_in_background()
        db.conn.execute("CREATE TABLE t (x BLOB)")
        busy = asyncio.ensure_future(db.in_worker(lambda conn: release.wait(30)))  # a long export
        await _commit_rows(db, 1_000)
        wal_bytes = (tmp_path / "x.db-wal").stat().st_size
        release.set()
        await busy
        return wal_bytes

    wal_bytes = asyncio.run(scenario())
    # ~1,000 pages were written; the inline checkpoint let the WAL start over at ~100 pages each time.
    assert wal_bytes < 200 * WAL_FRAME
    assert fetch_value(db.conn, "SELECT count(*) FROM t") == 1_000
    assert fetch_value(db.conn, "PRAGMA integrity_check") == "ok"
    db.close()


def test_without_the_background_checkpointer_sqlite_checkpoints_on_commit(tmp_path: Path) -> None:
    # CLI commands and tests use the connection without a running server loop.
    db = Database(tmp_path / "x.db")
    db.conn.execute("CREATE TABLE t (x BLOB)")
    for _ in range(1_500):
        with db.conn:
            db.conn.execute("INSERT INTO t VALUES (randomblob(1500))")
    assert (tmp_path / "x.db-wal").stat().st_size < 1_200 * WAL_FRAME
    db.close()


def test_a_lock_held_by_another_connection_is_waited_for(tmp_path: Path) -> None:
    import time

    holder, waiter = connect(tmp_path / "db.sqlite"), connect(tmp_path / "db.sqlite")
    holder.execute("BEGIN IMMEDIATE")

    def release_later() -> None:
        time.sleep(0.03)
        holder.execute("ROLLBACK")

    threading.Thread(target=release_later).start()
    waiter.execute("BEGIN IMMEDIATE")  # waits, then takes the lock
    waiter.execute("ROLLBACK")


def test_the_busy_handler_tries_again_in_small_steps_until_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.1 ms, 0.2 ms, … up to 2 ms between tries (SQLite's own handler sleeps 1, 2, 5, 10 … ms while
    the lock it waits for is held ~0.2 ms), and SQLITE_BUSY once the limit has passed."""
    from snackbase import db

    clock, slept = [100.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(db.time, "sleep", sleep)
    monkeypatch.setattr(db.time, "monotonic", lambda: clock[0])
    wait = db.BusyWaiter(0.05)
    tries = 0
    while wait(tries):
        tries += 1
    assert slept[:3] == pytest.approx([0.0001, 0.0002, 0.0003])
    assert max(slept) == pytest.approx(0.002)
    assert 0.05 < sum(slept) < 0.05 + 0.002


def test_a_lock_held_past_the_limit_is_busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snackbase import db

    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 50)
    holder, waiter = connect(tmp_path / "db.sqlite"), connect(tmp_path / "db.sqlite")
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(apsw.BusyError):
        waiter.execute("BEGIN IMMEDIATE")
    holder.execute("ROLLBACK")
