"""The ASGI stack every request passes, from the server's edge to the endpoint, on both backends:

    realtime_first      the WebSocket served at once; an SSE stream keeps the server's own `send`
    RequestMiddleware   request id, security headers, access line, metrics, the bare 500; the current
                        run-time settings, and CORS in front of the rest when origins are set
    RequestGate         the caller (401 for a bad token), rate limits, request hooks
    IndexedRouter       the route, then its endpoint (routing.py); an exception of either answered
                        by its handler (middleware.ExceptionHandlers, a step of the router)

Each layer is one awaited coroutine frame on every request, passed again each time the request's task
resumes. The caller, the rate limits, the request hooks and the settings were four layers; they are
steps of two now (the request hooks and CORS add their wrapping only when they are configured). A frame
itself is cheap: folding the exception handlers' layer into the router saved ~1,500 of the ~503,000
instructions of a public get (bench/instructions.py); what a layer does is what costs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, ExceptionHandler, Receive, Scope, Send

from snackbase import runtime_settings
from snackbase.auth import auth_of_scope
from snackbase.errors import ApiError, error_response
from snackbase.hook_loader import serve_with_request_hooks
from snackbase.hooks import current_scope
from snackbase.middleware import ExceptionHandlers, Observer, RequestMiddleware
from snackbase.ratelimit import Network, RateGuard
from snackbase.routes.realtime import realtime_first
from snackbase.routing import IndexedRouter


class RequestGate:
    """What an HTTP request passes before routing, once its bookkeeping is set up: for an API request the
    caller is resolved (a bad, expired or revoked token is answered 401) and its rate limit taken; then
    the request hooks run around the rest when any are registered. WebSockets pass untouched (they
    authenticate in their route, by header or by their first message)."""

    def __init__(self, app: ASGIApp, prefix: str, guard: RateGuard | None = None) -> None:
        self.app = app
        self.prefix = prefix
        self.guard = guard  # None: no rate limit is set

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(self.prefix):
            refusal = self._refusal(scope)
            if refusal is not None:
                response = error_response(refusal, str(scope["state"].get("request_id", "")))
                await response(scope, receive, send)
                return
        token = current_scope.set(scope)  # hook events default their caller from it
        try:
            hooks = scope["app"].state.hooks
            if hooks.has("request.before") or hooks.has("request.after"):
                await serve_with_request_hooks(self.app, hooks, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            current_scope.reset(token)

    def _refusal(self, scope: Scope) -> ApiError | None:
        """401 for a bad token, else 429 when the caller is over its rate limit, else None."""
        try:
            auth_of_scope(scope)  # kept in the scope: the access line and the route see the caller
        except ApiError as exc:
            return exc
        return None if self.guard is None else self.guard.refusal(scope)


class AppState(State):
    """`app.state` whose values are plain instance attributes. Starlette's State keeps them in a dict of
    its own and finds each one through `__getattr__`, a Python call after a failed ordinary lookup:
    1.1 µs per read against 0.07 µs for a plain attribute (timeit), and a get read `app.state.…` 13
    times. Here that dict is the instance's `__dict__`, so State's own `__setattr__` stores where the
    ordinary lookup finds it."""

    def __init__(self) -> None:
        super().__init__(self.__dict__)


class SnackBaseApp(Starlette):
    """Starlette with the stack above in place of its own: no ServerErrorMiddleware (RequestMiddleware
    already logs an unhandled exception and answers the enveloped 500) and no per-route exception
    wrapping (the router answers exceptions once, middleware.ExceptionHandlers). `wrap` puts a
    backend's layer (the PostgreSQL dialect) around the whole stack."""

    router: IndexedRouter

    def __init__(
        self,
        routes: list[BaseRoute],
        *,
        ui_prefix: str,
        observer: Observer | None,
        trusted_proxies: tuple[Network, ...],
        guard: RateGuard | None,
        wrap: Callable[[ASGIApp], ASGIApp] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(routes=routes, **kwargs)
        self.state = AppState()
        self.router = IndexedRouter(routes, lifespan=kwargs.get("lifespan"))
        self._stack_options = (ui_prefix, observer, trusted_proxies, guard, wrap)

    def build_middleware_stack(self) -> ASGIApp:
        ui_prefix, observer, proxies, guard, wrap = self._stack_options
        stack = build_stack(
            self.router, self.exception_handlers, prefix=self.state.settings.api_prefix,
            ui_prefix=ui_prefix, observer=observer, trusted_proxies=proxies, guard=guard,
        )  # fmt: skip
        return stack if wrap is None else wrap(stack)


def build_stack(
    router: IndexedRouter,
    handlers: Mapping[Any, ExceptionHandler],
    *,
    prefix: str,
    ui_prefix: str,
    observer: Observer | None,
    trusted_proxies: tuple[Network, ...],
    guard: RateGuard | None,
) -> ASGIApp:
    router.errors = ExceptionHandlers(handlers)
    app: ASGIApp = RequestGate(router.app, prefix, guard)  # router.app: Router.__call__ only forwards
    app = RequestMiddleware(app, ui_prefix=ui_prefix, observer=observer, trusted_proxies=trusted_proxies,
                            settings_of=runtime_settings.current)  # fmt: skip
    return realtime_first(app, prefix)
