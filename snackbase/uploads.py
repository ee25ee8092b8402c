"""multipart/form-data record bodies, streamed: file parts go straight to a staging file on local disk
(hashed, size-checked and sniffed on the way), other parts become the record's JSON fields.

Memory stays flat whatever the upload's size: the body is read one ASGI message at a time and fed to
python-multipart's incremental parser, whose callbacks write each file part's bytes to disk. A file
over its field's `max_size`, or over what is left of the account's quota, is refused with 413 the
moment its bytes pass the limit; its type is decided from its first bytes (snackbase.sniff) and checked
against the field's `mime_types` before the rest is stored. On any failure every staged file is deleted.

A batch (`read_batch_multipart`) is the same stream with one `@jsonPayload` part first, the batch,
whose operations reference the file parts that follow by name (`{"@part": "p1"}`).
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

from snackbase.errors import ApiError, FieldErrors, field_error, validation_error
from snackbase.files import Staged, max_size, quota_exceeded, runtime_of, usage
from snackbase.schema import Collection, Field
from snackbase.sniff import SNIFF_BYTES, allowed, sniff
from snackbase.times import now_iso
from snackbase.web import header

JSON_PART = "@jsonPayload"  # a part holding a JSON object of fields, as PocketBase's SDKs send
MAX_PARTS = 1000
_SUFFIX_CHARS = string.ascii_lowercase + string.digits
_decoder = msgspec.json.Decoder()


def is_multipart(request: Request) -> bool:
    return (header(request.scope, b"content-type") or "").lower().startswith("multipart/form-data")


async def read_multipart(
    request: Request, collection: Collection, account_id: str | None
) -> tuple[dict[str, Any], list[Staged]]:
    """The record body (JSON values) and the staged uploads of a multipart request."""
    reader = _Reader(collection, *_reader_limits(request, account_id))
    await _parse(request, reader)
    return reader.body(), reader.staged


def _reader_limits(request: Request, account_id: str | None) -> tuple[Path, int, int | None, int]:
    """(staging directory, form text limit, quota left or None, quota) for a reader of this request."""
    conn = request.app.state.db.conn
    runtime = runtime_of(conn)
    quota_left = None
    if runtime.quota and account_id is not None:
        quota_left = runtime.quota - usage(conn, account_id)
    return runtime.staging, request.app.state.settings.max_json_bytes, quota_left, runtime.quota


async def _parse(request: Request, reader: _Reader) -> None:
    """Feeds the body to the incremental parser one ASGI message at a time; every staged file is
    deleted again when anything fails."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "A multipart/form-data body needs a boundary.")
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
            # A file's bytes as a view of the parser's buffer: hashed and written without a copy.
            "on_part_data": lambda buf, start, end: self._data(memoryview(buf)[start:end]),
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
            self._part = self._text_part(name)
            return
        self._part = self._file_part(name, filename.decode("utf-8", "replace"))

    def _text_part(self, name: str) -> _TextPart:
        return _TextPart(name)

    def _file_part(self, name: str, filename: str) -> _FilePart:
        field_name, append = (name[:-1], True) if name.endswith("+") else (name, False)
        f = self.collection.field_map.get(field_name)
        if f is None or f.type != "file":
            raise validation_error(field_error(name, "unknown_field", "No file field of this name."))
        return _FilePart(f, append, filename, self.staging)

    def _data(self, chunk: memoryview) -> None:
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
            self._text_done(part.name, part.value.decode("utf-8", "replace"))
        elif part is not None:
            try:
                staged = part.finish()
            except BaseException:
                part.close(delete=True)
                raise
            if staged is not None:
                self._file_done(part, staged)

    def _text_done(self, name: str, text: str) -> None:
        self.texts.append((name, text))

    def _file_done(self, part: _FilePart, staged: Staged) -> None:
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
                body.update(_json_object(text))
                continue
            value = _form_value(self.collection.field_map.get(name.rstrip("+-")), text)
            if name in body:  # a repeated name is a list (multiple select, several file names)
                previous = body[name]
                body[name] = [*(previous if isinstance(previous, list) else [previous]), value]
            else:
                body[name] = value
        return body


