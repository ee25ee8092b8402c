"""The list shape of SPEC section 3 for the auth resources: page, per_page, skip_total."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw
from starlette.requests import Request

from snackbase.db import fetch_all, fetch_value
from snackbase.web import query_int

MAX_PER_PAGE = 500


def page_of(
    request: Request,
    conn: apsw.Connection,
    table_sql: str,
    where: str,
    params: tuple[Any, ...],
    order: str,
    shape: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Runs `SELECT * FROM <table_sql> WHERE <where> ORDER BY <order>` one page at a time.

    `table_sql`, `where` and `order` are fixed text from the calling module; values only in `params`.
    """
    page = query_int(request, "page", 1, 1, 1_000_000)
    per_page = query_int(request, "per_page", 30, 1, MAX_PER_PAGE)
    skip_total = request.query_params.get("skip_total", "").lower() in ("1", "true")
    rows = fetch_all(
        conn,
        f"SELECT * FROM {table_sql} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
        (*params, per_page, (page - 1) * per_page),
    )
    total = (
        -1
        if skip_total
        else int(fetch_value(conn, f"SELECT count(*) FROM {table_sql} WHERE {where}", params))
    )
    pages = -1 if skip_total else (total + per_page - 1) // per_page
    return {
        "items": [shape(row) for row in rows],
        "page": page,
        "per_page": per_page,
        "total_items": total,
        "total_pages": pages,
    }
