"""The one list module: the paging parameters, their limits, `skip_total` and the cursor rules of every
list endpoint (records, audit log, users, groups, invitations, roles, accounts, sessions, macros).

- `page` (1-based, ≤ 1,000,000) and `per_page` (default 30, 1-500) for offset paging:
  `{"items", "page", "per_page", "total_items", "total_pages"}`; `skip_total=true|false|1|0` (anything
  else is a 400) answers -1 for both totals and skips the COUNT.
- `after` for cursor (keyset) paging: `after=` (empty) starts at the beginning of the order, then
  `next_cursor` is passed back until it is `null`: `{"items", "next_cursor"}`. A cursor holds the sort
  values of the last row, so every row is visited once even while rows are inserted; a cursor that was
  not made for this list and order is a 400 `invalid_cursor`.
Every order ends with a unique key, so the order is total and a keyset page is exact.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import apsw
import msgspec
from starlette.requests import Request

from snackbase.backends import dialect
from snackbase.db import fetch_all, fetch_value
from snackbase.errors import ApiError, field_error
from snackbase.filter import FilterError, parse_sort

MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 30
MAX_PAGE = 1_000_000
MAX_CURSOR_CHARS = 4096
# SQLite integers are 64-bit: a larger number in a cursor cannot have come from a row.
_INT64 = (-(2**63), 2**63 - 1)

# (SQL expression, descending) — the expressions are fixed text of the calling module or come through
# the filter language's resolver, never from a client.
OrderKey = tuple[str, bool]


class Paging(msgspec.Struct, frozen=True):
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE
    skip_total: bool = False
    after: str | None = None  # None: offset paging; "" or a cursor: cursor paging


def paging(request: Request) -> Paging:
    """The paging parameters of a list request, checked (400 `bad_request` naming the parameter)."""
    query = request.query_params if request.scope["query_string"] else {}
    return Paging(
        page=_int_param(query, "page", 1, 1, MAX_PAGE),
        per_page=_int_param(query, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE),
        skip_total=_bool_param(query, "skip_total"),
        after=query.get("after"),
    )


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or not low <= int(raw) <= high:
        raise ApiError(
            400, "bad_request", f"Query parameter '{name}' must be a whole number from {low} to {high}."
        )
    return int(raw)


def _bool_param(query: Any, name: str) -> bool:
    raw = (query.get(name) or "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, "bad_request", f"Query parameter '{name}' must be true or false.")
    return raw in ("true", "1")


# --- offset pages ---------------------------------------------------------------------------------


def offset_page(items: list[Any], paging: Paging, count: Callable[[], int]) -> dict[str, Any]:
    total = -1 if paging.skip_total else count()
    pages = -1 if paging.skip_total else (total + paging.per_page - 1) // paging.per_page
    return {"items": items, "page": paging.page, "per_page": paging.per_page, "total_items": total,
            "total_pages": pages}  # fmt: skip


def whole_list(items: list[Any]) -> dict[str, Any]:
    """A short, unpaged list (collections, macros, sessions) in the same shape as a single page."""
    count = len(items)
    return {
        "items": items,
        "page": 1,
        "per_page": count,
        "total_items": count,
        "total_pages": 1 if count else 0,
    }


# --- cursors --------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[Any])


def encode_cursor(tag: str, values: Sequence[Any]) -> str:
    """An opaque cursor: the list's tag (its sort) and the last row's sort values."""
    return base64.urlsafe_b64encode(_encoder.encode([tag, *values])).decode().rstrip("=")


def decode_cursor(cursor: str, tag: str, count: int) -> list[Any]:
    """The sort values a cursor holds; 400 `invalid_cursor` unless it was made for this tag with
    `count` plain values (text, numbers within SQLite's range, booleans or null)."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError
        values = _decoder.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, msgspec.DecodeError):
        values = []
    if len(values) != count + 1 or values[0] != tag or not all(_plain(v) for v in values[1:]):
        raise ApiError(
            400, "invalid_cursor", "The cursor is not valid for this query; start again with after=."
        )
    return values[1:]


