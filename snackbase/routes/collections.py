"""Collections (schema), superadmin only: create, list, get, update (schema change), delete."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import records
from snackbase.auth import require_account_admin, require_superadmin
from snackbase.collection_defs import collection_to_json, parse_collection_body
from snackbase.collections import create_collection, delete_collection, update_collection
from snackbase.context import caller_for, caller_for_user, change_context
from snackbase.errors import ApiError
from snackbase.listing import whole_list
from snackbase.rules import Caller
from snackbase.schema import RULE_OPS
from snackbase.web import json_response, no_content, read_json, read_struct


async def list_collections(request: Request) -> Response:
    # Account admins may read definitions (their console builds record forms from them); only
    # superadmins change them.
    await require_account_admin(request)
    registry, conn = request.app.state.registry, request.app.state.db.conn
    items = [collection_to_json(c) for c in registry.all(conn)]
    return json_response(whole_list(items))


async def create(request: Request) -> Response:
    await require_superadmin(request)
    parsed = parse_collection_body(await read_json(request))
    await request.app.state.hooks.collection_before("create", parsed["name"], parsed)
    ctx = await change_context(request)
    collection = create_collection(request.app.state.db.conn, request.app.state.registry, parsed, ctx)
    request.app.state.hooks.collection_after("create", collection)
    return json_response(collection_to_json(collection), status=201)


async def get_one(request: Request) -> Response:
    await require_account_admin(request)
    collection = request.app.state.registry.get(request.app.state.db.conn, request.path_params["name"])
    return json_response(collection_to_json(collection))


async def update(request: Request) -> Response:
    await require_superadmin(request)
    parsed = parse_collection_body(await read_json(request), partial=True)
    await request.app.state.hooks.collection_before("update", request.path_params["name"], parsed)
    ctx = await change_context(request)
    collection = update_collection(
        request.app.state.db.conn, request.app.state.registry, request.path_params["name"], parsed, ctx
    )
    request.app.state.hooks.collection_after("update", collection)
    return json_response(collection_to_json(collection))


async def delete(request: Request) -> Response:
    await require_superadmin(request)
    await request.app.state.hooks.collection_before("delete", request.path_params["name"])
    ctx = await change_context(request)
    old = delete_collection(
        request.app.state.db.conn, request.app.state.registry, request.path_params["name"], ctx
    )
    request.app.state.hooks.collection_after("delete", old)
    return no_content()


class RuleTest(msgspec.Struct, forbid_unknown_fields=True):
    rule: str | None
    operation: str = "view"
    as_user: str | None = None
    record_id: str | None = None
    data: dict[str, Any] | None = None


async def test_rule(request: Request) -> Response:
    """Evaluates a rule (saved or not) for a user and a stored record or new data: {"allowed": bool}."""
    await require_superadmin(request)
    body = await read_struct(request, RuleTest)
    if body.operation not in RULE_OPS:
        raise ApiError(
            400,
            "validation_failed",
            "Unknown operation.",
            {"operation": {"code": "not_in_values", "message": f"One of {', '.join(RULE_OPS)}."}},
        )
    conn, registry = request.app.state.db.conn, request.app.state.registry
    collection = registry.get(conn, request.path_params["name"])
    caller = caller_for_user(request, body.as_user) if body.as_user else await caller_for(request)
    if body.as_user is None:  # anonymous, in the account named by X-Account-ID
        caller = Caller(None, caller.account_id, None, None, False, frozenset, caller.macro)
    allowed = records.try_rule(
        conn, registry, collection, caller, body.rule, body.operation, body.record_id, body.data
    )
    return json_response({"allowed": allowed})


routes = [
    ("GET", "/collections", list_collections),
    ("POST", "/collections", create),
    ("GET", "/collections/{name}", get_one),
    ("PATCH", "/collections/{name}", update),
    ("DELETE", "/collections/{name}", delete),
    ("POST", "/collections/{name}/rules/test", test_rule),
]
