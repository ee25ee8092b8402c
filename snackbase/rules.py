"""Rule semantics on top of the filter compiler: the record resolver, built-in macros, rule clauses.

A rule is `null` (superadmins only), `""` (anyone, including anonymous callers naming an account) or a
filter expression. Rules compile into the WHERE clause of the very query that reads or changes the
rows — rows are never fetched and filtered in Python. The resolver is the only way a name reaches SQL:
fields of the collection and the system fields, as `r."name"`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from snackbase.backends import dialect
from snackbase.errors import ApiError, field_error, validation_error
from snackbase.filter import MISSING, FilterError, Macro, compile_filter, parse
from snackbase.schema import SYSTEM_FIELDS, Collection, is_multi_reference, quote_ident
from snackbase.times import now_iso

ALIAS = "r"
PII_GROUP = "pii_access"
ALLOW_ALL: tuple[str, list[object]] = ("", [])  # a clause that restricts nothing
# Macro calls one rule may make: each custom macro runs a statement (up to its 200 ms budget) on the
# event loop, so a rule with many of them could hold the server for seconds.
MAX_MACRO_CALLS = 8

# The caller's attributes reachable as @request.auth.<name>.
_AUTH_ATTRS = {"id": "user_id", "account_id": "account_id", "email": "email", "role": "role"}


class Caller(msgspec.Struct, frozen=True):
    """Who is asking, as the rules see it. `account_id` is the tenant every query is scoped to
    (None only for a superadmin looking across all accounts)."""

    user_id: str | None
    account_id: str | None
    email: str | None
    role: str | None
    is_superadmin: bool
    groups: Callable[[], frozenset[str]]  # looked up only when a rule or a PII field needs them
    # Custom SQL macros: name, evaluated args, position -> truth value; None when the caller has none.
    macro: Callable[[str, list[object], int], bool] | None = None
    # Known pii_access membership (read with the session); None: ask `groups()`.
    pii_access: bool | None = None
    session_id: str | None = None
    # How the caller acts: "token" (a request with an access token), "anonymous", or "hook" (a hook
    # writing through `event.records` for the user it acts for). The audit trail records it.
    method: str = "token"

    @property
    def is_authenticated(self) -> bool:
        return self.user_id is not None

    @property
    def is_account_admin(self) -> bool:
        return self.is_superadmin or (self.is_authenticated and self.role == "admin")

    @property
    def sees_pii(self) -> bool:
        """Superadmins and members of the account's pii_access group read PII in clear."""
        if self.is_superadmin:
            return True
        if self.pii_access is not None:
            return self.pii_access
        return self.is_authenticated and PII_GROUP in self.groups()


class RecordResolver:
    """Resolves names in a filter or rule over one collection's table (aliased `r`)."""

    def __init__(
        self,
        collection: Collection,
        caller: Caller,
        data: dict[str, Any] | None = None,
        hidden: frozenset[str] = frozenset(),
        alias: str = ALIAS,
    ) -> None:
        self.collection = collection
        self.caller = caller
        self.data = data
        self.hidden = hidden  # fields this caller may not filter or sort on (masked PII, no access)
        # The table's alias in the query: `r`, or a joined table's (snackbase.relations) for the
        # view rule of a referenced collection.
        self.alias = alias

    def field(self, name: str, position: int) -> str:
        if name not in self.collection.field_map and name not in SYSTEM_FIELDS:
            raise FilterError(f"unknown field '{name[:64]}'", position)
        if name in self.hidden:
            raise FilterError(f"field '{name}' cannot be used in a filter or sort by this caller", position)
        return f"{self.alias}.{quote_ident(name)}"

    def many(self, name: str, position: int) -> tuple[str, str, list[object]] | None:
        """Any-of operators on a multi-reference field of this row (`tags ?= "id"`) in rules too:
        an EXISTS over the ids it holds (snackbase.filter's hook). None: the plain operator."""
        f = self.collection.field_map.get(name)
        if f is None or not is_multi_reference(f):
            return None
        column = self.field(name, position)  # checks hidden fields
        true = dialect.current.get().true
        return f"EXISTS (SELECT 1 FROM json_each({column}) AS m_{name} WHERE {true}", f"m_{name}.value", []

    def field_type(self, name: str) -> str | None:
        """The type of a field (system timestamps are datetimes), for comparing literals as instants."""
        if name in ("created_at", "updated_at"):
            return "datetime"
        field = self.collection.field_map.get(name)
        return field.type if field is not None else None

    def request_auth(self, name: str) -> object:
        attr = _AUTH_ATTRS.get(name)
        if attr is None or not self.caller.is_authenticated:
            return MISSING
        value = getattr(self.caller, attr)
        return MISSING if value is None else value

    def request_data(self, name: str) -> object:
        if self.data is None or name not in self.data:
            return MISSING
        return self.data[name]

    def macro(self, name: str, args: list[object], position: int) -> tuple[str, list[object]]:
        builtin = _BUILTIN_MACROS.get(name)
        if builtin is not None:
            return builtin(self, args, position)
        if self.caller.macro is None:
            raise FilterError(f"unknown macro '@{name[:64]}'", position)
        return _const(self.caller.macro(name, args, position))

    def now(self) -> str:
        return now_iso()


