"""The fence of custom SQL macros on PostgreSQL (snackbase/macros.py holds SQLite's, an authorizer).

A macro is untrusted SQL written by a superadmin of SnackBase, who is not a superuser of the database.
On PostgreSQL it is fenced in four layers, each enough for what it guards:

1. **A role without write rights.** At start SnackBase creates (or finds) a role of its own for this
   database and schema, `snackbase_macros_<hash>` (NOLOGIN, NOINHERIT, member of nothing), makes the
   server's user a member (so it may `SET ROLE` to it) and grants it SELECT on every collection table
   (and on each new one, `grant_reads`) and on the public columns of accounts, users, groups,
   group_members and roles — nothing else. Every macro runs after `SET LOCAL ROLE` to it, so the
   database itself refuses sessions, tokens, password hashes, the audit trail and any write.
2. **A read-only transaction.** The macro runs in its own `BEGIN READ ONLY` transaction, or inside the
   caller's transaction in a savepoint with `SET LOCAL transaction_read_only = on`; the savepoint is
   rolled back afterwards, which also undoes the role and the timeout.
3. **A statement timeout** (`SET LOCAL statement_timeout`, macros.RUN_BUDGET_S); past it the macro
   is false.
4. **Checked when saved.** The SQL is parsed by PostgreSQL itself (one statement, via the extended
   protocol), then compiled into a throwaway SQL-standard function whose stored parse tree
   (`pg_proc.prosqlbody`) lists every table and every function the statement touches, in every part of
   it (subqueries, CTEs, VALUES, LIMIT). Refused: anything but SELECT (no data-modifying CTE, no FOR
   UPDATE), tables outside this schema's collection tables and the five readable system tables (so no
   `pg_catalog`, `information_schema` or other schemas), and functions that reach outside a read:
   `set_config` (a macro must not leave its role: SET ROLE is checked against the session's user),
   everything named `pg_*` (pg_sleep, pg_read_file, advisory locks, pg_notify, …), large objects, and
   the functions that run SQL given as text (`query_to_xml`, `ts_stat`, …). Last, the statement is
   planned under the macro role (`EXPLAIN EXECUTE`, nothing runs), so a column the role may not read is
   refused at save time with the same message as on SQLite.

The database user needs CREATEROLE (or an administrator creates the role and grants it to that user:
see docs/scaling.md). Without it the start goes on and macros answer 501 `not_on_postgresql` saying so,
and a rule calling a macro is false (it fails closed).
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import Any

import apsw
import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from psycopg.pq import ExecStatus

from snackbase.backends import NOT_PORTED_CODE
from snackbase.backends.postgres import PgConnection, as_apsw_error
from snackbase.errors import ApiError, field_error, validation_error

log = logging.getLogger("snackbase.macros")

ROLE_LOCK = 0x5B_0002  # one advisory lock key: nodes starting together create the role once
PROBE = "sb_macro_probe"  # the name of the parsed statement and of the throwaway function

# Readable columns of system tables (as on SQLite: snackbase.macros._READABLE_SYSTEM).
READABLE_SYSTEM: dict[str, tuple[str, ...]] = {
    "accounts": ("id", "slug", "name", "created_at", "updated_at"),
    "users": ("id", "account_id", "email", "role", "is_active", "email_verified", "created_at", "updated_at"),
    "groups": ("id", "account_id", "name", "description", "created_at", "updated_at"),
    "group_members": ("group_id", "user_id", "created_at"),
    "roles": ("name", "description", "builtin", "created_at"),
}
_DENIED_FUNCTIONS = frozenset((
    "set_config", "ts_stat", "ts_rewrite", "query_to_xml", "query_to_xmlschema",
    "query_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema", "table_to_xml",
    "table_to_xmlschema", "table_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xmlschema",
    "database_to_xml_and_xmlschema", "loread", "lowrite", "txid_current", "dblink",
))  # fmt: skip
_DENIED_PREFIXES = ("pg_", "lo_", "dblink_")

_READS_ONLY = (
    "The macro may only read collection tables and the public columns of "
    "accounts, users, groups, group_members and roles."
)


class Fence(msgspec.Struct, frozen=True):
    role: str | None  # None: macros cannot run here (`reason` says why)
    reason: str = ""


_fences: weakref.WeakKeyDictionary[PgConnection, Fence] = weakref.WeakKeyDictionary()
DatabaseError = psycopg.Error  # what a failing macro raises besides the apsw errors (macros.run)


# --- the role ----------------------------------------------------------------------------------------


def role_name(conn: PgConnection) -> str:
    """`snackbase_macros_<12 hex>`: one role per database and schema (roles are cluster-wide)."""
    return str(_value(conn, _ROLE_NAME))


_ROLE_NAME = "SELECT 'snackbase_macros_' || left(md5(current_database() || '.' || current_schema()), 12)"


def setup(conn: PgConnection) -> Fence:
    """At start: the macro role exists, the server's user may SET ROLE to it, it reads what macros may
    read. Without the rights to do so, macros are off (logged once, 501 on /macros)."""
    role = role_name(conn)
    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (ROLE_LOCK,))
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = ?", (role,)).fetchone() is None:
            conn.execute(_sql(pg_sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT"), role))
        if not _value(conn, "SELECT pg_has_role(current_user, ?::name, 'MEMBER')", (role,)):
            conn.execute(_sql(pg_sql.SQL("GRANT {} TO CURRENT_USER"), role))
        if not _value(conn, "SELECT has_schema_privilege(?::name, current_schema(), 'USAGE')", (role,)):
            schema = str(_value(conn, "SELECT current_schema()"))
            conn.execute(_sql(pg_sql.SQL("GRANT USAGE ON SCHEMA {} TO {}"), schema, role))
        for table, columns in READABLE_SYSTEM.items():
            cols = pg_sql.SQL(", ").join(pg_sql.Identifier(c) for c in columns)
            grant = pg_sql.SQL("GRANT SELECT ({}) ON {} TO {}")
            conn.execute(_sql(grant.format(cols, pg_sql.Identifier(table), pg_sql.Identifier(role))))
        tables = [f"c_{name}" for (name,) in conn.execute("SELECT name FROM collections")]
        if tables:
            listed = pg_sql.SQL(", ").join(pg_sql.Identifier(t) for t in tables)
            conn.execute(_sql(pg_sql.SQL("GRANT SELECT ON {} TO {}").format(listed, pg_sql.Identifier(role))))
    except (psycopg.Error, apsw.Error) as exc:
        conn.execute("ROLLBACK")
        fence = Fence(None, f"the database user cannot set up the macro role {role}: {_first_line(exc)}")
        log.warning("custom SQL macros are off on this server: %s (see docs/scaling.md)", fence.reason)
    else:
        conn.execute("COMMIT")
        fence = Fence(role)
    _fences[conn] = fence
    return fence


def _sql(statement: pg_sql.Composable, *names: str) -> str:
    """A statement with identifiers quoted by psycopg (role and schema names come from the database)."""
    if names:
        assert isinstance(statement, pg_sql.SQL)
        statement = statement.format(*(pg_sql.Identifier(n) for n in names))
    return statement.as_string(None)


def fence_of(conn: PgConnection) -> Fence:
    """This connection's fence: set up at start on the server's connection, checked once on others (a
    worker's own connection): the role exists and this user may SET ROLE to it."""
    fence = _fences.get(conn)
    if fence is None:
        role = role_name(conn)
        row = conn.execute(_ROLE_READY, (role, role)).fetchone()
        fence = Fence(role) if row and row[0] else Fence(None, f"the macro role {role} is not set up")
        _fences[conn] = fence
    return fence


# CASE, not AND: pg_has_role fails for a role that does not exist, and AND may evaluate it first.
_ROLE_READY = (
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ?) "
    "THEN pg_has_role(current_user, ?::name, 'MEMBER') ELSE false END"
)


