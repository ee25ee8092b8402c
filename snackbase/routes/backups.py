"""/backups (superadmins): make, list, download, verify and delete backup archives.

Archives live in the archive store (snackbase.backup_store: the backup dir, or the S3 bucket with
SNACKBASE_BACKUP_STORAGE=s3); the name in the path is checked against the archive name pattern
before it touches the file system or the bucket; a failing S3 store answers 503
`backup_storage_failed`. Making, downloading and deleting an archive are audited in the system
account's chain. Restoring is a command-line job
(`snackbase backup restore`): it replaces the database a running server has open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from snackbase import audit_views, backup
from snackbase.auth import require_superadmin
from snackbase.backup_store import ArchiveStore, StorageError
from snackbase.errors import ApiError
from snackbase.ops import Ops
from snackbase.s3 import S3Error
from snackbase.times import format_ts
from snackbase.web import json_response, no_content


def _ops(request: Request) -> Ops:
    ops: Ops = request.app.state.ops
    return ops


T = TypeVar("T")


def _store(request: Request) -> ArchiveStore:
    return _ops(request).archives


async def _storage(call: Callable[[], Awaitable[T]]) -> T:
    """A call to the archive store, its S3 failures as one 503 (the bucket, not the caller, failed)."""
    try:
        return await call()
    except (S3Error, OSError) as exc:  # OSError: the endpoint cannot be reached
        raise ApiError(503, "backup_storage_failed", f"The backup storage failed: {exc}") from None
    except StorageError as exc:
        raise ApiError(503, "backup_storage_failed", str(exc)) from None


async def _archive(request: Request) -> str:
    name = request.path_params["name"]
    store = _store(request)
    if not backup.NAME_RE.fullmatch(name) or not await _storage(
        lambda: asyncio.to_thread(store.exists, name)
    ):
        raise ApiError(404, "not_found", "No backup archive with this name.")
    return str(name)


async def list_backups(request: Request) -> Response:
    await require_superadmin(request)
    ops = _ops(request)
    items = await _storage(lambda: asyncio.to_thread(ops.archives.list_archives))
    state = ops.backups
    return json_response(
        {
            "items": [i.to_json() for i in items],
            "running": state.running,
            "last_error": state.last_error,
            "schedule": {
                "cron": ops.settings.backup_cron or None,
                "keep": ops.settings.backup_keep,
                "next_run": format_ts(state.next_run) if state.next_run else None,
                "dir": ops.archives.location(),
                "storage": ops.archives.kind,
            },
        }
    )


async def create(request: Request) -> Response:
    auth = await require_superadmin(request)
    ops = _ops(request)
    if ops.backups.running:
        raise ApiError(409, "backup_running", "A backup is already running; try again when it has finished.")
    info = await _storage(
        lambda: ops.create_backup(
            "manual", audit_views.actor_from_auth(auth), audit_views.meta_from_request(request)
        )
    )
    return json_response(info.to_json(), status=201)


async def download(request: Request) -> Response:
    auth = await require_superadmin(request)
    name = await _archive(request)
    store = _store(request)
    info = await _storage(lambda: asyncio.to_thread(store.info, name))
    backup.audit_event(
        request.app.state.db.conn, "backup.download", audit_views.actor_from_auth(auth),
        backup.audit_extra(info), audit_views.meta_from_request(request),
    )  # fmt: skip
    path = store.local_path(name)
    if path is not None:
        return FileResponse(path, media_type="application/x-tar", filename=name)
    return StreamingResponse(
        store.chunks(name),
        media_type="application/x-tar",
        headers={"content-length": str(info.size), "content-disposition": f'attachment; filename="{name}"'},
    )


async def verify(request: Request) -> Response:
    await require_superadmin(request)
    name = await _archive(request)
    store = _store(request)

    def run() -> backup.VerifyReport:
        from snackbase import backup_pg  # the PostgreSQL backup's code stays out of an idle SQLite server

        with store.fetched(name) as path:
            return backup_pg.verify_archive(path)  # either backend's archive

    try:
        report = await _storage(lambda: asyncio.to_thread(run))
    except backup.BackupError as exc:
        return json_response({"ok": False, "checks": [{"check": "archive", "ok": False, "detail": str(exc)}]})
    return json_response(report.to_json())


async def delete(request: Request) -> Response:
    auth = await require_superadmin(request)
    name = await _archive(request)
    store = _store(request)
    try:
        info = await _storage(lambda: asyncio.to_thread(store.info, name))
        extra = backup.audit_extra(info)
    except backup.BackupError:
        extra = {"name": name}
    actor, meta = audit_views.actor_from_auth(auth), audit_views.meta_from_request(request)
    conn = request.app.state.db.conn
    if store.kind == "local":
        # The entry exists exactly when the file is gone: the unlink runs inside its transaction.
        backup.audit_event(conn, "backup.delete", actor, extra, meta, during=lambda: store.delete(name))
    else:
        # An S3 delete cannot be rolled back and must not hold the write lock over a network call:
        # the object goes first (a failure answers 503 and audits nothing), then its entry.
        await _storage(lambda: asyncio.to_thread(store.delete, name))
        backup.audit_event(conn, "backup.delete", actor, extra, meta)
    return no_content()


routes = [
    ("GET", "/backups", list_backups),
    ("POST", "/backups", create),
    ("GET", "/backups/{name}", download),
    ("POST", "/backups/{name}/verify", verify),
    ("DELETE", "/backups/{name}", delete),
]
