"""create_app(settings): the database, the route tables, the error handlers, middleware, the admin UI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from starlette.applications import Starlette
from starlette.routing import Route

from snackbase import files, runtime_settings, versions
from snackbase.admin_ui import UI_PREFIX, admin_ui, admin_ui_redirect
from snackbase.collections import Registry
from snackbase.config import Settings, ensure_data_dir, load_settings, with_secret_key
from snackbase.context import scope_caller
from snackbase.db import Database
from snackbase.error_handlers import exception_handlers
from snackbase.hook_dispatch import HookDispatcher
from snackbase.hook_loader import serve_hooks, start_hooks, terminate_hooks
from snackbase.hook_records import RecordsHelper
from snackbase.hooks import hooks
from snackbase.macros import MacroStore
from snackbase.migrations import migrate, refuse_newer
from snackbase.ops import Ops
from snackbase.ratelimit import parse_proxies
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
from snackbase.routing import build_routes
from snackbase.stack import SnackBaseApp

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
    app = SnackBaseApp(
        routes=routes,
        ui_prefix=UI_PREFIX,
        observer=ops.observe if ops.observing else None,
        trusted_proxies=proxies,
        guard=ops.rate_guard(settings.api_prefix),
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
