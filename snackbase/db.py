"""SQLite through apsw: the connection pragmas, the statement time budget, read helpers, the reader
threads and the worker thread.

Connection discipline (docs/architecture.md): one read-write connection is owned by the event-loop
thread and every short statement runs on it inline — measured on this stack, hopping to a thread pool
costs more than the statement itself. Every mutation runs inside one unit of work
(snackbase.unit_of_work: BEGIN IMMEDIATE … COMMIT; nested, a savepoint). A read that is not done
within the loop's share of time (`SNACKBASE_LOOP_BUDGET_MS`) is stopped and run again from the start
on a reader thread (`Database.read`), so no single request holds the event loop. Long work (backups,
big exports) runs on `Database.in_worker`, a single thread with its own connection. An apsw
connection is never shared across threads: each reader thread and the worker have their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import apsw
import msgspec

log = logging.getLogger("snackbase.db")
T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any]

BUSY_TIMEOUT_MS = 5_000
# How many SQLite VM instructions run between two checks of the statement deadline: often enough to stop a
# runaway query within milliseconds, rare enough to cost nothing measurable on short statements.
PROGRESS_STEPS = 20_000
# WAL checkpoints (copying committed pages from the WAL into the database file). SQLite does one inside
# the commit that crosses 1,000 WAL pages; on this machine that costs ~3.4 ms, ~2.5 ms of it waiting on
# fsync, so the event loop stalled ~20 µs per create on average. The server instead copies every
# CHECKPOINT_PAGES new pages on the worker thread (the event loop keeps serving during the fsyncs) and
# checkpoints inline only when the WAL reaches WAL_RESET_PAGES: a background checkpoint never catches
# up with a busy writer, and only a checkpoint with no commit running beside it lets the next write
# start the WAL file over, so this bounds it at ~20 MB. See Database.checkpoint_in_background.
CHECKPOINT_PAGES = 1_000
WAL_RESET_PAGES = 10_000
# What all the custom macro calls of one read (or of the rule checks of one write) may take together;
# each call also has its own budget (snackbase.macros.RUN_BUDGET_S). Without a total, a rule with the
# allowed eight calls of a slow macro cost 8 x 200 ms = 1.6 s.
MACRO_SECONDS = 0.2
# Reads moved off the event loop that may wait for a reader thread; beyond, 503 `busy` at once rather
# than a queue without bound.
MAX_WAITING_READS = 64
INF = float("inf")
# What one `~` match may cost per byte of text at worst: SQLite's LIKE with a 64-character pattern and
# a wildcard, ~270 ms over 1 MB (snackbase.filter). A read on the event loop moves to a reader thread
# before a row whose match could outlast the loop's share (StatementBudget.check).
MATCH_SECONDS_PER_BYTE = 0.27 / 1_000_000


class Allowance(msgspec.Struct):
    """What one piece of work — a read, or the rule checks of one write — may still spend: `seconds`
    of statements on the connection it runs on (infinite: only the per-statement budget applies), and
    `macro_seconds` for all the custom macros it calls together. Spent time is charged as it goes."""

    seconds: float = INF
    macro_seconds: float = MACRO_SECONDS


class StatementBudget:
    """Interrupts any single statement that runs longer than `limit_s` (a runaway filter or macro),
    and every statement of a piece of work once that work's allowance is spent (`spending`).

    The exec trace stamps the start of each statement; the progress handler, called every
    PROGRESS_STEPS instructions, aborts the statement (apsw.InterruptError) once it is over budget.
    `ceiling` is the absolute time the current allowance ends (infinity outside one); `share_s` the
    event loop's share of one request on the event-loop connection (infinity on other connections).
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.deadline = INF
        self.ceiling = INF
        self.allowance: Allowance | None = None
        self.share_s = INF
        self.movable = False  # a read on the event loop that a reader thread can finish instead

    def on_statement(self, _cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
        deadline = time.monotonic() + self.limit_s
        self.deadline = deadline if deadline < self.ceiling else self.ceiling
        return True

    def on_progress(self) -> bool:
        return time.monotonic() > self.deadline

    def check(self, *args: Any) -> int:
        """The SQL function `sb_budget(size)`: 1, or the statement is stopped once over budget.

        The progress handler runs every PROGRESS_STEPS VM steps, but one step can be long: a `~`
        over a 1 MB text is one `instr`/`LIKE` call of up to ~270 ms, and a few hundred such rows fit
        between two progress calls. The filter compiler puts `sb_budget(octet_length(text)) AND …` in
        front of those calls, so the budget is checked once per row where a row is expensive. A
        movable read (on the event loop) also stops before a match that could outlast its allowance:
        it spends the allowance at once, so that Database.read moves it to a reader thread rather
        than let one uninterruptible call hold the loop."""
        now = time.monotonic()
        if now > self.deadline:
            raise apsw.InterruptError("statement budget exceeded")
        size = args[0] if args else None
        if self.movable and isinstance(size, int) and now + size * MATCH_SECONDS_PER_BYTE > self.ceiling:
            self.ceiling = now
            raise apsw.InterruptError("this row's match could outlast the event loop's share")
        return 1

    def over_ceiling(self) -> bool:
        """Whether the current allowance is spent: an interrupt now stopped the work, not one statement."""
        return time.monotonic() >= self.ceiling

    @contextlib.contextmanager
    def limited(self, limit_s: float) -> Iterator[None]:
        """A shorter budget for the statements run inside (untrusted macro SQL)."""
        previous, self.limit_s = self.limit_s, min(limit_s, self.limit_s)
        try:
            yield
        finally:
            self.limit_s = previous

    def spending(self, allowance: Allowance) -> Spending:
        return Spending(self, allowance)


class Spending:
    """Runs the block on `allowance`: statements inside end by its time at the latest (an enclosing
    allowance's, if sooner), macros charge it, and the block's time is charged to it on the way out.

    A class rather than a generator-based context manager: every read runs one (see unit_of_work)."""

    __slots__ = ("allowance", "budget", "outer", "started")

    def __init__(self, budget: StatementBudget, allowance: Allowance) -> None:
        self.budget = budget
        self.allowance = allowance

    def __enter__(self) -> None:
        budget = self.budget
        self.outer = (budget.ceiling, budget.allowance)
        self.started = now = time.monotonic()
        end = now + self.allowance.seconds
        if end < budget.ceiling:
            budget.ceiling = end
        budget.allowance = self.allowance

    def __exit__(self, *_exc: object) -> None:
        self.budget.ceiling, self.budget.allowance = self.outer
        self.allowance.seconds -= time.monotonic() - self.started


# The budget of each open connection, so code holding only the connection can tighten it.
_budgets: weakref.WeakKeyDictionary[apsw.Connection, StatementBudget] = weakref.WeakKeyDictionary()


def statement_budget(conn: apsw.Connection) -> StatementBudget | None:
    return _budgets.get(conn)


class BusyWaiter:
    """SQLite's busy handler: wait for a lock another process holds, for up to `limit_s` seconds.

    SQLite's own (`set_busy_timeout`) sleeps 1, 2, 5, 10 … ms between tries, while a writer holds the
    write lock for a unit of work of ~0.2 ms: with `serve --workers 2` the waiting process idled ~5×
    longer than the lock was held, its event loop stopped meanwhile. This one tries again after
    0.1 ms, 0.2 ms, … up to 2 ms between tries.

    `patient = False` makes a busy lock fail at once: `unit_of_work.write_turn` sets it around its
    tries of BEGIN IMMEDIATE and waits between them on the event loop instead, serving other requests."""

    __slots__ = ("limit_s", "patient", "started")

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.patient = True
        self.started = 0.0

    def __call__(self, tries: int) -> bool:
        if not self.patient:
            return False
        now = time.monotonic()
        if tries == 0:
            self.started = now
        elif now - self.started > self.limit_s:
            return False  # SQLITE_BUSY: the caller answers 503 `busy`
        time.sleep(min(0.0001 * (tries + 1), 0.002))
        return True


_waiters: weakref.WeakKeyDictionary[apsw.Connection, BusyWaiter] = weakref.WeakKeyDictionary()


def busy_waiter(conn: apsw.Connection) -> BusyWaiter | None:
    """The busy handler `connect` gave this connection; None for any other (PostgreSQL's has none)."""
    return _waiters.get(conn)


def connect(path: str | Path, statement_timeout_ms: int = 5_000) -> apsw.Connection:
    """Opens a connection with the project's pragmas; the order matters and is explained inline."""
    conn = apsw.Connection(str(path))
    # First, so that every pragma below waits for a lock held by another process instead of failing.
    waiter = _waiters[conn] = BusyWaiter(BUSY_TIMEOUT_MS / 1000)
    conn.set_busy_handler(waiter)
    # Only takes effect when the file is created (before WAL below). A create dirties ~7 pages (record,
    # its two indexes, the audit entry, its two indexes, the chain head) and a commit writes them whole
    # to the WAL: 2 KiB pages made a create ~10% cheaper than 4 KiB, with reads unchanged (measured).
    conn.execute("PRAGMA page_size=2048")
    # WAL: readers never block the writer and vice versa; persistent, so set once per database file.
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    # NORMAL is durable across application crashes in WAL mode; only a power loss may drop the last commits.
    conn.execute("PRAGMA synchronous=NORMAL")
    # Off by default in SQLite, per connection: reference fields rely on it for restrict/cascade/set null.
    conn.execute("PRAGMA foreign_keys=ON")
    # Keep temporary b-trees (sorts, DISTINCT) in memory; they are small with capped page sizes.
    conn.execute("PRAGMA temp_store=MEMORY")
    # ANALYZE (run by PRAGMA optimize, see Database.optimize) samples this many rows per index: close
    # enough estimates for the planner, bounded work on big tables. 1,000 misjudged a one-account table
    # of 10,000 rows as ten accounts of 1,000 and kept the slow index walk.
    conn.execute("PRAGMA analysis_limit=20000")
    # Up to 64 MiB of page cache (the default is 2 MiB): a filtered COUNT over 46,000 records re-read
    # the whole table from the OS on every list and took 19 ms instead of 7 ms. It is allocated only as
    # pages are read, so idle memory does not change.
    conn.execute("PRAGMA cache_size=-65536")
    # Double-quoted strings as identifiers only: a typo in a quoted name is an error, never a string literal.
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
    budget = StatementBudget(statement_timeout_ms / 1000)
    conn.exec_trace = budget.on_statement
    conn.set_progress_handler(budget.on_progress, PROGRESS_STEPS)
    conn.create_scalar_function("sb_budget", budget.check, -1, deterministic=False)
    _budgets[conn] = budget
    return conn


def fetch_all(conn: apsw.Connection, sql: str, params: Params = ()) -> list[dict[str, Any]]:
    """Runs a query and returns its rows as dicts (column name → value)."""
    cursor = conn.execute(sql, params)
    try:
        names = [d[0] for d in cursor.get_description()]
    except apsw.ExecutionCompleteError:  # no rows at all
        return []
    return [dict(zip(names, row, strict=True)) for row in cursor]


def fetch_one(conn: apsw.Connection, sql: str, params: Params = ()) -> dict[str, Any] | None:
    rows = fetch_all(conn, sql, params)
    return rows[0] if rows else None


def fetch_value(conn: apsw.Connection, sql: str, params: Params = ()) -> Any:
    """The first column of the first row, or None."""
    for row in conn.execute(sql, params):
        return row[0]
    return None


def execute_many(conn: apsw.Connection, statements: Iterable[str]) -> None:
    """Runs statements one call each: apsw runs the rest of a multi-statement string only as it is read."""
    for statement in statements:
        conn.execute(statement).fetchall()


class PendingCommit(Protocol):
    """Writes done in an open transaction and waiting for a COMMIT of their own timing (the group commit
    of snackbase.unit_of_work)."""

    def commit(self) -> None: ...


# Per connection, its writes waiting for their COMMIT. Registered here, not in the unit of work (which
# builds on this module), so that the checkpoint and `close` below can commit them first.
pending_commits: weakref.WeakKeyDictionary[apsw.Connection, PendingCommit] = weakref.WeakKeyDictionary()


def commit_pending(conn: apsw.Connection) -> None:
    """Commits the writes waiting for their COMMIT on `conn`, if any: before anything else that must use
    the connection outside that transaction (another write, an inline checkpoint, closing it)."""
    pending = pending_commits.pop(conn, None)
    if pending is not None:
        pending.commit()


# Checkpoints the server ran, by where (GET /metrics shows them); plain ints, each bumped by one thread.
checkpoint_counts = {"worker": 0, "inline": 0}
# Reads that outgrew the event loop's share and ran again on a reader thread (GET /metrics).
reads_moved = {"reader": 0}


def _checkpoint(conn: apsw.Connection) -> None:
    """A PASSIVE checkpoint: copies what it can without waiting for anyone; the rest comes next time."""
    try:
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
    except apsw.BusyError:
        pass  # the other checkpointer is at it
    except apsw.Error:
        log.warning("WAL checkpoint failed; it is tried again after the next writes", exc_info=True)


class Database:
    """The event-loop connection, reader threads with their own connections for reads that outgrow
    the loop's share, and one worker thread with its own connection for long work."""

    def __init__(
        self,
        path: Path,
        statement_timeout_ms: int = 5_000,
        checkpoint_pages: int = CHECKPOINT_PAGES,
        wal_reset_pages: int = WAL_RESET_PAGES,
        loop_budget_ms: int = 50,
        readers: int = 2,
    ) -> None:
        self.path = path
        self.checkpoint_pages = checkpoint_pages
        self.wal_reset_pages = wal_reset_pages
        self.statement_timeout_ms = statement_timeout_ms
        self.conn = connect(path, statement_timeout_ms)
        self._budget = _budgets[self.conn]
        # 0 = no share: every read runs inline, as before reader threads existed.
        self._budget.share_s = loop_budget_ms / 1000 if loop_budget_ms > 0 else INF
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sb-db-worker")
        self._readers = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="sb-db-reader")
        self._reader_conns: list[apsw.Connection] = []
        self._reader_lock = threading.Lock()
        self._waiting_reads = 0
        self._local = threading.local()
        self._loop: asyncio.AbstractEventLoop | None = None
        # WAL length (pages) when the last checkpoint of each kind was scheduled; see _after_commit.
        self._worker_at = self._inline_at = self._wal_pages = 0
        self._worker_busy = False

    def connection(self) -> apsw.Connection:
        """This thread's own connection: a reader's or the worker's on theirs, else the event loop's.
        For what runs inside a read without being handed its connection (a caller's macros, groups)."""
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        return conn if conn is not None else self.conn

    async def read(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Runs the read `fn(conn)` — it must not write, so running it twice is harmless — so that it
        holds the event loop for at most the loop's share (`SNACKBASE_LOOP_BUDGET_MS`).

        Optimistic: most reads finish well inside the share, inline, at no cost but a clock read (a
        thread hop would cost more than a primary-key lookup). A read still running when the share
        is spent is interrupted and run again from the start on a reader thread, with its own
        connection, inside one read transaction and under the full statement budget. Its macros keep
        what is left of their time (MACRO_SECONDS for all calls together), so a rerun gives slow
        macros no second allowance."""
        budget = self._budget
        allowance = Allowance(budget.share_s)
        section = Spending(budget, allowance)
        section.__enter__()
        budget.movable = True
        try:
            return fn(self.conn)
        except apsw.InterruptError:
            if not budget.over_ceiling():
                raise  # one statement over the statement budget: 503 statement_timeout
        finally:
            budget.movable = False
            section.__exit__()
        return await self._read_off_loop(fn, allowance.macro_seconds)

    async def _read_off_loop(self, fn: Callable[[apsw.Connection], T], macro_seconds: float) -> T:
        if self._waiting_reads >= MAX_WAITING_READS:
            from snackbase.errors import ApiError  # only here: db.py imports nothing of ours at load

            raise ApiError(503, "busy", "The server is busy with slow reads; try again shortly.",
                           headers={"retry-after": "1"})  # fmt: skip
        self._waiting_reads += 1  # on the event loop only: no lock
        reads_moved["reader"] += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._readers, self._read_here, fn, macro_seconds)
        finally:
            self._waiting_reads -= 1

    def _read_here(self, fn: Callable[[apsw.Connection], T], macro_seconds: float) -> T:
        """On a reader thread: `fn` inside one read transaction, so a page and its count agree."""
        conn = self._reader_conn()
        with Spending(_budgets[conn], Allowance(INF, macro_seconds)):
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _reader_conn(self) -> apsw.Connection:
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, self.statement_timeout_ms)
            # Readers only read: a write from a read path would fail here instead of racing the loop.
            conn.execute("PRAGMA query_only=1")
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    def _worker_conn(self) -> apsw.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Long work (exports, backups) may legitimately take minutes: no statement budget here.
            conn = self._local.conn = connect(self.path, statement_timeout_ms=10 * 60 * 1000)
        return conn

    async def in_worker(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Runs `fn(conn)` on the worker thread with the worker's own connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._worker_conn()))

    def checkpoint_in_background(self) -> None:
        """From now on (called on the running event loop) WAL checkpoints run on the worker thread.

        The WAL hook replaces SQLite's automatic checkpoint on the event-loop connection; the worker's
        own connection keeps the automatic one for the writes it makes."""
        self._loop = asyncio.get_running_loop()
        self.conn.set_wal_hook(self._after_commit)

    def _after_commit(self, _conn: apsw.Connection, _name: str, pages: int) -> int:
        """SQLite's WAL hook: `pages` is the WAL's length after this commit.

        It runs inside the COMMIT, where the connection cannot be used: it only schedules."""
        if pages < self._wal_pages:  # this commit started the WAL file over
            self._worker_at = self._inline_at = 0
        self._wal_pages = pages
        if self._loop is None:
            return apsw.SQLITE_OK
        if pages >= self.wal_reset_pages and pages - self._inline_at >= self.checkpoint_pages:
            # Even while the worker is busy (a long export): the WAL must not grow without bound.
            self._inline_at = pages
            self._loop.call_soon(self._checkpoint_inline)
        elif not self._worker_busy and pages - self._worker_at >= self.checkpoint_pages:
            self._worker_busy, self._worker_at = True, pages
            self._loop.call_soon(self._checkpoint_in_worker)
        return apsw.SQLITE_OK

    def _checkpoint_inline(self) -> None:
        if self._loop is None:
            return
        # A group of record writes may be waiting for its COMMIT (and under a steady stream of writes
        # one always is): it commits first, or the WAL would never be reset.
        commit_pending(self.conn)
        if not self.conn.in_transaction:  # else: after the next pages
            checkpoint_counts["inline"] += 1
            _checkpoint(self.conn)

    def _checkpoint_in_worker(self) -> None:
        if self._loop is None:  # closed meanwhile
            return
        checkpoint_counts["worker"] += 1
        job = self._executor.submit(lambda: _checkpoint(self._worker_conn()))
        job.add_done_callback(lambda _: self._worker_done())

    def _worker_done(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(setattr, self, "_worker_busy", False)

    async def optimize(self) -> None:
        """Refreshes the query planner's statistics where tables changed a lot (SQLite's recommendation
        for long-lived connections). Without statistics the planner assumes `account_id = ?` is
        selective and walks an index even for an account holding the whole table, which made a
        filtered COUNT five times slower than a plain scan in the records benchmark. Runs on the
        worker thread: ANALYZE of a big table must not stall the event loop; the event-loop
        connection picks the new statistics up with the schema change ANALYZE makes."""
        await self.in_worker(lambda conn: conn.execute("PRAGMA optimize=0x10002").fetchall())

    async def optimize_periodically(self, interval_s: float = 10.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            # Busy or closed: try again next time; statistics never crash the server.
            with contextlib.suppress(apsw.Error, RuntimeError):
                await self.optimize()

    def ping(self) -> bool:
        try:
            return fetch_value(self.conn, "SELECT 1") == 1
        except apsw.Error:
            return False

    def close(self) -> None:
        """Commits a group of writes still waiting, checkpoints the WAL into the main file (so a copied
        .db file is complete) and closes."""
        commit_pending(self.conn)
        self._loop = None
        self._executor.submit(self._close_worker).result()
        self._executor.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._reader_lock:  # their threads have ended: closing from here shares nothing
            for reader in self._reader_conns:
                reader.close()
            self._reader_conns.clear()
        try:
            self.conn.set_wal_hook(None)
            self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.ConnectionClosedError:
            return
        self.conn.close()

    def _close_worker(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
