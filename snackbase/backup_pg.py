"""Backups of a PostgreSQL deployment: a logical dump of SnackBase's tables in the same `.tar` archive
as on SQLite (snackbase/backup.py), restored into an empty database by `snackbase backup restore
--database-url …`.

Why COPY and not pg_dump: the one executable must back up without PostgreSQL's client programs on the
host (and without a pg_dump as new as the server), and SnackBase knows its tables: the system tables
come from its numbered migrations, each collection's table from its definition. So the archive holds
the rows alone — one `postgresql/<table>.copy` part per table in COPY's text format, written from one
REPEATABLE READ READ ONLY snapshot (every write committed before it, nothing after; writers never wait
for it) — with the manifest naming each table's columns and types, the sequences' positions, the
schema version and the audit chain heads, as on SQLite. The hooks and files directories (local file
storage) go into the archive as on SQLite; the archive goes to the configured archive store
(backup dir or S3) by the same code.

Restore needs an empty database (or schema): it migrates the system tables up to the archive's schema
version, creates the collection tables (and their search indexes) from the archived definitions,
loads every table with COPY (foreign keys dropped meanwhile and added back after, which checks every
row; the tables' own triggers, such as the append-only audit log's, off meanwhile: the rows are
copies), sets the sequences, all in one transaction, and then migrates up to this SnackBase's version.

Verify reads the archive alone: the checksums, then the audit log and chain heads decoded from their
COPY parts into an in-memory SQLite database, where `audit.verify` re-walks every chain.

The PostgreSQL driver is not imported here: the dump runs over a connection handed in (`conn.raw`,
psycopg's), and restore opens one through snackbase.backends.postgres only when called.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw

from snackbase import __version__, audit, backup
from snackbase.backup import BackupError, BackupInfo, Pacer, VerifyReport
from snackbase.times import format_ts

BACKEND = "postgresql"
PART_PREFIX = "postgresql/"
_VERSION_TABLE = "snackbase_schema"  # the migrations' own bookkeeping: written by restore's migrate
_CHUNK = 1 << 20


def is_postgres_archive(manifest: dict[str, Any]) -> bool:
    return manifest.get("backend") == BACKEND


# --- making an archive -----------------------------------------------------------------------------


def create_backup(
    url: str,
    hooks_dir: Path,
    files_dir: Path,
    backups_dir: Path,
    *,
    trigger: str = "manual",
    name: str | None = None,
    include_files: bool = True,
) -> BackupInfo:
    """Writes one archive of the database at `url` into `backups_dir`. Blocking: run it on a thread of
    its own (it opens its own connection, with no statement timeout)."""
    from snackbase.backends.postgres import PgConnection

    with backup.backup_lock(backups_dir):
        backup._remove_leftovers(backups_dir)
        started = datetime.now(UTC)
        name = name or backup.archive_name(started)
        if (backups_dir / name).exists():
            existing = backup.read_info(backups_dir / name)
            return BackupInfo(existing.name, existing.path, existing.size, existing.manifest, made=False)
        pacer = Pacer()
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=backups_dir) as tmp:
            staging = Path(tmp)
            conn = PgConnection(url, statement_timeout_ms=0)
            try:
                dumped = dump(conn, staging, pacer)
            finally:
                conn.close()
            parts = dict(dumped.parts)
            roots = (("hooks", hooks_dir), ("files", files_dir)) if include_files else (("hooks", hooks_dir),)
            for prefix, root in roots:
                for path in backup._tree_files(root):
                    if not path.relative_to(root).parts[0].startswith("."):  # staging, thumbnail cache
                        parts[f"{prefix}/{path.relative_to(root).as_posix()}"] = path
            manifest = {
                "format": backup.FORMAT,
                "backend": BACKEND,
                "snackbase_version": __version__,
                "schema_version": dumped.schema_version,
                "created_at": format_ts(started),
                "finished_at": format_ts(datetime.now(UTC)),
                "trigger": trigger,
                "audit_heads": dumped.heads,
                "tables": dumped.tables,
                "sequences": dumped.sequences,
                "parts": {
                    arc: {
                        "sha256": dumped.sums.get(arc) or backup.sha256_file(path),
                        "size": path.stat().st_size,
                    }
                    for arc, path in parts.items()
                },
            }
            partial = backups_dir / (name + ".partial")
            backup._write_tar(partial, manifest, parts, pacer)
            os.replace(partial, backups_dir / name)
            backup._fsync_dir(backups_dir)
    return BackupInfo(name, backups_dir / name, (backups_dir / name).stat().st_size, manifest)


class Dumped:
    def __init__(self) -> None:
        self.parts: dict[str, Path] = {}
        self.sums: dict[str, str] = {}
        self.tables: dict[str, dict[str, Any]] = {}
        self.sequences: dict[str, list[Any]] = {}
        self.heads: dict[str, dict[str, Any]] = {}
        self.schema_version = 0


def dump(conn: Any, target: Path, pacer: Pacer | None = None) -> Dumped:
    """Every table of SnackBase's schema as a COPY part in `target`, from one read-only snapshot."""
    out = Dumped()
    raw = conn.raw
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        out.schema_version = int(conn.execute(f"SELECT version FROM {_VERSION_TABLE}").fetchone()[0])
        for table, columns in _tables(conn):
            arc = f"{PART_PREFIX}{table}.copy"
            path = target / arc
            path.parent.mkdir(parents=True, exist_ok=True)
            digest, rows = hashlib.sha256(), 0
            column_list = ", ".join(_quote(c) for c, _ in columns)
            statement = f"COPY {_quote(table)} ({column_list}) TO STDOUT"
            with path.open("wb") as handle, raw.cursor() as cursor, cursor.copy(statement) as copy:
                for block in copy:
                    data = bytes(block)
                    handle.write(data)
                    digest.update(data)
                    rows += data.count(b"\n")
                    if pacer is not None:
                        pacer.tick()
            out.parts[arc], out.sums[arc] = path, digest.hexdigest()
            out.tables[table] = {"columns": [[c, t] for c, t in columns], "rows": rows}
        out.sequences = {name: [value, called] for name, value, called in conn.execute(_SEQUENCES).fetchall()}
        out.heads = {
            account: {"account_seq": seq_in_chain, "seq": seq, "hash": digest_}
            for account, seq_in_chain, seq, digest_ in conn.execute(
                "SELECT account_id, account_seq, seq, hash FROM audit_heads ORDER BY account_id"
            ).fetchall()
        }
    finally:
        conn.execute("ROLLBACK")
    return out


