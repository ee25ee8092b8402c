"""Reading the audit trail: list, one entry, chain verification, export (SPEC section 8).

Nothing here changes or deletes an entry; the only write is the `audit.export` entry an export makes
of itself. Account admins see their own account; superadmins see every account (`account=` narrows).
PII in `changes` is masked (SPEC section 7) unless the caller is a superadmin or in `pii_access`.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from typing import Any

import apsw
import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from snackbase import audit, audit_views
from snackbase.auth import ACCOUNT_ID_RE, Auth, require_account_admin, user_groups
from snackbase.backends import dialect
from snackbase.db import fetch_all, fetch_one, fetch_value
from snackbase.errors import ApiError
from snackbase.listing import Paging, after_clause, decode_cursor, encode_cursor, offset_page, paging
from snackbase.presenter import present_entries, present_stored_row
from snackbase.times import format_ts, now_iso, parse_ts
from snackbase.unit_of_work import unit_of_work
from snackbase.web import json_response

EXPORT_PAGE = 1000
_SELECT = f"SELECT {', '.join(audit.COLUMNS)} FROM audit_log"
# CSV column order for people: position first, the chain's hashes last.
CSV_COLUMNS = (
    "seq", "account_id", "account_seq", "occurred_at", "actor_user_id", "actor_email", "actor_role",
    "auth_method", "action", "collection", "record_id", "changes", "reason", "request_id", "ip",
    "user_agent", "extra", "prev_hash", "hash",
)  # fmt: skip


async def list_entries(request: Request) -> Response:
    view = await _view(request)
    where, params = _filters(request, view)
    page = paging(request)
    descending = _descending(request)

    def read(conn: apsw.Connection) -> dict[str, Any]:
        if page.after is not None:
            rows, cursor = _cursor_page(conn, view, where, params, page, descending)
            return {"items": _shown(conn, view, rows), "next_cursor": cursor}
        order = f"{_order_column(view)} {'DESC' if descending else 'ASC'}"
        rows = fetch_all(conn, f"{_SELECT} {where} ORDER BY {order} LIMIT ? OFFSET ?",
                         [*params, page.per_page, (page.page - 1) * page.per_page])  # fmt: skip
        return offset_page(_shown(conn, view, rows), page, lambda: _count(conn, where, params))

    return json_response(await request.app.state.db.read(read))


def _count(conn: apsw.Connection, where: str, params: list[Any]) -> int:
    return int(fetch_value(conn, f"SELECT count(*) FROM audit_log {where}", params) or 0)


def _cursor_page(conn: apsw.Connection, view: View, where: str, params: list[Any], page: Paging,
                 descending: bool) -> tuple[list[dict[str, Any]], str | None]:  # fmt: skip
    """Keyset paging on the order column (unique): stable while new entries are appended."""
    column = _order_column(view)
    tag = f"audit-log:{column}:{'desc' if descending else 'asc'}"
    if page.after:
        clause, after = after_clause([(column, descending)], decode_cursor(page.after, tag, 1))
        where += f" {'AND' if where else 'WHERE'} {clause}"
        params = [*params, *after]
    order = f"{column} {'DESC' if descending else 'ASC'}"
    rows = fetch_all(conn, f"{_SELECT} {where} ORDER BY {order} LIMIT ?", [*params, page.per_page + 1])
    more = len(rows) > page.per_page
    rows = rows[: page.per_page]
    return rows, encode_cursor(tag, [rows[-1][column]]) if more else None


def _is_seq(text: str) -> bool:
    """ASCII digits of a value SQLite can hold (`str.isdigit` also accepts `²` and other digits)."""
    return _SEQ_RE.fullmatch(text) is not None and int(text) < 2**63


_SEQ_RE = re.compile(r"[0-9]{1,19}")


async def get_entry(request: Request) -> Response:
    view = await _view(request)
    raw = request.path_params["seq"]
    if not _is_seq(raw):
        raise ApiError(404, "not_found", "No audit entry with this seq.")

    def read(conn: apsw.Connection) -> dict[str, Any]:
        row = fetch_one(conn, f"{_SELECT} WHERE seq = ?", (int(raw),))
        if row is None or (view.account_id is not None and row["account_id"] != view.account_id):
            raise ApiError(404, "not_found", "No audit entry with this seq.")  # another tenant's: not found
        return _shown(conn, view, [row])[0]

    return json_response(await request.app.state.db.read(read))


async def verify_chains(request: Request) -> Response:
    view = await _view(request)
    # Verify re-hashes the whole chain: on the worker thread, so other requests are not held up.
    result = await request.app.state.db.in_worker(lambda conn: audit.verify(conn, view.account_id))
    return json_response(result.to_json())


async def export_entries(request: Request) -> Response:
    view = await _view(request)
    fmt = request.query_params.get("format", "json")
    if fmt not in ("csv", "json"):
        raise ApiError(400, "bad_request", "Query parameter 'format' must be 'csv' or 'json'.")
    where, params = _filters(request, view)
    reason = audit_views.reason_from(request)
    conn = request.app.state.db.conn
    with unit_of_work(conn):
        # The export records itself first; it covers exactly the entries committed before it.
        seq = audit.append(
            conn,
            account_id=view.account_id or view.auth.account_id or "SY0000",
            actor=audit_views.actor_from_auth(view.auth),
            action="audit.export",
            reason=reason,
            meta=audit_views.meta_from_request(request),
            extra=_export_extra(request, view, fmt),
        )
    masker = None if view.pii_access else audit_views.schema_masker(conn)
    where += f" {'AND' if where else 'WHERE'} seq < ?"
    chunks = _export_chunks(request, view, where, [*params, seq], fmt, masker)
    name = f"audit-log-{view.account_id or 'all'}-{now_iso().replace(':', '')}.{fmt}"
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    return StreamingResponse(
        chunks, media_type=media, headers={"content-disposition": f'attachment; filename="{name}"'}
    )


def _export_extra(request: Request, view: View, fmt: str) -> dict[str, Any]:
    filters = {k: v for k, v in request.query_params.items() if k in _FILTER_PARAMS}
    return {
        "format": fmt,
        "filters": filters,
        "scope": view.account_id or "all",
        "pii_masked": not view.pii_access,
    }


async def _export_chunks(request: Request, view: View, where: str, params: list[Any], fmt: str,
                         masker: audit_views.Masker | None) -> AsyncIterator[bytes]:  # fmt: skip
    """Pages of entries read on the worker thread (its own connection) in chain order; the rows are
    the stored columns, so a JSON or CSV export can be re-verified line by line (docs/audit.md)."""
    column, after, first = _order_column(view), 0, True
    sql = f"{_SELECT} {where} AND {column} > ? ORDER BY {column} LIMIT ?"
    yield (_csv_line(CSV_COLUMNS) if fmt == "csv" else "[").encode()
    while True:
        rows = await request.app.state.db.in_worker(
            lambda conn, a=after: fetch_all(conn, sql, [*params, a, EXPORT_PAGE])
        )
        if not rows:
            break
        after = rows[-1][column]
        if not view.pii_access:
            rows = [present_stored_row(r, masker) for r in rows]
        yield (_csv_rows(rows) if fmt == "csv" else _json_rows(rows, first)).encode()
        first = False
    if fmt == "json":
        yield b"\n]\n"


def _csv_line(values: Any) -> str:
    import csv  # exports only: not loaded by an idle server

    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    return out.getvalue()


def _csv_rows(rows: list[dict[str, Any]]) -> str:
    # Values are written exactly as stored (no spreadsheet-formula escaping): an audit export must be
    # byte-faithful to be verifiable. Open it in a spreadsheet as text.
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows(["" if r[c] is None else r[c] for c in CSV_COLUMNS] for r in rows)
    return out.getvalue()


def _json_rows(rows: list[dict[str, Any]], first: bool) -> str:
    encoded = ",\n".join(audit.encode_json_text(r) or "null" for r in rows)
    return ("\n" if first else ",\n") + encoded


# --- who may see what ---------------------------------------------------------------------------


class View(msgspec.Struct, frozen=True):
    auth: Auth
    account_id: str | None  # the one account this caller sees; None: every account (superadmin)
    pii_access: bool


async def _view(request: Request) -> View:
    auth = await require_account_admin(request)
    wanted = (request.query_params.get("account") or "").strip().upper() or None
    if wanted is not None and not ACCOUNT_ID_RE.fullmatch(wanted):
        raise ApiError(400, "bad_request", "Query parameter 'account' must be an account id.")
    if auth.is_superadmin:
        return View(auth, wanted, True)
    if wanted is not None and wanted != auth.account_id:
        raise ApiError(403, "forbidden", "Account admins read only their own account's audit trail.")
    conn = request.app.state.db.conn
    return View(auth, auth.account_id, "pii_access" in user_groups(conn, str(auth.user_id)))


def _shown(conn: apsw.Connection, view: View, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    entries = [audit_views.to_api(row) for row in rows]
    if view.pii_access:
        return entries
    return present_entries(entries, False, is_admin=True, masker=audit_views.schema_masker(conn))


def _order_column(view: View) -> str:
    # Within one account, chain position and seq have the same order, and (account_id, account_seq) is
    # an index: sorting by it avoids a sort of the whole account's log for every page.
    return "seq" if view.account_id is None else "account_seq"


def _descending(request: Request) -> bool:
    sort = request.query_params.get("sort", "-seq")
    if sort not in ("seq", "-seq", "occurred_at", "-occurred_at"):
        raise ApiError(400, "bad_request", "Query parameter 'sort' must be seq or -seq (newest first).")
    return sort.startswith("-")


# --- filters ------------------------------------------------------------------------------------

# query parameter -> column compared for equality
_EQUALS = {"collection": "collection", "record_id": "record_id", "user_id": "actor_user_id"}
_FILTER_PARAMS = ("collection", "record_id", "user_id", "action", "from", "to", "account")


def _filters(request: Request, view: View) -> tuple[str, list[Any]]:
    """WHERE clause and parameters from the list/export query parameters; values always bound.

    Without statistics SQLite prefers the chain index (it avoids a sort) even for one record's history,
    which would walk the whole account: a record_id filter names its own index."""
    clauses: list[str] = []
    params: list[Any] = []
    if view.account_id is not None:
        clauses.append("account_id = ?")
        params.append(view.account_id)
    query = request.query_params
    for name, column in _EQUALS.items():
        if query.get(name):
            clauses.append(f"{column} = ?")
            params.append(query[name])
    if query.get("action"):
        clauses.append(*_action_clause(query["action"], params))
    for name, op in (("from", ">="), ("to", "<=")):
        if query.get(name):
            clauses.append(f"occurred_at {op} ?")
            params.append(_timestamp(name, query[name]))
    if not clauses:
        return "", params
    # SQLite's index hint; PostgreSQL has none (and no need: its planner has statistics).
    sqlite = dialect.current.get() is dialect.SQLITE
    hint = "INDEXED BY audit_log_record " if query.get("record_id") and sqlite else ""
    return hint + "WHERE " + " AND ".join(clauses), params


def _action_clause(action: str, params: list[Any]) -> list[str]:
    """`record.update` matches exactly; `record.*` (or `record.`) every action of that family."""
    if action.endswith(".*") or action.endswith("."):
        prefix = action.rstrip("*")
        params.append(prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        return ["action LIKE ? ESCAPE '\\'"]
    params.append(action)
    return ["action = ?"]


def _timestamp(name: str, value: str) -> str:
    try:
        return format_ts(parse_ts(value))
    except (ValueError, OverflowError):  # OverflowError: an offset moves year 1 or 9999 out of range
        raise ApiError(
            400, "bad_request", f"Query parameter '{name}' must be an RFC 3339 timestamp."
        ) from None


routes = [
    ("GET", "/audit-log", list_entries),
    ("GET", "/audit-log/verify", verify_chains),
    ("GET", "/audit-log/export", export_entries),
    ("GET", "/audit-log/{seq}", get_entry),
]