def grant_reads(conn: PgConnection, table: str) -> None:
    """A new collection table is readable by macros (inside the unit of work creating it)."""
    role = fence_of(conn).role
    if role is not None:
        conn.execute(_sql(pg_sql.SQL("GRANT SELECT ON {} TO {}"), table, role))


def refuse_without_role(conn: PgConnection) -> None:
    """501 for the macro routes when the role could not be set up (the reason is in the message)."""
    fence = fence_of(conn)
    if fence.role is None:
        raise ApiError(
            501,
            NOT_PORTED_CODE,
            f"Custom SQL macros are off on this server: {fence.reason}. See docs/scaling.md.",
        )


# --- placeholders ------------------------------------------------------------------------------------

_TOKENS = re.compile(
    r"""'(?:[^']|'')*'                    # a string literal
      | "(?:[^"]|"")*"                    # a quoted identifier
      | \$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$   # a dollar-quoted string
      | --[^\n]*                          # a line comment
      | /\*.*?\*/                         # a block comment
      | \?[0-9]+                          # a numbered parameter
      | \?                                # a positional parameter
      | %                                 # a percent sign (doubled for psycopg)
    """,
    re.VERBOSE | re.DOTALL,
)


def placeholders(sql: str) -> tuple[str, str, int]:
    """The macro's `?` / `?N` parameters as PostgreSQL's `$N` (to parse it) and as psycopg's
    `%(pN)s` (to run it), and how many there are (the highest number)."""
    count = 0

    def number(token: str) -> int:
        nonlocal count
        n = int(token[1:]) if len(token) > 1 else count + 1
        count = max(count, n)
        return n

    def dollar(match: re.Match[str]) -> str:
        token = match.group(0)
        return f"${number(token)}" if token.startswith("?") else token

    parsed = _TOKENS.sub(dollar, sql)
    count = 0

    def named(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "%":
            return "%%"
        return f"%(p{number(token)})s" if token.startswith("?") else token

    run = _TOKENS.sub(named, sql)
    return parsed, run, count


# --- checking a macro when it is saved -----------------------------------------------------------------


def count_params(conn: PgConnection, sql: str, max_params: int) -> int:
    """The number of parameters of a macro that passes every check (see the module docstring), else
    400 `invalid_macro` saying why. Nothing of the macro runs; what the check creates is rolled back."""
    fence = fence_of(conn)
    if fence.role is None:
        refuse_without_role(conn)
    parsed, _, count = placeholders(sql)
    if count > max_params:
        raise _invalid(f"A macro takes at most {max_params} parameters.")
    outer = conn.in_transaction
    conn.execute("SAVEPOINT sb_macro_check" if outer else "BEGIN ISOLATION LEVEL READ COMMITTED")
    try:
        types = _parse(conn, parsed)
        if len(types) > max_params:
            raise _invalid(f"A macro takes at most {max_params} parameters.")
        if len(types) != count:  # PostgreSQL's own $1 would bypass the arguments' count
            raise _invalid("Write a macro's parameters as ? (or ?1, ?2 …), as on SQLite.")
        _judge(conn, _parse_tree(conn, at_most_two_rows(parsed), types))  # as it runs
        conn.execute(_sql(pg_sql.SQL("SET LOCAL ROLE {}"), str(fence.role)))
        conn.execute("SET LOCAL transaction_read_only = on")
        nulls = ", ".join(["NULL"] * len(types))
        try:
            conn.execute(f"EXPLAIN EXECUTE {PROBE}" + (f"({nulls})" if types else ""))
        except pg_errors.InsufficientPrivilege:
            raise _invalid(_READS_ONLY) from None
        except psycopg.Error as exc:
            raise _invalid(f"The SQL does not compile: {_first_line(exc)}.") from None
        _checked.add((str(fence.role), sql))
        return len(types)
    finally:
        conn.execute("ROLLBACK TO SAVEPOINT sb_macro_check" if outer else "ROLLBACK")
        if outer:
            conn.execute("RELEASE SAVEPOINT sb_macro_check")
        if _value(conn, "SELECT count(*) FROM pg_prepared_statements WHERE name = ?", (PROBE,)):
            conn.execute(f"DEALLOCATE {PROBE}")  # prepared statements outlive transactions


def at_most_two_rows(sql: str) -> str:
    """The one SELECT as a subquery of `… LIMIT 2`: no more rows leave the server than SQLite steps (one
    is the answer, a second means the macro is wrong). Anything but one query does not compile so."""
    return f"SELECT * FROM (\n{sql.rstrip().rstrip(';')}\n) AS sb_macro LIMIT 2"


def _parse(conn: PgConnection, parsed: str) -> list[str]:
    """PostgreSQL parses the statement (one only: the extended protocol takes no more) and infers the
    types of its parameters, without running it."""
    pgconn = conn.raw.pgconn
    result = pgconn.prepare(PROBE.encode(), parsed.encode())
    if result.status != ExecStatus.COMMAND_OK:
        message = (result.error_message or b"").decode(errors="replace").strip().splitlines()
        text = message[0].removeprefix("ERROR:").strip() if message else "it does not parse"
        if "multiple commands" in text:
            raise _invalid("A macro is exactly one SELECT statement.")
        raise _invalid(f"The SQL does not compile: {text}.")
    described = pgconn.describe_prepared(PROBE.encode())
    if described.status != ExecStatus.COMMAND_OK:
        raise _invalid("The SQL does not compile.")
    oids = [described.param_type(i) for i in range(described.nparams)]
    return [str(_value(conn, "SELECT format_type(?::oid, NULL)", (oid,))) for oid in oids]


def _parse_tree(conn: PgConnection, parsed: str, types: list[str]) -> str:
    """The statement's parse tree, as PostgreSQL stores the body of a SQL-standard function."""
    create = (
        f"CREATE FUNCTION pg_temp.{PROBE}({', '.join(types)}) RETURNS SETOF record LANGUAGE sql "
        f"BEGIN ATOMIC\n{parsed}\n;\nEND"
    )
    pgconn = conn.raw.pgconn
    # Parsed first, then run: a single statement, whatever the macro's text holds.
    result = pgconn.prepare(b"", create.encode())
    if result.status == ExecStatus.COMMAND_OK:
        result = pgconn.exec_prepared(b"", [])
    if result.status != ExecStatus.COMMAND_OK:
        message = (result.error_message or b"").decode(errors="replace").strip().splitlines()
        text = message[0].removeprefix("ERROR:").strip() if message else "it does not compile"
        raise _invalid(f"A macro is exactly one SELECT statement ({text}).")
    return str(_value(conn, _PROBE_BODY, (PROBE,)))


_PROBE_BODY = "SELECT prosqlbody::text FROM pg_proc WHERE proname = ? AND pronamespace = pg_my_temp_schema()"

_COMMANDS = re.compile(r":commandType (\d+)")
_FUNCTIONS = re.compile(r":(?:funcid|aggfnoid|winfnoid) (\d+)")
_RELATIONS = re.compile(r":rtekind 0 :relid (\d+)")


def _judge(conn: PgConnection, tree: str) -> None:
    """Refuses a statement that is not a plain SELECT, reads a table outside what macros may read, or
    calls a function that reaches outside a read."""
    if any(kind != "1" for kind in _COMMANDS.findall(tree)) or ":hasForUpdate true" in tree:
        raise _invalid("A macro is exactly one SELECT statement.")
    if tree.count(":rtekind 0 ") != len(_RELATIONS.findall(tree)):  # a table this check cannot name
        raise _invalid(_READS_ONLY)
    function_ids = sorted({int(oid) for oid in _FUNCTIONS.findall(tree)})
    if function_ids:
        names = [name for (name,) in conn.execute(_FUNCTION_NAMES, (_int_array(function_ids),))]
        denied = sorted({n for n in names if n in _DENIED_FUNCTIONS or n.startswith(_DENIED_PREFIXES)})
        if denied:
            raise _invalid(f"A macro may not call {', '.join(denied)}().")
    relation_ids = sorted({int(oid) for oid in _RELATIONS.findall(tree)})
    if relation_ids:
        rows = conn.execute(_RELATION_NAMES, (_int_array(relation_ids),)).fetchall()
        if len(rows) != len(relation_ids) or not all(
            here and (name.startswith("c_") or name in READABLE_SYSTEM) for name, here in rows
        ):
            raise _invalid(_READS_ONLY)


def _int_array(ids: list[int]) -> str:
    return "{" + ",".join(str(i) for i in ids) + "}"


_FUNCTION_NAMES = "SELECT proname FROM pg_proc WHERE oid = ANY (?::oid[])"
# Tables of this schema only (a collection table starts with c_: no system table does).
_RELATION_NAMES = (
    "SELECT c.relname, c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) "
    "AND c.relkind IN ('r', 'p') FROM pg_class AS c WHERE c.oid = ANY (?::oid[])"
)


# --- running a macro -----------------------------------------------------------------------------------


MAX_PARAMS = 16  # as macros.MAX_PARAMS (not imported: macros imports this module lazily)
_checked: set[tuple[str, str]] = set()  # (role, SQL) of macros that passed count_params in this process


def run(conn: PgConnection, sql: str, args: list[Any], budget_s: float) -> list[tuple[Any, ...]]:
    """At most two rows of the macro for these arguments, fenced in (see the module docstring). Raises
    apsw.InterruptError past the timeout and the error for any other failure (the caller fails closed)."""
    fence = fence_of(conn)
    if fence.role is None:
        raise apsw.AuthError(fence.reason)
    if (fence.role, sql) not in _checked:  # a row written around the API (a copy, by hand) is checked too
        try:
            count_params(conn, sql, MAX_PARAMS)
        except ApiError as exc:
            raise apsw.AuthError(exc.message) from None
        _checked.add((fence.role, sql))
    _, text, count = placeholders(sql)
    params = {f"p{i}": value for i, value in enumerate(args, start=1) if i <= count}
    text = at_most_two_rows(text)
    outer = conn.in_transaction
    # One round trip into the fence and one out (a script of our own statements, no parameters).
    opening = "SAVEPOINT sb_macro" if outer else "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"
    role = _sql(pg_sql.SQL("SET LOCAL ROLE {}"), fence.role)
    timeout = f"SET LOCAL statement_timeout = {max(1, int(budget_s * 1000))}"
    try:
        conn.execute(f"{opening}; {role}; SET LOCAL transaction_read_only = on; {timeout}")
        cursor = conn.raw.cursor()
        try:
            # binary: always the extended protocol, which runs one statement and no more
            cursor.execute(text, params, binary=True)
            rows = []
            for row in cursor:
                rows.append(row)
                if len(rows) == 2:
                    break
            return rows
        except psycopg.Error as exc:
            raise as_apsw_error(exc) from exc
    finally:
        conn.execute("ROLLBACK TO SAVEPOINT sb_macro; RELEASE SAVEPOINT sb_macro" if outer else "ROLLBACK")


def _invalid(message: str) -> ApiError:
    """400 `invalid_macro` on the `sql` field, as snackbase.macros gives on SQLite."""
    return validation_error(field_error("sql", "invalid_macro", message), message)


def _value(conn: PgConnection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