def _tables(conn: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """(table, [(column, type)]) of every table in the schema SnackBase uses (its search_path)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in conn.execute(_COLUMNS).fetchall():
        if table != _VERSION_TABLE:
            found.setdefault(table, []).append((column, data_type))
    return sorted(found.items())


_COLUMNS = """
SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns AS c
JOIN information_schema.tables AS t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name, c.ordinal_position
"""
_SEQUENCES = """
SELECT sequencename, last_value, last_value IS NOT NULL FROM pg_sequences
WHERE schemaname = current_schema() ORDER BY sequencename
"""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# --- verify -----------------------------------------------------------------------------------------


def verify_archive(path: Path) -> VerifyReport:
    """An archive of either backend: PostgreSQL's here, SQLite's by backup.verify_backup."""
    manifest = backup.read_manifest(path)
    if not is_postgres_archive(manifest):
        return backup.verify_backup(path)
    checks: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="sb-verify-") as tmp:
        root = Path(tmp)
        backup.extract(path, root)
        for arc, meta in sorted(manifest["parts"].items()):
            part = root / arc
            ok = part.is_file() and backup.sha256_file(part) == meta.get("sha256")
            checks.append(
                (f"sha256 {arc}", ok, "matches" if ok else "missing or different from the manifest")
            )
        tables = manifest.get("tables") or {}
        if "audit_log" not in tables or "audit_heads" not in tables:
            checks.append(("database", False, "the archive holds no audit trail"))
            return VerifyReport(False, checks)
        try:
            checks.extend(_chain_checks(root, manifest))
        except (BackupError, apsw.Error, ValueError) as exc:
            checks.append(("audit chains", False, f"cannot be read: {exc}"))
    return VerifyReport(all(ok for _, ok, _ in checks), checks)


def _chain_checks(root: Path, manifest: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The audit log and heads of the archive in an in-memory SQLite database, re-walked by
    audit.verify (the same code that verifies a live database)."""
    conn = apsw.Connection(":memory:")
    try:
        for table in ("audit_log", "audit_heads"):
            columns = manifest["tables"][table]["columns"]
            defs = ", ".join(f"{_quote(c)} {_sqlite_type(t)}" for c, t in columns)
            conn.execute(f"CREATE TABLE {_quote(table)} ({defs})")
            marks = ", ".join("?" for _ in columns)
            # A private in-memory database, not SnackBase's: one plain transaction for the load.
            conn.execute("BEGIN")
            conn.executemany(
                f"INSERT INTO {_quote(table)} VALUES ({marks})",
                read_copy(root / f"{PART_PREFIX}{table}.copy"),
            )
            conn.execute("COMMIT")
        chains = audit.verify(conn)
        heads = {
            r[0]: {"account_seq": r[1], "seq": r[2], "hash": r[3]}
            for r in conn.execute(
                "SELECT account_id, account_seq, seq, hash FROM audit_heads ORDER BY account_id"
            )
        }
    finally:
        conn.close()
    detail = (
        f"ok, {chains.entries_checked} entries"
        if chains.ok
        else f"broken at seq {chains.first_bad_seq} (account {chains.account_id}): {chains.problem}"
    )
    heads_ok = heads == manifest.get("audit_heads")
    return [
        ("audit chains", chains.ok, detail),
        ("audit heads", heads_ok, "match the manifest" if heads_ok else "differ from the manifest"),
    ]


def _sqlite_type(pg_type: str) -> str:
    """The SQLite column affinity that reads COPY's text back as the value PostgreSQL held."""
    if pg_type in ("bigint", "integer", "smallint"):
        return "INTEGER"
    if pg_type in ("double precision", "real", "numeric"):
        return "NUMERIC"
    return "TEXT"


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))")


