"""Record reads: list (filter, sort, paging by offset or cursor), get, projection and expansion.

One SELECT per request with the tenant scope, the rule and the client's filter compiled into its
WHERE clause; `expand` costs one query per expanded field (never one per row). What a caller may see
of each record (field access, PII masks) is applied by `pii.present` on every path.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import apsw
import msgspec

from snackbase.collections import Registry
from snackbase.db import fetch_all, fetch_value
from snackbase.errors import ApiError, field_error
from snackbase.filter import FilterError, parse_sort
from snackbase.hooks import hooks
from snackbase.pii import hidden_fields, present
from snackbase.rules import ALIAS, Caller, RecordResolver, filter_clause, rule_clause
from snackbase.schema import SYSTEM_FIELDS, Collection, quote_ident

MAX_PER_PAGE = 500
MAX_EXPAND_DEPTH = 3


@dataclass
class ListQuery:
    filter: str = ""
    sort: str = ""
    fields: list[str] | None = None
    expand: list[str] = field(default_factory=list)
    page: int = 1
    per_page: int = 30
    skip_total: bool = False
    after: str | None = None  # None: offset paging; "" or a cursor: cursor paging


# --- scope --------------------------------------------------------------------------------------


def scope_clause(caller: Caller) -> tuple[str, list[Any]]:
    if caller.account_id is None:
        if not caller.is_superadmin:
            raise ApiError(
                401, "unauthorized", "Authenticate, or name an account with the X-Account-ID header."
            )
        return "", []
    return f"{ALIAS}.account_id = ?", [caller.account_id]


def where_clause(*clauses: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
    parts = [sql for sql, _ in clauses if sql]
    params = [p for _, ps in clauses for p in ps]
    return (" WHERE " + " AND ".join(f"({p})" for p in parts) if parts else ""), params


# --- reads --------------------------------------------------------------------------------------


def get_record(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    record_id: str,
    fields: list[str] | None = None,
    expand: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    resolver = RecordResolver(collection, caller)
    where, params = where_clause(
        scope_clause(caller), rule_clause(collection, "view", resolver), (f"{ALIAS}.id = ?", [record_id])
    )
    rows = fetch_all(conn, f"SELECT * FROM {quote_ident(collection.table)} AS {ALIAS}{where}", params)
    if not rows:
        raise ApiError(404, "not_found", "The record was not found.")
    records = present(collection, caller, "view", [registry.validator(collection).to_json(rows[0])])
    expand_records(conn, registry, collection, caller, records, expand)
    return project(records, fields)[0]


def list_records(
    conn: apsw.Connection, registry: Registry, collection: Collection, caller: Caller, query: ListQuery
) -> dict[str, Any]:
    query = hooks.record_list(collection, caller, query)
    clauses = [scope_clause(caller)]
    resolver = RecordResolver(collection, caller, hidden=hidden_fields(collection, caller, "list"))
    # The caller's filter before the rule: SQLite tests the terms of a scan in this order, and the
    # filter usually drops more rows than the rule does. Measured on 10,000 records, a COUNT with
    # `@owns_record()` took 0.90 ms rule-first and 0.59 ms filter-first (0.52 ms without the rule).
    # The order never changes which rows match.
    if query.filter.strip():
        clauses.append(filter_clause(query.filter, resolver))
    clauses.append(rule_clause(collection, "list", RecordResolver(collection, caller)))
    check_projection(collection, query.fields)
    check_expand(registry, conn, collection, query.expand)
    if query.after is not None:
        return _cursor_page(conn, registry, collection, caller, query, resolver, clauses)
    where, params = where_clause(*clauses)
    table = f"{quote_ident(collection.table)} AS {ALIAS}"
    order = _order_by(query.sort, resolver)
    offset = (query.page - 1) * query.per_page
    rows = fetch_all(
        conn,
        f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, query.per_page, offset],
    )
    items = _to_json(conn, registry, collection, caller, rows, query)
    total = -1 if query.skip_total else int(fetch_value(conn, f"SELECT count(*) FROM {table}{where}", params))
    pages = -1 if query.skip_total else (total + query.per_page - 1) // query.per_page
    return {
        "items": items,
        "page": query.page,
        "per_page": query.per_page,
        "total_items": total,
        "total_pages": pages,
    }


def _to_json(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    rows: list[dict[str, Any]],
    query: ListQuery,
) -> list[dict[str, Any]]:
    to_json = registry.validator(collection).to_json
    records = present(collection, caller, "list", [to_json(row) for row in rows])
    expand_records(conn, registry, collection, caller, records, query.expand)
    return project(records, query.fields)


def _sort_keys(sort: str) -> list[tuple[str, bool]]:
    if not sort.strip():
        return [("id", False)]
    try:
        keys = parse_sort(sort)
    except FilterError as exc:
        raise ApiError(
            400, "invalid_sort", f"Invalid sort: {exc}.", field_error("sort", "invalid_sort", str(exc))
        ) from None
    # `id` makes the order total; it follows the last key's direction so that an index on
    # (account_id, key, id) can serve the whole ORDER BY.
    return keys if any(name == "id" for name, _ in keys) else [*keys, ("id", keys[-1][1])]


def _order_by(sort: str, resolver: RecordResolver) -> str:
    parts = []
    for name, desc in _sort_keys(sort):
        try:
            expr = resolver.field(name, 0)
        except FilterError as exc:
            raise ApiError(
                400,
                "invalid_sort",
                f"Invalid sort: {exc.message}.",
                field_error("sort", "invalid_sort", exc.message),
            ) from None
        parts.append(f"{expr} {'DESC' if desc else 'ASC'}")
    return ", ".join(parts)


# --- cursor paging ------------------------------------------------------------------------------
# The cursor holds the sort values of the last row; the next page is every row strictly after it in
# the (total, because `id` ends every sort) order, so each row is visited once even while inserting.

_cursor_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(list[Any])


def _encode_cursor(sort: str, row: dict[str, Any], keys: list[tuple[str, bool]]) -> str:
    raw = _cursor_encoder.encode([sort, *(row[name] for name, _ in keys)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str, count: int) -> list[Any]:
    try:
        values = _cursor_decoder.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, msgspec.DecodeError):
        values = []
    if len(values) != count + 1 or values[0] != sort or not all(map(_sortable, values[1:])):
        raise ApiError(
            400, "invalid_cursor", "The cursor is not valid for this query; start again with after=."
        )
    return values[1:]


def _sortable(value: Any) -> bool:
    """A value a stored column can hold: a forged cursor's objects, lists or huge integers are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63
    return value is None or isinstance(value, (float, str))


