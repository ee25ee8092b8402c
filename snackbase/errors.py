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
