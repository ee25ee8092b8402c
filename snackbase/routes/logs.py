"""/logs/requests (superadmins): the request log (snackbase.requestlog), newest first, with filters,
and its requests per minute for the admin UI's chart. Both read the separate requests.db on the
request log's own thread, never the main database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from snackbase import requestlog
from snackbase.auth import require_superadmin
from snackbase.errors import ApiError
from snackbase.listing import decode_cursor, encode_cursor, paging
from snackbase.times import format_ts, parse_ts
from snackbase.web import json_response

MAX_PER_PAGE = 500
MAX_CHART_MINUTES = 7 * 24 * 60
_STATUS = re.compile(r"([1-5])(?:xx|XX)|([1-5][0-9]{2})")


def _log(request: Request) -> requestlog.RequestLog:
    log = request.app.state.ops.request_log
    if log is None:
        raise ApiError(404, "request_log_off", "The request log is off (SNACKBASE_REQUEST_LOG_DAYS=0).")
    assert isinstance(log, requestlog.RequestLog)
    return log


def _time_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return format_ts(parse_ts(raw))
    except ValueError:
        raise ApiError(
            400, "bad_request", f"Query parameter '{name}' must be an RFC 3339 timestamp."
        ) from None


def _filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    filters: dict[str, Any] = {n: q[n][:256] for n in requestlog.EXACT_FILTERS if q.get(n)}
    if "method" in filters:
        filters["method"] = filters["method"].upper()
    if raw := q.get("status"):
        match = _STATUS.fullmatch(raw)
        if match is None:
            raise ApiError(
                400,
                "bad_request",
                "Query parameter 'status' must be a code such as 404 or a class such as 5xx.",
            )
        low = int(match[1]) * 100 if match[1] else int(match[2])
        filters["status"] = (low, low + 99 if match[1] else low)
    filters["since"] = _time_param(request, "since")
    filters["until"] = _time_param(request, "until")
    return filters


async def list_requests(request: Request) -> Response:
    await require_superadmin(request)
    log = _log(request)
    filters = _filters(request)
    page = paging(request)  # the same parameters and cursor rules as every list; always keyset here
    if page.after:
        (last_id,) = decode_cursor(page.after, _CURSOR_TAG, 1)
        if not isinstance(last_id, int) or isinstance(last_id, bool):
            raise ApiError(
                400, "invalid_cursor", "The cursor is not valid for this query; start again with after=."
            )
        filters["after"] = last_id
    await log.flush()  # what was just answered is in the list
    rows = await log.on_thread(lambda conn: requestlog.list_requests(conn, filters, page.per_page + 1))
    more = len(rows) > page.per_page
    rows = rows[: page.per_page]
    cursor = encode_cursor(_CURSOR_TAG, [rows[-1]["id"]]) if more else None
    return json_response({"items": rows, "next_cursor": cursor})


_CURSOR_TAG = "request-log:-id"


async def per_minute(request: Request) -> Response:
    """Requests per minute over [since, until) (default: the last hour), at most seven days."""
    await require_superadmin(request)
    log = _log(request)
    filters = _filters(request)
    now = datetime.now(UTC)
    until = parse_ts(filters["until"]) if filters["until"] else now
    since = parse_ts(filters["since"]) if filters["since"] else until - timedelta(hours=1)
    if since >= until or until - since > timedelta(minutes=MAX_CHART_MINUTES):
        raise ApiError(400, "bad_request", "'since' must be before 'until' and at most seven days earlier.")
    filters["since"], filters["until"] = format_ts(since), format_ts(until)
    await log.flush()
    rows = await log.on_thread(lambda conn: requestlog.per_minute(conn, filters))
    return json_response({"since": filters["since"], "until": filters["until"], "items": rows})


routes = [
    ("GET", "/logs/requests", list_requests),
    ("GET", "/logs/requests/per-minute", per_minute),
]
