"""The command line: `snackbase serve | info | init-db | shell | version | audit verify | collections …`.

The only module that imports click and uvicorn. Every failure a user can cause (a bad flag, an
unwritable data dir, a port in use, a corrupt .env, a database from a newer version) ends as one
line `snackbase: error: …` on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import apsw
import click

from snackbase import __version__
from snackbase.config import ConfigError, Settings, env_name, load_settings, setting_names, with_secret_key
from snackbase.db import fetch_all
from snackbase.migrations import SchemaTooNewError, current_version

# Errors a user can cause and fix; reported as one line.
_USER_ERRORS = (ConfigError, SchemaTooNewError, apsw.Error, OSError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except _USER_ERRORS as exc:
        raise click.ClickException(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, apsw.NotADBError):
        return "the database file is not a SQLite database (corrupt or another file?)"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def settings_from(**flags: Any) -> Settings:
    with user_errors():
        return load_settings(flags)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="snackbase", message="%(prog)s %(version)s")
def cli() -> None:
    """SnackBase: a backend in one file — REST API, admin UI and audit trail over SQLite."""


def data_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--data-dir", type=str, default=None, help="Data directory (default ./sb_data).")(fn)


def database_url_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    help_text = "postgresql://… runs on PostgreSQL instead of SQLite (docs/scaling.md)."
    return click.option("--database-url", type=str, default=None, help=help_text)(fn)


@cli.command()
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (default 8000).")
@data_dir_option
@database_url_option
@click.option("--workers", type=int, default=None, help="Server processes (default 1).")
@click.option("--reload", is_flag=True, help="Restart when the code changes (development).")
def serve(
    host: str | None,
    port: int | None,
    data_dir: str | None,
    database_url: str | None,
    workers: int | None,
    reload: bool,
) -> None:
    """Start the REST API and admin UI server."""
    from snackbase.app import create_app
    from snackbase.logs import configure_logging

    settings = settings_from(
        host=host, port=port, data_dir=data_dir, database_url=database_url, workers=workers
    )
    configure_logging(settings.log_level, settings.log_format)
    with user_errors():
        app = create_app(settings)  # creates the data dir and database, migrates, or fails here
        sock = bind_socket(settings.host, settings.port)
    base = f"http://{_display_host(settings.host)}:{sock.getsockname()[1]}"
    click.echo(
        f"SnackBase {__version__} serving\n  REST API: {base}{settings.api_prefix}\n  Admin UI: {base}/_/",
        err=True,
    )
    if settings.workers > 1 or reload:
        sock.close()
        app.state.db.close()
        if reload or settings.database_url:
            _run_factory(settings, reload)
        else:  # several processes on one SQLite file take turns at writing
            from snackbase import write_baton  # here: it imports asyncio, which other commands never need

            with write_baton.serving(settings.data_path):
                _run_factory(settings, reload)
    else:
        _run_app(app, sock)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio's loop sets TCP_NODELAY on accepted connections only when the socket
    # says it is TCP; without it, every small response waited ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (choose another with --port)"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    # log_config=None keeps our JSON logging; graceful shutdown waits at most 10 s for in-flight requests.
    # http: uvicorn's httptools protocol, whose parser-level 400 answers in the error envelope.
    from snackbase.http_protocol import EnvelopeHttpToolsProtocol, lazy_wsproto

    return {
        "http": EnvelopeHttpToolsProtocol,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,
        "timeout_graceful_shutdown": 10,
        "lifespan": "on",
        # wsproto for the realtime WebSocket: per idle connection it holds no task and no buffers of
        # its own (measured in docs/performance.md, "Realtime"); pings are our heartbeats. Imported on
        # the first upgrade (lazy_wsproto), not at start.
        "ws": lazy_wsproto,
        "ws_ping_interval": None,
        "loop": _loop_option(settings),
    }


def _loop_option(settings: Settings) -> str:
    """uvloop serves 5-10% more requests than asyncio's loop. One process accepts every waiting
    connection at once (snackbase.event_loops); several processes sharing the listening socket keep
    libuv's one connection per turn, which deals a burst of new connections out evenly among them
    (accepting all at once, the first process awake took all 32 of a benchmark's connections)."""
    if settings.event_loop == "asyncio":
        return "asyncio"
    return "snackbase.event_loops:uvloop_loop" if settings.workers == 1 else "uvloop"


def _run_app(app: Any, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, **_uvicorn_options(app.state.settings))
    uvicorn.Server(config).run(sockets=[sock])


def _run_factory(settings: Settings, reload: bool) -> None:
    """Several workers (or --reload) re-create the app in each process from SNACKBASE_* variables."""
    import uvicorn

    from snackbase.runtime_settings import EDITABLE

    # The real values, not redacted(): a worker given "********" as SNACKBASE_METRICS_TOKEN (or an SMTP
    # password) would refuse every scrape (or login to the mail server). Settings the console may change
    # come only from the environment or .env, which every worker reads again; exporting them would make
    # each look fixed by the environment there.
    for name in setting_names():
        value = getattr(settings, name)
        if name != "secret_key" and name not in EDITABLE:
            os.environ[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    os.environ[env_name("secret_key")] = settings.secret_key or with_secret_key(settings).secret_key
    uvicorn.run(
        "snackbase.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=None if reload else settings.workers,
        reload=reload,
        **_uvicorn_options(settings),
    )


@cli.command()
@data_dir_option
@database_url_option
def info(data_dir: str | None, database_url: str | None) -> None:
    """Show the effective settings (secrets redacted), the database state and the registered hooks."""
    settings = settings_from(data_dir=data_dir, database_url=database_url)
    out: dict[str, Any] = {"version": __version__, "settings": settings.redacted()}
    if settings.database_url:
        out["database"] = _postgres_info(settings)
        out["hooks"] = _hook_listing(settings)
        click.echo(json.dumps(out, indent=2))
        return
    out["database"] = {
        "backend": "sqlite",
        "path": str(settings.db_path),
        "exists": settings.db_path.is_file(),
    }
    if settings.db_path.is_file():
        with user_errors():
            conn = apsw.Connection(str(settings.db_path), flags=apsw.SQLITE_OPEN_READONLY)
            out["database"]["schema_version"] = current_version(conn)
            conn.close()
    out["hooks"] = _hook_listing(settings)
    click.echo(json.dumps(out, indent=2))


def _postgres_info(settings: Settings) -> dict[str, Any]:
    """The backend, the URL without its password, and the schema version when PostgreSQL answers."""
    from snackbase.backends import redact_url, require_driver

    with user_errors():
        require_driver()
    from snackbase.backends.postgres import ConnectionFailed, PgConnection, current_version

    out: dict[str, Any] = {"backend": "postgresql", "url": redact_url(settings.database_url)}
    try:
        conn = PgConnection(settings.database_url, settings.statement_timeout_ms)
    except ConnectionFailed as exc:
        out["reachable"], out["error"] = False, str(exc)
        return out
    try:
        out["reachable"], out["schema_version"] = True, current_version(conn)
        from snackbase.backends import macro_fence

        # The role custom SQL macros run as: its name, for an administrator who creates it by hand.
        fence = macro_fence.fence_of(conn)
        out["macro_role"] = {"name": macro_fence.role_name(conn), "ready": fence.role is not None}
    finally:
        conn.close()
    return out


def _hook_listing(settings: Settings) -> dict[str, Any]:
    """The built-ins and the hooks of the hook files, which run here as they would at start."""
    from snackbase.hook_loader import load_hook_files
    from snackbase.hooks import hooks

    with user_errors():
        files = load_hook_files(settings.hooks_path)
    return {"dir": str(settings.hooks_path), "files": [p.name for p in files],
            "registered": [hook.describe() for hook in hooks.registered()]}  # fmt: skip


@cli.command("init-db")
@data_dir_option
@click.option("--force", is_flag=True, help="Delete an existing database first.")
def init_db(data_dir: str | None, force: bool) -> None:
    """Create an empty database (refuses to wipe existing data without --force)."""
    from snackbase.app import open_database

    settings = settings_from(data_dir=data_dir)
    if settings.db_path.exists():
        if not force:
            raise click.ClickException(f"{settings.db_path} already exists; use --force to wipe it")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{settings.db_path}{suffix}")
    with user_errors():
        open_database(settings).close()
    click.echo(f"created {settings.db_path}")


@cli.command()
@data_dir_option
def shell(data_dir: str | None) -> None:
    """A Python shell with `settings`, `db` (apsw connection) and `q(sql, *params)`."""
    import code

    from snackbase.app import open_database

    settings = settings_from(data_dir=data_dir)
    with user_errors():
        database = open_database(settings)
    namespace = {
        "settings": settings,
        "db": database.conn,
        "q": lambda sql, *params: fetch_all(database.conn, sql, params),
    }
    try:
        code.interact(banner=f"SnackBase {__version__} shell: settings, db, q(sql, *params)", local=namespace)
    finally:
        database.close()


@cli.group()
def audit() -> None:
    """The audit trail: verify its hash chains."""


@audit.command("verify")
@data_dir_option
@database_url_option
@click.option("--account", default=None, help="Verify one account's chain only (default: every account).")
def audit_verify(data_dir: str | None, database_url: str | None, account: str | None) -> None:
    """Verify every audit hash chain offline; exit 1 naming the first broken entry."""
    from snackbase.audit import VerifyResult, verify

    settings = settings_from(data_dir=data_dir, database_url=database_url)
    result: VerifyResult
    if settings.database_url:
        result = _verify_postgres(settings, account.upper() if account else None)
    elif not settings.db_path.is_file():
        raise click.ClickException(f"no database at {settings.db_path}")
    else:
        with user_errors():
            # Read-write but never created or migrated: verify only reads, and WAL readers need the -shm file.
            conn = apsw.Connection(str(settings.db_path), flags=apsw.SQLITE_OPEN_READWRITE)
            try:
                if current_version(conn) < 3:
                    raise click.ClickException("the database predates the audit trail (schema version < 3)")
                result = verify(conn, account.upper() if account else None)
            finally:
                conn.close()
    if not result.ok:
        where = f"seq {result.first_bad_seq} (account {result.account_id})"
        raise click.ClickException(f"audit chain broken at {where}: {result.problem}")
    click.echo(f"ok, {result.entries_checked} entries")


def _verify_postgres(settings: Settings, account: str | None) -> Any:
    """`audit verify` against PostgreSQL: connects without migrating (verify only reads)."""
    from snackbase.audit import verify
    from snackbase.backends import require_driver

    with user_errors():
        require_driver()
        from snackbase.backends.postgres import PgConnection, current_version

        # Verifying millions of entries may take minutes: no per-statement budget here (as on SQLite).
        conn = PgConnection(settings.database_url, statement_timeout_ms=0)
        try:
            if current_version(conn) < 3:
                raise click.ClickException("the database has no audit trail (schema version < 3)")
            return verify(conn, account)  # type: ignore[arg-type]  # the apsw-shaped PgConnection
        finally:
            conn.close()


@cli.command("migrate")
@click.option("--from", "source", required=True, help="The SQLite deployment's data dir.")
@click.option("--to", "target", required=True, help="postgresql://… of an EMPTY database (or schema).")
def migrate_command(source: str, target: str) -> None:
    """Copy a SQLite deployment to an empty PostgreSQL and verify every audit chain on arrival."""
    from snackbase.backends import is_postgres, redact_url, require_driver

    settings = settings_from(data_dir=source)
    with user_errors():
        try:
            postgres_target = is_postgres(target)
        except ValueError:
            postgres_target = False
        if not postgres_target:
            raise ConfigError("--to must be a postgresql:// URL")
        require_driver()
        from snackbase.backends.move import move
        from snackbase.backends.postgres import PgConnection

        # Copying may take minutes: no per-statement budget (as `audit verify`).
        conn = PgConnection(target, statement_timeout_ms=0)
        try:
            report = move(settings.db_path, conn)
        finally:
            conn.close()
    for table, rows in sorted(report.tables.items()):
        click.echo(f"{table}: {rows} rows")
    click.echo(
        f"ok: copied to {redact_url(target)} in {report.seconds:.1f} s; {report.audit_entries} audit "
        f"entries, {report.accounts_verified} accounts' chains verified. File contents stay in "
        f"{settings.files_path if settings.files_storage == 'local' else 'the S3 bucket'} (not copied)."
    )


@cli.group("backup")
def backup_group() -> None:
    """Online backups: create, list, verify and restore archives (see docs/operations.md)."""


def _backup_errors() -> Any:
    from snackbase.backup import BackupError
    from snackbase.s3 import S3Error

    return _errors_as_lines((BackupError, S3Error, OSError))


@contextlib.contextmanager
def _archive_file(archive: str, data_dir: str | None) -> Iterator[Any]:
    """ARCHIVE as a local file: a path that exists, else an archive name in the archive store
    (SNACKBASE_BACKUP_STORAGE=s3: downloaded to a temporary file in the backup dir first)."""
    from pathlib import Path

    from snackbase import backup, backup_store

    if Path(archive).is_file():
        yield Path(archive)
        return
    store = backup_store.store_from(settings_from(data_dir=data_dir))
    if store.kind == "local" or not backup.NAME_RE.fullmatch(archive) or not store.exists(archive):
        raise click.ClickException(f"no archive {archive} (neither a file nor in {store.location()})")
    with store.fetched(archive) as path:
        yield path


@contextlib.contextmanager
def _errors_as_lines(kinds: tuple[type[BaseException], ...]) -> Iterator[None]:
    try:
        with user_errors():
            yield
    except kinds as exc:
        raise click.ClickException(str(exc)) from None


def _open_for_audit(settings: Settings) -> Any:
    """The deployment's database (SQLite's file or PostgreSQL), for the CLI's audit entries."""
    if settings.database_url:
        from snackbase.backends import require_driver

        require_driver()
        from snackbase.backends.postgres import PgDatabase

        return PgDatabase.open(settings.database_url, settings.statement_timeout_ms)
    from snackbase.app import open_database

    return open_database(settings)


@backup_group.command("create")
@data_dir_option
@database_url_option
@click.option("--to", "to", default=None, help="Directory for the archive (default SNACKBASE_BACKUP_DIR).")
def backup_create(data_dir: str | None, database_url: str | None, to: str | None) -> None:
    """Write a backup archive of the database, hooks and files; safe while the server runs."""
    from pathlib import Path

    from snackbase import audit as audit_trail
    from snackbase import backup, backup_pg, backup_store
    from snackbase.s3 import S3Error

    settings = settings_from(data_dir=data_dir, database_url=database_url)
    if not settings.database_url and not settings.db_path.is_file():
        raise click.ClickException(f"no database at {settings.db_path}")
    store = backup_store.LocalArchives(Path(to)) if to else backup_store.store_from(settings)
    target = Path(to) if to else settings.backups_path
    with _backup_errors():
        if settings.database_url:  # a logical dump of SnackBase's tables (docs/scaling.md)
            from snackbase.backends import require_driver

            require_driver()
            info = backup_pg.create_backup(
                settings.database_url, settings.hooks_path, settings.files_path, target, trigger="cli",
                include_files=settings.files_storage == "local",
            )  # fmt: skip
        else:
            info = backup.create_backup(
                settings.db_path, settings.hooks_path, settings.files_path, target, trigger="cli"
            )
        info = store.keep(info)
        try:
            pruned = [] if to else store.prune(settings.backup_keep)
        except (S3Error, OSError) as exc:  # the archive is stored: audit it all the same
            click.echo(f"retention failed: {exc}", err=True)
            pruned = []
        database = _open_for_audit(settings)
        try:
            extra = {**backup.audit_extra(info), "trigger": "cli", "pruned": pruned, "dir": store.location()}
            backup.audit_event(database.conn, "backup.create", audit_trail.CLI_ACTOR, extra)
        finally:
            database.close()
    click.echo(f"{store.location(info.name)} ({info.size} bytes)")


@backup_group.command("list")
@data_dir_option
def backup_list(data_dir: str | None) -> None:
    """List the archives in the backup dir (or the S3 bucket), newest first."""
    from snackbase import backup_store

    store = backup_store.store_from(settings_from(data_dir=data_dir))
    with _backup_errors():
        items = store.list_archives()
    for info in items:
        row = info.to_json()
        made = row["created_at"] or "(unreadable)"
        click.echo(f"{row['name']}  {row['size']:>12} bytes  {made}  {row['trigger'] or ''}")
    if not items:
        click.echo(f"no backups in {store.location()}", err=True)


@backup_group.command("verify")
@click.argument("archive")
@data_dir_option
def backup_verify(archive: str, data_dir: str | None) -> None:
    """Check an archive (a file, or a name in the S3 backup storage): checksums, SQLite integrity
    check, audit chains; exit 1 if any fails."""
    from snackbase import backup_pg

    with _backup_errors(), _archive_file(archive, data_dir) as path:
        report = backup_pg.verify_archive(path)  # an archive of either backend
    for check, ok, detail in report.checks:
        click.echo(f"{'ok  ' if ok else 'FAIL'}  {check}: {detail}")
    if not report.ok:
        raise click.ClickException(f"{archive} does not verify")


@backup_group.command("restore")
@click.argument("archive")
@data_dir_option
@database_url_option
@click.option("--force", is_flag=True, help="Replace an existing database (it is moved aside, not deleted).")
def backup_restore(archive: str, data_dir: str | None, database_url: str | None, force: bool) -> None:
    """Restore an archive (a file, or a name in the S3 backup storage) into the data dir (stop the
    server first); with --database-url, a PostgreSQL archive into an empty PostgreSQL database."""
    from pathlib import Path

    from snackbase import audit as audit_trail
    from snackbase import backup, backup_pg

    settings = settings_from(data_dir=data_dir, database_url=database_url)
    if settings.database_url and force:
        raise click.ClickException(
            "--force does not apply to PostgreSQL: restore into an empty database or schema "
            "(nothing is replaced)"
        )
    with _backup_errors():
        with _archive_file(archive, data_dir) as path:
            if settings.database_url:
                from snackbase.backends import require_driver

                require_driver()
                manifest = backup_pg.restore_backup(
                    path, settings.database_url, settings.data_path, settings.hooks_path
                )
            else:
                manifest = backup.restore_backup(path, settings.data_path, settings.hooks_path, force=force)
        database = _open_for_audit(settings)  # migrates an older archive's schema up to this version
        try:
            database_part = manifest["parts"].get(backup.DB_PART, {})
            extra = {"name": Path(archive).name, "created_at": manifest.get("created_at"),
                     "schema_version": manifest.get("schema_version"),
                     "database_sha256": database_part.get("sha256")}  # fmt: skip
            backup.audit_event(database.conn, "backup.restore", audit_trail.CLI_ACTOR, extra)
        finally:
            database.close()
    click.echo(f"restored {archive} (made {manifest.get('created_at')}) into {settings.data_path}")


@cli.group("collections")
def collections_group() -> None:
    """Collection definitions as JSON, for keeping the schema in git."""


@contextlib.contextmanager
def opened_database(settings: Settings) -> Iterator[Any]:
    """The deployment's database for one command, closed after it: the SQLite file in the data dir, or
    PostgreSQL when SNACKBASE_DATABASE_URL (--database-url) names one — with PostgreSQL's dialect for
    the SQL the command generates (collection tables, say)."""
    if not settings.database_url:
        from snackbase.app import open_database

        database: Any = open_database(settings)
        try:
            yield database
        finally:
            database.close()
        return
    from snackbase.backends import dialect, require_driver

    require_driver()
    from snackbase.backends.postgres import PgDatabase

    database = PgDatabase.open(settings.database_url, settings.statement_timeout_ms)
    token = dialect.current.set(dialect.POSTGRESQL)
    try:
        yield database
    finally:
        dialect.current.reset(token)
        database.close()


@collections_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@data_dir_option
@database_url_option
def collections_export(file: str, data_dir: str | None, database_url: str | None) -> None:
    """Write every collection definition to FILE (- for stdout)."""
    from snackbase.collections import Registry, export_definitions

    with user_errors():
        with opened_database(settings_from(data_dir=data_dir, database_url=database_url)) as database:
            text = json.dumps(export_definitions(database.conn, Registry()), indent=2) + "\n"
        click.open_file(file, "w").write(text)
    if file != "-":
        click.echo(f"exported to {file}", err=True)


@collections_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@data_dir_option
@database_url_option
def collections_import(file: str, data_dir: str | None, database_url: str | None) -> None:
    """Create or update collections from FILE; running it twice changes nothing the second time."""
    from snackbase import audit as audit_trail
    from snackbase.collections import ChangeContext, Registry, import_definitions
    from snackbase.errors import ApiError

    with user_errors():
        try:
            definitions = json.loads(click.open_file(file).read())
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        ctx = ChangeContext(
            audit_trail.CLI_ACTOR, audit_trail.RequestMeta(None, None, None), f"import of {file}"
        )
        with opened_database(settings_from(data_dir=data_dir, database_url=database_url)) as database:
            try:
                report = import_definitions(database.conn, Registry(), definitions, ctx)
            except ApiError as exc:
                details = "; ".join(f"{k}: {v['message']}" for k, v in exc.fields.items())
                raise click.ClickException(f"{exc.message} {details}".strip()) from None
    for outcome in ("created", "updated", "unchanged"):
        click.echo(f"{outcome}: {', '.join(report[outcome]) or '-'}")


@cli.group()
def superadmin() -> None:
    """Superadmins: users of the system account (SY0000) who manage every account."""


@superadmin.command("create")
@data_dir_option
@database_url_option
@click.option("--email", required=True, help="The superadmin's email (logs in with account `system`).")
@click.option("--password", default=None, help="The password (prompted without echo when omitted).")
@click.option("--force", is_flag=True, help="Reset the password of an existing superadmin.")
def superadmin_create(
    data_dir: str | None, database_url: str | None, email: str, password: str | None, force: bool
) -> None:
    """Create a superadmin, or with --force reset its password (ending its sessions)."""
    from snackbase.users import SuperadminError, create_superadmin

    settings = settings_from(data_dir=data_dir, database_url=database_url)
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    with user_errors(), opened_database(settings) as database:
        try:
            _, created = create_superadmin(settings, database.conn, email, password, force=force)
        except SuperadminError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"superadmin {email.strip().lower()} {'created' if created else 'password reset'}")


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI, printing any usage or user error as one line (click's default prints three)."""
    try:
        cli.main(args=argv, prog_name="snackbase", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"snackbase: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        sys.exit(130)
