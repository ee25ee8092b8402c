"""The indexed router answers every request exactly as Starlette's router, which tries every route."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, Router

from snackbase.app import create_app
from snackbase.routing import IndexedRouter, _may_match
from tests.conftest import make_settings

METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS")


def sample_paths(routes: list[Route]) -> list[str]:
    """Each route's path with its parameters filled in, plus near misses around it."""
    paths = {"/", "/nothing", "/api/v1", "/api/v1/", "/api/v1/nothing/here", "/health/", "/_", "/_/"}
    for route in routes:
        concrete = re.sub(r"\{[^}]+\}", "x1", route.path)
        paths |= {concrete, concrete + "/", concrete + "/extra", concrete.rsplit("/", 1)[0] + "/zz"}
    return sorted(paths)


def echo(path: str) -> Callable[[Request], Response]:
    def endpoint(_request: Request) -> Response:
        return PlainTextResponse(path)

    return endpoint


def test_the_indexed_router_picks_the_same_route_as_starlette(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "data"))
    assert isinstance(app.router, IndexedRouter)
    # The app's own route table, each endpoint answering with its route's path: routing alone.
    routes = [
        Route(r.path, echo(f"{sorted(r.methods or ())} {r.path}"), methods=r.methods)
        for r in app.router.routes
        if isinstance(r, Route)
    ]
    indexed, plain = IndexedRouter(routes), Router(routes)

    async def compare_all() -> None:
        for path in sample_paths(routes):
            for method in METHODS:
                answers = [await call(router, method, path) for router in (indexed, plain)]
                assert answers[0] == answers[1], (method, path)

    asyncio.run(compare_all())


async def call(router: Router, method: str, path: str) -> tuple[Any, ...]:
    """One request straight into the router (ASGI): status, body and headers."""
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"host", b"test")], "scheme": "http",
             "server": ("test", 80)}  # fmt: skip
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await router(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], body, dict(start["headers"])


def test_only_contradicting_segment_counts_or_literal_segments_rule_a_route_out() -> None:
    records = Route("/api/v1/records/{collection}/{id}", lambda r: None)
    assert _may_match(records, (5, "api", "v1", "records"))
    assert not _may_match(records, (5, "api", "v1", "collections"))
    assert not _may_match(records, (4, "api", "v1", "records"))  # /records/{collection}: one fewer
    assert not _may_match(records, (6, "api", "v1", "records"))
    assert _may_match(Route("/_/{path:path}", lambda r: None), (3, "_", "assets", "x.js"))
    assert _may_match(Route("/_/{path:path}", lambda r: None), (7, "_", "a", "b"))  # :path spans slashes
    assert not _may_match(Route("/health", lambda r: None), (3, "api", "v1", "records"))
    assert _may_match(Route("/health", lambda r: None), (1, "health"))
    # "/health/" is no candidate of /health; the router's fallback (Starlette's own loop over every
    # route) still answers it with the slash redirect, as the comparison above checks for "/health/".
    assert not _may_match(Route("/health", lambda r: None), (2, "health", ""))
