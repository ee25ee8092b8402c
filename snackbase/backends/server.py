"""The server on PostgreSQL (docs/scaling.md).

`app.create_app` hands over here when SNACKBASE_DATABASE_URL is a postgresql:// URL. The app opens
PostgreSQL (migrating the system tables, once across nodes) and serves the same route tables as the
SQLite app, through the same request path (middleware, error envelope), write path and read path: the
modules are shared. What differs lives beside them: the macros' fence (`macro_fence`), realtime
between nodes (`pg_realtime`), periodic work claimed by one node (`snackbase/periodic.py`), backups as
a logical dump (`snackbase/backup_pg.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from snackbase import files, periodic, runtime_settings, versions
from snackbase.admin_ui import UI_PREFIX, admin_ui, admin_ui_redirect
from snackbase.backends import dialect, macro_fence, pg_realtime
from snackbase.backends.postgres import PgDatabase
from snackbase.collections import Registry
from snackbase.config import Settings, ensure_data_dir, with_secret_key
from snackbase.context import scope_caller
from snackbase.error_handlers import exception_handlers
from snackbase.hook_dispatch import HookDispatcher
from snackbase.hook_loader import serve_hooks, start_hooks, terminate_hooks
from snackbase.hook_records import RecordsHelper
from snackbase.hooks import hooks
from snackbase.macros import MacroStore
from snackbase.ops import Ops
from snackbase.ratelimit import Network, parse_proxies
from snackbase.realtime import Broker, Limits
from snackbase.realtime_access import RecordGate
from snackbase.realtime_transport import install
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
from snackbase.users import ensure_superadmin_from_settings

log = logging.getLogger("snackbase")


def ported_tables() -> tuple[list[RouteTable], list[RouteTable]]:
    """(root tables, API tables) served on PostgreSQL: every table of the SQLite app (a test keeps the
    two in step). Records come first, as on SQLite (they carry almost all traffic)."""
    return [health.root_routes, docs.root_routes], [
        records.routes,  # with aggregates
        files_routes.routes,
        health.routes,
        transfer_routes.routes,  # before collections: /collections/export is not /collections/{name}
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
        backups_routes.routes,  # a logical dump (snackbase/backup_pg.py)
        logs_routes.routes,  # each node's request log, in its own SQLite file as on SQLite
        profiles_routes.routes,  # user profiles and their file fields (an avatar)
        macros.routes,  # custom SQL macros, in macro_fence's role and read-only transaction
        settings_routes.routes,  # the console's run-time settings
        docs.routes,  # /openapi.json: the routes of this table and the collections
        realtime.routes,  # fan-out between nodes over LISTEN/NOTIFY (backends/pg_realtime.py)
    ]


def create_postgres_app(settings: Settings) -> Starlette:
    """The app over PostgreSQL: the same request path, write path and read path as on SQLite (the
    modules are shared), and the same ASGI stack (snackbase/stack.py) inside the PostgreSQL dialect."""
    ensure_data_dir(settings)  # the generated secret key (outside production) lives there
    settings = with_secret_key(settings)
    versions.set_key(settings.secret_key)
    proxies = parse_proxies(settings.trusted_proxies)
    database = PgDatabase.open(settings.database_url, settings.statement_timeout_ms, settings.db_readers)
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
    # Metrics, this node's request log, backups (a logical dump: snackbase/backup_pg.py) and their
    # schedule: the same Ops as on SQLite. A bad backup schedule refuses the start.
    ops = Ops(settings, database)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dialect.current.set(dialect.POSTGRESQL)  # background work started here inherits it
        await serve_hooks(app)
        await ops.start()
        jobs = [asyncio.create_task(job) for job in periodic_jobs(database)]
        yield
        app.state.realtime.stop()  # open streams end now, not at the graceful-shutdown timeout
        for task in jobs:
            task.cancel()
        await ops.stop()
        await terminate_hooks(app)
        database.close()
        log.info("PostgreSQL connection closed")

    root, api = ported_tables()
    if settings.metrics_enabled:
        root = [*root, metrics_routes.root_routes]
    routes = build_routes("", root) + build_routes(settings.api_prefix, api)
    # The admin UI: the same static app as on SQLite.
    routes += [Route(UI_PREFIX.rstrip("/"), admin_ui_redirect), Route(UI_PREFIX + "{path:path}", admin_ui)]
    app = SnackBaseApp(
        routes=routes,
        ui_prefix=UI_PREFIX,
        observer=ops.observe if ops.observing else None,
        trusted_proxies=proxies,
        guard=ops.rate_guard(settings.api_prefix),
        wrap=PostgresDialect,
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = database
    app.state.backend = "postgresql"
    app.state.route_tables = (root, api)
    app.state.ops = ops
    runtime_settings.start(app, settings)
    app.state.registry = Registry()
    app.state.macros = MacroStore()
    macro_fence.setup(database.conn)  # the macros' role; without the rights to make it, macros are off
    app.state.realtime = realtime_broker(settings, database, app.state.registry)
    app.state.hooks = HookDispatcher(hooks, app, scope_caller, RecordsHelper)
    ensure_superadmin_from_settings(settings, database.conn)  # type: ignore[arg-type]
    start_files(settings, database)
    start_hooks(app, settings.hooks_path)  # a broken hook file refuses the start (one line in the CLI)
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
        files.sweep_every(conn),  # type: ignore[arg-type]  # the apsw-shaped adapter
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


def start_files(settings: Settings, database: PgDatabase) -> None:
    """The file storage, as on SQLite. Nodes share no disk: local storage serves one node; several need
    the S3-compatible storage or one volume mounted by all (docs/scaling.md), which a node cannot see
    from here, so the start says so in the log rather than refusing a single node."""
    if settings.files_storage == "local":
        log.warning(
            "file storage is local (%s): with more than one node on this database, use "
            "SNACKBASE_FILES_STORAGE=s3 or mount one shared volume at that path on every node",
            settings.files_path,
        )
    files.start(settings, database.conn)
