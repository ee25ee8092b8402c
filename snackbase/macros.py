"""Custom SQL macros: a named, read-only SELECT with positional parameters, used in rules as @name(args).

A macro is untrusted SQL as far as the database is concerned, so it runs fenced in:
- an apsw authorizer allows only SELECT, reads of the collection tables and of the non-secret columns
  of accounts/users/groups/group_members/roles, and plain functions; writes, ATTACH, PRAGMA, schema and
  system tables (sessions, tokens, password hashes, audit, sqlite_*) are denied at prepare time;
- it is never taken from (or put into) the statement cache, because the authorizer is consulted only
  when a statement is prepared;
- a statement budget far shorter than the normal one (RUN_BUDGET_S), and at most one row;
- all the macro calls of one read, or of one write's rule checks, share one total (db.MACRO_SECONDS,
  kept in the connection's current `db.Allowance`), so eight calls of a slow macro cost no more than
  one.
A macro that fails at run time evaluates to false (access denied) and is logged: it fails closed. One
exception: when the read or write it runs in has spent the event loop's share, the interrupt goes on
to `Database.read` (which runs the read again off the loop) or to the unit of work (503).
Its value does not depend on the row (arguments are literals or @request values), so a rule uses it
as a constant computed once per query.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import msgspec

from snackbase.db import fetch_all, statement_budget
from snackbase.errors import ApiError, field_error, validation_error
from snackbase.times import now_iso

log = logging.getLogger("snackbase.macros")

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
BUILTIN_NAMES = frozenset(
    ("owns_record", "has_role", "has_group", "in_time_range", "is_authenticated", "search")
)  # search: full-text search in client filters (snackbase.search)
MAX_PARAMS = 16
MAX_SQL_CHARS = 4000
RUN_BUDGET_S = 0.2

# Readable columns of system tables; every other system table is invisible to macros.
_READABLE_SYSTEM = {
    "accounts": {"id", "slug", "name", "created_at", "updated_at"},
    "users": {"id", "account_id", "email", "role", "is_active", "email_verified", "created_at", "updated_at"},
    "groups": {"id", "account_id", "name", "description", "created_at", "updated_at"},
    "group_members": {"group_id", "user_id", "created_at"},
    "roles": {"name", "description", "builtin", "created_at"},
}
_DENIED_FUNCTIONS = frozenset(("load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"))


class Macro(msgspec.Struct, frozen=True):
    name: str
    sql: str
    params: int
    description: str
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sql": self.sql,
            "params": self.params,
            "description": self.description,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _authorizer(schema_tables: frozenset[str]) -> Callable[..., int]:
    """The authorizer for one macro statement. Names that are not tables of the schema are the
    statement's own CTEs (SQLite reports reading them like tables); a CTE that borrows a real
    table's name hides that table from the statement, so it is judged by the same allowlist."""

    def authorize(op: int, p1: str | None, p2: str | None, _db: str | None, _trigger: str | None) -> int:
        if op in (apsw.SQLITE_SELECT, apsw.SQLITE_RECURSIVE):
            return apsw.SQLITE_OK
        if op == apsw.SQLITE_READ and p1 is not None:
            return apsw.SQLITE_OK if _readable(p1, p2, schema_tables) else apsw.SQLITE_DENY
        if op == apsw.SQLITE_FUNCTION and (p2 or "").lower() not in _DENIED_FUNCTIONS:
            return apsw.SQLITE_OK
        return apsw.SQLITE_DENY

    return authorize


def _readable(table: str, column: str | None, schema_tables: frozenset[str]) -> bool:
    if table.startswith("c_") and table in schema_tables:
        return True
    if table in _READABLE_SYSTEM:
        return not column or column in _READABLE_SYSTEM[table]
    return table not in schema_tables and not table.lower().startswith("sqlite_")


@contextlib.contextmanager
def fenced(conn: apsw.Connection, budget_s: float = RUN_BUDGET_S) -> Iterator[None]:
    """The authorizer and a short statement budget for the duration of one macro statement."""
    tables = frozenset(
        name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')")
    )
    previous = conn.authorizer
    conn.authorizer = _authorizer(tables)
    budget = statement_budget(conn)
    try:
        with budget.limited(budget_s) if budget else contextlib.nullcontext():
            yield
    finally:
        conn.authorizer = previous


