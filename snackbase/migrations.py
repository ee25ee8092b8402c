"""Numbered migrations of the system tables, gated on `PRAGMA user_version`.

Each step runs in one transaction together with the version bump, so a database is always at exactly
one version. A database written by a newer SnackBase (user_version above the last step here) is
refused untouched rather than half-understood. Statements are one per string: apsw runs the rest of a
multi-statement string only as the cursor is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import apsw

from snackbase.db import execute_many, fetch_value


class SchemaTooNewError(Exception):
    """The database was written by a newer version of SnackBase."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "accounts and the system account",
        (
            """CREATE TABLE accounts (
                id TEXT PRIMARY KEY NOT NULL CHECK (id GLOB '[A-Z][A-Z][0-9][0-9][0-9][0-9]'),
                slug TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            ) STRICT""",
            """INSERT INTO accounts (id, slug, name, created_at, updated_at)
               VALUES ('SY0000', 'system', 'System', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                       strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))""",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def current_version(conn: apsw.Connection) -> int:
    return int(fetch_value(conn, "PRAGMA user_version") or 0)


def migrate(conn: apsw.Connection) -> list[int]:
    """Applies every pending step; returns the versions applied. Raises SchemaTooNewError untouched."""
    version = current_version(conn)
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"the database has schema version {version}, newer than this SnackBase understands "
            f"({LATEST_VERSION}); upgrade SnackBase or restore a backup"
        )
    applied = []
    for step in MIGRATIONS:
        if step.version > version and _apply(conn, step):
            applied.append(step.version)
    return applied


def _apply(conn: apsw.Connection, step: Migration) -> bool:
    """Applies one step unless another process did meanwhile (BEGIN IMMEDIATE serializes the check)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if current_version(conn) >= step.version:
            conn.execute("ROLLBACK")
            return False
        execute_many(conn, step.statements)
        conn.execute(f"PRAGMA user_version = {int(step.version)}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return True
