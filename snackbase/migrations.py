"""Numbered migrations of the system tables, gated on `PRAGMA user_version`.

Each step is a file `snackbase/sql/NNN_name.sql`, so every feature owns the SQL of its tables. A step
runs in one transaction together with the version bump, so a database is always at exactly one
version. A database written by a newer SnackBase (user_version above the last step here) is refused
untouched rather than half-understood.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import apsw
import msgspec

from snackbase.db import fetch_value

SQL_DIR = Path(__file__).resolve().parent / "sql"
_STEP_FILE = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


class SchemaTooNewError(Exception):
    """The database was written by a newer version of SnackBase."""


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    script: str


@cache
def migrations() -> tuple[Migration, ...]:
    return read_steps(SQL_DIR)


def read_steps(directory: Path) -> tuple[Migration, ...]:
    """The numbered steps in `directory` (SQLite's here; PostgreSQL's in sql/postgresql/)."""
    steps = []
    for path in sorted(directory.glob("*.sql")):
        match = _STEP_FILE.fullmatch(path.name)
        if match:
            steps.append(Migration(int(match.group(1)), path.stem, path.read_text(encoding="utf-8")))
    versions = [step.version for step in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise RuntimeError(f"migration files must be numbered 001, 002, … without gaps, got {versions}")
    return tuple(steps)


def latest_version() -> int:
    return migrations()[-1].version


def current_version(conn: apsw.Connection) -> int:
    return int(fetch_value(conn, "PRAGMA user_version") or 0)


def refuse_newer(path: Path) -> None:
    """Raises SchemaTooNewError before anything opens the file for writing (opening it sets WAL mode)."""
    if not path.is_file():
        return
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        _check_not_newer(current_version(conn))
    finally:
        conn.close()


def _check_not_newer(version: int) -> None:
    if version > latest_version():
        raise SchemaTooNewError(
            f"the database has schema version {version}, newer than this SnackBase understands "
            f"({latest_version()}); upgrade SnackBase or restore a backup"
        )


def migrate(conn: apsw.Connection) -> list[int]:
    """Applies every pending step; returns the versions applied. Raises SchemaTooNewError untouched."""
    version = current_version(conn)
    _check_not_newer(version)
    return [step.version for step in migrations() if step.version > version and _apply(conn, step)]


def _apply(conn: apsw.Connection, step: Migration) -> bool:
    """Applies one step unless another process did meanwhile (BEGIN IMMEDIATE serializes the check)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if current_version(conn) >= step.version:
            conn.execute("ROLLBACK")
            return False
        # Reading the cursor to the end runs every statement of the script (apsw runs them lazily).
        conn.execute(step.script).fetchall()
        conn.execute(f"PRAGMA user_version = {int(step.version)}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return True
