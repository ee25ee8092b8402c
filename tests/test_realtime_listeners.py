"""Writes cost nothing for realtime when nobody listens, and no subscriber ever misses an event for it:
server processes register a lease in `realtime_listeners` before acknowledging a client, writers check
it inside their own transaction, a lease outlives the last client by the resume window, and a resume
across a stretch nobody listened to is told to reload. Real server processes over real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest
from starlette.testclient import TestClient

from snackbase import realtime_transport
from snackbase.app import create_app
from snackbase.db import fetch_value
from tests import test_realtime
from tests.conftest import ServerProcess, make_settings
from tests.factories import make_account, make_superadmin, make_user
from tests.test_realtime import API, Sse, World, Ws, create, subscribe

# The fixtures of the realtime end-to-end tests: their users, `notes` collection and servers.
world = test_realtime.world
serve = test_realtime.serve


@pytest.fixture
def db(world: World) -> Iterator[apsw.Connection]:
    """The test's own connection to the servers' database (to look, and to let leases run out)."""
    conn = apsw.Connection(str(world.data_dir / "snackbase.db"))
    conn.set_busy_timeout(5000)
    yield conn
    conn.close()


def events(db: apsw.Connection) -> int:
    return int(fetch_value(db, "SELECT count(*) FROM realtime_events WHERE action != 'gap'"))


def run_out(db: apsw.Connection) -> None:
    """Every lease runs out now, as RESUME_SECONDS after the last client would make it."""
    db.execute("UPDATE realtime_listeners SET until = 0")


def test_no_listener_no_event_row(
    world: World, serve: Callable[..., ServerProcess], db: apsw.Connection
) -> None:
    server = serve()
    before = events(db)
    create(server, world.bob, title="nobody listens")
    assert events(db) == before  # no process listens: nothing written for realtime
    ws = Ws(server, world.bob)
    ws.subscribe(["notes"])
    made = create(server, world.bob, title="heard")
    assert ws.recv()["record"]["id"] == made["id"]
    assert events(db) == before + 1
    ws.ws.close()
    # The last client left: the lease stays for the resume window, so writes are still recorded.
    create(server, world.bob, title="while away")
    assert events(db) == before + 2
    assert fetch_value(db, "SELECT count(*) FROM realtime_listeners WHERE until > unixepoch()") == 1


def test_subscribe_on_one_process_write_on_another_at_once(
    world: World,
    serve: Callable[..., ServerProcess],
    db: apsw.Connection,
) -> None:
    # Two server processes on one database (as `--workers 2`, but each reachable on its own): the
    # writer has never listened, so it relies on the lease alone, checked inside its transaction.
    listener, writer = serve(), serve()
    for round_ in range(5):
        run_out(db)  # nobody listens
        before = events(db)
        create(writer, world.bob, title="unheard")
        # The writer records nothing, until it has listened itself: a process then trusts its own
        # lease without a look at the table (recording more than needed, never less).
        assert events(db) == before or round_ > 0
        ws = Ws(listener, world.bob)
        assert ws.subscribe(["notes"])["type"] == "subscribed"
        made = create(writer, world.bob, title=f"first write after subscribing {round_}")  # immediately
        assert ws.recv()["record"]["id"] == made["id"]
        sse = Sse(writer, world.alice.headers)  # and the other way round, over SSE
        assert subscribe(writer, sse, ["notes"], world.alice)[0] == 200
        made = create(listener, world.alice, title=f"back {round_}")
        assert ws.recv()["record"]["id"] == made["id"]
        assert sse.events(1)[0]["record"]["id"] == made["id"]
        ws.ws.close()
        sse.close()


def test_workers_2_first_write_after_subscribing(
    world: World,
    serve: Callable[..., ServerProcess],
    db: apsw.Connection,
) -> None:
    server = serve(workers=2)
    # Connections land on either worker (the kernel spreads accepts): over the rounds the subscriber
    # and the write meet on the same and on different workers, each time with no lease before.
    for round_ in range(8):
        run_out(db)
        ws = Ws(server, world.bob)
        ws.subscribe(["notes"])
        made = create(server, world.bob, title=f"round {round_}")
        assert ws.recv()["record"]["id"] == made["id"], round_
        ws.ws.close()


def test_resume_within_the_lease_and_reload_after_it_ran_out(
    world: World,
    serve: Callable[..., ServerProcess],
    db: apsw.Connection,
) -> None:
    listener, writer = serve(), serve()
    ws = Ws(listener, world.bob)
    ws.subscribe(["notes"])
    create(writer, world.bob, title="seen")
    last = ws.recv()["id"]
    ws.ws.close()  # the last client of every process leaves
    missed = [create(writer, world.bob, title=f"missed {i}")["id"] for i in range(2)]
    again = Ws(listener, world.bob)  # reconnects within the window: gets what it missed
    again.subscribe(["notes"])
    again.send({"type": "resume", "after": last})
    assert [again.recv()["record"]["id"] for _ in range(2)] == missed
    last = int(fetch_value(db, "SELECT max(id) FROM realtime_events"))
    again.ws.close()
    run_out(db)  # the window has passed with nobody listening
    create(writer, world.bob, title="never recorded")
    third = Ws(listener, world.bob)
    third.subscribe(["notes"])
    third.send({"type": "resume", "after": last})
    assert third.recv()["type"] == "reload"  # it cannot know what it missed: told to reload
    sse = Sse(writer, {**world.bob.headers, "last-event-id": str(last)})
    subscribe(writer, sse, ["notes"], world.bob)
    assert sse.next()[1] == "reload"


def test_cli_and_other_connections_follow_the_lease(tmp_path: Path) -> None:
    """A write on a connection without a broker (the CLI, a worker thread) checks the lease too."""
    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        sa = make_superadmin(client)
        bob = make_user(client, make_account(client))
        body = {"name": "notes", "fields": [{"name": "title", "type": "text"}],
                "rules": dict.fromkeys(("list", "view", "create", "update", "delete"), "")}  # fmt: skip
        assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
        conn = client.app.state.db.conn  # type: ignore[attr-defined]
        count = "SELECT count(*) FROM realtime_events WHERE action != 'gap'"
        assert (
            client.post(f"{API}/records/notes", headers=bob.headers, json={"title": "a"}).status_code == 201
        )
        assert fetch_value(conn, count) == 0
        other = apsw.Connection(str(tmp_path / "data" / "snackbase.db"))
        with realtime_transport.unit_of_work(other):
            realtime_transport.register(other, "someone", 2e10)
        assert (
            client.post(f"{API}/records/notes", headers=bob.headers, json={"title": "b"}).status_code == 201
        )
        assert fetch_value(conn, count) == 1
        other.close()


def test_a_rolled_back_savepoint_drops_its_after_commit_work(tmp_path: Path) -> None:
    """An event handed over from memory after COMMIT must exist: a nested unit that failed (a hook's
    write the hook caught) takes its after-commit work with it, while the outer unit's stays."""
    conn = apsw.Connection(str(tmp_path / "t.db"))
    conn.execute("CREATE TABLE t (x)")
    ran: list[str] = []
    with realtime_transport.unit_of_work(conn) as work:
        work.after_commit(lambda: ran.append("outer"))
        with pytest.raises(ValueError), realtime_transport.unit_of_work(conn) as inner:
            conn.execute("INSERT INTO t VALUES (1)")
            inner.after_commit(lambda: ran.append("undone"))
            raise ValueError
        with realtime_transport.unit_of_work(conn) as inner:
            inner.after_commit(lambda: ran.append("kept"))
    assert ran == ["outer", "kept"]
    assert fetch_value(conn, "SELECT count(*) FROM t") == 0


def test_own_and_other_processes_events_arrive_once_in_order(
    world: World, serve: Callable[..., ServerProcess]
) -> None:
    """A process hands its own events over from memory only when they directly follow its cursor;
    interleaved with another process's writes, every event still arrives once, in sequence order."""
    here, there = serve(), serve()
    ws, sse = Ws(here, world.bob), Sse(here, world.bob.headers)
    ws.subscribe(["notes"])
    subscribe(here, sse, ["notes"], world.bob)
    made = [create(here if i % 3 else there, world.bob, title=f"n{i}")["id"] for i in range(12)]
    for got in ([ws.recv() for _ in made], sse.events(len(made))):
        assert [event["record"]["id"] for event in got] == made
        ids = [int(event["id"]) for event in got]
        assert ids == sorted(set(ids))
    ws.nothing(0.3)