def _const(value: bool) -> tuple[str, list[object]]:
    sql = dialect.current.get()
    return (sql.true if value else sql.false, [])


def _arity(name: str, args: Sequence[object], count: int, position: int) -> None:
    if len(args) != count or not all(isinstance(a, str) for a in args):
        raise FilterError(f"@{name}() takes {count} text argument(s)", position)


def _owns_record(r: RecordResolver, args: list[object], position: int) -> tuple[str, list[object]]:
    _arity("owns_record", args, 0, position)
    if not r.caller.is_authenticated:
        return _const(False)
    return f'{r.alias}."created_by" = ?', [r.caller.user_id]


def _has_role(r: RecordResolver, args: list[object], position: int) -> tuple[str, list[object]]:
    _arity("has_role", args, 1, position)
    return _const(r.caller.is_authenticated and r.caller.role == args[0])


def _has_group(r: RecordResolver, args: list[object], position: int) -> tuple[str, list[object]]:
    _arity("has_group", args, 1, position)
    return _const(r.caller.is_authenticated and args[0] in r.caller.groups())


def _is_authenticated(r: RecordResolver, args: list[object], position: int) -> tuple[str, list[object]]:
    _arity("is_authenticated", args, 0, position)
    return _const(r.caller.is_authenticated)


def _in_time_range(r: RecordResolver, args: list[object], position: int) -> tuple[str, list[object]]:
    """True when the server's UTC wall-clock time is within [start, end); a range may wrap midnight."""
    _arity("in_time_range", args, 2, position)
    start, end = (_parse_hhmm(str(a), position) for a in args)
    now = datetime.now(UTC)
    minute = now.hour * 60 + now.minute
    inside = start <= minute < end if start <= end else (minute >= start or minute < end)
    return _const(inside)


def _parse_hhmm(text: str, position: int) -> int:
    try:
        hours, minutes = text.split(":")
        value = int(hours) * 60 + int(minutes)
    except ValueError:
        raise FilterError('@in_time_range() takes times as "HH:MM"', position) from None
    if not (0 <= int(hours) < 24 and 0 <= int(minutes) < 60):
        raise FilterError('@in_time_range() takes times as "HH:MM"', position)
    return value


# Macros only a list filter understands, built into the query by the relation-aware resolver (never
# SQL of a user's): `@search("…")`, full-text search (snackbase.search).
FILTER_MACROS = frozenset(("search",))

_BUILTIN_MACROS: dict[str, Callable[[RecordResolver, list[object], int], tuple[str, list[object]]]] = {
    "owns_record": _owns_record,
    "has_role": _has_role,
    "has_group": _has_group,
    "is_authenticated": _is_authenticated,
    "in_time_range": _in_time_range,
}


def allows_all(collection: Collection, op: str, caller: Caller) -> bool:
    """True when `op` sets the caller no condition: a superadmin, or an empty (public) rule."""
    if caller.is_superadmin:
        return True
    rule = collection.rules.get(op)
    return rule is not None and rule.strip() == ""


