"""multipart/form-data record bodies, streamed: file parts go straight to a staging file on local disk
(hashed, size-checked and sniffed on the way), other parts become the record's JSON fields.

Memory stays flat whatever the upload's size: the body is read one ASGI message at a time and fed to
python-multipart's incremental parser, whose callbacks write each file part's bytes to disk. A file
over its field's `max_size`, or over what is left of the account's quota, is refused with 413 the
moment its bytes pass the limit; its type is decided from its first bytes (snackbase.sniff) and checked
against the field's `mime_types` before the rest is stored. On any failure every staged file is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from snackbase.errors import ApiError, field_error, validation_error
from snackbase.files import Staged, max_size, quota_exceeded, runtime_of, usage
from snackbase.schema import Collection, Field
from snackbase.sniff import SNIFF_BYTES, allowed, sniff
from snackbase.times import now_iso

JSON_PART = "@jsonPayload"  # a part holding a JSON object of fields, as PocketBase's SDKs send
MAX_PARTS = 1000
_SUFFIX_CHARS = string.ascii_lowercase + string.digits
_decoder = msgspec.json.Decoder()


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_multipart(
    request: Request, collection: Collection, account_id: str | None
) -> tuple[dict[str, Any], list[Staged]]:
    """The record body (JSON values) and the staged uploads of a multipart request."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "A multipart/form-data body needs a boundary.")
    conn = request.app.state.db.conn
    runtime = runtime_of(conn)
    quota_left = None
    if runtime.quota and account_id is not None:
        quota_left = runtime.quota - usage(conn, account_id)
    reader = _Reader(collection, runtime.staging, request.app.state.settings.max_json_bytes, quota_left,
                     runtime.quota)  # fmt: skip
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "bad_request", "The client disconnected before sending the whole body.")
            chunk = message.get("body", b"")
            if chunk:
                parser.write(chunk)
            if not message.get("more_body", False):
                break
        parser.finalize()
        if not reader.finished:
            raise ApiError(400, "bad_request", "The multipart body ended before its closing boundary.")
        return reader.body(), reader.staged
    except MultipartParseError:
        reader.abort()
        raise ApiError(400, "bad_request", "The multipart/form-data body is malformed.") from None
    except BaseException:
        reader.abort()
        raise


class _Reader:
    """The parser's callbacks: one part at a time, its headers, then its bytes."""

    def __init__(
        self, collection: Collection, staging: Path, text_limit: int, quota_left: int | None, quota: int
    ) -> None:
        self.collection = collection
        self.staging = staging
        self.text_limit = text_limit
        self.quota_left = quota_left
        self.quota = quota
        self.staged: list[Staged] = []
        self.texts: list[tuple[str, str]] = []
        self.finished = False
        self._text_bytes = 0
        self._parts = 0
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part: _FilePart | _TextPart | None = None

    def callbacks(self) -> Any:
        def data(fn: Callable[[bytes], None]) -> Callable[[bytes, int, int], None]:
            return lambda buf, start, end: fn(bytes(buf[start:end]))

        return {
            "on_part_begin": self._begin,
            "on_header_field": data(self._header_field),
            "on_header_value": data(self._header_value_part),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": data(self._data),
            "on_part_end": self._end,
            "on_end": self._finish,
        }

    def _begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(400, "bad_request", f"A multipart body holds at most {MAX_PARTS} parts.")
        self._headers = {}
        self._header_name = self._header_value = b""

    def _header_field(self, chunk: bytes) -> None:
        self._header_name += chunk

    def _header_value_part(self, chunk: bytes) -> None:
        self._header_value += chunk

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if not name:
            raise ApiError(400, "bad_request", "Every multipart part needs a name.")
        if filename is None:
            self._part = _TextPart(name)
            return
        self._part = self._file_part(name, filename.decode("utf-8", "replace"))

    def _file_part(self, name: str, filename: str) -> _FilePart:
        field_name, append = (name[:-1], True) if name.endswith("+") else (name, False)
        f = self.collection.field_map.get(field_name)
        if f is None or f.type != "file":
            raise validation_error(field_error(name, "unknown_field", "No file field of this name."))
        return _FilePart(f, append, filename, self.staging)

    def _data(self, chunk: bytes) -> None:
        part = self._part
        if isinstance(part, _TextPart):
            self._text_bytes += len(chunk)
            if self._text_bytes > self.text_limit:
                raise ApiError(413, message=f"The form fields are larger than {self.text_limit} bytes.")
            part.value += chunk
        elif part is not None:
            part.write(chunk)
            if self.quota_left is not None:
                self.quota_left -= len(chunk)
                if self.quota_left < 0:
                    raise quota_exceeded(self.quota)

    def _end(self) -> None:
        part, self._part = self._part, None
        if isinstance(part, _TextPart):
            self.texts.append((part.name, part.value.decode("utf-8", "replace")))
        elif part is not None:
            try:
                staged = part.finish()
            except BaseException:
                part.close(delete=True)
                raise
            if staged is not None:
                self.staged.append(staged)

    def _finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        if isinstance(self._part, _FilePart):
            self._part.close(delete=True)
        for s in self.staged:
            s.path.unlink(missing_ok=True)

    def body(self) -> dict[str, Any]:
        """The form fields as a record body: `@jsonPayload` as JSON, other parts converted by field type."""
        body: dict[str, Any] = {}
        for name, text in self.texts:
            if name == JSON_PART:
                try:
                    payload = _decoder.decode(text)
                except msgspec.DecodeError:
                    raise ApiError(400, "bad_request", f"The {JSON_PART} part is not valid JSON.") from None
                if not isinstance(payload, dict):
                    raise ApiError(400, "bad_request", f"The {JSON_PART} part must be a JSON object.")
                body.update(payload)
                continue
            value = _form_value(self.collection.field_map.get(name.rstrip("+-")), text)
            if name in body:  # a repeated name is a list (multiple select, several file names)
                previous = body[name]
                body[name] = [*(previous if isinstance(previous, list) else [previous]), value]
            else:
                body[name] = value
        return body


