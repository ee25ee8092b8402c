"""Realtime fan-out between nodes on PostgreSQL: `PgTransport`, the `BrokerTransport` of a node.

The same seam, table and leases as SQLite's transport (snackbase/realtime_transport.py, which also holds
the PostgreSQL variant of the write side, `…_postgres`: the write path runs it on any connection); what
differs is how the events stay in commit order and how a node hears of another node's commit:

- **Commit order.** SQLite has one writer at a time, so its AUTOINCREMENT id is in commit order. On
  PostgreSQL an identity value is drawn at INSERT, and transactions commit in any order: a reader that
  had moved its cursor past id 11 would never see an id 10 that commits later. So every transaction
  that records an event first takes an exclusive transaction-level advisory lock (SEQUENCE_LOCK),
  held until it commits: events get their ids in commit order, and a node reading "the rows after my
  cursor" never skips one. This serializes the tail of event-producing writes (from the first event
  to COMMIT) across the cluster while someone listens; PostgreSQL's NOTIFY already serializes the
  commits of notifying transactions the same way, so the lock adds no new bottleneck.
- **Nobody listening.** A write records nothing unless some node holds a lease (as on SQLite). On
  SQLite one writer at a time orders the writer's check against a registration; here a writer that
  finds no lease holds REGISTER_LOCK shared until it commits, and a registration takes it exclusive
  (waiting for those writers) before it commits. A write that starts after a registration committed
  sees the lease, since under READ COMMITTED every statement reads what has committed before it.
- **Hearing of commits.** The writer sends `NOTIFY snackbase_realtime` inside its transaction;
  PostgreSQL delivers it at COMMIT and never for a rolled-back transaction (the payload is the
  schema's name: one notification per transaction, far under the 8,000-byte limit; receivers read the
  rows, so the record's size does not matter). Each node LISTENs on a dedicated connection, in a
  thread blocked in psycopg's `notifies()`, which hands a wake-up to the event loop; the loop reads
  the rows after its cursor on its own connection. After a (re)connect of that connection the node
  reads once, so a notification lost while it was down is never waited for.
- **Resume across nodes.** The table and its ids are shared, so a client may resume on any node; a
  node asked to resume after an id it has not read yet first reads what other nodes committed.

Advisory lock keys are pairs (hash of the schema, lock number): several deployments in schemas of one
database never wait on each other's locks.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from typing import Any

import psycopg

from snackbase.backends.postgres import PgConnection
from snackbase.realtime_transport import (
    CHANNEL,
    KEEP_EVENTS,
    REGISTER_LOCK,
    RENEW_SECONDS,
    SEQUENCE_LOCK,
    Published,
    SqliteTransport,
    lock_postgres,
    record_event_postgres,
    register,
    someone_listens_postgres,
)
from snackbase.unit_of_work import Work, unit_of_work

log = logging.getLogger("snackbase.realtime")

RECONNECT_SECONDS = 1.0
NOTIFY_WAIT_SECONDS = 0.5  # how often the listening thread looks up from `notifies()` to see if it must stop


class PgTransport(SqliteTransport):
    """SqliteTransport's cursor, leases, drain and replay over PostgreSQL (see the module docstring)."""

    def __init__(self, conn: PgConnection, url: str) -> None:
        super().__init__(conn)  # type: ignore[arg-type]  # the apsw-shaped adapter
        self.url = url
        self._listener: Listener | None = None
        # The context of the request that started the broker (the PostgreSQL dialect is set there):
        # wake-ups from the listening thread run in it, so rules compile for PostgreSQL.
        self._context: contextvars.Context | None = None

    def publish(
        self, conn: Any, work: Work, action: str, account_id: str, collection: str, record_id: str,
        record: dict[str, Any],
    ) -> None:  # fmt: skip
        # This node's own current lease is a lease: no need to look (nor to order against registrations).
        if self.leased_until <= time.time() and not someone_listens_postgres(conn):
            return
        record_event_postgres(conn, action, account_id, collection, record_id, record)
        if self._listening:
            # Read back after COMMIT (the NOTIFY wakes this node too, a little later).
            work.after_commit(self.wake)

    def start(self, deliver: Any) -> None:
        super().start(deliver)
        self._context = contextvars.copy_context()
        if self._listener is None:
            self._listener = Listener(self.url, self._notified)
            self._listener.start()

    def _notified(self) -> None:
        """From the listening thread: another node (or this one) committed events."""
        loop = self._loop
        if loop is not None:
            # RuntimeError: the loop closed (the server is stopping), nobody to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.wake, context=self._context)

    def _watch(self) -> None:
        """The LISTEN connection (started with the broker) is the change signal: nothing to poll."""

    def _register(self, until: float) -> None:
        if self.leased_until <= time.time() + RENEW_SECONDS:
            # A new lease, or one close to its end (a renewal well within it needs no locks: while this
            # node's lease runs no writer finds nobody listening, so renewals never stall the writers).
            lock_postgres(self.conn, REGISTER_LOCK)  # waits for writers that found nobody listening
            lock_postgres(self.conn, SEQUENCE_LOCK)  # a gap marker takes its id in commit order
        register(self.conn, self.process, until)

    def replay(self, after: int) -> list[Published] | None:
        if after > self._cursor and self._listening:
            # Issued by another node and not read here yet: read now. The client is subscribed, so
            # whatever it may see among them it has just received live.
            self._drain()
            return [] if after <= self._cursor else None
        return super().replay(after)

    def stop(self) -> None:
        super().stop()
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


class Listener:
    """A thread holding one connection in LISTEN, calling `on_notify` (from the thread) for each batch
    of notifications of this schema, and once after every (re)connect."""

    def __init__(self, url: str, on_notify: Any) -> None:
        self.url = url
        self.on_notify = on_notify
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sb-pg-listen", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Returns once LISTEN is in place (or after `timeout`; the thread keeps trying)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            log.warning("realtime: the LISTEN connection is not up yet; events arrive once it is")

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=NOTIFY_WAIT_SECONDS * 4)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    return
                log.warning("realtime: the LISTEN connection failed (%s); reconnecting", exc)
                self._stopping.wait(RECONNECT_SECONDS)
            except Exception:  # never let the thread die silently
                log.exception("realtime: the listening thread failed; restarting it")
                self._stopping.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            schema = conn.execute("SELECT current_schema()").fetchone()
            conn.execute(f"LISTEN {CHANNEL}")
            self._ready.set()
            self.on_notify()  # whatever committed while this connection was not listening
            while not self._stopping.is_set():
                heard = False
                for notify in conn.notifies(timeout=NOTIFY_WAIT_SECONDS):
                    if schema is None or notify.payload == schema[0]:
                        heard = True
                        break  # one read serves every notification pending now
                if heard:
                    self.on_notify()


CLEANUP_JOB = "realtime.cleanup"
CLEANUP_SECONDS = 60.0


def cleanup(conn: Any) -> None:
    """The periodic job one node runs (snackbase/periodic.py): leases that ran out, and events older
    than the resume window (writers prune as they go too, but ids drawn by rolled-back writes can
    skip the pruning points)."""
    with unit_of_work(conn):
        conn.execute("DELETE FROM realtime_listeners WHERE until <= ?", (time.time(),))
        conn.execute(
            "DELETE FROM realtime_events WHERE id <= (SELECT MAX(id) FROM realtime_events) - ?",
            (KEEP_EVENTS,),
        )
