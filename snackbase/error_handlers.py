"""The app's exception handlers: whatever a route raises — ApiError, a database error by kind,
Starlette's own 404/405 — answered in the one error envelope (both backends' apps use them)."""

from __future__ import annotations

from typing import Any

import apsw
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from snackbase.errors import ApiError, database_error, error_response


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, request_id(request))


async def handle_database_error(request: Request, exc: Exception) -> Response:
    return error_response(database_error(exc), request_id(request))


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 for unknown routes and methods, in the one envelope."""
    assert isinstance(exc, HTTPException)
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "allow"}
    if exc.status_code == 405:
        headers["allow"] = ", ".join(allowed_methods(request))
    return error_response(ApiError(exc.status_code, headers=headers), request_id(request))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path. Each route holds one method (build_routes), so
    Starlette's own Allow header names only the first route that matched the path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    order = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))


def exception_handlers() -> dict[Any, Any]:
    """The handler of every exception a route may raise, for `Starlette(exception_handlers=…)`.
    Database errors by kind, wherever they happen (reads too): busy → 503 busy, the statement budget
    → 503 statement_timeout, a constraint → 409 named by its result code (the PostgreSQL adapter
    raises the same apsw classes)."""
    return {
        ApiError: handle_api_error,
        HTTPException: handle_http_exception,
        apsw.BusyError: handle_database_error,
        apsw.InterruptError: handle_database_error,
        apsw.ConstraintError: handle_database_error,
    }