def _after_clause(
    keys: list[tuple[str, bool]], values: list[Any], resolver: RecordResolver
) -> tuple[str, list[Any]]:
    """(k1 after v1) OR (k1 IS v1 AND k2 after v2) OR … with SQLite's NULL order (NULLs sort first)."""
    ors, params = [], []
    for i, (name, desc) in enumerate(keys):
        ands, ps = [], []
        for prior, value in zip(keys[:i], values[:i], strict=True):
            ands.append(f"{resolver.field(prior[0], 0)} IS ?")
            ps.append(value)
        after_sql, after_params = _after_one(resolver.field(name, 0), values[i], desc)
        ors.append("(" + " AND ".join([*ands, after_sql]) + ")")
        params += ps + after_params
    return " OR ".join(ors), params


def _after_one(expr: str, value: Any, desc: bool) -> tuple[str, list[Any]]:
    if value is None:
        return ("0", []) if desc else (f"{expr} IS NOT NULL", [])
    if desc:
        return f"({expr} < ? OR {expr} IS NULL)", [value]
    return f"{expr} > ?", [value]


def _cursor_page(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    query: ListQuery,
    resolver: RecordResolver,
    clauses: list[tuple[str, list[Any]]],
) -> dict[str, Any]:
    keys = _sort_keys(query.sort)
    if query.after:
        clauses = [
            *clauses,
            _after_clause(keys, _decode_cursor(query.after, query.sort, len(keys)), resolver),
        ]
    where, params = where_clause(*clauses)
    sql = (
        f"SELECT * FROM {quote_ident(collection.table)} AS {ALIAS}{where} "
        f"ORDER BY {_order_by(query.sort, resolver)} LIMIT ?"
    )
    rows = fetch_all(conn, sql, [*params, query.per_page + 1])
    more = len(rows) > query.per_page
    rows = rows[: query.per_page]
    cursor = _encode_cursor(query.sort, rows[-1], keys) if more else None
    return {"items": _to_json(conn, registry, collection, caller, rows, query), "next_cursor": cursor}


# --- projection and expansion -------------------------------------------------------------------


def check_projection(collection: Collection, fields: list[str] | None) -> None:
    for name in fields or ():
        if name not in collection.field_map and name not in SYSTEM_FIELDS and name != "expand":
            raise ApiError(
                400,
                "bad_request",
                f"Unknown field '{name[:64]}' in fields.",
                field_error("fields", "unknown_field", f"'{name[:64]}' is not a field."),
            )


def project(records: list[dict[str, Any]], fields: list[str] | None) -> list[dict[str, Any]]:
    if not fields:
        return records
    keep = [*fields, "expand"]
    return [{k: r[k] for k in keep if k in r} for r in records]


def check_expand(registry: Registry, conn: apsw.Connection, collection: Collection, paths: list[str]) -> None:
    for path in paths:
        parts = path.split(".")
        if len(parts) > MAX_EXPAND_DEPTH:
            raise ApiError(
                400, "bad_request", f"expand '{path[:64]}' is deeper than {MAX_EXPAND_DEPTH} levels."
            )
        current = collection
        for part in parts:
            f = current.field_map.get(part)
            if f is None or f.type != "reference":
                raise ApiError(
                    400,
                    "bad_request",
                    f"Cannot expand '{path[:64]}': '{part[:64]}' is not a reference field.",
                    field_error("expand", "unknown_field", f"'{part[:64]}' is not a reference field."),
                )
            current = registry.get(conn, f.options["collection"])


def expand_records(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    records: list[dict[str, Any]],
    paths: list[str] | tuple[str, ...],
) -> None:
    """Attaches referenced records under record["expand"][field]; each passes its own view rule."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        groups.setdefault(head, [])
        if rest:
            groups[head].append(rest)
    for name, nested in groups.items():
        target = registry.get(conn, collection.field_map[name].options["collection"])
        ids = sorted({r[name] for r in records if isinstance(r.get(name), str)})
        found = _viewable_by_id(conn, registry, target, caller, ids)
        expand_records(conn, registry, target, caller, list(found.values()), nested)
        for record in records:
            if record.get(name) in found:
                record.setdefault("expand", {})[name] = found[record[name]]


def _viewable_by_id(
    conn: apsw.Connection, registry: Registry, target: Collection, caller: Caller, ids: list[str]
) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    try:
        rule = rule_clause(target, "view", RecordResolver(target, caller))
    except ApiError:  # the caller may not view that collection at all: nothing is expanded
        return {}
    marks = ", ".join("?" * len(ids))
    where, params = where_clause(scope_clause(caller), rule, (f"{ALIAS}.id IN ({marks})", ids))
    rows = fetch_all(conn, f"SELECT * FROM {quote_ident(target.table)} AS {ALIAS}{where}", params)
    to_json = registry.validator(target).to_json
    return {r["id"]: r for r in present(target, caller, "view", [to_json(row) for row in rows])}
