"""Collections (schema), superadmin only: create, list, get, update (schema change), delete."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from snackbase.auth import require_superadmin
from snackbase.collections import create_collection, delete_collection, update_collection
from snackbase.context import change_context
from snackbase.schema import collection_to_json, parse_collection_body
from snackbase.web import json_response, no_content, read_json


async def list_collections(request: Request) -> Response:
    await require_superadmin(request)
    registry, conn = request.app.state.registry, request.app.state.db.conn
    items = [collection_to_json(c) for c in registry.all(conn)]
    return json_response({"items": items, "page": 1, "per_page": len(items), "total_items": len(items),
                          "total_pages": 1 if items else 0})


async def create(request: Request) -> Response:
    await require_superadmin(request)
    parsed = parse_collection_body(await read_json(request))
    ctx = await change_context(request)
    collection = create_collection(request.app.state.db.conn, request.app.state.registry, parsed, ctx)
    return json_response(collection_to_json(collection), status=201)


async def get_one(request: Request) -> Response:
    await require_superadmin(request)
    collection = request.app.state.registry.get(request.app.state.db.conn, request.path_params["name"])
    return json_response(collection_to_json(collection))


async def update(request: Request) -> Response:
    await require_superadmin(request)
    parsed = parse_collection_body(await read_json(request), partial=True)
    ctx = await change_context(request)
    collection = update_collection(request.app.state.db.conn, request.app.state.registry,
                                   request.path_params["name"], parsed, ctx)
    return json_response(collection_to_json(collection))


async def delete(request: Request) -> Response:
    await require_superadmin(request)
    ctx = await change_context(request)
    delete_collection(request.app.state.db.conn, request.app.state.registry, request.path_params["name"], ctx)
    return no_content()


routes = [
    ("GET", "/collections", list_collections),
    ("POST", "/collections", create),
    ("GET", "/collections/{name}", get_one),
    ("PATCH", "/collections/{name}", update),
    ("DELETE", "/collections/{name}", delete),
]
