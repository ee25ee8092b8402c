"""Stored files: download (Range, ETag, 304, thumbnails) and short-lived file tokens.

A download is a read of the record: the caller (from the Authorization header, or from `?token=`, a
file token) must pass the record's view rule and field access — the record is read through the one
presenter, and the file must be in what the caller sees of it; otherwise 404. A `protected` field's
files need a file token even then, so a plain link cannot be shared.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import apsw
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from snackbase import files, presenter, queries, thumbs
from snackbase.auth import ANONYMOUS, Auth, _live_session, anonymous_in, require_user, unauthorized
from snackbase.config import Settings
from snackbase.context import caller_for
from snackbase.db import fetch_one
from snackbase.errors import ApiError
from snackbase.ids import SYSTEM_ACCOUNT_ID
from snackbase.schema import Collection, Field, quote_ident
from snackbase.sniff import INLINE_SAFE
from snackbase.storage import CHUNK, LocalStorage
from snackbase.times import now_iso, parse_ts
from snackbase.web import json_response

FILE_TOKEN_ISSUER = "snackbase:file"  # never accepted as an access token, nor an access token here
FILE_TOKEN_TTL_S = 180
# Even an inline image is shown under a policy that runs nothing: a crafted file cannot script the
# API's (and the admin UI's) origin.
# ASGI's zero-copy send extension: offered by the server's HTTP protocol (snackbase.http_protocol,
# sendfile(2)); local files are then handed over as a descriptor and a byte range instead of read.
ZERO_COPY = "http.response.zerocopysend"
ZERO_COPY_MIN = 64 * 1024  # below this, one read and one write cost less than the extra system calls
FILE_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"


# --- file tokens -------------------------------------------------------------------------------------


async def file_token(request: Request) -> Response:
    auth = await require_user(request)
    settings: Settings = request.app.state.settings
    now = int(time.time())
    claims = {"sub": auth.user_id, "account_id": auth.account_id, "sid": auth.session_id, "iat": now,
              "exp": now + FILE_TOKEN_TTL_S, "iss": FILE_TOKEN_ISSUER}  # fmt: skip
    import jwt  # on first use: pyjwt pulls in `cryptography`, ~10 MiB of idle RSS (see tokens.py)

    token = jwt.encode(claims, settings.secret_key, algorithm="HS256")
    return json_response({"token": token, "expires_in": FILE_TOKEN_TTL_S})


def _auth_from_file_token(request: Request, token: str) -> Auth:
    import jwt  # on first use, as above

    settings: Settings = request.app.state.settings
    try:
        claims = jwt.decode(
            token, settings.secret_key, algorithms=["HS256"], issuer=FILE_TOKEN_ISSUER,
            options={"require": ["exp", "iat", "iss", "sub", "sid"]},
        )  # fmt: skip
    except jwt.PyJWTError:
        raise unauthorized("The file token is invalid or has expired; get a new one.") from None
    row = _live_session(request.app.state.db.conn, str(claims["sid"]), str(claims["sub"]), now_iso())
    if row is None or row["account_id"] != claims.get("account_id"):
        raise unauthorized("The session of this file token has ended.")
    return Auth(claims["sub"], row["account_id"], row["email"], row["role"], claims["sid"],
                row["account_id"] == SYSTEM_ACCOUNT_ID, "file_token", bool(row["pii_access"]))  # fmt: skip


# --- download ----------------------------------------------------------------------------------------


async def download(request: Request) -> Response:
    conn, registry = request.app.state.db.conn, request.app.state.registry
    collection = registry.get(conn, request.path_params["collection"])
    token = request.query_params.get("token")
    if token:
        state = request.scope.setdefault("state", {})
        state["auth"] = _auth_from_file_token(request, token)
        state.pop("caller", None)
    else:
        _scope_anonymous_to_record(request, collection)
    caller = await caller_for(request)
    record_id = request.path_params["record_id"]
    record = await request.app.state.db.read(
        lambda c: queries.get_record(c, registry, collection, caller, record_id)
    )
    f, meta = _find(collection, record, request.path_params["filename"])
    return await _serve_file(request, conn, collection, f, meta, token)


async def _serve_file(
    request: Request,
    conn: apsw.Connection,
    collection: Collection,
    f: Field,
    meta: dict[str, Any],
    token: str | None,
) -> Response:
    """A file the caller may see (already checked): the file token for a protected one, then the
    thumbnail asked for (when it can be made) or the file itself."""  # fmt: skip
    if f.options.get("protected") and not token:
        raise ApiError(403, "file_token_required", "This file is protected: pass a file token as ?token=.")
    runtime = files.runtime_of(conn)
    key = files.storage_key(collection, meta["name"])
    spec, headers = request.query_params.get("thumb", ""), _headers(request, meta)
    if (
        spec
        and meta["type"] in thumbs.THUMBABLE
        and _thumb_allowed(f, spec)
        and meta["size"] <= thumbs.MAX_SOURCE_BYTES
    ):
        if thumbs.available():
            return await _thumbnail(request, runtime, key, spec, meta, headers)
        headers["x-thumb"] = "unavailable"
    return await _serve(request, runtime.storage, key, meta, headers)


def _scope_anonymous_to_record(request: Request, collection: Collection) -> None:
    """An `<img src>` cannot send X-Account-ID: an anonymous caller without one is scoped to the
    record's own account, as if it had named it. The view rule still decides (a rule that needs a
    user hides the file: 404)."""
    state = request.scope.setdefault("state", {})
    auth = state.get("auth") or ANONYMOUS
    if auth.user_id is not None or auth.account_id is not None:
        return
    row = fetch_one(
        request.app.state.db.conn,
        f"SELECT account_id FROM {quote_ident(collection.table)} WHERE id = ?",
        (request.path_params["record_id"],),
    )
    if row is None:
        raise ApiError(404, "not_found", "The record was not found.")
    state["auth"] = anonymous_in(row["account_id"])
    state.pop("caller", None)


def _find(collection: Collection, record: dict[str, Any], filename: str) -> tuple[Field, dict[str, Any]]:
    """The file named `filename` in what the caller sees of the record; 404 otherwise."""
    for f in files.file_fields(collection):
        for meta in files.metas(record.get(f.name)):
            if meta.get("name") == filename:
                return f, meta
    raise ApiError(404, "not_found", "The file was not found.")


def _thumb_allowed(f: Field, spec: str) -> bool:
    return thumbs.parse(spec) is not None and (spec in (f.options.get("thumbs") or []) or spec in
                                                thumbs.ALWAYS_ALLOWED)  # fmt: skip


def _headers(request: Request, meta: dict[str, Any]) -> dict[str, str]:
    mime = meta["type"]
    inline = mime in INLINE_SAFE and request.query_params.get("download", "") in ("", "0", "false")
    original = str(meta.get("original") or meta["name"]).replace("\r", "").replace("\n", "")
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in original)
    disposition = ("inline" if inline else "attachment") + f'; filename="{fallback}"'
    if fallback != original:
        disposition += f"; filename*=UTF-8''{quote(original, safe='')}"
    return {
        "content-type": mime + ("; charset=utf-8" if mime.startswith("text/") else ""),
        "content-disposition": disposition,
        "content-security-policy": FILE_CSP,
        "cache-control": "private, no-cache",
        "last-modified": _http_date(meta.get("uploaded_at")),
        "accept-ranges": "bytes",
    }


@functools.lru_cache(maxsize=4096)
def _http_date(stamp: Any) -> str:
    try:
        epoch = parse_ts(str(stamp)).timestamp()
    except ValueError:
        epoch = 0.0
    return email.utils.formatdate(epoch, usegmt=True)


def _not_modified(request: Request, etag: str, last_modified: str) -> bool:
    match = request.headers.get("if-none-match")
    if match is not None:
        return match.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in match.split(",")]
    since = request.headers.get("if-modified-since")
    if since is None:
        return False
    try:
        return email.utils.parsedate_to_datetime(since) >= email.utils.parsedate_to_datetime(last_modified)
    except (TypeError, ValueError):
        return False


def _byte_range(request: Request, size: int, etag: str) -> tuple[int, int] | None:
    """The one range asked for (inclusive), None for the whole file; 416 when it cannot be served."""
    header = request.headers.get("range")
    if not header or size == 0:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None  # the client's copy is another version: send it all
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units, and several ranges, are answered with the whole file (RFC 9110)
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start >= size or start > end or start < 0:
        raise ApiError(416, "range_not_satisfiable", "The range is outside the file.",
                       headers={"content-range": f"bytes */{size}"})  # fmt: skip
    return start, end


async def _serve(
    request: Request, storage: Any, key: str, meta: dict[str, Any], headers: dict[str, str]
) -> Response:
    etag = f'"{meta["sha256"][:40]}"'
    headers["etag"] = etag
    if _not_modified(request, etag, headers["last-modified"]):
        return Response(status_code=304, headers=_without_body_headers(headers))
    size = int(meta["size"])
    span = _byte_range(request, size, etag)
    start, end = span or (0, size - 1)
    status = 206 if span else 200
    if span:
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    headers["content-length"] = str(max(end - start + 1, 0))
    if size == 0 or request.method == "HEAD":
        return Response(b"", status_code=status, headers=headers)
    if (
        end - start + 1 >= ZERO_COPY_MIN
        and isinstance(storage, LocalStorage)
        and ZERO_COPY in request.scope.get("extensions", {})
    ):
        return _FileSend(storage.path(key), start, end - start + 1, status, headers)
    if end - start < CHUNK:  # one chunk: no streaming machinery at all
        body = b"".join([chunk async for chunk in storage.stream(key, start, end)])
        return Response(body, status_code=status, headers=headers)
    return _Stream(storage.stream(key, start, end), status, headers)


class _Stream(Response):
    """Sends the chunks as they are read. Starlette's StreamingResponse also starts a task group per
    response to watch for a disconnect, a cost on every download; here a disconnect ends the loop when
    uvicorn refuses the next send, and the chunk source is closed either way."""

    def __init__(self, chunks: AsyncIterator[bytes], status: int, headers: dict[str, str]) -> None:
        super().__init__(None, status_code=status, headers=headers)
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()


class _FileSend(Response):
    """A byte range of a local file, sent by the server with sendfile(2) (the zero-copy extension)."""

    def __init__(self, path: Path, offset: int, count: int, status: int, headers: dict[str, str]) -> None:
        super().__init__(None, status_code=status, headers=headers)
        self.path, self.offset, self.count = path, offset, count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (closed below, after the send)
        except FileNotFoundError:
            raise ApiError(404, "not_found", "The file was not found.") from None
        with handle:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            await send({"type": ZERO_COPY, "file": handle, "offset": self.offset, "count": self.count,
                        "more_body": False})  # fmt: skip


def _without_body_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("content-type", "content-disposition")}


async def _thumbnail(
    request: Request,
    runtime: files.Runtime,
    key: str,
    spec: str,
    meta: dict[str, Any],
    headers: dict[str, str],
) -> Response:
    etag = f'"{meta["sha256"][:40]}-{spec}"'
    headers["etag"] = etag
    if _not_modified(request, etag, headers["last-modified"]):
        return Response(status_code=304, headers=_without_body_headers(headers))
    data = runtime.recent_thumbs.get(key, spec)
    if data is None:
        cached = runtime.thumbs / key / spec
        try:
            data = cached.read_bytes()
        except FileNotFoundError:
            original = await runtime.storage.read(key)
            try:
                data = await asyncio.to_thread(thumbs.make, original, spec, meta["type"])
            except Exception:  # a corrupt or hostile image: the original, never a 500
                return await _serve(request, runtime.storage, key, meta, headers)
            _write_cache(cached, data)
        runtime.recent_thumbs.put(key, spec, data)
    headers["content-type"] = thumbs.output_type(meta["type"])
    headers.pop("accept-ranges", None)
    return Response(data, headers=headers)


def _write_cache(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_bytes(data)
    os.replace(temp, path)  # another worker reading it sees the old state or the whole thumbnail


# --- profile files (avatars): the same download, read through the profile -------------------------


async def download_profile_file(request: Request) -> Response:
    """A file of a user's profile (snackbase.profiles): shown only when the caller may read the
    profile (users view rule) and the field (field access), as `GET /profiles/{id}` would show it."""
    conn = request.app.state.db.conn
    user_id, token = request.path_params["id"], request.query_params.get("token")
    state = request.scope.setdefault("state", {})
    if token:
        state["auth"] = _auth_from_file_token(request, token)
        state.pop("caller", None)
    elif (auth := state.get("auth") or ANONYMOUS).user_id is None and auth.account_id is None:
        # an <img src> cannot send X-Account-ID: scoped to the user's account, as for records
        row = fetch_one(conn, "SELECT account_id FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise ApiError(404, "not_found", "The file was not found.")
        state["auth"] = anonymous_in(row["account_id"])
        state.pop("caller", None)
    caller = await caller_for(request)
    found = presenter.shown_profile_file(conn, caller, user_id, request.path_params["filename"])
    if found is None:
        raise ApiError(404, "not_found", "The file was not found.")
    collection, f, meta = found
    return await _serve_file(request, conn, collection, f, meta, token)


routes = [
    ("POST", "/files/token", file_token),
    ("GET", "/files/{collection}/{record_id}/{filename}", download),
    ("GET", "/profiles/{id}/files/{filename}", download_profile_file),
]
