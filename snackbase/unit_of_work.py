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

With `serve --workers N` another process may hold the write lock. A synchronous BEGIN IMMEDIATE then
waits in SQLite's busy handler with the event loop stopped. The records routes take the lock first with
`async with write_turn(conn):`, which first waits for the processes' write baton (snackbase.write_baton:
woken when the other process's writes are done) and then for SQLite's lock between tries on the event
loop, serving other requests meanwhile; the unit of work opened inside, with no await in between,
adopts the transaction it began.

Record writes that reach `write_turn` in the same turn of the event loop share one transaction and one
COMMIT (group commit): the first begins it and schedules the COMMIT for the loop's next turn; the
writes after it join as savepoints, so a failed one undoes only itself. Each write's request waits in
`write_turn`'s exit until the COMMIT is done, then answers; its after-commit work runs after that
COMMIT, in its request's context. A COMMIT shared by eight creates writes each page they touched once
(the table's and indexes' last leaves, the audit log's, the chain head) instead of eight times, with
one set of lock calls. Anything else that writes on the connection, or closes it, commits the open
group first (`db.commit_pending`). A read on the connection while a group is open sees the writes of
that group that succeeded, as they will be committed; only a failing COMMIT (a full disk, an I/O
error) then takes them back, and every request of the group is answered with that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import apsw
import msgspec

from snackbase.config import WRITE_BATON_ENV
from snackbase.db import Allowance, BusyWaiter, busy_waiter, commit_pending, pending_commits
from snackbase.errors import database_error

if TYPE_CHECKING:
    from snackbase.write_baton import Baton

log = logging.getLogger("snackbase.write")

Effect = Callable[[], None]


class Work(msgspec.Struct):
    """The open unit of work of one connection: what to run once it has committed."""

    conn: apsw.Connection
    effects: list[Effect] = msgspec.field(default_factory=list)
    # What the unit's rule checks may still spend while it holds the write lock (records._rule_check).
    rule_allowance: Allowance | None = None
    # Begun by `write_turn` and not yet adopted by the unit of work opened inside it.
    pending: bool = False
    # The group commit this write belongs to (`write_turn`), None for a unit with a COMMIT of its own,
    # and the future its request waits on until that group's COMMIT (done at once if the write is undone).
    group: _Group | None = None
    committed: asyncio.Future[None] | None = None

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
        if outer is not None and outer.pending:
            if not self.foreign_keys_off:
                outer.pending = False  # adopts the transaction `write_turn` began: the outermost unit
                self.work = outer
                return outer
            # PRAGMA foreign_keys must be switched outside a transaction: leave the group first (no
            # longer pending, so write_turn's exit leaves this unit's own transaction alone).
            outer.pending = False
            del _open[conn]
            assert outer.group is not None  # pending: joined to a group by write_turn
            outer.group.withdraw(outer)  # the group's other writes commit below, before this BEGIN
            outer = None
        if outer is not None:  # joins the open unit as a savepoint
            self.nested = True
            conn.execute("SAVEPOINT unit_of_work")
            self.work = outer
            self.mark = len(outer.effects)  # what this savepoint queues is dropped if it rolls back
            return outer
        commit_pending(conn)  # a write outside `write_turn` commits the record writes still waiting first
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
        if self.work.group is not None:
            self.work.group.leave(self.work, exc)
            self._raise_translated(exc)
            return
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


class write_turn:
    """`async with write_turn(conn):` around synchronous code that opens a unit of work: takes SQLite's
    write lock first, waiting on the event loop while another process holds it (see the module
    docstring), or joins the group commit open on the connection. The first unit opened inside adopts
    the transaction (a savepoint of the group); if none is opened (the write was refused before it
    began), that savepoint is rolled back on the way out. The exit waits for the group's COMMIT. On
    PostgreSQL it does nothing: writers there wait on row locks, not on one database lock."""

    __slots__ = ("conn", "group", "work")

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self.work: Work | None = None  # joined to `group`; both None when it did nothing
        self.group: _Group | None = None

    async def __aenter__(self) -> None:
        conn = self.conn
        if conn.in_transaction and (conn in _open or conn not in _groups):
            return  # not the outermost write: the unit opened inside decides (and refuses a stray one)
        queue = _queues.get(conn)
        if queue is None:
            waiter = busy_waiter(conn)
            if waiter is None:
                return  # PostgreSQL: writers wait on row locks, not on one database lock
            queue = _queues[conn] = _LockQueue(waiter)
        baton = _process_baton()  # several workers: the other process's writes end first
        if baton is not None:
            await baton.claim()  # at once while this process's group is open: it holds the baton
        try:
            group = _group_of(conn)
            if group is not None and not conn.in_transaction:
                commit_pending(conn)  # SQLite rolled its transaction back: its writes get that error
                group = None
            if group is None:
                if queue.polling or not _try_begin(conn, queue.waiter):
                    await queue.wait_for_lock(conn)
                group = _group_of(conn) or _Group.begun(conn)  # the poller's group, or ours
        except BaseException:
            if baton is not None:
                baton.unclaim()
            raise
        self.work, self.group = group.join(), group
        if baton is not None:  # the group gives it back, right after its COMMIT
            group.batons.append(baton)

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        work, group = self.work, self.group
        if work is None or group is None:
            return
        try:
            if work.pending:  # never adopted: nothing was written
                _open.pop(self.conn, None)
                work.pending = False
                group.withdraw(work)
            if work.committed is not None:  # the group's COMMIT: raises its error if this write was in it
                await work.committed
        except BaseException:
            if exc is None:  # the COMMIT failed (or this request was cancelled): that is the answer
                raise
            # else the body's own error is the answer


class _Group:
    """The record writes of one loop turn, in one transaction ended by one COMMIT (see the module
    docstring). Each write is a savepoint, released into the group when it succeeds and rolled back when
    it fails; `waiting` holds the futures the writes' requests wait on (`Work.committed`)."""

    __slots__ = ("batons", "conn", "effects", "waiting", "written")

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        # The written writes' after-commit work, in their order, each with its request's context (hooks
        # default their caller from it, log lines carry its request id): the COMMIT runs from the loop.
        self.effects: list[tuple[contextvars.Context, list[Effect]]] = []
        self.waiting: list[asyncio.Future[None]] = []
        self.written = 0
        # With `serve --workers N`, each write's claim on the write baton: given back at the COMMIT, not
        # when the requests answer, so another process waiting for it writes while these compose theirs.
        self.batons: list[Baton] = []
        asyncio.get_running_loop().call_soon(self._due)

    @classmethod
    def begun(cls, conn: apsw.Connection) -> _Group:
        """The group of the transaction just begun on `conn`."""
        group = _groups[conn] = cls(conn)
        return group

    def _due(self) -> None:
        if _groups.get(self.conn) is self:  # else committed already, before another write
            commit_pending(self.conn)

    def join(self) -> Work:
        """A write's savepoint in the group: the Work its unit of work adopts. No await may follow
        before that unit ends (the COMMIT runs from the loop)."""
        self.conn.execute("SAVEPOINT grouped")
        committed = asyncio.get_running_loop().create_future()
        self.waiting.append(committed)
        work = _open[self.conn] = Work(self.conn, pending=True, group=self, committed=committed)
        return work

    def leave(self, work: Work, exc: BaseException | None) -> None:
        """The end of a write's unit of work: its savepoint is released into the group, or undone."""
        if exc is not None:
            self.withdraw(work)
            return
        self.conn.execute("RELEASE grouped")
        if work.effects:
            self.effects.append((contextvars.copy_context(), work.effects))
        self.written += 1

    def withdraw(self, work: Work) -> None:
        """Undoes a write that failed or never began. When SQLite has already rolled the whole
        transaction back (a full disk, an I/O error, an interrupted write statement), the writes before
        it are gone too: the COMMIT then fails them."""
        work.effects.clear()
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK TO grouped")
            self.conn.execute("RELEASE grouped")
        if work.committed is not None:
            work.committed.set_result(None)  # nothing of it to wait for (the COMMIT skips a done one)

    def commit(self) -> None:
        """COMMIT, the baton given back, the after-commit work, then every waiting request is woken (from
        the loop, or at once by `db.commit_pending`)."""
        conn = self.conn
        error: Exception | None = None
        try:
            if not self.written:
                _rollback(conn)  # every write of the group failed or never began
            elif not conn.in_transaction:
                error = apsw.IOError("the transaction was rolled back before its COMMIT")
            else:
                conn.execute("COMMIT")
                group_counts["commits"] += 1
                group_counts["writes"] += self.written
        except Exception as exc:
            _rollback(conn)
            error = exc
        for baton in self.batons:
            baton.unclaim()
        if error is None:
            for context, effects in self.effects:
                context.run(run_effects, effects)
        for future in self.waiting:
            if future.done():  # its write was undone, or its request cancelled
                continue
            if error is None:
                future.set_result(None)
            else:  # a fresh exception per request: each raises it along its own stack
                future.set_exception(_commit_error(error))


def _commit_error(exc: Exception) -> Exception:
    """What a request of a group whose COMMIT failed raises: a busy or interrupted database as its 503,
    anything else (a full disk, an I/O error) as the bare 500."""
    return (
        database_error(exc)
        if isinstance(exc, (apsw.BusyError, apsw.InterruptError))
        else RuntimeError(f"the COMMIT of a group of writes failed: {exc!r}")
    )


# Group commits that wrote, and the record writes they committed (GET /metrics: their ratio is the
# average group); plain ints, bumped on the event loop only.
group_counts = {"commits": 0, "writes": 0}

# Per connection (the event loop's one), the group of record writes waiting for its COMMIT: db's
# registry of pending commits, so that its checkpoint and `close` commit the group first.
_groups = pending_commits


def _group_of(conn: apsw.Connection) -> _Group | None:
    group = _groups.get(conn)
    return group if isinstance(group, _Group) else None


@functools.cache  # read once: the serving process names the baton before it starts the workers
def _process_baton() -> Baton | None:
    """The write baton of `serve --workers N`; a single process never even imports its module."""
    if WRITE_BATON_ENV not in os.environ:
        return None
    from snackbase.write_baton import of_process

    return of_process()


class _LockQueue:
    """The requests of one process waiting for another process to release the write lock.

    One of them polls: BEGIN IMMEDIATE, one loop turn apart (the lock is held for one unit of work, a
    fraction of a millisecond, and the loop's other requests fill the gap; 1 ms timers were slower,
    measured), then 1 ms apart after `TURNS` tries. The others wait until the poller has the lock and
    then try in turn: after the poller's write, this process holds no lock, so they usually write one
    after another. Writing in runs matters: SQLite drops a connection's page cache whenever another
    process wrote last. When every waiting request polled for itself, 16 waiters made 16 failed
    BEGINs (each a few file-lock system calls) per loop turn.

    After the busy handler's limit a waiting request gets the same 503 `busy` as a synchronous wait."""

    __slots__ = ("polling", "waiter", "waiting")
    TURNS = 20

    def __init__(self, waiter: BusyWaiter) -> None:
        self.waiter = waiter  # the connection's busy handler
        self.polling = False
        self.waiting: list[asyncio.Future[None]] = []

    async def wait_for_lock(self, conn: apsw.Connection) -> None:
        """Returns with the write lock taken (BEGIN IMMEDIATE done) or a group commit open to join, with
        no await after it."""
        waiter, started = self.waiter, time.monotonic()
        while True:
            _give_up_after(started, waiter)
            if not self.polling:
                await self._poll(conn, waiter, started)
                return
            woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(woken)
            await woken  # the poller has the lock, or gave up
            if conn in _groups and conn.in_transaction:
                return  # the group the poller began, still open: join it
            if not self.polling and _try_begin(conn, waiter):
                return

    async def _poll(self, conn: apsw.Connection, waiter: BusyWaiter, started: float) -> None:
        self.polling = True
        try:
            tries = 0
            while not _try_begin(conn, waiter):
                _give_up_after(started, waiter)
                tries += 1
                await asyncio.sleep(0 if tries < self.TURNS else 0.001)
        finally:  # also when the poller's request is cancelled: a waiting one takes over
            self.polling = False
            waiting, self.waiting = self.waiting, []
            for woken in waiting:
                if not woken.done():
                    woken.set_result(None)


# Per connection (the event loop's one), the requests waiting for another process's write.
_queues: weakref.WeakKeyDictionary[apsw.Connection, _LockQueue] = weakref.WeakKeyDictionary()


def _give_up_after(started: float, waiter: BusyWaiter) -> None:
    """503 `busy` once the wait has outlasted the busy handler's limit, as a synchronous wait would."""
    if time.monotonic() - started > waiter.limit_s:
        raise database_error(apsw.BusyError("the write lock stayed busy")) from None


def _try_begin(conn: apsw.Connection, waiter: BusyWaiter) -> bool:
    """BEGIN IMMEDIATE without SQLite's busy wait: False if another process holds the write lock."""
    waiter.patient = False
    try:
        conn.execute("BEGIN IMMEDIATE")
    except apsw.BusyError:
        return False
    finally:
        waiter.patient = True
    return True


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