def _unescape(field: str) -> str | None:
    if field == "\\N":
        return None
    if "\\" not in field:
        return field

    def one(match: re.Match[str]) -> str:
        octal, hexa, char = match.groups()
        if octal:
            return chr(int(octal, 8))
        if hexa:
            return chr(int(hexa, 16))
        return _ESCAPES.get(char, char)

    return _ESCAPE_RE.sub(one, field)


def read_copy(path: Path) -> Iterator[tuple[str | None, ...]]:
    """The rows of a part in COPY's text format (tab between columns, `\\N` for NULL, backslash
    escapes; the server's encoding is UTF-8)."""
    with path.open("r", encoding="utf-8", newline="\n") as handle:
        for line in handle:
            yield tuple(_unescape(f) for f in line.rstrip("\n").split("\t"))


# --- restore ------------------------------------------------------------------------------------------


def restore_backup(path: Path, url: str, data_dir: Path, hooks_dir: Path) -> dict[str, Any]:
    """Loads a PostgreSQL archive into the empty database at `url` (refused when it holds anything)
    and puts its hooks and files into `data_dir`, as on SQLite. Returns the manifest."""
    from snackbase.backends import dialect
    from snackbase.backends.postgres import PgConnection, migrate

    manifest = backup.read_manifest(path)
    if not is_postgres_archive(manifest):
        raise BackupError(f"{path.name} is a SQLite backup: restore it without --database-url")
    backup.check_compatible(manifest)
    report = verify_archive(path)
    if not report.ok:
        failed = "; ".join(f"{c}: {d}" for c, ok, d in report.checks if not ok)
        raise BackupError(f"the backup does not verify: {failed}")
    conn = PgConnection(url, statement_timeout_ms=0)
    token = dialect.current.set(dialect.POSTGRESQL)
    try:
        taken = conn.execute(_ANY_TABLE).fetchone()
        if taken:
            raise BackupError(
                f"the target database is not empty (it has the table {taken[0]!r}): restore into an "
                "empty database or schema"
            )
        with tempfile.TemporaryDirectory(prefix="sb-restore-") as tmp:
            root = Path(tmp)
            backup.extract(path, root)
            migrate(conn, up_to=int(manifest["schema_version"]))
            _load(conn, root, manifest)
            migrate(conn)  # an older archive's schema up to this SnackBase's version
            _restore_dirs(root, data_dir, hooks_dir)
    finally:
        dialect.current.reset(token)
        conn.close()
    return manifest


