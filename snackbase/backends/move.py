"""`snackbase migrate --from <data-dir> --to postgresql://…`: copies a SQLite deployment to an empty
PostgreSQL database (docs/scaling.md, "Moving from SQLite").

Everything happens in ONE PostgreSQL transaction, so a failure at any point leaves the target as empty
as it was:
1. the target must hold no table, view or sequence in its schema (else one line, nothing written);
2. the system tables are created by the same numbered migrations a PostgreSQL server runs at start,
   then the rows those migrations seed (the system account, the built-in roles, the `pii_access`
   group, the counters) are replaced by the source's;
3. every collection's table is created from its definition with the same DDL as `POST /collections`
   (`ddl.create_table_sql`), so a moved table is exactly what PostgreSQL would have built;
4. rows are copied table by table, parents before children along the foreign keys; a column that
   refers to a table not copied yet (a self-reference, a cycle) is written in a second pass;
5. audit entries are copied one statement each in `seq` order, so the append-only triggers check every
   entry against its account's chain head as it arrives, and the heads move exactly as they did;
6. `audit_log_seq` (and any identity column) is set past the highest value copied;
7. every account's chain is verified (`audit.verify`) and the heads compared with the source's; any
   difference rolls everything back and says which entry.

File contents stay where the storage keeps them (the data dir's `storage/` or the S3 bucket): only
their bookkeeping rows (the records' file fields, `file_trash`, `file_usage`) are copied. Realtime's
transient tables (`realtime_events`, `realtime_listeners`) are not: they describe the old process.
The source is read in one read transaction (a consistent snapshot); stop the server first so that
nothing written after the copy started is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from snackbase import audit, search
from snackbase.backends import dialect
from snackbase.backends.postgres import (
    FUNCTIONS_FILE,
    MIGRATION_LOCK,
    PgConnection,
    latest_version,
    migrations,
)
from snackbase.collection_defs import collection_from_row
from snackbase.config import ConfigError
from snackbase.db import fetch_all
from snackbase.ddl import create_table_sql
from snackbase.migrations import current_version as sqlite_version
from snackbase.migrations import latest_version as sqlite_latest
from snackbase.schema import Collection, quote_ident, table_name

# What describes the running process, not the data: not copied.
SKIPPED_TABLES = frozenset({"realtime_events", "realtime_listeners"})
BATCH_ROWS = 1_000


class MoveError(ConfigError):
    """Why the move did not happen (the target is left as it was); the CLI prints it as one line."""


@dataclass
class MoveReport:
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    audit_entries: int = 0
    accounts_verified: int = 0
    seconds: float = 0.0


def move(source_db: Path, target: PgConnection) -> MoveReport:
    """Copies the SQLite database `source_db` into the empty PostgreSQL behind `target`."""
    started = time.monotonic()
    source = _open_source(source_db)
    try:
        source.execute("BEGIN")  # one snapshot of the source for the whole copy
        collections = _collections(source)
        target.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            report = _copy(source, target, collections)
        except BaseException:
            target.execute("ROLLBACK")  # the target stays empty
            raise
        target.execute("COMMIT")
    finally:
        source.close()
    target.execute("ANALYZE")  # fresh planner statistics for the copied tables
    report.seconds = time.monotonic() - started
    return report


def _open_source(path: Path) -> apsw.Connection:
    if not path.is_file():
        raise MoveError(f"no SQLite database at {path}")
    # Read-write but never created or migrated (as `audit verify`): WAL readers need the -shm file.
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    version, latest = sqlite_version(conn), sqlite_latest()
    if version != latest:
        conn.close()
        raise MoveError(
            f"the SQLite database has schema version {version}, this SnackBase writes {latest}: "
            "start this version's server on it once (it migrates at start), then move it"
        )
    return conn


def _collections(source: apsw.Connection) -> list[Collection]:
    """The source's collection definitions (every field type runs on PostgreSQL)."""
    return [collection_from_row(r) for r in fetch_all(source, "SELECT * FROM collections ORDER BY name")]


