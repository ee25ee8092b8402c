"""HTTP helpers shared by every route module: JSON responses, JSON bodies, query parameters.

Bodies are decoded with msgspec into a `Struct` per endpoint (decoders built once per type), so
unknown keys, wrong types and malformed JSON are refused before a handler sees them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase.errors import ApiError, field_error, validation_error

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()
_JSON_TYPES = ("application/json", "application/merge-patch+json")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JsonResponse(_encoder.encode(data), status, headers)


class JsonResponse(Response):
    """Encoded JSON with its headers built directly: Starlette's `init_headers` lowers, encodes and
    searches a header dict on every response (~2% of a get, sampled), for the two headers every JSON
    answer has. The same headers, in the same order, as `Response(body, media_type=…)` gives."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        raw = (
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            if headers
            else []
        )
        if status_code >= 200 and status_code not in (204, 304):
            raw.append((b"content-length", str(len(body)).encode()))
        raw.append((b"content-type", b"application/json"))
        self.raw_headers = raw


def header(scope: Any, name: bytes) -> str | None:
    """The first value of request header `name` (lowercase), straight from the ASGI scope: Starlette's
    `request.headers.get` builds a Headers object per Request and makes three Python calls per lookup,
    for the few headers every request asks for."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def no_content() -> Response:
    return Response(status_code=204)


def encode_json(data: Any) -> bytes:
    return _encoder.encode(data)


def require_json_content_type(request: Request) -> None:
    content_type = header(request.scope, b"content-type") or ""
    if content_type.split(";", 1)[0].strip().lower() not in _JSON_TYPES:
        raise ApiError(415, message="The request body must be JSON (Content-Type: application/json).")


async def read_body(request: Request, limit: int) -> bytes:
    """Reads the body, refusing it with 413 as soon as it is known to exceed `limit` bytes."""
    declared = header(request.scope, b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, message=f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    # The ASGI messages directly: Request.stream() wraps each in an async generator step, measurable
    # on small bodies, which arrive in one message.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "bad_request", "The client disconnected before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, message=f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json(request: Request) -> Any:
    """The JSON body as Python values (for bodies whose shape depends on data, e.g. records)."""
    require_json_content_type(request)
    raw = await read_body(request, request.app.state.settings.max_json_bytes)
    if not raw.strip():
        raise ApiError(400, "bad_request", "The request body is empty; a JSON document is required.")
    try:
        return _any_decoder.decode(raw)
    except msgspec.DecodeError:
        raise ApiError(400, "bad_request", "The request body is not valid JSON.") from None
    except RecursionError:  # msgspec decodes nested arrays and objects recursively
        raise too_deep() from None


@lru_cache(maxsize=256)
def _decoder(kind: type) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind)


async def read_struct(request: Request, kind: type[T]) -> T:
    """The JSON body decoded into `kind` (a msgspec Struct with forbid_unknown_fields)."""
    require_json_content_type(request)
    raw = await read_body(request, request.app.state.settings.max_json_bytes)
    return decode_struct(raw, kind)


def decode_struct(raw: bytes, kind: type[T]) -> T:
    if not raw.strip():
        raise ApiError(400, "bad_request", "The request body is empty; a JSON document is required.")
    try:
        return _decoder(kind).decode(raw)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise struct_error(str(exc)) from None
    except msgspec.DecodeError:
        raise ApiError(400, "bad_request", "The request body is not valid JSON.") from None
    except RecursionError:
        raise too_deep() from None


def too_deep() -> ApiError:
    return ApiError(400, "bad_request", "The request body is nested too deeply.")


_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`(?: - at `(?P<path>[^`]*)`)?")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]*)`(?: - at `(?P<path>[^`]*)`)?")
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$")


def _field_path(prefix: str | None, name: str = "") -> str:
    path = (prefix or "$").removeprefix("$")
    parts = [p for p in re.split(r"[.\[\]]+", path) if p]
    if name:
        parts.append(name)
    return ".".join(parts) or "body"


def struct_error(message: str) -> ApiError:
    """Turns msgspec's validation message into the envelope, naming the field with a dotted path."""
    if match := _UNKNOWN.match(message):
        name = _field_path(match["path"], match["name"])
        return ApiError(
            400,
            "bad_request",
            f"Unknown field '{name}'.",
            field_error(name, "unknown_field", "This field is not allowed here."),
        )
    if match := _MISSING.match(message):
        name = _field_path(match["path"], match["name"])
        return validation_error(field_error(name, "required", "This field is required."))
    match = _AT.match(message)
    assert match is not None  # the pattern accepts any string
    name = _field_path(match["path"])
    text = match["message"].replace("`", "")
    code = "invalid_type" if text.startswith("Expected") else "invalid"
    return validation_error(field_error(name, code, text + "."))


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"Query parameter '{name}' must be a whole number.") from None
    if not low <= value <= high:
        raise ApiError(400, "bad_request", f"Query parameter '{name}' must be between {low} and {high}.")
    return value
