"""The one error type and the one function that builds the error envelope (SPEC section 3).

Every error a client can see — raised by a route, a hook, the filter compiler, a validator, or
produced by Starlette for an unknown route — leaves through `error_response`, so the envelope has
exactly one shape: `{status, code, message, fields, request_id}`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

# Default code and message per HTTP status, used when a caller gives only a status.
_DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request could not be understood."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "You are not allowed to do this."),
    404: ("not_found", "The requested resource was not found."),
    405: ("method_not_allowed", "This method is not allowed on this resource."),
    409: ("conflict", "The request conflicts with the current state."),
    410: ("gone", "The resource is no longer available."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "The request body must be JSON."),
    422: ("validation_failed", "The request body is not valid."),
    429: ("rate_limited", "Too many requests; try again later."),
    500: ("internal_error", "An internal error occurred."),
    503: ("service_unavailable", "The service is temporarily unavailable."),
}

FieldErrors = dict[str, dict[str, str]]


class ApiError(Exception):
    """An error answered to the client in the envelope. `fields` maps a field name to {code, message}."""

    def __init__(
        self,
        status: int,
        code: str | None = None,
        message: str | None = None,
        fields: FieldErrors | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        default_code, default_message = _DEFAULTS.get(status, ("error", "The request failed."))
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        self.fields: FieldErrors = fields or {}
        self.headers = headers or {}
        super().__init__(self.message)


def field_error(field: str, code: str, message: str) -> FieldErrors:
    return {field: {"code": code, "message": message}}


def validation_error(fields: FieldErrors, message: str = "The request body is not valid.") -> ApiError:
    return ApiError(400, "validation_failed", message, fields)


_encoder = msgspec.json.Encoder()


def envelope(error: ApiError, request_id: str) -> dict[str, Any]:
    return {
        "status": error.status,
        "code": error.code,
        "message": error.message,
        "fields": error.fields,
        "request_id": request_id,
    }


def error_response(error: ApiError, request_id: str) -> Response:
    """The only place an error body is built."""
    return Response(
        _encoder.encode(envelope(error, request_id)),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


# --- database errors by kind (SQLite's result codes, never its message text) ----------------------

BUSY_RETRY_AFTER_S = 1


def database_error(exc: Exception) -> ApiError:
    """The answer to an error SQLite raised: a busy database or an interrupted statement is a 503 the
    client may retry; a constraint is a 409 named by its kind. Anything else is a 500."""
    import apsw  # here, not at the top: the pure modules importing this one never need apsw

    if isinstance(exc, apsw.BusyError):
        return ApiError(
            503,
            "busy",
            "The database is busy with other writes; try again shortly.",
            headers={"retry-after": str(BUSY_RETRY_AFTER_S)},
        )
    if isinstance(exc, apsw.InterruptError):
        return ApiError(
            503,
            "statement_timeout",
            "The request took longer than the server allows for one database statement.",
            headers={"retry-after": str(BUSY_RETRY_AFTER_S)},
        )
    if isinstance(exc, apsw.ConstraintError):
        return constraint_error(exc)
    return ApiError(500)


def constraint_kind(exc: Exception) -> str:
    """`unique`, `foreign_key`, `not_null`, `check` or `other`, from SQLite's extended result code."""
    import apsw

    code = int(getattr(exc, "extendedresult", 0) or 0)
    return {
        apsw.SQLITE_CONSTRAINT_UNIQUE: "unique",
        apsw.SQLITE_CONSTRAINT_PRIMARYKEY: "unique",
        apsw.SQLITE_CONSTRAINT_FOREIGNKEY: "foreign_key",
        apsw.SQLITE_CONSTRAINT_NOTNULL: "not_null",
        apsw.SQLITE_CONSTRAINT_CHECK: "check",
    }.get(code, "other")


def unique_columns(exc: Exception) -> list[str]:
    """The columns a UNIQUE violation names ("UNIQUE constraint failed: t.account_id, t.code"). The
    kind comes from the result code; only the columns' names have to be read from the message."""
    if constraint_kind(exc) != "unique":
        return []
    return [part.strip().rsplit(".", 1)[-1] for part in str(exc).split("failed:", 1)[-1].split(",")]


def constraint_error(exc: Exception) -> ApiError:
    kind = constraint_kind(exc)
    messages = {
        "unique": "A record with these values already exists.",
        "foreign_key": "Other records still reference this one, or a reference names no record.",
        "not_null": "A required value is missing.",
        "check": "A value is outside what the collection allows.",
    }
    return ApiError(409, "conflict", messages.get(kind, "The change violates a constraint."))