def _copy(source: apsw.Connection, target: PgConnection, collections: list[Collection]) -> MoveReport:
    target.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))  # no node migrates meanwhile
    _refuse_non_empty(target)
    _create_system_tables(target)
    system_tables = [t for t in _target_tables(target) if t != "snackbase_schema" and t not in SKIPPED_TABLES]
    token = dialect.current.set(dialect.POSTGRESQL)
    try:
        for collection in collections:
            for statement in [*create_table_sql(collection), *search.create_sql(collection)]:
                target.execute(statement)
    finally:
        dialect.current.reset(token)
    tables = system_tables + [table_name(c.name) for c in collections]
    order, deferred = _load_order(target, tables)
    # The chain heads start at genesis before their entries arrive (neither has a foreign key).
    order = [t for t in order if t not in ("audit_heads", "audit_log")] + ["audit_heads", "audit_log"]
    _clear_seeded(target, order)
    report = MoveReport()
    for table in order:
        if table == "audit_log":
            report.audit_entries = report.tables[table] = _copy_audit(source, target)
        elif table == "audit_heads":
            report.tables[table] = _copy_heads_at_genesis(source, target)
        else:
            report.tables[table] = _copy_table(source, target, table, deferred.get(table, ()))
    for table, columns in deferred.items():
        _fill_deferred(source, target, table, columns)
    _set_sequences(target, order)
    report.accounts_verified = _verify(source, target)
    return report


# --- the target ---------------------------------------------------------------------------------------