_ANY_TABLE = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' LIMIT 1
"""


def _load(conn: Any, root: Path, manifest: dict[str, Any]) -> None:
    """Every table of the archive in one transaction (see the module docstring for the order)."""
    from snackbase import ddl, search
    from snackbase.collection_defs import collection_from_row
    from snackbase.db import fetch_all

    tables: dict[str, Any] = manifest["tables"]
    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    try:
        _copy_in(conn, root, "collections", tables["collections"])
        for row in fetch_all(conn, "SELECT * FROM collections ORDER BY created_at, id"):
            collection = collection_from_row(row)
            for statement in [*ddl.create_table_sql(collection), *search.create_sql(collection)]:
                conn.execute(statement)
        known = {t for (t,) in conn.execute(_TABLES).fetchall()}
        unknown = sorted(set(tables) - known)
        if unknown:
            raise BackupError(
                f"the archive holds tables this SnackBase does not create: {', '.join(unknown)}"
            )
        foreign_keys = conn.execute(_FOREIGN_KEYS).fetchall()
        for table, name, _ in foreign_keys:
            conn.execute(f"ALTER TABLE {_quote(table)} DROP CONSTRAINT {_quote(name)}")
        for table in sorted(set(tables) - {"collections"}):
            _copy_in(conn, root, table, tables[table])
        for table, name, definition in foreign_keys:  # checks every loaded row
            conn.execute(f"ALTER TABLE {_quote(table)} ADD CONSTRAINT {_quote(name)} {definition}")
        for sequence, (value, called) in (manifest.get("sequences") or {}).items():
            if value is not None:
                # is_called as a literal: the adapter binds Python booleans as 0/1 (SQLite's flags).
                conn.execute(f"SELECT setval(?::regclass, ?, {'true' if called else 'false'})",
                             (_quote(sequence), int(value)))  # fmt: skip
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_TABLES = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
"""
_FOREIGN_KEYS = """
SELECT rel.relname, con.conname, pg_get_constraintdef(con.oid) FROM pg_constraint AS con
JOIN pg_class AS rel ON rel.oid = con.conrelid
WHERE con.contype = 'f' AND rel.relnamespace = current_schema()::regnamespace
ORDER BY rel.relname, con.conname
"""


def _copy_in(conn: Any, root: Path, table: str, meta: dict[str, Any]) -> None:
    """The table's rows from its part, replacing what the migrations seeded, its triggers off."""
    quoted = _quote(table)
    column_list = ", ".join(_quote(c) for c, _ in meta["columns"])
    conn.execute(f"ALTER TABLE {quoted} DISABLE TRIGGER USER")
    conn.execute(f"DELETE FROM {quoted}")
    part = root / f"{PART_PREFIX}{table}.copy"
    statement = f"COPY {quoted} ({column_list}) FROM STDIN"
    with part.open("rb") as handle, conn.raw.cursor() as cursor, cursor.copy(statement) as copy:
        while chunk := handle.read(_CHUNK):
            copy.write(chunk)
    conn.execute(f"ALTER TABLE {quoted} ENABLE TRIGGER USER")


def _restore_dirs(root: Path, data_dir: Path, hooks_dir: Path) -> None:
    """The archive's hooks and files into the data dir; what was there is moved aside, as on SQLite."""
    import shutil

    files_dir = data_dir / "files"
    data_dir.mkdir(parents=True, exist_ok=True)
    aside = data_dir / f"pre-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    for prefix, target in (("hooks", hooks_dir), ("files", files_dir)):
        if (root / prefix).is_dir():
            backup._move_aside([target], data_dir, aside)
            shutil.move(str(root / prefix), str(target))