def count_params(conn: apsw.Connection, sql: str) -> int:
    """Prepares the SQL under the authorizer without running it; returns its number of parameters.

    Refuses anything but one read-only statement. The exec trace sees the statement after binding and
    aborts it before its first step, so nothing runs. PostgreSQL has its own checks (macro_fence)."""
    if not isinstance(conn, apsw.Connection):
        from snackbase.backends import macro_fence

        return macro_fence.count_params(conn, sql, MAX_PARAMS)
    seen: list[tuple[str, bool]] = []

    def trace(cursor: apsw.Cursor, text: str, _bindings: Any) -> bool:
        seen.append((text, cursor.is_readonly))
        return False

    for count in range(MAX_PARAMS + 1):
        cursor = conn.cursor()
        cursor.exec_trace = trace
        try:
            with fenced(conn):
                cursor.execute(sql, [None] * count, can_cache=False)
        except apsw.BindingsError:
            continue
        except apsw.ExecTraceAbort:
            return _one_readonly_statement(sql, seen, count)
        except apsw.AuthError:
            raise _invalid(
                "The macro may only read collection tables and the public columns of "
                "accounts, users, groups, group_members and roles."
            ) from None
        except apsw.SQLError as exc:
            raise _invalid(f"The SQL does not compile: {exc}.") from None
    raise _invalid(f"A macro takes at most {MAX_PARAMS} parameters.")


def _one_readonly_statement(sql: str, seen: list[tuple[str, bool]], count: int) -> int:
    text, readonly = seen[0]
    if sql.strip().rstrip(";").strip() != text.strip().rstrip(";").strip():
        raise _invalid("A macro is exactly one SELECT statement.")
    if not readonly or not text.lstrip().lower().startswith(("select", "with", "values")):
        raise _invalid("A macro is exactly one SELECT statement.")
    return count


def _invalid(message: str) -> ApiError:
    return validation_error(field_error("sql", "invalid_macro", message), message)


def run(conn: apsw.Connection, macro: Macro, args: list[Any]) -> bool:
    """The macro's truth value for these arguments; any failure is logged and counts as false."""
    if len(args) != macro.params:
        log.warning("macro called with the wrong number of arguments", extra={"event": macro.name})
        return False
    if not all(bindable(a) for a in args):
        # An integer SQLite cannot hold (from @request.data, say): refuse rather than guess a value.
        log.warning("macro argument out of range; access denied", extra={"event": macro.name})
        return False
    if not isinstance(conn, apsw.Connection):
        return _run_postgres(conn, macro, args)
    budget = statement_budget(conn)
    allowance = budget.allowance if budget is not None else None
    left = allowance.macro_seconds if allowance is not None else RUN_BUDGET_S
    if left <= 0:
        log.warning("macro time of this request used up; access denied", extra={"event": macro.name})
        return False
    started = time.monotonic()
    try:
        with fenced(conn, min(RUN_BUDGET_S, left)):
            rows = _first_two(conn, macro, args)
    except apsw.InterruptError:
        if budget is not None and budget.over_ceiling():
            raise  # the whole read or write is out of time, not this macro: its caller decides
        log.warning("macro over its time budget; access denied", extra={"event": macro.name})
        return False
    except apsw.Error as exc:
        log.warning("macro failed; access denied", extra={"event": macro.name, "error": type(exc).__name__})
        return False
    finally:
        if allowance is not None:
            allowance.macro_seconds -= time.monotonic() - started
    return _verdict(macro, rows)


def _run_postgres(conn: Any, macro: Macro, args: list[Any]) -> bool:
    """PostgreSQL's fence (snackbase/backends/macro_fence.py): a role without write rights, a
    read-only transaction or savepoint, a statement timeout of RUN_BUDGET_S for each call."""
    from snackbase.backends import macro_fence

    try:
        rows = macro_fence.run(conn, macro.sql, [_bindable(a) for a in args], RUN_BUDGET_S)
    except apsw.InterruptError:
        log.warning("macro over its time budget; access denied", extra={"event": macro.name})
        return False
    except (apsw.Error, macro_fence.DatabaseError) as exc:
        log.warning("macro failed; access denied", extra={"event": macro.name, "error": type(exc).__name__})
        return False
    return _verdict(macro, rows)


