"""PostgreSQL through psycopg 3: the connection adapter, errors by kind, the schema migrations.

Imported only when SNACKBASE_DATABASE_URL is a postgresql:// URL (snackbase/backends/__init__.py).

`PgConnection` gives the call sites the small interface they use on apsw today, so most of them run
unchanged on both engines:
- `conn.execute(sql, params)` with SQLite's placeholders (`?` with a sequence, `:name` with a dict),
  rewritten once per distinct SQL text to psycopg's (`%s`, `%(name)s`); the result is a cursor to
  iterate (tuples) or `fetchone`/`fetchall`, with `get_description()` for `db.fetch_all`.
- `conn.in_transaction`, `conn.changes()`.
- the statements `unit_of_work` and `read_snapshot` send: `BEGIN IMMEDIATE` is a READ COMMITTED
  transaction (PostgreSQL writers wait on row locks, not on one database lock: whatever must be
  serialized takes its row lock, as the audit chain head does), a bare `BEGIN` (a read snapshot) is
  REPEATABLE READ, `PRAGMA foreign_keys` is not needed (PostgreSQL alters tables in place) and does
  nothing. SAVEPOINT / ROLLBACK TO / RELEASE / COMMIT / ROLLBACK are the same words on both.
- errors leave as the apsw error classes by kind, so `errors.database_error` and the unit of work's
  translation give the same answers on both engines: a unique/foreign-key/not-null/check violation is
  `apsw.ConstraintError` with SQLite's extended result code (and SQLite's message shape, which names
  the columns); a trigger's RAISE EXCEPTION is a constraint error too (SQLite's RAISE(ABORT) is);
  a lock timeout, deadlock or serialization failure is `apsw.BusyError` (503 `busy`); the statement
  timeout is `apsw.InterruptError` (503 `statement_timeout`).

The connection runs in psycopg's autocommit mode: transactions are exactly the BEGIN … COMMIT the unit
of work sends, as on apsw.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, TypeVar

import apsw
import psycopg
from psycopg import errors as pg_errors
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.types.numeric import NumericLoader

from snackbase.config import ConfigError
from snackbase.db import MAX_WAITING_READS
from snackbase.migrations import Migration, SchemaTooNewError, read_steps

T = TypeVar("T")
SQL_DIR = Path(__file__).resolve().parent.parent / "sql" / "postgresql"
# SQLite's functions the shared SQL calls, recreated on every start (not a numbered step).
FUNCTIONS_FILE = SQL_DIR / "sqlite_functions.sql"
# One advisory lock key for schema migrations: nodes starting together apply each step once.
MIGRATION_LOCK = 0x5B_0001

# Statements the shared code sends that mean something else (or nothing) on PostgreSQL.
_TRANSACTION_STATEMENTS: dict[str, str | None] = {
    "BEGIN IMMEDIATE": "BEGIN ISOLATION LEVEL READ COMMITTED",
    "BEGIN": "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "PRAGMA foreign_keys=OFF": None,
    "PRAGMA foreign_keys=ON": None,
}

_TOKENS = re.compile(
    r"""'(?:[^']|'')*'            # a string literal, copied as it is
      | "(?:[^"]|"")*"            # a quoted identifier
      | --[^\n]*                  # a line comment
      | ::                        # a PostgreSQL cast, not a named parameter
      | :[A-Za-z_][A-Za-z0-9_]*   # a named parameter
      | \?[0-9]+                  # a numbered parameter (?1, ?2: one value used twice)
      | \?                        # a positional parameter
      | %                         # a literal percent sign, doubled for psycopg
    """,
    re.VERBOSE,
)


@lru_cache(maxsize=4096)
def translate_placeholders(sql: str) -> str:
    """SQLite's `?`, `?N` and `:name` → psycopg's `%s`, `%(pN)s` and `%(name)s`; `%` → `%%`; literals
    untouched. A statement with `?N` takes its values as a dict (`numbered_params`)."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        if token.startswith("?"):
            return f"%(p{token[1:]})s"
        if token == "%":
            return "%%"
        if token.startswith(":") and token != "::":
            return f"%({token[1:]})s"
        return token

    return _TOKENS.sub(replace, sql)


