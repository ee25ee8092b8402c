"""The server on PostgreSQL, as far as it is ported (docs/scaling.md, "What works today").

`app.create_app` hands over here when SNACKBASE_DATABASE_URL is a postgresql:// URL. The app opens
PostgreSQL (migrating the system tables, once across nodes), answers the probes and the API root, and
answers every route that is not ported yet with 501 `not_on_postgresql` in the one error envelope: a
request never half-works on PostgreSQL. Settings that ask for work not ported yet (hook files, the
scheduled backups, metrics) refuse the start with one line.

As the port goes on, route tables move from "refused" to PORTED_TABLES; the request path (middleware,
error envelope) is the same module code as on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from snackbase import periodic, runtime_settings, versions
from snackbase.auth_middleware import AuthMiddleware
from snackbase.backends import NOT_PORTED_CODE, dialect, pg_realtime
from snackbase.backends.postgres import PgDatabase
from snackbase.collections import Registry
from snackbase.config import ConfigError, Settings, ensure_data_dir, with_secret_key
from snackbase.context import scope_caller
from snackbase.error_handlers import exception_handlers
from snackbase.errors import ApiError
from snackbase.hook_dispatch import HookDispatcher
from snackbase.hook_loader import HookMiddleware, serve_hooks, start_hooks, terminate_hooks
from snackbase.hook_records import RecordsHelper
from snackbase.hooks import hooks
from snackbase.macros import MacroStore
from snackbase.middleware import ExceptionHandlers, RequestMiddleware
from snackbase.ratelimit import Network, RateLimiter, RateLimitMiddleware, limits_from, parse_proxies
from snackbase.realtime import Broker, Limits
from snackbase.realtime_access import RecordGate
from snackbase.realtime_transport import install
from snackbase.routes import RouteTable, audit, collections, health, realtime, records, signatures
from snackbase.routes import accounts as accounts_routes
from snackbase.routes import auth as auth_routes
from snackbase.routes import groups as groups_routes
from snackbase.routes import invitations as invitations_routes
from snackbase.routes import roles as roles_routes
from snackbase.routes import user_admin as user_admin_routes
from snackbase.routes import users as users_routes
from snackbase.runtime_settings import RuntimeSettingsMiddleware
from snackbase.users import ensure_superadmin_from_settings

log = logging.getLogger("snackbase")

UI_PREFIX = "/_/"  # as in snackbase/app.py (not imported from there: app imports this module)
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def ported_tables() -> tuple[list[RouteTable], list[RouteTable]]:
    """(root tables, API tables) served on PostgreSQL today; every other route answers 501.

    Records come first, as on SQLite (they carry almost all traffic)."""
    return [health.root_routes], [
        records.routes,
        health.routes,
        collections.routes,
        signatures.routes,  # e-signatures and a record's history
        audit.routes,
        # Accounts, users, sessions and the rest of auth (app.auth_tables, not imported: app imports us).
        auth_routes.routes,
        users_routes.routes,
        groups_routes.routes,
        accounts_routes.routes,
        roles_routes.routes,
        invitations_routes.routes,
        user_admin_routes.routes,
        realtime.routes,  # fan-out between nodes over LISTEN/NOTIFY (backends/pg_realtime.py)
    ]


def refuse_unported_settings(settings: Settings) -> None:
    """A setting that asks for work not ported to PostgreSQL yet refuses the start, never ignored."""
    asked = {
        "hook files in " + str(settings.hooks_path): settings.hooks_path.is_dir()
        and any(settings.hooks_path.glob("*.py")),
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
    """Starlette with the same lean stack as app.SnackBaseApp (no ServerErrorMiddleware), realtime at
    the edge as there."""

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = ExceptionHandlers(self.router, self.exception_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return PostgresDialect(realtime.realtime_first(app, self.state.settings.api_prefix))


def create_postgres_app(settings: Settings) -> Starlette:
    """The app over PostgreSQL: the same request path, write path and read path as on SQLite (the
    modules are shared), with the route tables not ported yet answering 501."""
    refuse_unported_settings(settings)
    ensure_data_dir(settings)  # the generated secret key (outside production) lives there
    settings = with_secret_key(settings)
    versions.set_key(settings.secret_key)
    proxies = parse_proxies(settings.trusted_proxies)
    database = PgDatabase.open(settings.database_url, settings.statement_timeout_ms)
    token = dialect.current.set(dialect.POSTGRESQL)  # for what runs at start, below
    try:
        app = _build(settings, database, proxies)
    except BaseException:
        database.close()
        raise
    finally:
        dialect.current.reset(token)
    return app


def _build(settings: Settings, database: PgDatabase, proxies: tuple[Network, ...]) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dialect.current.set(dialect.POSTGRESQL)  # background work started here inherits it
        await serve_hooks(app)
        jobs = [asyncio.create_task(job) for job in periodic_jobs(database)]
        yield
        app.state.realtime.stop()  # open streams end now, not at the graceful-shutdown timeout
        for task in jobs:
            task.cancel()
        await terminate_hooks(app)
        database.close()
        log.info("PostgreSQL connection closed")

    root, api = ported_tables()
    routes: list[BaseRoute] = [
        Route(prefix + path, handler, methods=[method])
        for prefix, tables in (("", root), (settings.api_prefix, api))
        for table in tables
        for method, path, handler in table
        if method != "WS"
    ]
    routes += [
        WebSocketRoute(settings.api_prefix + path, handler)
        for table in api
        for method, path, handler in table
        if method == "WS"
    ]
    routes += [
        Route(settings.api_prefix + "/{path:path}", not_ported, methods=_METHODS),
        Route(UI_PREFIX + "{path:path}", not_ported, methods=_METHODS),
    ]
    middleware = [
        Middleware(RequestMiddleware, ui_prefix=UI_PREFIX, observer=None, trusted_proxies=proxies),
        Middleware(RuntimeSettingsMiddleware),
        Middleware(AuthMiddleware, prefix=settings.api_prefix),
    ]
    limiter = RateLimiter(limits_from(settings))
    if limiter.limits:  # per node, in memory, as per process on SQLite (docs/scaling.md)
        middleware.append(Middleware(RateLimitMiddleware, prefix=settings.api_prefix, limiter=limiter))
    middleware.append(Middleware(HookMiddleware))
    app = SnackBasePgApp(
        routes=routes,
        middleware=middleware,
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = database
    app.state.backend = "postgresql"
    app.state.route_tables = (root, api)
    runtime_settings.start(app, settings)
    app.state.registry = Registry()
    app.state.macros = MacroStore()
    app.state.realtime = realtime_broker(settings, database, app.state.registry)
    app.state.hooks = HookDispatcher(hooks, app, scope_caller, RecordsHelper)
    ensure_superadmin_from_settings(settings, database.conn)  # type: ignore[arg-type]
    start_hooks(app, settings.hooks_path)  # built-in hooks only: hook files are refused above
    return app


def realtime_broker(settings: Settings, database: PgDatabase, registry: Registry) -> Broker:
    """This node's realtime broker over LISTEN/NOTIFY (backends/pg_realtime.py): the same broker, gate
    and routes as on SQLite, another transport behind the same seam."""
    transport = pg_realtime.PgTransport(database.conn, settings.database_url)
    install(database.conn, transport)  # type: ignore[arg-type]  # the apsw-shaped adapter
    limits = Limits(settings.realtime_max_topics, settings.realtime_max_connections_per_user,
                    settings.realtime_max_connections_per_address, settings.realtime_send_queue,
                    settings.realtime_heartbeat_seconds)  # fmt: skip
    return Broker(transport, RecordGate(database.conn, registry), limits)  # type: ignore[arg-type]


def periodic_jobs(database: PgDatabase) -> list[Coroutine[Any, Any, None]]:
    """The periodic work of a node on PostgreSQL; each job runs on exactly one node at a time
    (snackbase/periodic.py: an advisory lock per job)."""
    conn = database.conn
    return [
        periodic.every(conn, pg_realtime.CLEANUP_JOB, pg_realtime.CLEANUP_SECONDS,
                       lambda: pg_realtime.cleanup(conn), at_start=True),
    ]  # fmt: skip


class PostgresDialect:
    """Outermost: every request of this app compiles its filters, rules and sorts for PostgreSQL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = dialect.current.set(dialect.POSTGRESQL)
        try:
            await self.app(scope, receive, send)
        finally:
            dialect.current.reset(token)


async def not_ported(request: Request) -> Response:
    raise ApiError(
        501,
        NOT_PORTED_CODE,
        "This part of SnackBase does not run on PostgreSQL yet; see docs/scaling.md for what does.",
    )