def _plain(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return True
    return isinstance(value, int) and _INT64[0] <= value <= _INT64[1]


def after_clause(keys: Sequence[OrderKey], values: Sequence[Any]) -> tuple[str, list[Any]]:
    """Rows strictly after `values` in the order `keys`: (k1 after v1) OR (k1 IS v1 AND k2 after v2) …,
    with SQLite's NULL order (NULLs sort first)."""
    ors, params = [], []
    sql = dialect.current.get()  # `IS` / `IS NOT DISTINCT FROM`; PostgreSQL sorts NULLs first too
    for i, (expr, desc) in enumerate(keys):
        ands = [f"{prior} {sql.is_} ?" for prior, _ in keys[:i]]
        ps = list(values[:i])
        after_sql, after_params = _after_one(expr, values[i], desc, sql.false)
        ors.append("(" + " AND ".join([*ands, after_sql]) + ")")
        params += ps + after_params
    return " OR ".join(ors), params


def _after_one(expr: str, value: Any, desc: bool, false: str) -> tuple[str, list[Any]]:
    if value is None:
        return (false, []) if desc else (f"{expr} IS NOT NULL", [])
    if desc:
        return f"({expr} < ? OR {expr} IS NULL)", [value]
    return f"{expr} > ?", [value]


def order_sql(keys: Sequence[OrderKey]) -> str:
    sql = dialect.current.get()  # NULLs sort first ascending on both engines (SQLite's order)
    return ", ".join(f"{expr} {sql.desc if desc else sql.asc}" for expr, desc in keys)


# --- one page of a plain table (the auth-side resources) --------------------------------------------


class Source(msgspec.Struct, frozen=True):
    """A list over one table: fixed SQL text of the calling module; values only in `params`."""

    table: str
    where: str
    params: tuple[Any, ...]
    order: tuple[tuple[str, bool], ...]  # (column, descending); the last one unique (usually id)


def table_page(
    conn: apsw.Connection, source: Source, paging: Paging, shape: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """One page of `source`, by offset or by cursor as `paging` says, each row through `shape`."""
    order = order_sql(source.order)
    base = f"SELECT * FROM {source.table} WHERE {source.where}"
    if paging.after is None:
        rows = fetch_all(conn, f"{base} ORDER BY {order} LIMIT ? OFFSET ?",
                         (*source.params, paging.per_page, (paging.page - 1) * paging.per_page))  # fmt: skip
        count = f"SELECT count(*) FROM {source.table} WHERE {source.where}"
        return offset_page([shape(r) for r in rows], paging,
                           lambda: int(fetch_value(conn, count, source.params)))  # fmt: skip
    tag = order
    where, params = source.where, list(source.params)
    if paging.after:
        clause, after_params = after_clause(source.order, decode_cursor(paging.after, tag, len(source.order)))
        where, params = f"({where}) AND ({clause})", [*params, *after_params]
    rows = fetch_all(conn, f"SELECT * FROM {source.table} WHERE {where} ORDER BY {order} LIMIT ?",
                     (*params, paging.per_page + 1))  # fmt: skip
    more = len(rows) > paging.per_page
    rows = rows[: paging.per_page]
    cursor = encode_cursor(tag, [rows[-1][column] for column, _ in source.order]) if more else None
    return {"items": [shape(r) for r in rows], "next_cursor": cursor}


def sort_keys(sort: str) -> list[tuple[str, bool]]:
    """A list's `sort` parameter as (name, descending) keys, `id` last so that the order is total (a
    cursor needs it); 400 `invalid_sort` when it does not parse. `id` follows the last key's
    direction, so that an index on (account_id, key, id) can serve the whole ORDER BY."""
    if not sort.strip():
        return [("id", False)]
    try:
        keys = parse_sort(sort)
    except FilterError as exc:
        raise ApiError(
            400, "invalid_sort", f"Invalid sort: {exc}.", field_error("sort", "invalid_sort", str(exc))
        ) from None
    return keys if any(name == "id" for name, _ in keys) else [*keys, ("id", keys[-1][1])]