def _json_object(text: str) -> dict[str, Any]:
    try:
        payload = _decoder.decode(text)
    except msgspec.DecodeError:
        raise ApiError(400, "bad_request", f"The {JSON_PART} part is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "bad_request", f"The {JSON_PART} part must be a JSON object.")
    return payload


class _TextPart:
    def __init__(self, name: str) -> None:
        self.name = name
        self.value = b""


class _FilePart:
    """One file being received: written to a staging file, hashed, sized and sniffed as it arrives."""

    def __init__(self, f: Field, append: bool, filename: str, staging: Path, part: str = "") -> None:
        self.field, self.append, self.filename, self.part = f, append, filename, part
        self.limit = max_size(f)
        fd, path = tempfile.mkstemp(dir=staging, prefix="up-")
        self.path = Path(path)
        self.handle: BinaryIO = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self.head = b""
        self.type: str | None = None

    def write(self, chunk: memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise ApiError(
                413, "file_too_large", f"Files of `{self.field.name}` must be at most {self.limit} bytes.",
                field_error(self.field.name, "file_too_large", f"At most {self.limit} bytes."),
            )  # fmt: skip
        if self.type is None:
            self.head += chunk[: SNIFF_BYTES - len(self.head)].tobytes()
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


# --- batches: one JSON part with the operations, file parts they reference ------------------------

PART_REF = "@part"  # {"@part": "<part name>"} in a file field of a batch operation: that part's file
MAX_BATCH_FILES = 100


class BatchUploads(msgspec.Struct):
    body: dict[str, Any]  # the batch, every file reference taken out of its operation
    uploads: dict[tuple[str, int], list[Staged]]  # ("create" | "update", index) → its staged files
    staged: list[Staged]  # all of them, in the order they arrived


class _Ref(msgspec.Struct, frozen=True):
    kind: str
    index: int
    key: str  # the operation's key that names the part: `attachments` or `attachments+`
    field: Field
    append: bool

    @property
    def where(self) -> str:
        return f"{self.kind}.{self.index}.{self.key}"


async def read_batch_multipart(
    request: Request, collection: Collection, account_id: str | None
) -> BatchUploads:
    """A multipart batch: the `@jsonPayload` part (the batch, as JSON) first, then the file parts its
    operations reference by name. Every file is streamed to staging, checked against its field as a
    single upload is, and counted against the batch's limits (MAX_BATCH_FILES files,
    `files_batch_max_bytes` in all); a part referenced but not sent, or sent but not referenced, is 400."""
    limit = request.app.state.settings.files_batch_max_bytes
    reader = _BatchReader(collection, *_reader_limits(request, account_id), limit)
    try:
        await _parse(request, reader)
    except ApiError as exc:
        raise reader.located(exc) from None
    try:
        return reader.result()
    except BaseException:
        reader.abort()
        raise


class _BatchReader(_Reader):
    def __init__(self, collection: Collection, staging: Path, text_limit: int, quota_left: int | None,
                 quota: int, max_bytes: int) -> None:  # fmt: skip
        super().__init__(collection, staging, text_limit, quota_left, quota)
        self.max_bytes = max_bytes
        self.payload: dict[str, Any] | None = None
        self.refs: dict[str, _Ref] = {}
        self.received: dict[str, Staged] = {}
        self._seen: set[str] = set()
        self._bytes = 0
        self._current: _Ref | None = None

    def _text_part(self, name: str) -> _TextPart:
        if name != JSON_PART or self.payload is not None or self._seen:
            raise ApiError(
                400,
                "bad_request",
                f"A multipart batch is one {JSON_PART} part (the batch as JSON), then the file parts "
                "its operations reference.",
            )
        return _TextPart(name)

    def _text_done(self, name: str, text: str) -> None:
        self.payload, self.refs = _take_refs(_json_object(text), self.collection)

    def _file_part(self, name: str, filename: str) -> _FilePart:
        if self.payload is None:
            raise ApiError(400, "bad_request", f"The {JSON_PART} part must come before the file parts.")
        ref = self.refs.get(name)
        if ref is None:
            message = f"No operation references the file part '{name[:100]}'."
            raise ApiError(400, "bad_request", message, field_error(name[:100], "unknown_part", message))
        if name in self._seen:
            message = f"The file part '{name[:100]}' was sent twice."
            raise ApiError(400, "bad_request", message, field_error(ref.where, "part_repeated", message))
        self._seen.add(name)
        if len(self._seen) > MAX_BATCH_FILES:
            raise ApiError(400, "bad_request", f"A batch uploads at most {MAX_BATCH_FILES} files.")
        self._current = ref
        return _FilePart(ref.field, ref.append, filename, self.staging, name)

    def _data(self, chunk: memoryview) -> None:
        if isinstance(self._part, _FilePart):
            self._bytes += len(chunk)
            if self._bytes > self.max_bytes:
                self._current = None  # the batch's limit, not the file's
                raise ApiError(413, "batch_too_large",
                               f"The files of a batch may total at most {self.max_bytes} bytes.")  # fmt: skip
        super()._data(chunk)

    def _file_done(self, part: _FilePart, staged: Staged) -> None:
        super()._file_done(part, staged)
        self.received[part.part] = staged
        self._current = None

    def located(self, exc: ApiError) -> ApiError:
        """An error of the file part being received, named by its operation as batch errors are."""
        ref = self._current
        if ref is None:
            return exc
        prefix = f"{ref.kind}.{ref.index}"
        fields = {f"{prefix}.{k}": v for k, v in exc.fields.items()} or field_error(
            ref.where, exc.code, exc.message
        )
        return ApiError(
            exc.status, exc.code, f"Operation {prefix} failed: {exc.message}", fields, exc.headers
        )

    def result(self) -> BatchUploads:
        if self.payload is None:
            raise ApiError(400, "bad_request", f"A multipart batch needs its {JSON_PART} part.")
        missing: FieldErrors = {}
        for name, ref in self.refs.items():
            if name not in self.received:
                missing.update(
                    field_error(ref.where, "missing_part", f"The file part '{name[:100]}' was not sent.")
                )
        if missing:
            raise ApiError(400, "bad_request", "Some referenced file parts were not sent.", missing)
        uploads: dict[tuple[str, int], list[Staged]] = {}
        for name, ref in self.refs.items():
            uploads.setdefault((ref.kind, ref.index), []).append(self.received[name])
        return BatchUploads(self.payload, uploads, self.staged)


def _take_refs(payload: dict[str, Any], collection: Collection) -> tuple[dict[str, Any], dict[str, _Ref]]:
    """The batch without its `{"@part": name}` references, and where each part goes. In a file field,
    `field: ref` or `field: [ref, …]` replaces the field's files (names listed beside the references
    are kept), `field+: ref` or `[ref, …]` appends; `field-` (names) is untouched, as in JSON."""
    refs: dict[str, _Ref] = {}
    body = dict(payload)
    for kind in ("create", "update"):
        items = payload.get(kind)
        if isinstance(items, list):  # anything else is refused by records.batch
            body[kind] = [_take_item_refs(kind, i, item, collection, refs) if isinstance(item, dict) else item
                          for i, item in enumerate(items)]  # fmt: skip
    return body, refs


def _take_item_refs(
    kind: str, index: int, item: dict[str, Any], collection: Collection, refs: dict[str, _Ref]
) -> dict[str, Any]:
    out = dict(item)
    for key, value in item.items():
        name, append = (key[:-1], True) if key.endswith("+") else (key, False)
        f = collection.field_map.get(name)
        values = value if isinstance(value, list) else [value]
        parts = [v[PART_REF] for v in values if _is_ref(v)]
        if f is None or f.type != "file" or not parts:
            continue
        for part in parts:
            ref = _Ref(kind, index, key, f, append)
            if part in refs or part == JSON_PART:
                message = f"The file part '{part[:100]}' is referenced twice."
                raise ApiError(400, "bad_request", message, field_error(ref.where, "part_reused", message))
            refs[part] = ref
        rest = [v for v in values if not _is_ref(v)]
        if rest:
            out[key] = rest  # the names of files to keep beside the uploads (resolve checks them)
        else:
            del out[key]
    return out


def _is_ref(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {PART_REF}
        and isinstance(value[PART_REF], str)
        and 0 < len(value[PART_REF]) <= 200
    )
