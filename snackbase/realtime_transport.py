"""The broker transport: how a committed record change travels from the process that wrote it to the
realtime broker of every server process (`serve --workers N`), and the window clients resume from.

One seam, `BrokerTransport`: `publish` runs INSIDE the writer's unit of work (so an event exists
exactly when its change committed, and a rolled-back write publishes nothing), `start` hands the
events of every process to the local broker in commit order, `replay` reads the resume window.

`SqliteTransport`, the one built here, needs no extra service on one machine: `publish` inserts the
event into the `realtime_events` table in the same transaction as the change; its AUTOINCREMENT id
is the event's sequence, global across processes and in commit order (SQLite has one writer at a
time). Each process reads the rows after its own cursor:
- at once after a commit of its own — and without reading them back: the events it has just
  written are handed over from memory when they directly follow its cursor, and
- every POLL_SECONDS when `PRAGMA data_version` says another connection has committed — a read of a
  counter in the connection's shared memory, so an idle server costs ~100 cheap calls a second, and
  only while it has subscribers.

A write inserts its event only while some process listens: each listening process registers itself
in `realtime_listeners` (committed before it acknowledges a client, so before any subscription) with
a lease RESUME_SECONDS ahead, renewed while it has clients and left to run out after the last one
goes (a client reconnecting within it, on any process, still finds what it missed). The writer checks
the table inside its own transaction; SQLite's one writer at a time orders that check against every
registration, so no event a subscriber is owed is ever skipped, and a server nobody listens to pays
one tiny indexed read per changed record. When a process registers while no lease is current, writes
may have gone unrecorded: it inserts a `gap` marker event, and a resume across it is told to reload.
On PostgreSQL, `backends.pg_realtime.PgTransport` implements the same interface for many nodes: the
same table and leases, a NOTIFY inside the writer's transaction (delivered at commit only) and a
LISTEN on a dedicated connection per node instead of `data_version`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import apsw
import msgspec

from snackbase.db import fetch_value
from snackbase.errors import ApiError
from snackbase.times import now_iso
from snackbase.unit_of_work import Work, unit_of_work

log = logging.getLogger("snackbase.realtime")

# The resume window: the last KEEP_EVENTS events stay in the table. The writer prunes every
# PRUNE_EVERY events, so the table holds between KEEP_EVENTS and KEEP_EVENTS + PRUNE_EVERY rows.
KEEP_EVENTS = 10_000
PRUNE_EVERY = 500
POLL_SECONDS = 0.005
READ_BATCH = 500
# A listening process's lease in `realtime_listeners`: renewed every RENEW_SECONDS while it has
# clients, so it always runs at least RESUME_SECONDS - RENEW_SECONDS ahead; set to RESUME_SECONDS
# from the moment its last client leaves (the time a client has to come back and resume).
RESUME_SECONDS = 300.0
RENEW_SECONDS = 60.0
GAP = "gap"  # the action of a marker event: writes before it may have gone unrecorded

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Published:
    """One committed record change as every broker receives it. The record's JSON is decoded only
    when some subscriber's topic matches (most events of a busy server concern nobody here)."""

    __slots__ = ("_raw", "_record", "account_id", "action", "collection", "record_id", "seq")

    def __init__(self, seq: int, action: str, account_id: str, collection: str, record_id: str,
                 raw: str) -> None:  # fmt: skip
        self.seq = seq
        self.action = action  # create | update | delete
        self.account_id = account_id
        self.collection = collection
        self.record_id = record_id
        self._raw = raw
        self._record: dict[str, Any] | None = None

    @property
    def record(self) -> dict[str, Any]:
        """As committed (a delete: as it was); unmasked JSON values."""
        if self._record is None:
            self._record = _decode(self._raw)
        return self._record


Deliver = Callable[[list[Published]], None]


