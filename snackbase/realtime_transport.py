"""The broker transport: how a committed record change travels from the process that wrote it to the
realtime broker of every server process (`serve --workers N`), and the window clients resume from.

One seam, `BrokerTransport`: `publish` runs INSIDE the writer's unit of work (so an event exists
exactly when its change committed, and a rolled-back write publishes nothing), `start` hands the
events of every process to the local broker in commit order, `replay` reads the resume window.

`SqliteTransport`, the one built here, needs no extra service on one machine: `publish` inserts the
event into the `realtime_events` table in the same transaction as the change; its AUTOINCREMENT id
is the event's sequence, global across processes and in commit order (SQLite has one writer at a
time). Each process reads the rows after its own cursor:
- at once after a commit of its own (an after-commit wake-up, no waiting for a poll), and
- every POLL_SECONDS when `PRAGMA data_version` says another connection has committed — a read of a
  counter in the connection's shared memory, so an idle server costs ~100 cheap calls a second, and
  only while it has subscribers.
A PostgreSQL backend would implement the same interface with NOTIFY inside the transaction (Postgres
delivers notifications on commit only) and LISTEN in each process, keeping a table for `replay`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import apsw
import msgspec

from snackbase.db import fetch_value
from snackbase.times import now_iso
from snackbase.unit_of_work import Work

log = logging.getLogger("snackbase.realtime")

# The resume window: the last KEEP_EVENTS events stay in the table. The writer prunes every
# PRUNE_EVERY events, so the table holds between KEEP_EVENTS and KEEP_EVENTS + PRUNE_EVERY rows.
KEEP_EVENTS = 10_000
PRUNE_EVERY = 500
POLL_SECONDS = 0.005
READ_BATCH = 500

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

    @property
    def cursor(self) -> int:
        return self._cursor

    # --- writing (any process, inside a unit of work) -------------------------------------------

    def publish(
        self, conn: apsw.Connection, work: Work, action: str, account_id: str, collection: str,
        record_id: str, record: dict[str, Any],
    ) -> None:  # fmt: skip
        insert_event(conn, action, account_id, collection, record_id, record)
        work.after_commit(self.wake)

    # --- reading (the event loop of this process) ------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._cursor = _last_seq(self.conn)

    def listen(self, on: bool) -> None:
        if on == self._listening:
            return
        self._listening = on
        if on:
            # Events committed while nobody listened are never delivered live (they stay replayable).
            self._cursor = _last_seq(self.conn)
            self._version = _data_version(self.conn)
            self._schedule_poll()
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

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
        return _read_after(self.conn, after, self._cursor, KEEP_EVENTS + PRUNE_EVERY)


def insert_event(
    conn: apsw.Connection, action: str, account_id: str, collection: str, record_id: str,
    record: dict[str, Any],
) -> None:  # fmt: skip
    seq = fetch_value(
        conn,
        "INSERT INTO realtime_events (created_at, action, account_id, collection, record_id, record)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (now_iso(), action, account_id, collection, record_id, _encode(record).decode()),
    )
    if seq % PRUNE_EVERY == 0:
        conn.execute("DELETE FROM realtime_events WHERE id <= ?", (seq - KEEP_EVENTS,))


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
        insert_event(conn, action, account_id, collection, record_id, record)
    else:
        transport.publish(conn, work, action, account_id, collection, record_id, record)
