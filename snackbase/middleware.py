"""The request middleware (pure ASGI: Starlette's BaseHTTPMiddleware costs a task per request).

For every HTTP request it: takes or makes the request id, puts it in the log context, adds the
request id and security headers to the response, turns any unexpected exception into a bare 500 in
the error envelope (logged with its trace, never shown), and writes one access log line. It also
keeps the app's settings current (run-time settings change while serving) and puts CORS in front of
the rest of the stack when origins are set.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from snackbase.errors import ApiError, envelope, error_response
from snackbase.ids import random_bytes
from snackbase.logs import log_access, request_context
from snackbase.ratelimit import Network, forwarded_client
from snackbase.web import encode_json

log = logging.getLogger("snackbase.request")

_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# The admin UI loads only its own files: no CDN, no inline script, no framing.
ADMIN_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    b"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    b"form-action 'self'"
)


def security_headers() -> list[tuple[bytes, bytes]]:
    """The headers every response carries (also the HTTP parser's own 400, see http_protocol.py)."""
    return list(_SECURITY_HEADERS)


def request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _SAFE_REQUEST_ID.fullmatch(value):
            return value.decode()
    return random_bytes(12).hex()


# The response's status so far ({"code", "sent"}), kept in the scope by RequestMiddleware: whether a
# response has started decides whether an error can still be answered (ExceptionHandlers).
RESPONSE_STATUS = "snackbase.response_status"

# Called once per finished request with (scope, status, seconds, unhandled exception or None).
Observer = Callable[[Scope, int, float, BaseException | None], None]
# The app's settings as they are now (runtime_settings.current: they may change while serving).
SettingsOf = Callable[[Any], Any]


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings_of: SettingsOf,
        ui_prefix: str = "/_/",
        observer: Observer | None = None,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self.app = app
        self.ui_prefix = ui_prefix
        self.observer = observer  # metrics and the request log (snackbase.ops); None when both are off
        self.trusted_proxies = trusted_proxies
        self.settings_of = settings_of
        # The settings object last seen, and the rest of the stack for it: behind CORS when it names
        # origins (built once per settings object; parsing the origins per request was ~1% of a get).
        self._for_settings: tuple[Any, ASGIApp] = (None, app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.trusted_proxies and (forwarded := forwarded_client(scope, self.trusted_proxies)):
            # Everything after (audit entries, login throttling, rate limits) sees the real client.
            scope["client"] = (forwarded, 0)
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        context: dict[str, Any] = {"request_id": request_id}
        token = request_context.set(context)
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        scope[RESPONSE_STATUS] = status
        extra_headers = self._headers(scope, request_id)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                message["headers"] = list(message.get("headers", [])) + extra_headers
            await send(message)

        error: BaseException | None = None
        try:
            await self._inner(scope)(scope, receive, send_wrapper)
        except Exception as exc:
            error = exc
            log.exception("unhandled error", extra={"method": scope["method"], "path": scope["path"]})
            if not status["sent"]:
                await self._send_500(send_wrapper, request_id)
        finally:
            elapsed = time.perf_counter() - started
            log_access(scope["method"], scope["path"], status["code"], round(elapsed * 1000, 2))
            if self.observer is not None:
                self.observer(scope, status["code"], elapsed, error)
            request_context.reset(token)

    def _inner(self, scope: Scope) -> ASGIApp:
        """The rest of the stack for the app's current settings: behind CORS when origins are set
        (SNACKBASE_CORS_ORIGINS may change at run time, so the CORS layer is built per origin list)."""
        settings = self.settings_of(scope["app"])
        seen, inner = self._for_settings
        if seen is not settings:
            origins = settings.cors_origin_list
            inner = _cors(self.app, origins) if origins else self.app
            self._for_settings = (settings, inner)
        return inner

    def _headers(self, scope: Scope, request_id: str) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-request-id", request_id.encode()), *_SECURITY_HEADERS]
        if scope["path"].startswith(self.ui_prefix) or scope["path"] == self.ui_prefix.rstrip("/"):
            headers.append((b"content-security-policy", ADMIN_CSP))
        return headers

    async def _send_500(self, send: Send, request_id: str) -> None:
        body = encode_json(envelope(ApiError(500), request_id))
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the error envelope (Starlette answers
    a plain-text 400 that no client of this API would expect)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code != 200:
                    reason = bytes(response.body).decode(errors="replace")
                    error = ApiError(400, "cors_refused", f"CORS preflight refused: {reason}.")
                    response = error_response(error, str(scope.get("state", {}).get("request_id", "")))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _cors(app: ASGIApp, origins: list[str]) -> ASGIApp:
    return EnvelopeCORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID", "ETag"],  # ETag: optimistic concurrency
        max_age=600,
    )


HttpHandler = Callable[[Request, Exception], Awaitable[Response]]


class ExceptionHandlers:
    """Starlette's ExceptionMiddleware as a step of the router (routing.IndexedRouter), not a layer of
    its own: no per-request wrapping of the app and of `send`, and no coroutine frame of its own on
    every request.

    Every exception of the router (Starlette's 404 and 405) and of the endpoints (which run without
    Starlette's per-route wrapper, see routing.LeanRoute) is answered here by its handler, unless a
    response has already started (a stream that failed midway): then, as without a handler, it goes
    on up to RequestMiddleware, which logs it and answers the bare 500 if it still can."""

    def __init__(self, handlers: Mapping[Any, ExceptionHandler]) -> None:
        # Starlette's layout ({exception class: handler}, {status: handler}), kept in every scope for
        # the routes that still use Starlette's own wrapper (WebSocket routes, mounts).
        self.handlers: tuple[dict[Any, ExceptionHandler], dict[int, ExceptionHandler]] = (dict(handlers), {})

    async def answered(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answers `exc` with its handler; False when it has none or can no longer be answered (the
        caller then raises it on)."""
        handler = self._handler_for(exc)
        if handler is None or scope["type"] != "http" or scope.get(RESPONSE_STATUS, {}).get("sent"):
            return False
        response = await cast(HttpHandler, handler)(Request(scope, receive), exc)
        await response(scope, receive, send)
        return True

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        for cls in type(exc).__mro__:
            if cls in self.handlers[0]:
                return self.handlers[0][cls]
        return None