def _verdict(macro: Macro, rows: list[Any]) -> bool:
    if len(rows) != 1 or len(rows[0]) < 1:
        log.warning("macro must return exactly one row; access denied", extra={"event": macro.name})
        return False
    return _truthy(rows[0][0])


def _first_two(conn: apsw.Connection, macro: Macro, args: list[Any]) -> list[Any]:
    """At most two rows: one is the answer, a second means the macro is wrong (fails closed)."""
    rows = []
    for row in conn.execute(macro.sql, [_bindable(a) for a in args], can_cache=False):
        rows.append(row)
        if len(rows) == 2:
            break
    return rows


def bindable(value: Any) -> bool:
    """False for integers outside SQLite's signed 64-bit range (they cannot be bound as integers)."""
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**63


def _bindable(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    return value if value is None or isinstance(value, (int, float, str)) else str(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no")
    return bool(value)


# --- storage --------------------------------------------------------------------------------------


class MacroStore:
    """Macro definitions cached per process; the cache is dropped on every local change and re-read
    when the table changes in another process (its row count or newest updated_at moved)."""

    def __init__(self) -> None:
        self._cache: dict[str, Macro] | None = None
        self._stamp: tuple[Any, ...] | None = None

    def all(self, conn: apsw.Connection) -> dict[str, Macro]:
        stamp = tuple(conn.execute("SELECT count(*), max(updated_at) FROM macros").fetchone() or ())
        if self._cache is None or stamp != self._stamp:
            rows = fetch_all(conn, "SELECT * FROM macros ORDER BY name")
            self._cache = {row["name"]: Macro(**row) for row in rows}
            self._stamp = stamp
        return self._cache

    def get(self, conn: apsw.Connection, name: str) -> Macro:
        macro = self.all(conn).get(name)
        if macro is None:
            raise ApiError(404, "not_found", f"There is no macro named '{name[:64]}'.")
        return macro

    def invalidate(self) -> None:
        self._cache = None


def param_counts(conn: apsw.Connection) -> dict[str, int]:
    """Each custom macro's number of parameters, for checking rules when they are saved."""
    return {name: int(params) for name, params in conn.execute("SELECT name, params FROM macros")}


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise validation_error(
            field_error("name", "invalid_name", "Use 1-63 of a-z, 0-9 and _, starting with a letter.")
        )
    if name in BUILTIN_NAMES:
        raise validation_error(field_error("name", "reserved", f"'{name}' is a built-in macro."))
    return name


def check_sql(conn: apsw.Connection, sql: Any) -> tuple[str, int]:
    if not isinstance(sql, str) or not sql.strip():
        raise validation_error(field_error("sql", "required", "The macro's SELECT statement is required."))
    if len(sql) > MAX_SQL_CHARS:
        raise validation_error(field_error("sql", "too_long", f"At most {MAX_SQL_CHARS} characters."))
    return sql.strip(), count_params(conn, sql.strip())


def insert(conn: apsw.Connection, name: str, sql: str, params: int, description: str) -> Macro:
    now = now_iso()
    macro = Macro(name, sql, params, description, now, now)
    conn.execute(
        "INSERT INTO macros (name, sql, params, description, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (name, sql, params, description, now, now),
    )
    return macro


def update(conn: apsw.Connection, old: Macro, sql: str, params: int, description: str) -> Macro:
    macro = Macro(old.name, sql, params, description, old.created_at, now_iso())
    conn.execute(
        "UPDATE macros SET sql = ?, params = ?, description = ?, updated_at = ? WHERE name = ?",
        (sql, params, description, macro.updated_at, old.name),
    )
    return macro


def delete(conn: apsw.Connection, name: str) -> None:
    conn.execute("DELETE FROM macros WHERE name = ?", (name,))
