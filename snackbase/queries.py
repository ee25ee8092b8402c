"""Record reads: list (filter, sort, paging by offset or cursor), get, projection and expansion.

One SELECT per request with the tenant scope, the rule and the client's filter compiled into its
WHERE clause; `expand` costs one query per expanded field (never one per row). What a caller may see
of each record (field access, PII masks, expand) is decided by `snackbase.presenter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import apsw
import msgspec

from snackbase.collections import Registry
from snackbase.db import fetch_all, fetch_value
from snackbase.errors import ApiError, field_error
from snackbase.filter import FilterError
from snackbase.listing import (
    Paging,
    after_clause,
    decode_cursor,
    encode_cursor,
    offset_page,
    order_sql,
    sort_keys,
)
from snackbase.pii import hidden_fields
from snackbase.presenter import check_expand, check_projection, present_rows, present_versioned
from snackbase.relations import RelationResolver, path_values, sort_column
from snackbase.rules import (
    ALIAS,
    Caller,
    RecordResolver,
    filter_clause,
    rule_clause,
    scope_clause,
    where_clause,
)
from snackbase.schema import Collection, quote_ident

if TYPE_CHECKING:
    from snackbase.hook_dispatch import HookDispatcher


class ListQuery(msgspec.Struct):
    filter: str = ""
    sort: str = ""
    fields: list[str] | None = None
    expand: list[str] = msgspec.field(default_factory=list)
    page: int = 1
    per_page: int = 30
    skip_total: bool = False
    after: str | None = None  # None: offset paging; "" or a cursor: cursor paging


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
    return get_versioned(conn, registry, collection, caller, record_id, fields, expand)[0]


def get_versioned(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    record_id: str,
    fields: list[str] | None = None,
    expand: list[str] | tuple[str, ...] = (),
) -> tuple[dict[str, Any], str]:
    """The record as the caller sees it, and its version (the ETag of the stored record)."""
    resolver = RecordResolver(collection, caller)
    where, params = where_clause(
        scope_clause(caller), rule_clause(collection, "view", resolver), (f"{ALIAS}.id = ?", [record_id])
    )
    rows = fetch_all(conn, f"SELECT * FROM {quote_ident(collection.table)} AS {ALIAS}{where}", params)
    if not rows:
        raise ApiError(404, "not_found", "The record was not found.")
    return present_versioned(conn, registry, collection, caller, rows[0], expand, fields)


def list_records(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    query: ListQuery,
    hooks: HookDispatcher | None = None,
) -> dict[str, Any]:
    if hooks is not None:
        query = hooks.record_list(collection, caller, query)
    clauses = [scope_clause(caller)]
    # Filters and sorts may walk references (snackbase.relations): their joins join this query.
    resolver = RelationResolver(conn, registry, collection, caller, hidden_fields(collection, caller, "list"))
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
    order = _order_by(query.sort, resolver)  # before FROM: a sort may add joins
    where, params = where_clause(*clauses)
    table, join_params = resolver.from_sql()
    params = [*join_params, *params]
    offset = (query.page - 1) * query.per_page
    rows = fetch_all(
        conn,
        f"SELECT {ALIAS}.* FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, query.per_page, offset],
    )
    items = _to_json(conn, registry, collection, caller, rows, query)
    paging = Paging(query.page, query.per_page, query.skip_total)
    return offset_page(
        items, paging, lambda: int(fetch_value(conn, f"SELECT count(*) FROM {table}{where}", params))
    )


def _to_json(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    rows: list[dict[str, Any]],
    query: ListQuery,
) -> list[dict[str, Any]]:
    return present_rows(
        conn, registry, collection, caller, "list", rows, query.expand, query.fields, versioned=True
    )


def _order_by(sort: str, resolver: RecordResolver) -> str:
    return order_sql([(_sort_expr(resolver, name), desc) for name, desc in sort_keys(sort)])


def _sort_expr(resolver: RecordResolver, name: str) -> str:
    try:
        return resolver.field(name, 0)
    except FilterError as exc:
        raise ApiError(
            400,
            "invalid_sort",
            f"Invalid sort: {exc.message}.",
            field_error("sort", "invalid_sort", exc.message),
        ) from None


# --- cursor paging ------------------------------------------------------------------------------
# The cursor holds the sort values of the last row (snackbase.listing); the next page is every row
# strictly after it in the (total, because `id` ends every sort) order.


def _cursor_page(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    query: ListQuery,
    resolver: RelationResolver,
    clauses: list[tuple[str, list[Any]]],
) -> dict[str, Any]:
    names = sort_keys(query.sort)
    keys = [(_sort_expr(resolver, name), desc) for name, desc in names]
    if query.after:
        clauses = [*clauses, after_clause(keys, decode_cursor(query.after, query.sort, len(keys)))]
    where, params = where_clause(*clauses)
    table, join_params = resolver.from_sql()
    # Keys that are not columns of the table (a path through a reference, @rank) are selected too,
    # for the cursor, and dropped before the rows are shown.
    extra = [(sort_column(i, n), keys[i][0]) for i, (n, _) in enumerate(names) if sort_column(i, n) != n]
    columns = "".join(f", {expr} AS {quote_ident(col)}" for col, expr in extra)
    sql = f"SELECT {ALIAS}.*{columns} FROM {table}{where} ORDER BY {order_sql(keys)} LIMIT ?"
    rows = fetch_all(conn, sql, [*join_params, *params, query.per_page + 1])
    more = len(rows) > query.per_page
    rows = rows[: query.per_page]
    cursor = encode_cursor(query.sort, path_values(rows[-1], [n for n, _ in names])) if more else None
    for row in rows:
        for col, _ in extra:
            row.pop(col, None)
    return {"items": _to_json(conn, registry, collection, caller, rows, query), "next_cursor": cursor}
