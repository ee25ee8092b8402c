"""Starlette's router, asking only the routes that can match a path's first segments; and routes that
call their endpoint without Starlette's per-route exception wrapper.

Starlette tries every route's regex in order until one matches: a record's GET tried ten before its
own (~10% of its CPU time, measured). A route can only match a path with as many segments as its own
(unless a `{…:path}` parameter spans several) whose first segments equal the route's leading literal
segments, so the routes worth trying depend on those alone. This router keeps, per key (the path's
number of slashes and its first segments), the routes that can match, in their original order, and
runs Starlette's own loop over them: the first full match, else the first partial one (405), else
Starlette's fallback (slash redirect, 404), asking only the candidates of the path with its trailing
slash toggled — the same answer as trying them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette._utils import get_route_path, is_async_callable
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Route, Router, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from snackbase.middleware import ExceptionHandlers
    from snackbase.routes import RouteTable

KEY_SEGMENTS = 3  # "/api/v1/records/…": enough to set the records routes apart from the rest
CACHE_MAX = 4096  # keys come from request paths: bounded, cleared when full


class IndexedRouter(Router):
    _candidates: dict[tuple[Any, ...], list[BaseRoute]]  # (method, slashes, first segments…) → routes
    _indexed_count = -1
    # The app's exception handlers (stack.build_stack sets them): an exception of routing or of an
    # endpoint is answered here, a step of the router rather than a layer of its own around it.
    errors: ExceptionHandlers | None = None

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        errors = self.errors
        if errors is not None:
            scope["starlette.exception_handlers"] = errors.handlers
        try:
            if scope["type"] != "http":
                await super().app(scope, receive, send)
                return
            scope.setdefault("router", self)
            partial: tuple[BaseRoute, Scope] | None = None
            for route in self._routes_for(scope):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope["route"] = route
                    scope.update(child_scope)
                    if type(route) is LeanRoute:  # a full match allows the method: no need for `handle`
                        response = await route.endpoint(Request(scope, receive, send))
                        await response(scope, receive, send)
                    else:
                        await route.handle(scope, receive, send)
                    return
                if match is Match.PARTIAL and partial is None:
                    partial = route, child_scope
            if partial is not None:
                scope["route"] = partial[0]
                scope.update(partial[1])
                await partial[0].handle(scope, receive, send)
                return
            await self._unmatched(scope, receive, send)
        except Exception as exc:
            if errors is None or not await errors.answered(exc, scope, receive, send):
                raise

    async def _unmatched(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's answer when no route matches: a redirect to the path with its trailing slash
        toggled when some route matches that, else the default (404). Starlette tries every route for
        the path, then every route again for the toggled one: an unknown path cost 1.5 times a
        record's get (measured); here only the toggled path's candidates are tried."""
        route_path = get_route_path(scope)
        if self.redirect_slashes and route_path != "/":
            toggled = dict(scope)
            toggled["path"] = scope["path"].rstrip("/") if route_path.endswith("/") else scope["path"] + "/"
            for route in self._routes_for(toggled):
                if route.matches(toggled)[0] is not Match.NONE:
                    await RedirectResponse(url=str(URL(scope=toggled)))(scope, receive, send)
                    return
        await self.default(scope, receive, send)

    def _routes_for(self, scope: Scope) -> list[BaseRoute]:
        if self._indexed_count != len(self.routes):  # routes added after start (tests do)
            self._candidates, self._indexed_count = {}, len(self.routes)
        path, method = get_route_path(scope), scope["method"]
        key = (method, path.count("/"), *path.split("/", KEY_SEGMENTS + 1)[1 : KEY_SEGMENTS + 1])
        routes = self._candidates.get(key)
        if routes is None:
            if len(self._candidates) >= CACHE_MAX:
                self._candidates.clear()
            found = [r for r in self.routes if _may_match(r, key[1:])]
            # The routes that allow the method first, each group in its original order: the first full
            # match is the same as in the original order (only these can match fully), and the first
            # partial one too (only the others can) — a create no longer tries the list route's regex.
            allowing = [r for r in found if method in (getattr(r, "methods", None) or (method,))]
            routes = self._candidates[key] = allowing + [r for r in found if r not in allowing]
        return routes


def _may_match(route: BaseRoute, key: tuple[Any, ...]) -> bool:
    """False only when the route's segment count or leading literal segments contradict the path's
    (key: the path's number of slashes, then its first segments)."""
    if not isinstance(route, Route | WebSocketRoute):
        return True  # mounts and others: always tried
    slashes, *first = key
    if ":path}" not in route.path and route.path.count("/") != slashes:
        return False  # a parameter never spans a slash, except a {…:path} one
    literal = route.path.split("{", 1)[0].split("/")[1:]
    if "{" in route.path:
        literal = literal[:-1]  # the segment holding the first parameter is not literal as a whole
    return all(a == b for a, b in zip(literal, first, strict=False))


Endpoint = Callable[[Request], Awaitable[Response]]


class LeanRoute(Route):
    """A Route whose endpoint runs without Starlette's `wrap_app_handling_exceptions`, which wraps
    every endpoint and every `send` of every request (~2% of a get's CPU, sampled). Its work is done
    once for all routes by IndexedRouter (its `errors`, middleware.ExceptionHandlers): an endpoint's
    exception gets its handler's answer there, or, once a response has started, goes on up unanswered.
    IndexedRouter calls the endpoint of a fully matched LeanRoute itself (two frames less than
    `handle` and `self.app`, which remain for Starlette's own router)."""

    def __init__(self, path: str, endpoint: Endpoint, methods: list[str]) -> None:
        if not is_async_callable(endpoint):
            raise TypeError(f"{endpoint!r}: endpoints are coroutines (a sync one would block the loop)")
        super().__init__(path, endpoint, methods=methods)
        self.app = _endpoint_app(endpoint)


def _endpoint_app(endpoint: Endpoint) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    return app


def build_routes(prefix: str, tables: list[RouteTable]) -> list[BaseRoute]:
    """The routes of route tables ((method, path, handler) rows), one method per route, under `prefix`."""
    built: list[BaseRoute] = []
    for table in tables:
        for method, path, handler in table:
            if method == "WS":
                built.append(WebSocketRoute(prefix + path, handler))
            else:
                built.append(LeanRoute(prefix + path, handler, methods=[method]))
    return built
