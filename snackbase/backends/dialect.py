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

# How a value inside a JSON document stored as text is read, by what the reader wants back: `json`
# (JSON text: objects, arrays), `number`, `boolean` (0/1) or `text`. SQLite's `->` keeps JSON and
# `->>` gives the SQL value (numbers, 0/1 for booleans). PostgreSQL's `->>` gives text only, so
# numbers and booleans are cast, guarded by the JSON type: a value stored under another type (a
# definition changed later) reads as NULL instead of failing the statement. `{doc}` is an SQL
# expression, `{key}` a name validated by the schema (safe as text).
_JSON_FIELD_SQLITE = {
    "json": "{doc} -> '$.{key}'",
    "number": "{doc} ->> '$.{key}'",
    "boolean": "{doc} ->> '$.{key}'",
    "text": "{doc} ->> '$.{key}'",
}
_JSON_FIELD_POSTGRES = {
    "json": "(({doc})::jsonb -> '{key}')::text",
    "number": (
        "CASE jsonb_typeof(({doc})::jsonb -> '{key}') "
        "WHEN 'number' THEN (({doc})::jsonb ->> '{key}')::numeric END"
    ),
    "boolean": "CASE ({doc})::jsonb -> '{key}' WHEN 'true' THEN 1 WHEN 'false' THEN 0 END",
    "text": "({doc})::jsonb ->> '{key}'",
}


def json_field(sql: Dialect, doc: str, key: str, kind: str) -> str:
    """The expression reading `key` of the JSON text `doc` as `kind` (json, number, boolean, text)."""
    templates = _JSON_FIELD_SQLITE if sql is SQLITE else _JSON_FIELD_POSTGRES
    return templates[kind].format(doc=doc, key=key)
