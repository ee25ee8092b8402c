"""create_app(settings): the database, the route tables, the error handlers, middleware, the admin UI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp

from snackbase import files, runtime_settings, versions
from snackbase.admin_ui import UI_PREFIX, admin_ui, admin_ui_redirect
from snackbase.auth_middleware import AuthMiddleware
from snackbase.collections import Registry
from snackbase.config import Settings, ensure_data_dir, load_settings, with_secret_key
from snackbase.context import scope_caller
from snackbase.db import Database
from snackbase.error_handlers import exception_handlers
from snackbase.hook_dispatch import HookDispatcher
from snackbase.hook_loader import HookMiddleware, serve_hooks, start_hooks, terminate_hooks
from snackbase.hook_records import RecordsHelper
from snackbase.hooks import hooks
from snackbase.macros import MacroStore
from snackbase.middleware import ExceptionHandlers, RequestMiddleware
from snackbase.migrations import migrate, refuse_newer
from snackbase.ops import Ops
from snackbase.ratelimit import RateLimitMiddleware, parse_proxies
from snackbase.realtime import Broker, Limits
from snackbase.realtime_access import RecordGate
from snackbase.realtime_transport import SqliteTransport, install
from snackbase.routes import (
    RouteTable,
    audit,
    collections,
    docs,
    health,
    macros,
    realtime,
    records,
    signatures,
)
from snackbase.routes import accounts as accounts_routes
from snackbase.routes import auth as auth_routes
from snackbase.routes import backups as backups_routes
from snackbase.routes import files as files_routes
from snackbase.routes import groups as groups_routes
from snackbase.routes import invitations as invitations_routes
from snackbase.routes import logs as logs_routes
from snackbase.routes import metrics as metrics_routes
from snackbase.routes import profiles as profiles_routes
from snackbase.routes import roles as roles_routes
from snackbase.routes import settings as settings_routes
from snackbase.routes import transfer as transfer_routes
from snackbase.routes import user_admin as user_admin_routes
from snackbase.routes import users as users_routes
from snackbase.routing import IndexedRouter, LeanRoute
from snackbase.runtime_settings import RuntimeSettingsMiddleware

log = logging.getLogger("snackbase")


def api_tables() -> list[RouteTable]:
    """Every route table mounted under the API prefix; a new resource module is added here.

    Starlette tries routes in order, one regex each: the records routes, which carry almost all
    traffic, come first (measured: 12 matches and ~20 µs per record request when they came later)."""
    return [
        records.routes,
        files_routes.routes,
        health.routes,
        transfer_routes.routes,  # before collections: /collections/export is not /collections/{name}
        collections.routes,
        signatures.routes,
        macros.routes,
        audit.routes,
        docs.routes,
        settings_routes.routes,
        profiles_routes.routes,
        realtime.routes,
        *auth_tables(),
        backups_routes.routes,
        logs_routes.routes,
    ]


def root_tables() -> list[RouteTable]:
    """Routes outside the API prefix: the probes (load balancers call them often), the docs page and
    the Prometheus metrics (mounted only when SNACKBASE_METRICS_ENABLED is on)."""
    return [health.root_routes, docs.root_routes, metrics_routes.root_routes]


def auth_tables() -> list[RouteTable]:
    return [
        auth_routes.routes,
        users_routes.routes,
        groups_routes.routes,
        accounts_routes.routes,
        roles_routes.routes,
        invitations_routes.routes,
        user_admin_routes.routes,
    ]


def build_routes(prefix: str, tables: list[RouteTable]) -> list[BaseRoute]:
    built: list[BaseRoute] = []
    for table in tables:
        for method, path, handler in table:
            if method == "WS":
                built.append(WebSocketRoute(prefix + path, handler))
            else:
                built.append(LeanRoute(prefix + path, handler, methods=[method]))
    return built


def open_database(settings: Settings) -> Database:
    """Creates the data dir and database on first start and brings the schema up to date."""
    ensure_data_dir(settings)
    refuse_newer(settings.db_path)
    db = Database(settings.db_path, settings.statement_timeout_ms, loop_budget_ms=settings.loop_budget_ms,
                  readers=settings.db_readers)  # fmt: skip
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
    gives routes their error handlers without the wrapping: together ~3-5% of a create's time. The
    router tries only the routes a path's first segments allow (routing.py)."""

    def __init__(self, routes: list[BaseRoute], **kwargs: Any) -> None:
        super().__init__(routes=routes, **kwargs)
        self.router = IndexedRouter(routes, lifespan=kwargs.get("lifespan"))

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = ExceptionHandlers(self.router, self.exception_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return realtime.realtime_first(app, self.state.settings.api_prefix)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    if settings.database_url:  # PostgreSQL: its driver is imported only then (docs/scaling.md)
        from snackbase.backends import require_driver

        require_driver()
        from snackbase.backends.server import create_postgres_app

        return create_postgres_app(settings)
    ensure_data_dir(settings)
    settings = with_secret_key(settings)
    versions.set_key(settings.secret_key)
    db = open_database(settings)
    with _close_on_error(db):  # a bad backup schedule or proxy list refuses the start
        ops = Ops(settings, db)
        proxies = parse_proxies(settings.trusted_proxies)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await serve_hooks(app)
        db.checkpoint_in_background()
        optimizer = asyncio.create_task(db.optimize_periodically())
        await ops.start()
        sweeper = asyncio.create_task(files.sweep_every(db.conn))
        yield
        app.state.realtime.stop()  # open streams end now, not at the graceful-shutdown timeout
        sweeper.cancel()
        optimizer.cancel()
        await ops.stop()
        await terminate_hooks(app)
        db.close()
        log.info("database closed after a WAL checkpoint")

    # The three probes first (load balancers call them often), then the API (see api_tables).
    root = [t for t in root_tables() if t is not metrics_routes.root_routes or settings.metrics_enabled]
    routes = build_routes("", root) + build_routes(settings.api_prefix, api_tables())
    routes += [Route(UI_PREFIX.rstrip("/"), admin_ui_redirect), Route(UI_PREFIX + "{path:path}", admin_ui)]
    observer = ops.observe if ops.observing else None
    middleware = [
        Middleware(RequestMiddleware, ui_prefix=UI_PREFIX, observer=observer, trusted_proxies=proxies)
    ]
    # Settings changed in the console reach every process; CORS answers for the current origins.
    middleware.append(Middleware(RuntimeSettingsMiddleware))
    middleware.append(Middleware(AuthMiddleware, prefix=settings.api_prefix))
    if ops.limiter.limits:  # inside auth: signed-in callers are limited per user
        middleware.append(
            Middleware(RateLimitMiddleware, prefix=settings.api_prefix, limiter=ops.limiter,
                       on_limited=ops.count_rate_limited)
        )  # fmt: skip
    middleware.append(Middleware(HookMiddleware))  # inside auth: request hooks see the caller
    app = SnackBaseApp(
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.route_tables = (root, api_tables())  # what /openapi.json describes
    runtime_settings.start(app, settings)
    app.state.ops = ops
    app.state.registry = Registry()
    app.state.macros = MacroStore()
    app.state.realtime = realtime_broker(settings, db, app.state.registry)
    start_auth(settings, db)
    with _close_on_error(db):
        start_files(settings, db)
    # The app's view of the hook registry: its events get this app's settings, connection, the
    # request's one caller, and `event.records` on the same write path as the API.
    app.state.hooks = HookDispatcher(hooks, app, scope_caller, RecordsHelper)
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
                    settings.realtime_max_connections_per_address, settings.realtime_send_queue,
                    settings.realtime_heartbeat_seconds)  # fmt: skip
    return Broker(transport, RecordGate(db.conn, registry), limits)


def start_auth(settings: Settings, db: Database) -> None:
    """Creates the SNACKBASE_SUPERADMIN_EMAIL superadmin if missing."""
    from snackbase.users import ensure_superadmin_from_settings

    ensure_superadmin_from_settings(settings, db.conn)


def start_files(settings: Settings, db: Database) -> None:
    """Attaches the file storage to the database connection and sweeps what a crash left behind."""
    files.start(settings, db.conn)


def create_app_from_env() -> Starlette:
    """Factory for uvicorn's worker processes and --reload (settings travel as SNACKBASE_* variables)."""
    return create_app(load_settings())
