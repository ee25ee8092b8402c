"""One unit of work for every write: BEGIN IMMEDIATE → the change and its audit entries → COMMIT →
after-commit work.

Every change — records (REST, batch, the `event.records` of hooks), collections, accounts, users,
groups, roles, invitations, macros, sessions and tokens, signatures — runs inside `unit_of_work(conn)`.
It takes SQLite's write lock first, so a write never reads a snapshot that another process then makes
stale (a deferred transaction's upgrade to a write lock fails at once with SQLITE_BUSY, which no busy
timeout can help). Whatever runs inside — before-hooks, validation, rules read against the rows as they
are now, the SQL, one audit entry per changed row — commits together or not at all. What must only
happen for a committed change (after-hooks, later realtime and file deletion) is queued with
`work.after_commit(...)` and runs after COMMIT, never for a rolled-back write.

A unit opened while another is open on the same connection (a hook writing through `event.records`
inside a record write, or a batch) joins it as a savepoint: its failure undoes only itself, and its
after-commit work waits for the outer commit.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apsw

from snackbase.db import Allowance
from snackbase.errors import database_error

log = logging.getLogger("snackbase.write")

Effect = Callable[[], None]


@dataclass
class Work:
    """The open unit of work of one connection: what to run once it has committed."""

    conn: apsw.Connection
    effects: list[Effect] = field(default_factory=list)
    # What the unit's rule checks may still spend while it holds the write lock (records._rule_check).
    rule_allowance: Allowance | None = None

    def after_commit(self, effect: Effect) -> None:
        self.effects.append(effect)


# The unit open on each connection. Writes are synchronous between BEGIN and COMMIT (no await inside),
# so on the event loop's one connection at most one outermost unit is open at a time.
_open: weakref.WeakKeyDictionary[apsw.Connection, Work] = weakref.WeakKeyDictionary()


def current(conn: apsw.Connection) -> Work | None:
    """The unit of work open on `conn`, if any."""
    return _open.get(conn)


class unit_of_work:
    """Runs the block as one write transaction; see the module docstring.

    `foreign_keys_off` is for table rebuilds (collection schema changes): PRAGMA foreign_keys is a
    no-op inside a transaction, so it is switched before BEGIN and back after the end.
    `on_constraint` turns SQLite's constraint error into the caller's own answer (after the rollback).

    A class rather than a generator-based context manager: it runs on every write, and each
    contextlib layer costs a generator step on the way in and out."""

    __slots__ = ("conn", "foreign_keys_off", "mark", "nested", "on_constraint", "work")

    def __init__(
        self,
        conn: apsw.Connection,
        *,
        foreign_keys_off: bool = False,
        on_constraint: Callable[[apsw.ConstraintError], Exception] | None = None,
    ) -> None:
        self.conn = conn
        self.foreign_keys_off = foreign_keys_off
        self.on_constraint = on_constraint
        self.nested = False

    def __enter__(self) -> Work:
        conn = self.conn
        outer = _open.get(conn)
        if outer is not None:  # joins the open unit as a savepoint
            self.nested = True
            conn.execute("SAVEPOINT unit_of_work")
            self.work = outer
            self.mark = len(outer.effects)  # what this savepoint queues is dropped if it rolls back
            return outer
        if conn.in_transaction:
            raise RuntimeError("a write began inside a transaction that is not a unit of work")
        if self.foreign_keys_off:
            conn.execute("PRAGMA foreign_keys=OFF")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._foreign_keys_on()
            self._raise_translated(exc)
            raise
        self.work = _open[conn] = Work(conn)
        return self.work

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        conn = self.conn
        if self.nested:
            if exc is not None:
                # Its changes are undone, so is its after-commit work (hooks, realtime events, file
                # purges for rows that stay as they were).
                del self.work.effects[self.mark :]
            if exc is not None and conn.in_transaction:
                conn.execute("ROLLBACK TO unit_of_work")
            if conn.in_transaction:
                conn.execute("RELEASE unit_of_work")
            self._raise_translated(exc)
            return
        _open.pop(conn, None)
        try:
            if exc is not None:
                _rollback(conn)
                self._raise_translated(exc)
                return
            try:
                conn.execute("COMMIT")
            except BaseException as error:
                _rollback(conn)
                self._raise_translated(error)
                raise
        finally:
            self._foreign_keys_on()
        run_effects(self.work.effects)

    def _raise_translated(self, exc: BaseException | None) -> None:
        """A busy database or an exhausted statement budget leaves as its own 503, never a bare 500;
        a constraint as the caller's own answer when it gave one. Anything else propagates as it is."""
        if exc is None:
            return
        if isinstance(exc, (apsw.BusyError, apsw.InterruptError)):
            raise database_error(exc) from None
        if self.on_constraint is not None and isinstance(exc, apsw.ConstraintError):
            raise self.on_constraint(exc) from None

    def _foreign_keys_on(self) -> None:
        if self.foreign_keys_off:
            self.conn.execute("PRAGMA foreign_keys=ON")


def run_effects(effects: list[Effect]) -> None:
    """After COMMIT: each effect runs once; a failing one is logged and never undoes the change."""
    for effect in effects:
        try:
            effect()
        except Exception:
            log.exception("after-commit work failed; the change stands")
    effects.clear()


def _rollback(conn: apsw.Connection) -> None:
    # SQLite may have rolled back already (an interrupted statement, a full disk): then there is
    # nothing left to undo, and ROLLBACK would fail with "no transaction is active".
    if conn.in_transaction:
        conn.execute("ROLLBACK")


@contextlib.contextmanager
def read_snapshot(conn: apsw.Connection) -> Iterator[None]:
    """Several reads that must see one consistent state (a deferred transaction that never writes, so
    it cannot fail on a lock upgrade). Inside an open unit of work, that unit is the snapshot."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