def _value(target: PgConnection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    row = target.execute(sql, params).fetchone()
    return row[0] if row else None


def _refuse_non_empty(target: PgConnection) -> None:
    schema = _value(target, "SELECT current_schema()")
    if schema is None:
        raise MoveError("the target has no schema to write into (does the URL's search_path schema exist?)")
    count = _value(target, _RELATIONS_IN_SCHEMA)
    if count:
        raise MoveError(
            f"the target is not empty: schema '{schema}' already holds {count} tables, views or sequences; "
            "migrate copies into an empty database (or schema) only"
        )


_RELATIONS_IN_SCHEMA = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
"""


def _create_system_tables(target: PgConnection) -> None:
    """The numbered PostgreSQL migrations, as `postgres.migrate` applies them at a server's start."""
    target.execute(_CREATE_VERSION_TABLE)
    for step in migrations():
        target.execute(step.script)
    target.execute("UPDATE snackbase_schema SET version = ?", (latest_version(),))
    target.execute(FUNCTIONS_FILE.read_text(encoding="utf-8"))


_CREATE_VERSION_TABLE = """
CREATE TABLE snackbase_schema (
    id BIGINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO snackbase_schema (id, version) VALUES (1, 0)
"""


def _target_tables(target: PgConnection) -> list[str]:
    rows = target.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _columns(target: PgConnection, table: str) -> list[str]:
    rows = target.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = ? ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _load_order(target: PgConnection, tables: list[str]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """Tables parents first along the foreign keys, and per table the columns referring to a table
    that comes later or to itself (filled in a second pass)."""
    edges: dict[str, list[tuple[str, str]]] = {t: [] for t in tables}  # table -> (column, parent)
    for child, column, parent in target.execute(_FOREIGN_KEYS).fetchall():
        if child in edges and parent in edges:
            edges[str(child)].append((str(column), str(parent)))
    order: list[str] = []
    visiting: set[str] = set()

    def visit(table: str) -> None:
        if table in order or table in visiting:
            return
        visiting.add(table)
        for _, parent in edges[table]:
            visit(parent)
        visiting.discard(table)
        order.append(table)

    for table in tables:
        visit(table)
    position = {t: i for i, t in enumerate(order)}
    deferred: dict[str, tuple[str, ...]] = {}
    for table, refs in edges.items():
        late = tuple(sorted({c for c, parent in refs if position[parent] >= position[table]}))
        if late:
            deferred[table] = late
    return order, deferred


_FOREIGN_KEYS = """
SELECT cl.relname, a.attname, pcl.relname
FROM pg_constraint c
JOIN pg_class cl ON cl.oid = c.conrelid
JOIN pg_namespace n ON n.oid = cl.relnamespace
JOIN pg_class pcl ON pcl.oid = c.confrelid
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
WHERE c.contype = 'f' AND n.nspname = current_schema()
"""


def _clear_seeded(target: PgConnection, order: list[str]) -> None:
    """Removes what the migrations seeded (children first): the source's rows replace them."""
    for table in reversed(order):
        if table not in ("audit_log", "audit_heads"):
            target.execute(f"DELETE FROM {quote_ident(table)}")


# --- rows ---------------------------------------------------------------------------------------------


def _rows(source: apsw.Connection, sql: str) -> Iterator[list[tuple[Any, ...]]]:
    cursor = source.execute(sql)
    while True:
        batch = [tuple(row) for _, row in zip(range(BATCH_ROWS), cursor, strict=False)]
        if not batch:
            return
        yield batch


def _insert_sql(table: str, columns: list[str]) -> str:
    names = ", ".join(quote_ident(c) for c in columns)
    return f"INSERT INTO {quote_ident(table)} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"


def _copy_table(source: apsw.Connection, target: PgConnection, table: str, late: tuple[str, ...]) -> int:
    """Every row; the `late` columns are written NULL here and filled by `_fill_deferred`."""
    columns = _columns(target, table)
    selected = ", ".join("NULL" if c in late else quote_ident(c) for c in columns)
    copied = 0
    sql = _insert_sql(table, columns)
    for batch in _rows(source, f"SELECT {selected} FROM {quote_ident(table)}"):
        _execute_many(target, table, sql, batch)
        copied += len(batch)
    return copied


def _fill_deferred(
    source: apsw.Connection, target: PgConnection, table: str, columns: tuple[str, ...]
) -> None:
    sets = ", ".join(f"{quote_ident(c)} = %s" for c in columns)
    sql = f"UPDATE {quote_ident(table)} SET {sets} WHERE id = %s"
    cols = ", ".join(quote_ident(c) for c in columns)
    where = " OR ".join(f"{quote_ident(c)} IS NOT NULL" for c in columns)
    for batch in _rows(source, f"SELECT {cols}, id FROM {quote_ident(table)} WHERE {where}"):
        _execute_many(target, table, sql, batch)


def _copy_heads_at_genesis(source: apsw.Connection, target: PgConnection) -> int:
    """Each account's chain starts at genesis; copying its entries moves the head (the triggers)."""
    accounts = [r[0] for r in source.execute("SELECT account_id FROM audit_heads ORDER BY account_id")]
    sql = "INSERT INTO audit_heads (account_id, account_seq, seq, hash) VALUES (%s, 0, 0, %s)"
    _execute_many(target, "audit_heads", sql, [(a, audit.GENESIS_HASH) for a in accounts])
    return len(accounts)


def _copy_audit(source: apsw.Connection, target: PgConnection) -> int:
    """One INSERT per entry, in `seq` order: the trigger checks each extends its account's head (an
    AFTER trigger moves the head once per statement, so entries cannot share one statement)."""
    columns = _columns(target, "audit_log")
    names = ", ".join(quote_ident(c) for c in columns)
    sql = _insert_sql("audit_log", columns)
    copied = 0
    for batch in _rows(source, f"SELECT {names} FROM audit_log ORDER BY seq"):
        _execute_many(target, "audit_log", sql, batch)
        copied += len(batch)
    return copied


def _execute_many(target: PgConnection, table: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """psycopg's executemany: one statement per row, sent pipelined (no round trip per row)."""
    import psycopg

    if not rows:
        return
    try:
        with target.raw.cursor() as cursor:
            cursor.executemany(sql, rows)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoveError(f"copying {table} failed: {first}") from None


def _set_sequences(target: PgConnection, tables: list[str]) -> None:
    """The audit sequence, and any identity column, past the highest value copied."""
    highest = _value(target, "SELECT max(seq) FROM audit_log")
    if highest:
        target.execute("SELECT setval('audit_log_seq', ?)", (int(highest),))
    for table, column, sequence in target.execute(_IDENTITY_COLUMNS).fetchall():
        if table in tables:
            top = _value(target, f"SELECT max({quote_ident(column)}) FROM {quote_ident(table)}")
            if top:
                target.execute("SELECT setval(?, ?)", (sequence, int(top)))


_IDENTITY_COLUMNS = """
SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_name), column_name)
FROM information_schema.columns
WHERE table_schema = current_schema() AND is_identity = 'YES'
"""


# --- the check on arrival -----------------------------------------------------------------------------


def _verify(source: apsw.Connection, target: PgConnection) -> int:
    """Every account's chain re-walked on PostgreSQL, and each head where the source's is."""
    result = audit.verify(target)  # type: ignore[arg-type]  # the apsw-shaped PgConnection
    if not result.ok:
        raise MoveError(
            f"the audit chain of account {result.account_id} does not verify on arrival at seq "
            f"{result.first_bad_seq}: {result.problem}; nothing was written"
        )
    heads_sql = "SELECT account_id, account_seq, seq, hash FROM audit_heads ORDER BY account_id"
    here = [tuple(r) for r in source.execute(heads_sql)]
    there = [tuple(r) for r in target.execute(heads_sql).fetchall()]
    if here != there:
        raise MoveError("the audit chain heads differ after the copy; nothing was written")
    return len(there)