class BrokerTransport(Protocol):
    def publish(
        self, conn: apsw.Connection, work: Work, action: str, account_id: str, collection: str,
        record_id: str, record: dict[str, Any],
    ) -> None:  # fmt: skip
        """Inside the writer's unit of work: the event commits (or rolls back) with the change."""

    def start(self, deliver: Deliver) -> None:
        """Calls `deliver` on the event loop with every later committed event, in sequence order."""

    def listen(self, on: bool) -> None:
        """Whether this process has subscribers (a transport may stop polling without them)."""

    def stop(self) -> None: ...

    @property
    def cursor(self) -> int:
        """The sequence of the last event handed to `deliver`."""

    def replay(self, after: int) -> list[Published] | None:
        """The events after `after` up to `cursor`, or None when some of them left the window."""


class SqliteTransport:
    """See the module docstring. One per process and database connection (the event loop's)."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self._cursor = 0
        self._deliver: Deliver | None = None
        self._listening = False
        self._version = -1
        self._timer: asyncio.TimerHandle | None = None
        self._drain_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.process = secrets.token_hex(8)  # this transport's row in realtime_listeners
        self.leased_until = 0.0  # epoch seconds; writes here skip the listeners check before it
        self._renewal: asyncio.TimerHandle | None = None
        # Events this process wrote and committed since the last drain, in commit order.
        self._own: list[Published] = []

    @property
    def cursor(self) -> int:
        return self._cursor

    # --- writing (any process, inside a unit of work) -------------------------------------------

    def publish(
        self, conn: apsw.Connection, work: Work, action: str, account_id: str, collection: str,
        record_id: str, record: dict[str, Any],
    ) -> None:  # fmt: skip
        if self.leased_until <= time.time() and not has_listeners(conn):
            return  # nobody listens, in any process: the write costs nothing for realtime
        seq, raw = insert_event(conn, action, account_id, collection, record_id, record)
        if self._listening:
            event = Published(seq, action, account_id, collection, record_id, raw)
            work.after_commit(lambda: self._committed(event))

    def _committed(self, event: Published) -> None:
        if self._listening:
            self._own.append(event)
            self.wake()

    # --- reading (the event loop of this process) ------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._cursor = _last_seq(self.conn)

    def listen(self, on: bool) -> None:
        """On: registers the lease first (committed before the caller acknowledges its client; raises
        the database's error, changing nothing, when that write fails). Off: the lease runs out
        RESUME_SECONDS from now."""
        if on == self._listening:
            if on and self.leased_until - time.time() < RESUME_SECONDS / 2:
                self._lease()  # the renewal timer is late (a stalled loop): renew before acknowledging
            return
        if on:
            self._lease()
            self._listening = True
            # Events committed while nobody here listened are never delivered live (they stay
            # replayable while some lease was current).
            self._cursor = _last_seq(self.conn)
            self._watch()
            assert self._loop is not None
            self._renewal = self._loop.call_later(RENEW_SECONDS, self._renew)
            return
        self._listening = False
        self._own.clear()
        for timer in (self._timer, self._renewal):
            if timer is not None:
                timer.cancel()
        self._timer = self._renewal = None
        try:
            self._lease()
        except (apsw.Error, ApiError):  # busy: the lease still runs RESUME_SECONDS - RENEW_SECONDS
            log.warning("realtime lease not extended at the last disconnect; it stays as it was")

    def _watch(self) -> None:
        """Starts noticing other processes' commits: SQLite's `data_version`, polled."""
        self._version = _data_version(self.conn)
        self._schedule_poll()

    def _lease(self) -> None:
        until = time.time() + RESUME_SECONDS
        # A unit of work without an audit entry: server state, like the event rows, not a change
        # anyone made.
        with unit_of_work(self.conn):
            self._register(until)
        self.leased_until = until

    def _register(self, until: float) -> None:
        register(self.conn, self.process, until)

    def _renew(self) -> None:
        if not self._listening:
            return
        try:
            self._lease()
        except (apsw.Error, ApiError):
            log.exception("realtime lease renewal failed; trying again")
        assert self._loop is not None
        self._renewal = self._loop.call_later(RENEW_SECONDS, self._renew)

    def stop(self) -> None:
        self.listen(False)
        self._deliver = None

    def wake(self) -> None:
        """After a commit in this process: read the new events as soon as the write has answered."""
        if self._listening and not self._drain_pending and self._loop is not None:
            self._drain_pending = True
            self._loop.call_soon(self._drain)

    def _schedule_poll(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(POLL_SECONDS, self._poll)

    def _poll(self) -> None:
        if not self._listening:
            return
        try:
            version = _data_version(self.conn)
            if version != self._version:
                self._version = version
                self._drain()
        except apsw.Error:
            log.exception("realtime poll failed; trying again")
        finally:
            self._schedule_poll()

    def _drain(self) -> None:
        self._drain_pending = False
        if self._deliver is None or not self._listening or self.conn.in_transaction:
            if self.conn.in_transaction:  # a write is between BEGIN and COMMIT: try right after it
                self.wake()
            return
        own, self._own = self._own, []
        if own and _follows(own, self._cursor):
            # Only this process wrote since the cursor: its events come from memory, not read back
            # (a read transaction per commit was most of what idle subscribers cost the writer).
            self._cursor = own[-1].seq
            try:
                self._deliver(own)
            except Exception:
                log.exception("realtime delivery failed")
            return
        while True:
            events = _read_after(self.conn, self._cursor, None, READ_BATCH)
            if not events:
                return
            self._cursor = events[-1].seq
            try:
                self._deliver(events)
            except Exception:
                log.exception("realtime delivery failed")
            if len(events) < READ_BATCH:
                return

    def replay(self, after: int) -> list[Published] | None:
        if after > self._cursor:
            return None  # an id this server never issued (another database, a forged header)
        if after == self._cursor:
            return []
        first = fetch_value(self.conn, "SELECT MIN(id) FROM realtime_events")
        if first is None or after + 1 < first:
            return None
        events = _read_after(self.conn, after, self._cursor, KEEP_EVENTS + PRUNE_EVERY)
        if any(event.action == GAP for event in events):
            return None  # some writes in between went unrecorded (nobody listened)
        return events


def _follows(events: list[Published], cursor: int) -> bool:
    """The events are the next sequence numbers after `cursor`, without a hole."""
    return events[0].seq == cursor + 1 and all(b.seq == a.seq + 1 for a, b in itertools.pairwise(events))


def insert_event(
    conn: apsw.Connection, action: str, account_id: str, collection: str, record_id: str,
    record: dict[str, Any],
) -> tuple[int, str]:  # fmt: skip
    """The event's sequence and its record's JSON text."""
    raw = _encode(record).decode()
    seq = int(
        fetch_value(
            conn,
            "INSERT INTO realtime_events (created_at, action, account_id, collection, record_id, record)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (now_iso(), action, account_id, collection, record_id, raw),
        )
    )
    if seq % PRUNE_EVERY == 0:
        conn.execute("DELETE FROM realtime_events WHERE id <= ?", (seq - KEEP_EVENTS,))
    return seq, raw


def has_listeners(conn: apsw.Connection) -> bool:
    """Some process holds a current lease (inside a write: ordered against every registration)."""
    return bool(fetch_value(conn, "SELECT EXISTS (SELECT 1 FROM realtime_listeners WHERE until > ?)",
                            (time.time(),)))  # fmt: skip


def register(conn: apsw.Connection, process: str, until: float) -> None:
    """Inside a unit of work: the process's lease, and a gap marker when no lease was current (writes
    since the last one ran out were not recorded, so no resume may cross this point)."""
    if not has_listeners(conn):
        conn.execute(
            "INSERT INTO realtime_events (created_at, action, account_id, collection, record_id, record)"
            " VALUES (?, ?, '', '', '', '{}')",
            (now_iso(), GAP),
        )
    conn.execute("DELETE FROM realtime_listeners WHERE until <= ?", (time.time(),))
    conn.execute(
        "INSERT INTO realtime_listeners (process, until) VALUES (?, ?)"
        " ON CONFLICT (process) DO UPDATE SET until = excluded.until",
        (process, until),
    )


def _read_after(conn: apsw.Connection, after: int, upto: int | None, limit: int) -> list[Published]:
    rows = conn.execute(
        "SELECT id, action, account_id, collection, record_id, record FROM realtime_events"
        " WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
        (after, upto if upto is not None else 2**62, limit),
    )
    return [Published(*row) for row in rows]


def _last_seq(conn: apsw.Connection) -> int:
    return int(fetch_value(conn, "SELECT COALESCE(MAX(id), 0) FROM realtime_events"))


def _data_version(conn: apsw.Connection) -> int:
    return int(fetch_value(conn, "PRAGMA data_version"))


# --- the PostgreSQL variant of the write side (backends/pg_realtime.py has its reading side) ---------
# Ids must follow commit order, and a registration must wait for writes that found nobody listening;
# see backends/pg_realtime.py for why. Advisory lock numbers are the second key, the first being the
# schema's hash (deployments in several schemas of one database never wait on each other).

CHANNEL = "snackbase_realtime"
REGISTER_LOCK = 2  # shared: a writer that found nobody listening; exclusive: a registration
SEQUENCE_LOCK = 3  # exclusive: a transaction recording an event, until it commits


def someone_listens_postgres(conn: Any) -> bool:
    """Inside the writer's transaction: whether some node holds a lease. When none does, the writer
    keeps REGISTER_LOCK (shared) until it commits, so a node registering now waits for this write and
    its clients are acknowledged only after it (which they were never owed)."""
    lock_postgres(conn, REGISTER_LOCK, shared=True)
    return has_listeners(conn)  # a new statement: it sees every registration committed before the lock


def record_event_postgres(
    conn: Any, action: str, account_id: str, collection: str, record_id: str, record: dict[str, Any]
) -> None:
    """Inside the writer's transaction: the event, with its id in commit order, and the NOTIFY."""
    conn.execute(_LOCK_AND_NOTIFY, (SEQUENCE_LOCK, CHANNEL))
    insert_event(conn, action, account_id, collection, record_id, record)