class PgCursor:
    """What apsw's cursor offers the call sites: iteration over tuples, fetchone, fetchall, description."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: psycopg.Cursor[Any] | None) -> None:
        self._cursor = cursor

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if self._cursor is None or self._cursor.description is None:
            return iter(())
        return iter(self._cursor)

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._cursor is None or self._cursor.description is None:
            return None
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        if self._cursor is None or self._cursor.description is None:
            return []
        return self._cursor.fetchall()

    def get_description(self) -> tuple[tuple[str, str], ...]:
        if self._cursor is None or self._cursor.description is None:
            raise apsw.ExecutionCompleteError("the statement returns no rows")
        return tuple((column.name, str(column.type_code)) for column in self._cursor.description)


class SqliteNumberLoader(NumericLoader):
    """NUMERIC columns (a `number` field) read as SQLite gives them: an int when the value is whole,
    else a float, never a Decimal (which JSON would carry as a string)."""

    def load(self, data: Any) -> Any:
        value = super().load(data)
        if isinstance(value, Decimal) and value.is_finite():
            return int(value) if value == value.to_integral_value() else float(value)
        return value


class BoolAsIntDumper(Dumper):
    """A Python bool bound as 0/1, as SQLite stores it: flags are 0/1 integer columns on both engines."""

    oid = postgres.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class PgConnection:
    """One psycopg connection behind the apsw-shaped interface (see the module docstring)."""

    dialect = "postgresql"

    def __init__(self, url: str, statement_timeout_ms: int = 5_000, *, read_only: bool = False) -> None:
        try:
            # Options given in the URL (`?options=-c search_path=…`) are kept; ours come after.
            given = conninfo_to_dict(url).get("options") or ""
            options = f"-c statement_timeout={int(statement_timeout_ms)} -c lock_timeout=5000 -c TimeZone=UTC"
            if read_only:  # a reader: a write from a read path fails here instead of racing the loop's
                options += " -c default_transaction_read_only=on"
            self.raw = psycopg.connect(url, autocommit=True, options=f"{given} {options}".strip())
        except psycopg.Error as exc:
            raise ConnectionFailed(describe_connect_error(url, exc)) from None
        self.raw.adapters.register_loader("numeric", SqliteNumberLoader)
        self.raw.adapters.register_dumper(bool, BoolAsIntDumper)
        self._changes = 0

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> PgCursor:
        if sql in _TRANSACTION_STATEMENTS:
            sql_or_none = _TRANSACTION_STATEMENTS[sql]
            if sql_or_none is None:
                return PgCursor(None)
            sql = sql_or_none
        cursor = self.raw.cursor()
        try:
            if params:
                translated = translate_placeholders(sql)
                if "%(p" in translated and not isinstance(params, dict):  # SQLite's ?1, ?2
                    params = {f"p{i}": value for i, value in enumerate(params, start=1)}
                cursor.execute(translated, params)
            else:  # no parameters: the text is sent as it is (scripts, DDL)
                cursor.execute(sql.encode())
        except psycopg.Error as exc:
            raise as_apsw_error(exc) from exc
        self._changes = max(cursor.rowcount, 0)
        return PgCursor(cursor)

    def changes(self) -> int:
        """Rows changed by the last statement (apsw's `changes()`)."""
        return self._changes

    def close(self) -> None:
        self.raw.close()


class ConnectionFailed(ConfigError):
    """PostgreSQL is not reachable with the URL given: the CLI prints it as one line."""


def describe_connect_error(url: str, exc: psycopg.Error) -> str:
    from snackbase.backends import redact_url

    first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return f"cannot connect to PostgreSQL at {redact_url(url)}: {first_line}"


# --- errors by kind --------------------------------------------------------------------------------

_CONSTRAINT_CODES: dict[type[psycopg.Error], int] = {
    pg_errors.UniqueViolation: apsw.SQLITE_CONSTRAINT_UNIQUE,
    pg_errors.ForeignKeyViolation: apsw.SQLITE_CONSTRAINT_FOREIGNKEY,
    pg_errors.NotNullViolation: apsw.SQLITE_CONSTRAINT_NOTNULL,
    pg_errors.CheckViolation: apsw.SQLITE_CONSTRAINT_CHECK,
    pg_errors.RaiseException: apsw.SQLITE_CONSTRAINT_TRIGGER,
}
_BUSY = (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_KEY_DETAIL = re.compile(r"Key \((?P<columns>[^)]*)\)=")


def as_apsw_error(exc: psycopg.Error) -> Exception:
    """The apsw error class SQLite raises for the same kind of failure; anything else unchanged."""
    if isinstance(exc, _BUSY):
        return apsw.BusyError(str(exc))
    if isinstance(exc, pg_errors.QueryCanceled):
        return apsw.InterruptError(str(exc))
    for kind, code in _CONSTRAINT_CODES.items():
        if isinstance(exc, kind):
            error = apsw.ConstraintError(_constraint_message(exc, code))
            error.extendedresult = code  # type: ignore[attr-defined]  # set by apsw on its own errors
            return error
    return exc


def _connection_lost(conn: PgConnection, exc: Exception) -> bool:
    """Whether `exc` means the connection itself is gone (the server restarted, or ended the backend).
    libpq marks the connection bad when it notices, but psycopg may notice first, at the socket
    ("connection socket closed", an OperationalError without a SQLSTATE, the connection not yet
    marked): both count. An error the server sent about a statement always carries a SQLSTATE."""
    if conn.raw.closed:
        return True
    return isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None


def _constraint_message(exc: psycopg.Error, code: int) -> str:
    """SQLite's message shape, whose column list `errors.unique_columns` reads."""
    diag = exc.diag
    if code == apsw.SQLITE_CONSTRAINT_UNIQUE:
        match = _KEY_DETAIL.search(diag.message_detail or "")
        table = diag.table_name or ""
        columns = [c.strip().strip('"') for c in match.group("columns").split(",")] if match else []
        return "UNIQUE constraint failed: " + ", ".join(f"{table}.{c}" for c in columns)
    if code == apsw.SQLITE_CONSTRAINT_FOREIGNKEY:
        return "FOREIGN KEY constraint failed"
    if code == apsw.SQLITE_CONSTRAINT_NOTNULL:
        return f"NOT NULL constraint failed: {diag.table_name}.{diag.column_name}"
    return diag.message_primary or str(exc)


# --- the database of one process ---------------------------------------------------------------------


@dataclass
class PgDatabase:
    """The server's connections to PostgreSQL, with the interface of the SQLite `db.Database`: `conn`
    for the event loop's writes (one unit of work at a time), `read` for a request's reads on reader
    threads, `in_worker` for long work on a thread with its own connection, `ping`, `close`.

    Why reads leave the loop here and not on SQLite: a SQLite read is a function call into the same
    process (a thread hop costs more than a primary-key lookup), a PostgreSQL read is a network round
    trip per statement, during which the event loop would serve nobody. Each reader thread owns one
    connection (`readers` of them, SNACKBASE_DB_READERS), read-only like SQLite's `query_only`
    readers, so the loop keeps serving while they wait on the database."""

    url: str
    conn: PgConnection
    statement_timeout_ms: int = 5_000
    readers: int = 2
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="sb-pg-worker")
    )
    _local: threading.local = field(default_factory=threading.local)
    _reader_pool: ThreadPoolExecutor | None = None
    _reader_conns: list[PgConnection] = field(default_factory=list)
    _reader_lock: threading.Lock = field(default_factory=threading.Lock)
    _waiting_reads: int = 0

    @classmethod
    def open(cls, url: str, statement_timeout_ms: int = 5_000, readers: int = 2) -> PgDatabase:
        """Connects and brings the schema up to date (each node may do this; see `migrate`)."""
        conn = PgConnection(url, statement_timeout_ms)
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cls(url, conn, statement_timeout_ms, max(1, readers))

    def _worker_conn(self) -> PgConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:  # long work (exports, verify) may take minutes: no statement budget here
            conn = self._local.conn = PgConnection(self.url, statement_timeout_ms=0)
        return conn

    async def in_worker(self, fn: Callable[[PgConnection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._worker_conn()))

    async def read(self, fn: Callable[[PgConnection], T]) -> T:
        """A request's read `fn(conn)` (it must not write), as `db.Database.read` runs it on SQLite:
        here always on a reader thread (`_read_here`). A read asked for while the loop's connection is
        inside a transaction (a unit of work) runs inline on that connection instead: it must see the
        unit's own uncommitted writes."""
        if self.conn.in_transaction:
            return fn(self.conn)
        if self._waiting_reads >= MAX_WAITING_READS:  # as on SQLite: 503 at once, not a queue without bound
            from snackbase.errors import ApiError

            raise ApiError(503, "busy", "The server is busy with slow reads; try again shortly.",
                           headers={"retry-after": "1"})  # fmt: skip
        self._waiting_reads += 1  # on the event loop only: no lock
        try:
            loop = asyncio.get_running_loop()
            # In the request's context: the reader compiles filters and rules in the PostgreSQL
            # dialect (a context variable, which run_in_executor alone does not carry over).
            context = contextvars.copy_context()
            return await loop.run_in_executor(self._readers(), context.run, self._read_here, fn)
        finally:
            self._waiting_reads -= 1

    def _readers(self) -> ThreadPoolExecutor:
        pool = self._reader_pool
        if pool is None:  # first read: tools that never read through here start no threads
            pool = self._reader_pool = ThreadPoolExecutor(self.readers, thread_name_prefix="sb-pg-reader")
        return pool

    def _read_here(self, fn: Callable[[PgConnection], T]) -> T:
        """On a reader thread, each statement in its own snapshot, as an inline read on SQLite: a
        BEGIN … COMMIT around every read cost two more round trips and ~80 µs of CPU (measured, the
        pure-Python driver), more than the primary-key lookup that most reads are.

        A read that lost its connection (PostgreSQL restarted, or a proxy dropped it) runs once more
        on a new one: a read may run twice, as on SQLite where it moves from the loop to a reader."""
        conn = self._reader_conn()
        try:
            return fn(conn)
        except (psycopg.Error, apsw.Error) as exc:
            if not _connection_lost(conn, exc):
                raise
            conn.raw.close()  # so that _reader_conn connects again
        return fn(self._reader_conn())

    def _reader_conn(self) -> PgConnection:
        conn: PgConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.raw.closed:  # the server restarted or dropped us: connect again
            with self._reader_lock:
                self._reader_conns.remove(conn)
            conn = None
        if conn is None:
            conn = self._local.conn = PgConnection(self.url, self.statement_timeout_ms, read_only=True)
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    def connection(self) -> PgConnection:
        """This thread's own connection (a reader's or the worker's on its thread, else the event
        loop's), as `db.Database.connection`: what runs inside a read without being handed its
        connection (a caller's groups, macros) uses the read's connection, and what runs inside a
        unit of work on the loop uses the write connection."""
        conn: PgConnection | None = getattr(self._local, "conn", None)
        return conn if conn is not None else self.conn

    def checkpoint_in_background(self) -> None:
        """SQLite's WAL checkpoints have no counterpart: PostgreSQL checkpoints on its own."""

    async def optimize_periodically(self) -> None:
        """SQLite's statistics refresh has no counterpart: PostgreSQL's autovacuum analyzes."""

    def ping(self) -> bool:
        try:
            return self.conn.execute("SELECT 1").fetchone() == (1,)
        except (psycopg.Error, apsw.Error):
            return False

    def close(self) -> None:
        self._executor.submit(self._close_worker).result()
        self._executor.shutdown(wait=True)
        if self._reader_pool is not None:
            self._reader_pool.shutdown(wait=True)
        with self._reader_lock:  # their threads have ended: closing from here shares nothing
            for reader in self._reader_conns:
                reader.close()
            self._reader_conns.clear()
        self.conn.close()

    def _close_worker(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# --- schema migrations -------------------------------------------------------------------------------
# The same numbered steps as SQLite's (snackbase/sql/NNN_*.sql), written for PostgreSQL in
# snackbase/sql/postgresql/ under the same names; tests/test_postgres.py keeps the two in step. The
# version lives in a one-row table (PostgreSQL has no PRAGMA user_version). The pending steps and the
# version bump run in one transaction (PostgreSQL's DDL is transactional) under an advisory lock, so N
# nodes starting at once apply each step exactly once and none sees a half-migrated schema.


@cache
def migrations() -> tuple[Migration, ...]:
    return read_steps(SQL_DIR)


def latest_version() -> int:
    return migrations()[-1].version


def current_version(conn: PgConnection) -> int:
    """0 for an empty database (no version table yet)."""
    exists = conn.execute("SELECT to_regclass('snackbase_schema') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT version FROM snackbase_schema").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: PgConnection, up_to: int | None = None) -> list[int]:
    """Applies every pending step (up to the version `up_to`, for a restore that loads an older
    archive's tables before migrating them); returns the versions applied. Raises SchemaTooNewError
    untouched."""
    applied: list[int] = []
    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
        conn.execute(_CREATE_VERSION_TABLE)
        version = current_version(conn)
        if version > latest_version():
            raise SchemaTooNewError(
                f"the database has schema version {version}, newer than this SnackBase understands "
                f"({latest_version()}); upgrade SnackBase"
            )
        for step in migrations():
            if step.version > version and (up_to is None or step.version <= up_to):
                conn.execute(step.script)
                conn.execute("UPDATE snackbase_schema SET version = ?", (step.version,))
                applied.append(step.version)
        conn.execute(FUNCTIONS_FILE.read_text(encoding="utf-8"))
    except BaseException:
        conn.execute("ROLLBACK")  # a failing step leaves the database at the version it had
        raise
    conn.execute("COMMIT")
    return applied


_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS snackbase_schema (
    id BIGINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO snackbase_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING
"""
