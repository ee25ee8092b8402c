"""Reads off the event loop on PostgreSQL (docs/scaling.md, "Reads and writes on PostgreSQL"): a
request's read runs on a reader thread with its own read-only connection, so the event loop keeps
serving while PostgreSQL answers; a read inside a unit of work stays on the write connection and sees
its own uncommitted writes. The tests assert what ran where and what finished first, never timings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import apsw
import psycopg
import pytest

from snackbase.backends.postgres import PgConnection, PgDatabase
from snackbase.db import fetch_value
from snackbase.unit_of_work import unit_of_work

NOW = "2026-12-01T00:00:00.000Z"


@pytest.fixture
def database(pg_url: str) -> Iterator[PgDatabase]:
    db = PgDatabase.open(pg_url, readers=2)
    yield db
    db.close()


def _count(conn: Any) -> int:
    return int(fetch_value(conn, "SELECT count(*) FROM accounts"))


def test_a_read_runs_on_a_reader_thread_with_its_own_connection(database: PgDatabase) -> None:
    seen: list[tuple[str, bool, bool]] = []

    def read(conn: PgConnection) -> int:
        seen.append((threading.current_thread().name, conn is database.conn, database.connection() is conn))
        return _count(conn)

    assert asyncio.run(database.read(read)) == 1  # the system account
    ((thread, on_loop_conn, connection_is_the_readers),) = seen
    assert thread.startswith("sb-pg-reader") and not on_loop_conn and connection_is_the_readers
    assert database.connection() is database.conn  # on the loop thread: the write connection


def test_readers_cannot_write(database: PgDatabase) -> None:
    def write(conn: PgConnection) -> None:
        conn.execute(
            "INSERT INTO accounts (id, slug, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            ("AB1234", "acme", "Acme", NOW, NOW),
        )

    with pytest.raises(Exception, match="read-only"):
        asyncio.run(database.read(write))
    assert _count(database.conn) == 1
    assert asyncio.run(database.read(_count)) == 1  # the reader's connection is usable again


def test_a_read_inside_a_unit_of_work_uses_the_write_connection(database: PgDatabase) -> None:
    """What the unit wrote and has not committed is visible to a read it makes, and only to it."""
    threads: list[str] = []

    def read(conn: PgConnection) -> int:
        threads.append(threading.current_thread().name)
        return _count(conn)

    async def scenario() -> tuple[int, int]:
        conn = database.conn
        with unit_of_work(conn):
            conn.execute(
                "INSERT INTO accounts (id, slug, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                ("AB1234", "acme", "Acme", NOW, NOW),
            )
            inside = await database.read(read)
            # Another connection does not see the uncommitted row.
            outside = await asyncio.get_running_loop().run_in_executor(None, database._read_here, _count)
        return inside, outside

    assert asyncio.run(scenario()) == (2, 1)
    assert threads == [threading.current_thread().name]
    assert asyncio.run(database.read(_count)) == 2  # committed: every reader sees it


def test_the_loop_keeps_serving_while_reads_wait_on_postgresql(database: PgDatabase) -> None:
    """Two slow reads run on the two readers at once; meanwhile the loop runs other work."""
    order: list[str] = []

    def slow(conn: PgConnection) -> str:
        conn.execute("SELECT pg_sleep(0.3)").fetchone()
        order.append("slow read done")
        return threading.current_thread().name

    async def tick() -> None:
        await asyncio.sleep(0.01)
        order.append("loop served")

    async def scenario() -> list[str]:
        results = await asyncio.gather(database.read(slow), database.read(slow), tick())
        return [r for r in results if r]

    names = asyncio.run(scenario())
    assert order[0] == "loop served" and order[1:] == ["slow read done"] * 2
    assert len(set(names)) == 2  # both readers at once


def test_a_read_whose_connection_was_dropped_runs_again_on_a_new_one(database: PgDatabase) -> None:
    """PostgreSQL ends the reader's backend (as a restart or a proxy would): the next read on that
    reader notices on its first statement, connects again and answers; nothing reaches the caller."""
    single = PgDatabase.open(database.url, readers=1)
    try:
        pid = asyncio.run(single.read(lambda conn: fetch_value(conn, "SELECT pg_backend_pid()")))
        (reader,) = single._reader_conns
        fetch_value(database.conn, "SELECT pg_terminate_backend(?)", (pid,))
        assert asyncio.run(single.read(_count)) == 1
        assert len(single._reader_conns) == 1 and single._reader_conns[0] is not reader
        assert reader.raw.closed
    finally:
        single.close()


def test_a_read_that_finds_its_socket_closed_runs_again_on_a_new_one(database: PgDatabase) -> None:
    """psycopg may notice a dropped connection at the socket before libpq marks it closed (it raised
    "connection socket closed" with the connection not yet `closed`): that read runs again too."""
    single = PgDatabase.open(database.url, readers=1)
    seen: list[PgConnection] = []

    def dropped_once(conn: PgConnection) -> int:
        seen.append(conn)
        if len(seen) == 1:
            raise psycopg.OperationalError("connection socket closed")
        return _count(conn)

    try:
        assert asyncio.run(single.read(dropped_once)) == 1
        assert seen[0] is not seen[1] and seen[0].raw.closed
        assert single._reader_conns == [seen[1]]
    finally:
        single.close()


def test_a_statement_error_in_a_read_leaves_the_reader_usable(database: PgDatabase) -> None:
    def bad(conn: PgConnection) -> None:
        conn.execute("SELECT * FROM no_such_table").fetchall()

    with pytest.raises(Exception, match="no_such_table"):
        asyncio.run(database.read(bad))
    assert asyncio.run(database.read(_count)) == 1
    short = PgDatabase.open(database.url, statement_timeout_ms=100, readers=1)
    try:
        with pytest.raises(apsw.InterruptError):  # the statement timeout applies on readers too
            asyncio.run(short.read(lambda c: c.execute("SELECT pg_sleep(2)")))
        assert asyncio.run(short.read(_count)) == 1
    finally:
        short.close()
