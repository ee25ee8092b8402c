"""The PostgreSQL transport's ordering guarantees and the periodic jobs' locks, on a real PostgreSQL with
two connections standing for two nodes (end to end over real servers: tests/test_postgres_nodes.py and
tests/test_realtime.py).

- events take their ids in commit order: a second writer waits for the first one's COMMIT, so a node
  reading "the rows after my cursor" never skips a lower id that commits later;
- a node registering its lease waits for a write that found nobody listening, so the clients it then
  acknowledges are never owed an event that was not recorded;
- a periodic job is claimed by one connection, and by another once the first one's session ends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snackbase import periodic
from snackbase.backends import pg_realtime
from snackbase.backends.postgres import PgConnection, PgDatabase
from snackbase.db import fetch_value
from snackbase.realtime_transport import publish_event_postgres, register
from snackbase.unit_of_work import unit_of_work

BLOCKED_FOR = 0.4  # how long a waiting writer is watched to still be waiting


@pytest.fixture
def nodes(pg_url: str) -> Iterator[Callable[[], PgConnection]]:
    """Connections to one migrated schema, each standing for a node."""
    PgDatabase.open(pg_url).close()
    opened: list[PgConnection] = []

    def connect() -> PgConnection:
        opened.append(PgConnection(pg_url))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.close()


def write_event(conn: PgConnection, title: str) -> None:
    """One record change as the write path publishes it from a connection without a transport."""
    publish_event_postgres(conn, "create", "AC0001", "notes", title, {"id": title, "title": title})


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def events(conn: PgConnection) -> list[tuple[int, str]]:
    return [(int(r[0]), str(r[1])) for r in conn.execute("SELECT id, record_id FROM realtime_events "
                                                         "WHERE action != 'gap' ORDER BY id")]  # fmt: skip


def test_events_take_their_ids_in_commit_order(nodes: Callable[[], PgConnection]) -> None:
    a, b, look = nodes(), nodes(), nodes()
    with unit_of_work(look):
        register(look, "listener", time.time() + 300)
    with unit_of_work(a):
        write_event(a, "first")
        second = in_thread(lambda: _write_in_unit(b, "second"))
        second.join(BLOCKED_FOR)
        assert second.is_alive()  # waits for a's COMMIT before it may draw an id
        assert events(look) == []
    second.join(10)
    assert [title for _, title in events(look)] == ["first", "second"]


def _write_in_unit(conn: PgConnection, title: str) -> None:
    with unit_of_work(conn):
        write_event(conn, title)


def test_a_registration_waits_for_a_write_that_found_nobody_listening(
    nodes: Callable[[], PgConnection],
) -> None:
    writer, node, look = nodes(), nodes(), nodes()
    with unit_of_work(writer):
        write_event(writer, "unheard")  # nobody listens: no row, but the registration must wait
        registering = in_thread(lambda: _register(node))
        registering.join(BLOCKED_FOR)
        assert registering.is_alive()
    registering.join(10)
    assert events(look) == []
    assert fetch_value(look, "SELECT count(*) FROM realtime_events WHERE action = 'gap'") == 1
    _write_in_unit(writer, "heard")  # after the registration: recorded
    assert [title for _, title in events(look)] == ["heard"]


def _register(conn: PgConnection) -> None:
    transport = pg_realtime.PgTransport(conn, "")
    with unit_of_work(conn):
        transport._register(time.time() + 300)


def test_a_periodic_job_runs_on_one_node_and_moves_when_its_session_ends(
    nodes: Callable[[], PgConnection], tmp_path: Path
) -> None:
    a, b = nodes(), nodes()
    ran: list[str] = []
    job = "test.sweep"

    def tick(conn: PgConnection, name: str) -> bool:
        return asyncio.run(periodic.run(conn, job, lambda: ran.append(name)))

    assert [tick(a, "a"), tick(b, "b"), tick(a, "a"), tick(b, "b")] == [True, False, True, False]
    assert ran == ["a", "a"]
    assert periodic.holder_count(b, job) == 1  # held once, not once per tick
    assert periodic.claim(b, "test.other")  # another job is free to go elsewhere
    a.close()  # the node dies: PostgreSQL ends its session and frees its locks (right after)
    deadline = time.monotonic() + 5
    while not tick(b, "b") and time.monotonic() < deadline:
        time.sleep(0.02)  # the next tick
    assert ran == ["a", "a", "b"]


def test_on_sqlite_every_process_runs_its_jobs(tmp_path: Path) -> None:
    import apsw

    conn = apsw.Connection(str(tmp_path / "x.db"))
    assert periodic.claim(conn, "files.sweep") and periodic.claim(conn, "files.sweep")
    conn.close()


def test_a_resume_after_an_id_this_node_has_not_read_yet_reads_it_first(
    nodes: Callable[[], PgConnection], pg_url: str
) -> None:
    """A client that received events 1..2 from node A resumes on node B before B heard of them: B
    reads what A committed (delivering it live to its subscribers) instead of answering `reload`."""
    a, b = nodes(), nodes()
    delivered: list[int] = []

    async def scenario() -> list[Any] | None:
        transport = pg_realtime.PgTransport(b, pg_url)
        transport.start(lambda events: delivered.extend(e.seq for e in events))
        transport.listen(True)
        try:
            for title in ("one", "two", "three"):
                _write_in_unit(a, title)  # on "node A": B's event loop has not run since
            seqs = [seq for seq, _ in events(a)]
            assert transport.cursor < seqs[1]
            return transport.replay(seqs[1])
        finally:
            transport.stop()

    assert asyncio.run(scenario()) == []  # the client received them live, not `reload`
    assert delivered == [seq for seq, _ in events(a)]
