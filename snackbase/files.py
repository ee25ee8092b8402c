"""File fields: what a record holds of its files, and keeping storage in step with committed changes.

A file field's value is the stored metadata of its files — `{name, original, size, type, sha256,
uploaded_at}` — one object (or null) when `max_files` is 1, else a list. Clients never write that
metadata: they upload files (snackbase.uploads) and name files the record already holds; `resolve`
turns both into the value, inside the record pipeline, so a forged object is refused. Because the
value is the metadata, every audit entry lists the files by name, size and SHA-256.

Storage follows the unit of work (snackbase.unit_of_work):
- an upload is staged on local disk, its key written to `file_trash` (due in an hour) in a small
  transaction of its own, then moved into place; the record write that keeps it deletes that row.
  A failed write deletes the file at once; a crash leaves the row, and the sweeper deletes the file.
- a removed file (record deleted — cascades included — or file replaced or removed) gets a
  `file_trash` row due now in the same unit of work, and is deleted after COMMIT. A crash between
  COMMIT and the deletion leaves the row for the sweeper (at start and every few minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import weakref
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import apsw
import msgspec

from snackbase import periodic
from snackbase.config import Settings
from snackbase.db import fetch_all, fetch_value
from snackbase.errors import ApiError, FieldErrors, field_error, validation_error
from snackbase.s3 import S3Client, S3Config
from snackbase.schema import Collection, Field, quote_ident
from snackbase.storage import LocalStorage, S3Storage, Storage
from snackbase.thumbs import Recent
from snackbase.times import format_ts, now_iso
from snackbase.unit_of_work import Work, unit_of_work, write_turn

log = logging.getLogger("snackbase.files")

DEFAULT_MAX_SIZE = 5 * 1024 * 1024  # bytes per file when a field sets no max_size (as PocketBase)
MAX_FILES_CAP = 99
PENDING_S = 3600  # an upload not kept by a committed record within an hour is swept
SWEEP_INTERVAL_S = 300.0
T = TypeVar("T")

_ids_json = msgspec.json.Encoder()


class Staged(msgspec.Struct):
    """One uploaded file, streamed to `path` on local disk, not yet in storage."""

    field: str
    append: bool  # sent as `field+`
    meta: dict[str, Any]
    path: Path


class Runtime(msgspec.Struct):
    """The files set-up of one database connection (the app attaches it at start)."""

    storage: Storage
    staging: Path  # local directory for uploads being received
    thumbs: Path  # local cache of thumbnails
    quota: int = 0  # bytes per account; 0 = no quota
    recent_thumbs: Recent = msgspec.field(default_factory=Recent)  # the last ones served, in memory


_runtimes: weakref.WeakKeyDictionary[apsw.Connection, Runtime] = weakref.WeakKeyDictionary()


def attach(conn: apsw.Connection, runtime: Runtime) -> None:
    runtime.staging.mkdir(parents=True, exist_ok=True)
    runtime.thumbs.mkdir(parents=True, exist_ok=True)
    _runtimes[conn] = runtime


def start(settings: Settings, conn: Any) -> None:
    """Attaches the configured storage to the connection (either engine's) and sweeps what a crash
    left behind; an unreachable storage is retried by the periodic sweep."""
    storage: Storage
    if settings.files_storage == "s3":
        config = S3Config(
            settings.s3_endpoint, settings.s3_bucket, settings.s3_region, settings.s3_access_key,
            settings.s3_secret_key, settings.s3_force_path_style,
        )  # fmt: skip
        storage = S3Storage(S3Client(config))
    else:
        storage = LocalStorage(settings.files_path)
    root = settings.files_path
    attach(conn, Runtime(storage, root / ".staging", root / ".thumbs", settings.files_quota_bytes))
    try:
        sweep(conn)
    except Exception:  # storage unreachable at start: the periodic sweep retries
        log.exception("file sweep at start failed")


def runtime_of(conn: apsw.Connection) -> Runtime:
    runtime = _runtimes.get(conn)
    if runtime is None:
        raise ApiError(503, "files_unavailable", "File storage is not set up on this server.")
    return runtime


# --- fields and values ----------------------------------------------------------------------------


def file_fields(collection: Collection) -> list[Field]:
    return [f for f in collection.fields if f.type == "file"]


def max_files(f: Field) -> int:
    given = f.options.get("max_files")
    if isinstance(given, int) and given > 0:
        return given
    return MAX_FILES_CAP if f.options.get("multiple") else 1


def max_size(f: Field) -> int:
    given = f.options.get("max_size")
    return given if isinstance(given, int) and given > 0 else DEFAULT_MAX_SIZE


def metas(value: Any) -> list[dict[str, Any]]:
    """The file metadata objects of a stored (JSON) field value."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def storage_key(collection: Collection, name: str) -> str:
    return f"{collection.id}/{name}"


def resolve(
    collection: Collection, body: dict[str, Any], old: dict[str, Any] | None, uploads: list[Staged]
) -> dict[str, Any]:
    """`body` with each file field's value replaced by the files it will hold: the names it keeps of
    `old`'s (JSON value), minus `field-` names, plus uploads (`field` replaces, `field+` appends)."""
    fields = file_fields(collection)
    if not fields:
        return body
    out = dict(body)
    errors: FieldErrors = {}
    for f in fields:
        try:
            value = _resolve_field(f, out, (old or {}).get(f.name), [s for s in uploads if s.field == f.name])
        except _Refused as exc:
            errors.update(field_error(f.name, exc.code, exc.message))
            continue
        if value is not _UNCHANGED:
            out[f.name] = value
    if errors:
        raise validation_error(errors)
    return out


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


_UNCHANGED: Any = object()


def _resolve_field(f: Field, body: dict[str, Any], old_value: Any, uploads: list[Staged]) -> Any:
    current = metas(old_value)
    sent, plus, minus = f.name in body, body.pop(f"{f.name}+", None), body.pop(f"{f.name}-", None)
    if plus is not None:
        raise _Refused("invalid_type", f"Upload files for `{f.name}+` as multipart/form-data parts.")
    if not sent and minus is None and not uploads:
        return _UNCHANGED
    kept = _keep(current, body.get(f.name)) if sent else ([] if _replaces(uploads) else current)
    if minus is not None:
        drop = _names(minus)
        kept = [m for m in kept if m["name"] not in drop]
    result = kept + [s.meta for s in uploads]
    limit = max_files(f)
    if limit == 1 and len(result) > 1 and not sent:
        result = result[-1:]  # a new upload replaces the single file
    if len(result) > limit:
        raise _Refused("too_many_files", f"At most {limit} file(s).")
    if limit == 1:
        return result[0] if result else None
    return result


def _replaces(uploads: list[Staged]) -> bool:
    return any(not s.append for s in uploads)


def _keep(current: list[dict[str, Any]], value: Any) -> list[dict[str, Any]]:
    by_name = {m["name"]: m for m in current}
    names = _names(value)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise _Refused(
            "unknown_file",
            f"The record holds no file named '{unknown[0][:100]}'; upload new files as multipart/form-data.",
        )
    return [by_name[n] for n in names]


def _names(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _Refused(
        "invalid_type", "A file field takes the names of files the record holds; upload files as multipart."
    )


# --- the unit of work: storage in step with the committed change ------------------------------------


def track(conn: apsw.Connection, work: Work, collection: Collection, account_id: str,
          old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:  # fmt: skip
    """Inside the unit of work of one changed row: keep new uploads, queue removed files for deletion
    after COMMIT, and count the account's bytes (413 quota_exceeded over the quota)."""
    fields = file_fields(collection)
    if not fields:
        return
    before = {m["name"]: m for f in fields for m in metas((old or {}).get(f.name))}
    after = {m["name"]: m for f in fields for m in metas((new or {}).get(f.name))}
    added = [storage_key(collection, n) for n in after if n not in before]
    removed = [storage_key(collection, n) for n in before if n not in after]
    if added:
        conn.execute("DELETE FROM file_trash WHERE key IN (SELECT value FROM json_each(?))", (_json(added),))
    if removed:
        _to_trash(conn, removed, now_iso())
        work.after_commit(lambda: purge(conn, removed))
    delta = sum(_size(m) for m in after.values()) - sum(_size(m) for m in before.values())
    if delta:
        _count(conn, account_id, delta)


def _size(meta: dict[str, Any]) -> int:
    size = meta.get("size")
    return size if isinstance(size, int) else 0


def _json(keys: list[str]) -> str:
    return _ids_json.encode(keys).decode()


def _to_trash(conn: apsw.Connection, keys: list[str], due_at: str) -> None:
    conn.execute(
        "INSERT INTO file_trash (key, due_at) SELECT value, ? FROM json_each(?) WHERE true "
        "ON CONFLICT (key) DO UPDATE SET due_at = excluded.due_at",
        (due_at, _json(keys)),
    )


def _count(conn: apsw.Connection, account_id: str, delta: int) -> None:
    total = fetch_value(
        conn,
        # CASE, not SQLite's two-argument max(): the same statement runs on PostgreSQL (no such max).
        "INSERT INTO file_usage (account_id, bytes) VALUES (?1, CASE WHEN ?2 > 0 THEN ?2 ELSE 0 END) "
        "ON CONFLICT (account_id) DO UPDATE SET bytes = CASE WHEN file_usage.bytes + ?2 > 0 "
        "THEN file_usage.bytes + ?2 ELSE 0 END RETURNING bytes",
        (account_id, delta),
    )
    runtime = _runtimes.get(conn)
    quota = runtime.quota if runtime else 0
    if delta > 0 and quota and total > quota:
        raise quota_exceeded(quota)


def quota_exceeded(quota: int) -> ApiError:
    return ApiError(413, "quota_exceeded", f"The account's file storage quota ({quota} bytes) is used up.")


def usage(conn: apsw.Connection, account_id: str) -> int:
    value = fetch_value(conn, "SELECT bytes FROM file_usage WHERE account_id = ?", (account_id,))
    return int(value or 0)


# --- uploads: into place before the record write, out again if it fails ----------------------------


async def write_with_uploads(
    conn: apsw.Connection, collection: Collection, staged: list[Staged], write: Callable[[], T]
) -> T:
    """Moves the staged uploads into storage (each key first written to file_trash, due in an hour),
    then runs the record write; if anything fails, the uploads are deleted again."""
    runtime = runtime_of(conn)
    keys = [storage_key(collection, s.meta["name"]) for s in staged]
    try:
        if keys:
            with unit_of_work(conn):
                _to_trash(conn, keys, format_ts_in(PENDING_S))
        promoted: list[str] = []
        try:
            for s, key in zip(staged, keys, strict=True):
                await runtime.storage.put(key, s.path, s.meta["size"], s.meta["sha256"], s.meta["type"])
                promoted.append(key)
            async with write_turn(conn):
                return write()
        except BaseException:
            # Only files no committed record holds: a key whose pending row is gone was kept by the
            # write (it failed after its COMMIT, e.g. presenting the answer), so its file stays.
            for key in promoted:
                if fetch_value(conn, "SELECT 1 FROM file_trash WHERE key = ?", (key,)):
                    _delete_quietly(runtime, key)
            raise
    finally:
        discard(staged)


def format_ts_in(seconds: float) -> str:
    """The timestamp `seconds` from now."""
    return format_ts(datetime.now(UTC) + timedelta(seconds=seconds))


def discard(staged: list[Staged]) -> None:
    for s in staged:
        s.path.unlink(missing_ok=True)


# --- deleting: after COMMIT, and the sweeper --------------------------------------------------------


_tasks: set[asyncio.Task[None]] = set()


def purge(conn: apsw.Connection, keys: list[str]) -> None:
    """Deletes stored files (and their cached thumbnails), then their file_trash rows. On S3, inside
    the server, the network calls run on a thread after the response instead of holding the loop."""
    runtime = _runtimes.get(conn)
    if runtime is None:
        return  # no storage attached (CLI): the rows stay for the server's sweeper
    if runtime.storage.kind == "s3" and _running_loop() is not None:
        task = asyncio.get_running_loop().create_task(_purge_in_thread(conn, runtime, keys))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
        return
    _forget(conn, [key for key in keys if _delete_quietly(runtime, key)])


async def _purge_in_thread(conn: apsw.Connection, runtime: Runtime, keys: list[str]) -> None:
    try:
        done = await asyncio.to_thread(lambda: [key for key in keys if _delete_quietly(runtime, key)])
        _forget(conn, done)
    except Exception:
        log.exception("deleting stored files failed; the sweeper retries")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _forget(conn: apsw.Connection, done: list[str]) -> None:
    """The file_trash rows of deleted files."""
    if done:
        with unit_of_work(conn):
            conn.execute(
                "DELETE FROM file_trash WHERE key IN (SELECT value FROM json_each(?))", (_json(done),)
            )


def _delete_quietly(runtime: Runtime, key: str) -> bool:
    try:
        runtime.storage.delete(key)
    except Exception:
        log.exception("could not delete stored file %s; the sweeper retries", key)
        return False
    with contextlib.suppress(OSError):
        shutil.rmtree(runtime.thumbs / key)
    return True


def sweep(conn: apsw.Connection, limit: int = 1000) -> int:
    """Deletes the files of due file_trash rows and uploads abandoned in the staging directory."""
    rows = fetch_all(
        conn, "SELECT key FROM file_trash WHERE due_at <= ? ORDER BY due_at LIMIT ?", (now_iso(), limit)
    )
    keys = [r["key"] for r in rows]
    if keys:
        purge(conn, keys)
    runtime = _runtimes.get(conn)
    if runtime is not None:
        _sweep_staging(runtime.staging)
    return len(keys)


def _sweep_staging(staging: Path) -> None:
    cutoff = time.time() - PENDING_S
    with contextlib.suppress(OSError):
        for entry in staging.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()


def sweep_every(conn: apsw.Connection, interval_s: float = SWEEP_INTERVAL_S) -> Coroutine[Any, Any, None]:
    """The periodic sweep of file_trash (what a crash between a COMMIT and the deletion left; at start,
    `start` sweeps once): on one node at a time on PostgreSQL, in every process on SQLite."""
    return periodic.every(conn, "files.sweep", interval_s, lambda: sweep(conn))


def drop_fields(conn: apsw.Connection, work: Work, collection: Collection, names: list[str]) -> None:
    """In the unit of work that drops a collection or some of its file fields (before the DROP): every
    file they hold goes to file_trash, the accounts' usage goes down, and the files are deleted after
    COMMIT. A rolled-back schema change keeps them."""
    _trash_held(conn, work, collection, [f for f in file_fields(collection) if f.name in names])


def drop_account(conn: apsw.Connection, work: Work, collections: list[Collection], account_id: str) -> None:
    """In the unit of work deleting an account (before the DELETE, whose cascade takes its records):
    every file its records hold goes to file_trash, deleted after COMMIT; its usage row goes too.
    (Its users' profile files are the users' own deletion's, see profiles.before_user_delete.)"""
    for collection in collections:
        _trash_held(conn, work, collection, file_fields(collection), account_id)
    conn.execute("DELETE FROM file_usage WHERE account_id = ?", (account_id,))


def _trash_held(
    conn: apsw.Connection,
    work: Work,
    collection: Collection,
    fields: list[Field],
    account_id: str | None = None,
) -> None:
    """The files these fields hold (in one account, or all) to file_trash, and out of the usage."""
    if not fields:
        return
    columns = ", ".join(quote_ident(f.name) for f in fields)
    where, params = ("", ()) if account_id is None else (" WHERE account_id = ?", (account_id,))
    keys: list[str] = []
    freed: dict[str, int] = {}
    for row in fetch_all(
        conn, f"SELECT account_id, {columns} FROM {quote_ident(collection.table)}{where}", params
    ):
        for f in fields:
            raw = row[f.name]
            for meta in metas(_ids_json_decode(raw) if isinstance(raw, str) else raw):
                keys.append(storage_key(collection, meta["name"]))
                freed[row["account_id"]] = freed.get(row["account_id"], 0) + _size(meta)
    for owner, size in freed.items():
        _count(conn, owner, -size)
    if keys:
        _to_trash(conn, keys, now_iso())
        work.after_commit(lambda: purge(conn, keys))


_ids_json_decode = msgspec.json.Decoder().decode