_LOCK_AND_NOTIFY = (
    "SELECT pg_advisory_xact_lock(hashtext(current_schema()), ?), pg_notify(?, current_schema())"
)


def publish_event_postgres(
    conn: Any, action: str, account_id: str, collection: str, record_id: str, record: dict[str, Any]
) -> None:
    """A write on a PostgreSQL connection without a transport (a worker thread, the CLI)."""
    if someone_listens_postgres(conn):
        record_event_postgres(conn, action, account_id, collection, record_id, record)


def lock_postgres(conn: Any, number: int, shared: bool = False) -> None:
    """A transaction-level advisory lock of this schema (released at COMMIT or ROLLBACK)."""
    conn.execute(_LOCK_SHARED if shared else _LOCK, (number,))


_LOCK = "SELECT pg_advisory_xact_lock(hashtext(current_schema()), ?)"
_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtext(current_schema()), ?)"


# --- the seam the write path calls ---------------------------------------------------------------

# The transport of each connection that serves realtime; a write on any other connection (the CLI,
# the worker thread) still inserts its event, which the servers' polls pick up.
_transports: weakref.WeakKeyDictionary[apsw.Connection, BrokerTransport] = weakref.WeakKeyDictionary()


def install(conn: apsw.Connection, transport: BrokerTransport) -> None:
    _transports[conn] = transport


def publish(
    conn: apsw.Connection, work: Work, action: str, account_id: str, collection: str, record_id: str,
    record: dict[str, Any],
) -> None:  # fmt: skip
    """Called by the write path for every changed record, inside its unit of work."""
    transport = _transports.get(conn)
    if transport is None:
        if getattr(conn, "dialect", None) == "postgresql":  # a worker thread's or the CLI's connection
            publish_event_postgres(conn, action, account_id, collection, record_id, record)
        elif has_listeners(conn):
            insert_event(conn, action, account_id, collection, record_id, record)
    else:
        transport.publish(conn, work, action, account_id, collection, record_id, record)
