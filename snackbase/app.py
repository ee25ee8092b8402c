"""create_app(settings): the database, the route tables, the error handlers, middleware, the admin UI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import apsw
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp

from snackbase.auth import AuthMiddleware
from snackbase.collections import Registry
from snackbase.config import Settings, ensure_data_dir, load_settings, with_secret_key
from snackbase.context import scope_caller
from snackbase.db import Database
from snackbase.errors import ApiError, database_error, error_response
from snackbase.hook_loader import HookMiddleware, serve_hooks, start_hooks, terminate_hooks
from snackbase.hook_records import RecordsHelper
from snackbase.hooks import hooks
from snackbase.macros import MacroStore
from snackbase.middleware import ExceptionHandlers, RequestMiddleware
from snackbase.migrations import migrate, refuse_newer
from snackbase.realtime import Broker, Limits
from snackbase.realtime_access import RecordGate
from snackbase.realtime_transport import SqliteTransport, install
from snackbase.routes import RouteTable, audit, collections, health, macros, realtime, records, signatures
from snackbase.routes import accounts as accounts_routes
from snackbase.routes import auth as auth_routes
from snackbase.routes import groups as groups_routes
from snackbase.routes import invitations as invitations_routes
from snackbase.routes import roles as roles_routes
from snackbase.routes import users as users_routes

log = logging.getLogger("snackbase")

UI_PREFIX = "/_/"


def api_tables() -> list[RouteTable]:
    """Every route table mounted under the API prefix; a new resource module is added here.

    Starlette tries routes in order, one regex each: the records routes, which carry almost all
    traffic, come first (measured: 12 matches and ~20 µs per record request when they came later)."""
    return [
        records.routes,
        health.routes,
        collections.routes,
        signatures.routes,
        macros.routes,
        audit.routes,
        realtime.routes,
        *auth_tables(),
    ]


def auth_tables() -> list[RouteTable]:
    return [
        auth_routes.routes,
        users_routes.routes,
        groups_routes.routes,
        accounts_routes.routes,
        roles_routes.routes,
        invitations_routes.routes,
    ]


def build_routes(prefix: str, tables: list[RouteTable]) -> list[BaseRoute]:
    built: list[BaseRoute] = []
    for table in tables:
        for method, path, handler in table:
            if method == "WS":
                built.append(WebSocketRoute(prefix + path, handler))
            else:
                built.append(Route(prefix + path, handler, methods=[method]))
    return built


def open_database(settings: Settings) -> Database:
    """Creates the data dir and database on first start and brings the schema up to date."""
    ensure_data_dir(settings)
    refuse_newer(settings.db_path)
    db = Database(settings.db_path, settings.statement_timeout_ms)
    try:
        migrate(db.conn)
    except Exception:
        db.close()
        raise
    return db


class SnackBaseApp(Starlette):
    """Starlette with a leaner middleware stack around the same router and middleware.

    Starlette wraps the app in ServerErrorMiddleware (outermost) and ExceptionMiddleware (innermost),
    each adding a coroutine around the app and around every `send`. RequestMiddleware, our outermost
    layer, already logs any unhandled exception and answers the enveloped 500, and ExceptionHandlers
    gives routes their error handlers without the wrapping: together ~3-5% of a create's time."""

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = ExceptionHandlers(self.router, self.exception_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return realtime.realtime_first(app, self.state.settings.api_prefix)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    ensure_data_dir(settings)
    settings = with_secret_key(settings)
    db = open_database(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await serve_hooks(app)
        db.checkpoint_in_background()
        optimizer = asyncio.create_task(db.optimize_periodically())
        yield
        app.state.realtime.stop()  # open streams end now, not at the graceful-shutdown timeout
        optimizer.cancel()
        await terminate_hooks(app)
        db.close()
        log.info("database closed after a WAL checkpoint")

    # The three probes first (load balancers call them often), then the API (see api_tables).
    routes = build_routes("", [health.root_routes]) + build_routes(settings.api_prefix, api_tables())
    routes += [Route(UI_PREFIX.rstrip("/"), admin_ui_redirect), Route(UI_PREFIX + "{path:path}", admin_ui)]
    middleware = [Middleware(RequestMiddleware, ui_prefix=UI_PREFIX)]
    if settings.cors_origin_list:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origin_list,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=["X-Request-ID"],
                max_age=600,
            )
        )
    middleware.append(Middleware(AuthMiddleware, prefix=settings.api_prefix))
    middleware.append(Middleware(HookMiddleware))  # inside auth: request hooks see the caller
    app = SnackBaseApp(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            ApiError: handle_api_error,
            HTTPException: handle_http_exception,
            # Errors by kind, wherever they happen (reads too): busy → 503 busy, the statement budget →
            # 503 statement_timeout, a constraint → 409 named by its result code.
            apsw.BusyError: handle_database_error,
            apsw.InterruptError: handle_database_error,
            apsw.ConstraintError: handle_database_error,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.registry = Registry()
    app.state.macros = MacroStore()
    app.state.realtime = realtime_broker(settings, db, app.state.registry)
    start_auth(settings, db)
    hooks.make_caller = scope_caller  # hook events get the request's one caller
    hooks.make_records = RecordsHelper  # and `event.records`, the same write path as the API
    with _close_on_error(db):  # a broken hook file refuses the start (one line in the CLI)
        start_hooks(app, settings.hooks_path)
    return app


@contextlib.contextmanager
def _close_on_error(db: Database) -> Iterator[None]:
    try:
        yield
    except Exception:
        db.close()
        raise


def realtime_broker(settings: Settings, db: Database, registry: Registry) -> Broker:
    """This process's realtime broker over the SQLite transport (see snackbase/realtime_transport.py)."""
    transport = SqliteTransport(db.conn)
    install(db.conn, transport)
    limits = Limits(settings.realtime_max_topics, settings.realtime_max_connections_per_user,
                    settings.realtime_max_connections_per_address, settings.realtime_send_queue)  # fmt: skip
    return Broker(transport, RecordGate(db.conn, registry), limits)


def start_auth(settings: Settings, db: Database) -> None:
    """Creates the SNACKBASE_SUPERADMIN_EMAIL superadmin if missing."""
    from snackbase.users import ensure_superadmin_from_settings

    ensure_superadmin_from_settings(settings, db.conn)


def create_app_from_env() -> Starlette:
    """Factory for uvicorn's worker processes and --reload (settings travel as SNACKBASE_* variables)."""
    return create_app(load_settings())


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
    headers = dict(exc.headers or {})
    return error_response(ApiError(exc.status_code, headers=headers), request_id(request))


def ui_dist_dir() -> Path | None:
    """The prebuilt admin UI: bundled in the package by build.py, or admin_ui/dist in a checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "ui_dist", package_dir.parent / "admin_ui" / "dist"):
        if (candidate / "index.html").is_file():
            return candidate
    return None


async def admin_ui_redirect(request: Request) -> Response:
    return Response(status_code=308, headers={"location": UI_PREFIX})


async def admin_ui(request: Request) -> Response:
    """Serves a file of the admin UI, or its index.html for the single-page app's own routes."""
    dist = ui_dist_dir()
    if dist is None:
        raise ApiError(404, message="The admin UI is not bundled in this build (run `make ui`).")
    relative = request.path_params["path"] or "index.html"
    target = (dist / relative).resolve()
    if not target.is_relative_to(dist.resolve()) or not target.is_file():
        if "." in relative.rsplit("/", 1)[-1]:  # a missing asset, not an app route
            raise ApiError(404)
        target = dist / "index.html"
    cache = "no-cache" if target.name == "index.html" else "public, max-age=31536000, immutable"
    return FileResponse(target, headers={"cache-control": cache})
