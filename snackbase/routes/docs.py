"""`GET /openapi.json` (the API as the caller sees it) and the interactive docs page at `/docs`.

The page is three small files of our own (no UI framework, no request to another host): it reads
the document, lists the operations and sends "try it" requests with a token the reader pastes.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from snackbase.context import caller_for
from snackbase.errors import ApiError
from snackbase.web import encode_json

_FILES = Path(__file__).resolve().parent.parent / "data"
_ASSETS = {
    "docs.js": "text/javascript; charset=utf-8",
    "docs.css": "text/css; charset=utf-8",
}
# Only our own files; the page talks to this server only (connect-src 'self').
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


async def openapi_json(request: Request) -> Response:
    """Built once per collections version and kind of caller, then served from the cache."""
    caller = await caller_for(request)
    state = request.app.state
    collections = state.registry.all(state.db.conn)  # refreshes `version`
    key = (state.registry.version, caller.is_superadmin, caller.is_authenticated, caller.sees_pii)
    cache: dict[Any, bytes] = getattr(state, "openapi_cache", None) or {}
    body = cache.get(key)
    if body is None:
        # Imported on the first document asked for: the generator's code is ~0.1 MiB of an idle server.
        from snackbase import openapi

        root_tables, api_tables = state.route_tables
        visible = openapi.visible_collections(collections, caller)
        root = [route for table in root_tables for route in table]
        api = [route for table in api_tables for route in table]
        document = openapi.build_document(state.settings.api_prefix, root, api, visible, caller)
        body = encode_json(document)
        cache = {k: v for k, v in cache.items() if k[0] == key[0]}  # drop older versions
        cache[key] = body
        state.openapi_cache = cache
    return Response(body, media_type="application/json", headers={"cache-control": "no-cache"})


async def docs_page(request: Request) -> Response:
    html = (_FILES / "docs.html").read_text(encoding="utf-8")
    html = html.replace("{{API_PREFIX}}", escape(request.app.state.settings.api_prefix))
    return Response(html, media_type="text/html; charset=utf-8", headers=_headers())


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _ASSETS:
        raise ApiError(404)
    return Response((_FILES / name).read_bytes(), media_type=_ASSETS[name], headers=_headers())


def _headers() -> dict[str, str]:
    return {"content-security-policy": DOCS_CSP, "cache-control": "no-cache"}


# Served at the root, next to the admin UI.
root_routes = [
    ("GET", "/docs", docs_page),
    ("GET", "/docs/{name}", docs_asset),
]

routes = [
    ("GET", "/openapi.json", openapi_json),
]
