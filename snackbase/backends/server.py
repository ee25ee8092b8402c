"""The server on PostgreSQL, as far as it is ported (docs/scaling.md, "What works today").

`app.create_app` hands over here when SNACKBASE_DATABASE_URL is a postgresql:// URL. The app opens
PostgreSQL (migrating the system tables, once across nodes), answers the probes and the API root, and
answers every route that is not ported yet with 501 `not_on_postgresql` in the one error envelope: a
request never half-works on PostgreSQL. Settings that ask for work not ported yet (hook files, the
superadmin created at start, scheduled backups, metrics) refuse the start with one line.

As the port goes on, route tables move from "refused" to PORTED_TABLES; the request path (middleware,
error envelope) is the same module code as on SQLite.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from snackbase.backends.postgres import PgDatabase
from snackbase.config import ConfigError, Settings
from snackbase.errors import ApiError, error_response
from snackbase.middleware import ExceptionHandlers, RequestMiddleware
from snackbase.ratelimit import parse_proxies
from snackbase.routes import RouteTable, health

log = logging.getLogger("snackbase")

NOT_PORTED_CODE = "not_on_postgresql"  # docs/errors.md
UI_PREFIX = "/_/"  # as in snackbase/app.py (not imported from there: app imports this module)
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def ported_tables() -> tuple[list[RouteTable], list[RouteTable]]:
    """(root tables, API tables) served on PostgreSQL today; every other route answers 501."""
    return [health.root_routes], [health.routes]


def refuse_unported_settings(settings: Settings) -> None:
    """A setting that asks for work not ported to PostgreSQL yet refuses the start, never ignored."""
    asked = {
        "hook files in " + str(settings.hooks_path): settings.hooks_path.is_dir()
        and any(settings.hooks_path.glob("*.py")),
        "SNACKBASE_SUPERADMIN_EMAIL": bool(settings.superadmin_email),
        "SNACKBASE_BACKUP_CRON": bool(settings.backup_cron),
        "SNACKBASE_METRICS_ENABLED": settings.metrics_enabled,
    }
    named = [name for name, on in asked.items() if on]
    if named:
        raise ConfigError(
            f"not yet supported on PostgreSQL: {', '.join(named)} (see docs/scaling.md); "
            "unset it or run on SQLite"
        )


class SnackBasePgApp(Starlette):
    """Starlette with the same lean stack as app.SnackBaseApp (no ServerErrorMiddleware)."""

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = ExceptionHandlers(self.router, self.exception_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


def create_postgres_app(settings: Settings) -> Starlette:
    refuse_unported_settings(settings)
    proxies = parse_proxies(settings.trusted_proxies)
    database = PgDatabase.open(settings.database_url, settings.statement_timeout_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        database.close()
        log.info("PostgreSQL connection closed")

    root, api = ported_tables()
    routes: list[BaseRoute] = [
        Route(prefix + path, handler, methods=[method])
        for prefix, tables in (("", root), (settings.api_prefix, api))
        for table in tables
        for method, path, handler in table
    ]
    routes += [
        Route(settings.api_prefix + "/{path:path}", not_ported, methods=_METHODS),
        Route(UI_PREFIX + "{path:path}", not_ported, methods=_METHODS),
    ]
    app = SnackBasePgApp(
        routes=routes,
        middleware=[
            Middleware(RequestMiddleware, ui_prefix=UI_PREFIX, observer=None, trusted_proxies=proxies)
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = database
    app.state.backend = "postgresql"
    app.state.route_tables = (root, api)
    return app


async def not_ported(request: Request) -> Response:
    raise ApiError(
        501,
        NOT_PORTED_CODE,
        "This part of SnackBase does not run on PostgreSQL yet; see docs/scaling.md for what does.",
    )


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, _request_id(request))


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (a path outside the API and the UI), in the one envelope."""
    assert isinstance(exc, HTTPException)
    return error_response(ApiError(exc.status_code), _request_id(request))
