"""What generated SQL spells differently on SQLite and PostgreSQL: the one table of those words.

The filter compiler, rules, sorts and keyset cursors build SQL as text; where the two engines differ
they take the word from the current `Dialect`, never an `if` of their own. Hand-written statements that
differ keep their two variants side by side next to the function that runs them (e.g. audit._LOCK_HEAD
and audit._LOCK_HEAD_POSTGRES); SQLite's functions the shared SQL calls (instr, json_each, sb_budget)
exist on PostgreSQL as SQL functions (snackbase/sql/postgresql/sqlite_functions.sql).

The dialect of the running code is a context variable: SQLite unless the PostgreSQL server set it for
its requests and background work (snackbase/backends/server.py). One read per compiled filter, no work
per statement. Pure: imports nothing of ours.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import NamedTuple


class Dialect(NamedTuple):
    name: str
    true: str  # a constant true condition
    false: str  # a constant false condition (also COALESCE's fallback for a NULL condition)
    is_: str  # null-safe equality: NULL IS NULL is true
    is_not: str  # null-safe inequality
    ilike: str  # LIKE without regard to (ASCII) case: SQLite's LIKE is; PostgreSQL has ILIKE
    asc: str  # ascending with NULLs first, SQLite's order (PostgreSQL puts NULLs last by default)
    desc: str  # descending with NULLs last


SQLITE = Dialect("sqlite", "1", "0", "IS", "IS NOT", "LIKE", "ASC", "DESC")
POSTGRESQL = Dialect(
    "postgresql",
    "TRUE",
    "FALSE",
    "IS NOT DISTINCT FROM",
    "IS DISTINCT FROM",
    "ILIKE",
    "ASC NULLS FIRST",
    "DESC NULLS LAST",
)

current: ContextVar[Dialect] = ContextVar("snackbase_dialect", default=SQLITE)