def rule_clause(collection: Collection, op: str, resolver: RecordResolver) -> tuple[str, list[object]]:
    """The SQL condition a row must meet for `op`, or ALLOW_ALL. A null rule is 403 for non-superadmins."""
    if allows_all(collection, op, resolver.caller):
        return ALLOW_ALL
    rule = collection.rules.get(op)
    if rule is None:
        raise ApiError(403, "forbidden", f"Only superadmins may {op} records of '{collection.name}'.")
    try:
        check_macro_calls(parse(rule))
        return compile_filter(rule, resolver)
    except FilterError as exc:  # a rule broken by a later schema change fails closed
        raise ApiError(
            403, "forbidden", f"The {op} rule of '{collection.name}' cannot be evaluated."
        ) from exc


def filter_clause(text: str, resolver: RecordResolver) -> tuple[str, list[object]]:
    """A client's `filter` parameter; errors are 400 invalid_filter with the position.

    Only built-in macros may appear here. Custom SQL macros are callable from saved rules only: with
    arguments of the client's choosing a macro is an oracle over every account's tables (the macro
    SQL is platform-wide), and each call costs a statement."""
    try:
        node = parse(text)
        check_macro_calls(node)
        for macro in used_macros(node):
            if macro.name not in _BUILTIN_MACROS and macro.name not in FILTER_MACROS:
                raise FilterError(
                    f"custom macro '@{macro.name[:64]}' can only be used in collection rules", macro.position
                )
        return compile_filter(text, resolver)
    except FilterError as exc:
        raise ApiError(
            400,
            "invalid_filter",
            f"Invalid filter: {exc}.",
            field_error("filter", "invalid_filter", str(exc)),
        ) from None


def check_rules(collection: Collection, macro_params: dict[str, int]) -> None:
    """Refuses, at save time, rules that do not parse or name unknown fields or macros (with the position).

    `macro_params` maps each custom macro to its number of parameters."""

    def probe_macro(name: str, args: list[object], position: int) -> bool:
        if name not in macro_params:
            raise FilterError(f"unknown macro '@{name[:64]}'", position)
        if len(args) != macro_params[name]:
            raise FilterError(f"@{name}() takes {macro_params[name]} argument(s)", position)
        return False

    probe = Caller("probe", "XX0000", "probe@example.com", "user", False, frozenset, probe_macro)
    errors = {}
    for op, rule in collection.rules.items():
        if rule is None or not rule.strip():
            continue
        try:
            check_macro_calls(parse(rule))
            for macro in used_macros(parse(rule)):
                if macro.name not in _BUILTIN_MACROS:
                    probe_macro(macro.name, list(macro.args), macro.position)
            compile_filter(rule, RecordResolver(collection, probe, data={}))
        except FilterError as exc:
            errors.update(field_error(f"rules.{op}", "invalid_rule", str(exc)))
    if errors:
        raise validation_error(errors, "A rule is not valid.")


def used_macros(node: object) -> list[Macro]:
    """Every macro call in a parsed filter or rule (for save-time checks and 'macro in use')."""
    if isinstance(node, Macro):
        return [node]
    children: list[object] = []
    for name in getattr(node, "__slots__", ()):
        value = getattr(node, name)
        children += value if isinstance(value, (list, tuple)) else [value]
    return [m for child in children for m in used_macros(child)]


def scope_clause(caller: Caller) -> tuple[str, list[Any]]:
    """The tenant scope of every record query: the caller's account (a superadmin without a named
    account sees all); an anonymous caller must name an account."""
    if caller.account_id is None:
        if not caller.is_superadmin:
            raise ApiError(
                401, "unauthorized", "Authenticate, or name an account with the X-Account-ID header."
            )
        return "", []
    return f"{ALIAS}.account_id = ?", [caller.account_id]


def where_clause(*clauses: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
    """` WHERE (a) AND (b) …` of the non-empty clauses, and their parameters in order."""
    parts = [sql for sql, _ in clauses if sql]
    params = [p for _, ps in clauses for p in ps]
    return (" WHERE " + " AND ".join(f"({p})" for p in parts) if parts else ""), params


def check_macro_calls(node: object) -> None:
    """At most MAX_MACRO_CALLS macro calls in one filter or rule."""
    calls = used_macros(node)
    if len(calls) > MAX_MACRO_CALLS:
        raise FilterError(f"too many macro calls (max {MAX_MACRO_CALLS})", calls[MAX_MACRO_CALLS].position)