class _TextPart:
    def __init__(self, name: str) -> None:
        self.name = name
        self.value = b""


class _FilePart:
    """One file being received: written to a staging file, hashed, sized and sniffed as it arrives."""

    def __init__(self, f: Field, append: bool, filename: str, staging: Path) -> None:
        self.field, self.append, self.filename = f, append, filename
        self.limit = max_size(f)
        fd, path = tempfile.mkstemp(dir=staging, prefix="up-")
        self.path = Path(path)
        self.handle: BinaryIO = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self.head = b""
        self.type: str | None = None

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ApiError(
                413, "file_too_large", f"Files of `{self.field.name}` must be at most {self.limit} bytes.",
                field_error(self.field.name, "file_too_large", f"At most {self.limit} bytes."),
            )  # fmt: skip
        if self.type is None:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
            if len(self.head) >= SNIFF_BYTES:
                self._decide_type()
        self.sha.update(chunk)
        self.handle.write(chunk)

    def _decide_type(self) -> None:
        self.type = sniff(self.head, _extension(self.filename))
        patterns = self.field.options.get("mime_types") or []
        if not allowed(self.type, patterns):
            raise validation_error(
                field_error(self.field.name, "invalid_file_type",
                            f"The content is {self.type}; allowed: {', '.join(patterns)}."),
                "The uploaded file's content is not an allowed type.",
            )  # fmt: skip

    def finish(self) -> Staged | None:
        self.close(delete=False)
        if self.size == 0 and not self.filename:  # a form's empty file input: no file chosen
            self.path.unlink(missing_ok=True)
            return None
        if self.type is None:
            self._decide_type()
        assert self.type is not None
        meta = {"name": safe_name(self.filename), "original": self.filename[-255:], "size": self.size,
                "type": self.type, "sha256": self.sha.hexdigest(), "uploaded_at": now_iso()}  # fmt: skip
        return Staged(self.field.name, self.append, meta, self.path)

    def close(self, delete: bool) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        if delete:
            self.path.unlink(missing_ok=True)


def _extension(filename: str) -> str:
    base = re.split(r"[\\/]", filename)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def safe_name(filename: str) -> str:
    """`../../etc/Pass wd.TXT` → `pass_wd_k3j9x0q2ab.txt`: the last path segment, snake-cased letters and
    digits only, at most 100 characters, with 10 random characters so names never collide or guess."""
    base = re.split(r"[\\/]", filename)[-1]
    stem, _, ext = base.rpartition(".") if "." in base.lstrip(".") else (base, "", "")
    stem = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")[:100] or "file"
    ext = re.sub(r"[^a-z0-9]", "", ext.lower())[:10]
    suffix = "".join(secrets.choice(_SUFFIX_CHARS) for _ in range(10))
    return f"{stem}_{suffix}" + (f".{ext}" if ext else "")


def _form_value(f: Field | None, text: str) -> Any:
    """A form field's text as the JSON value its field type takes."""
    if f is None or f.type in ("text", "email", "url", "date", "datetime", "reference", "user", "file"):
        return text
    if f.type == "select" and not f.options.get("multiple"):
        return text
    if f.type == "boolean":
        low = text.strip().lower()
        return (
            True
            if low in ("true", "1", "on", "yes")
            else False
            if low in ("false", "0", "off", "no", "")
            else text
        )
    if f.type == "number":
        with contextlib.suppress(ValueError):
            return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else float(text)
        return text
    try:  # json and multiple select take JSON
        return _decoder.decode(text)
    except msgspec.DecodeError:
        return text
