"""Grouped counts, sums, averages, minimums and maximums of a collection's records:
`GET /records/{c}/aggregate?group_by=status&count=*&sum=views&avg=ph&filter=…`.

One SELECT … GROUP BY with exactly what a list has in its WHERE: the tenant scope, the list rule and
the client's filter (through the same relation-aware resolver, so `group_by=project.name` joins under
the project's view rule). A field the caller may not filter on in a list — no list access, or PII it
sees masked — cannot be grouped, counted, summed or averaged either: a sum is as much an oracle as a
filter. Groups come sorted by their keys; at most `limit` (default 100, at most 1000) of them, and
`truncated` says when there were more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import apsw
import msgspec

from snackbase.backends import dialect
from snackbase.collections import Registry
from snackbase.db import fetch_all
from snackbase.errors import ApiError, field_error
from snackbase.filter import FilterError
from snackbase.pii import hidden_fields
from snackbase.queries import ListQuery
from snackbase.relations import RelationResolver
from snackbase.rules import Caller, RecordResolver, filter_clause, rule_clause, scope_clause, where_clause
from snackbase.schema import SYSTEM_FIELDS, Collection

if TYPE_CHECKING:
    from snackbase.hook_dispatch import HookDispatcher

MAX_GROUP_BY: Final = 3
MAX_METRICS: Final = 16
DEFAULT_GROUPS: Final = 100
MAX_GROUPS: Final = 1000
# Functions and the field types they accept (None: any type).
_FUNCTIONS: Final[dict[str, tuple[str, ...] | None]] = {
    "count": None,
    "sum": ("number",),
    "avg": ("number",),
    "min": ("number", "date", "datetime", "text"),
    "max": ("number", "date", "datetime", "text"),
}


class AggregateQuery(msgspec.Struct):
    group_by: list[str]
    metrics: list[tuple[str, str]]  # (function, field or "*" for count)
    filter: str = ""
    limit: int = DEFAULT_GROUPS


def aggregate(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    query: AggregateQuery,
    hooks: HookDispatcher | None = None,
) -> dict[str, Any]:
    query = narrowed(query, collection, caller, hooks)
    resolver = RelationResolver(conn, registry, collection, caller, hidden_fields(collection, caller, "list"))
    clauses = [scope_clause(caller)]
    if query.filter.strip():
        clauses.append(filter_clause(query.filter, resolver))
    clauses.append(rule_clause(collection, "list", RecordResolver(collection, caller)))
    groups = [_group_expr(resolver, name) for name in query.group_by]
    metrics = [_metric_expr(resolver, collection, fn, name) for fn, name in query.metrics]
    where, params = where_clause(*clauses)
    table, join_params = resolver.from_sql()
    columns = [f"{g} AS g{i}" for i, g in enumerate(groups)] + [f"{m} AS m{i}" for i, m in enumerate(metrics)]
    group_sql = " GROUP BY " + ", ".join(f"g{i}" for i in range(len(groups))) if groups else ""
    asc = dialect.current.get().asc  # a NULL group first on both engines (SQLite's order)
    order_sql = " ORDER BY " + ", ".join(f"g{i} {asc}" for i in range(len(groups))) if groups else ""
    sql = f"SELECT {', '.join(columns)} FROM {table}{where}{group_sql}{order_sql} LIMIT ?"
    rows = fetch_all(conn, sql, [*join_params, *params, query.limit + 1])
    truncated = len(rows) > query.limit
    items = [_item(query, collection, row) for row in rows[: query.limit]]
    return {"items": items, "truncated": truncated}


def narrowed(
    query: AggregateQuery, collection: Collection, caller: Caller, hooks: HookDispatcher | None
) -> AggregateQuery:
    """The query checked, with its filter as `record.before_list` hooks left it (they see, and may
    narrow, the filter, as for a list)."""
    _check_shape(query)
    if hooks is None:
        return query
    return msgspec.structs.replace(
        query, filter=hooks.record_list(collection, caller, ListQuery(filter=query.filter)).filter
    )


def _check_shape(query: AggregateQuery) -> None:
    if len(query.group_by) > MAX_GROUP_BY:
        raise _bad("group_by", f"At most {MAX_GROUP_BY} group_by fields.")
    if not query.metrics:
        raise _bad("count", "Ask for at least one of count, sum, avg, min, max.")
    if len(query.metrics) > MAX_METRICS:
        raise _bad("count", f"At most {MAX_METRICS} aggregates.")
    if not 1 <= query.limit <= MAX_GROUPS:
        raise _bad("limit", f"Must be from 1 to {MAX_GROUPS}.")


def _bad(param: str, message: str) -> ApiError:
    return ApiError(
        400,
        "invalid_aggregate",
        f"Invalid {param}: {message}",
        field_error(param, "invalid_aggregate", message),
    )


def _group_expr(resolver: RelationResolver, name: str) -> str:
    try:
        return resolver.field(name, 0)
    except FilterError as exc:
        raise _bad("group_by", exc.message) from None


def _metric_expr(resolver: RelationResolver, collection: Collection, fn: str, name: str) -> str:
    if fn == "count" and name == "*":
        return "count(*)"
    accepts = _FUNCTIONS[fn]
    f = collection.field_map.get(name)
    kind = f.type if f is not None else ("datetime" if name.endswith("_at") else "text")
    if f is None and name not in SYSTEM_FIELDS:
        raise _bad(fn, f"unknown field '{name[:64]}'")
    if accepts is not None and kind not in accepts:
        raise _bad(fn, f"{fn} needs a field of type {' or '.join(accepts)}; '{name}' is {kind}.")
    try:
        expr = resolver.field(name, 0)  # refuses hidden and masked fields
    except FilterError as exc:
        raise _bad(fn, exc.message) from None
    return f"{fn}({expr})"


def _item(query: AggregateQuery, collection: Collection, row: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for i, name in enumerate(query.group_by):
        value = row[f"g{i}"]
        f = collection.field_map.get(name)
        item[name] = bool(value) if f is not None and f.type == "boolean" and value is not None else value
    for i, (fn, name) in enumerate(query.metrics):
        item["count" if (fn, name) == ("count", "*") else f"{fn}_{name}"] = row[f"m{i}"]
    return item


def parse_query(params: Any) -> AggregateQuery:
    """`group_by`, `count`, `sum`, `avg`, `min`, `max` (comma lists), `filter`, `limit`."""

    def names(key: str) -> list[str]:
        return [n.strip() for n in str(params.get(key, "")).split(",") if n.strip()]

    metrics = [(fn, name) for fn in _FUNCTIONS for name in names(fn)]
    raw_limit = params.get("limit", str(DEFAULT_GROUPS))
    if not raw_limit.isdigit():
        raise _bad("limit", f"Must be from 1 to {MAX_GROUPS}.")
    return AggregateQuery(names("group_by"), metrics, params.get("filter", ""), int(raw_limit))
