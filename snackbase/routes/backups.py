"""/backups (superadmins): make, list, download, verify and delete backup archives.

Every archive lives in the backup dir (SNACKBASE_BACKUP_DIR); the name in the path is checked
against the archive name pattern before it touches the file system. Making, downloading and
deleting an archive are audited in the system account's chain. Restoring is a command-line job
(`snackbase backup restore`): it replaces the database a running server has open.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from snackbase import audit_views, backup
from snackbase.auth import require_superadmin
from snackbase.errors import ApiError
from snackbase.ops import Ops
from snackbase.times import format_ts
from snackbase.web import json_response, no_content


def _ops(request: Request) -> Ops:
    ops: Ops = request.app.state.ops
    return ops


def _archive(request: Request) -> Path:
    name = request.path_params["name"]
    path = _ops(request).settings.backups_path / name
    if not backup.NAME_RE.fullmatch(name) or not path.is_file():
        raise ApiError(404, "not_found", "No backup archive with this name.")
    return path


async def list_backups(request: Request) -> Response:
    await require_superadmin(request)
    ops = _ops(request)
    items = await asyncio.to_thread(backup.list_backups, ops.settings.backups_path)
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
                "dir": str(ops.settings.backups_path),
            },
        }
    )


async def create(request: Request) -> Response:
    auth = await require_superadmin(request)
    ops = _ops(request)
    if ops.backups.running:
        raise ApiError(409, "backup_running", "A backup is already running; try again when it has finished.")
    info = await ops.create_backup(
        "manual", audit_views.actor_from_auth(auth), audit_views.meta_from_request(request)
    )
    return json_response(info.to_json(), status=201)


async def download(request: Request) -> Response:
    auth = await require_superadmin(request)
    path = _archive(request)
    info = await asyncio.to_thread(backup.read_info, path)
    backup.audit_event(
        request.app.state.db.conn, "backup.download", audit_views.actor_from_auth(auth),
        backup.audit_extra(info), audit_views.meta_from_request(request),
    )  # fmt: skip
    return FileResponse(path, media_type="application/x-tar", filename=path.name)


async def verify(request: Request) -> Response:
    await require_superadmin(request)
    path = _archive(request)
    try:
        report = await asyncio.to_thread(backup.verify_backup, path)
    except backup.BackupError as exc:
        return json_response({"ok": False, "checks": [{"check": "archive", "ok": False, "detail": str(exc)}]})
    return json_response(report.to_json())


async def delete(request: Request) -> Response:
    auth = await require_superadmin(request)
    path = _archive(request)
    try:
        info = await asyncio.to_thread(backup.read_info, path)
        extra = backup.audit_extra(info)
    except backup.BackupError:
        extra = {"name": path.name, "size": path.stat().st_size}
    backup.audit_event(
        request.app.state.db.conn, "backup.delete", audit_views.actor_from_auth(auth), extra,
        audit_views.meta_from_request(request), during=lambda: path.unlink(missing_ok=True),
    )  # fmt: skip
    return no_content()


routes = [
    ("GET", "/backups", list_backups),
    ("POST", "/backups", create),
    ("GET", "/backups/{name}", download),
    ("POST", "/backups/{name}/verify", verify),
    ("DELETE", "/backups/{name}", delete),
]
