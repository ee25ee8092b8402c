"""The auth middleware: every API request's caller resolved before any route runs (401 for a bad
token, in the error envelope), so the access log line and request hooks carry the user."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from snackbase.auth import get_auth
from snackbase.errors import ApiError, error_response


class AuthMiddleware:
    """Puts the caller on every API request (`request.state.auth`), answering bad tokens with 401.

    Pure ASGI like RequestMiddleware; it runs inside it, so the access log line carries the user id.
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # WebSockets (realtime) authenticate in their route: by header or by their first message.
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            try:
                await get_auth(Request(scope))
            except ApiError as exc:
                response = error_response(exc, str(scope.get("state", {}).get("request_id", "")))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
