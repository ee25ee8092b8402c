"""/profiles: an account's user profile fields (the definition) and each user's profile values."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views, presenter, profiles
from snackbase.auth import require_account_admin
from snackbase.context import caller_for
from snackbase.errors import ApiError
from snackbase.listing import paging
from snackbase.rules import Caller
from snackbase.web import json_response, read_json


def _account(caller: Caller) -> str:
    if caller.account_id is None:
        raise ApiError(400, "account_required", "Name the account with X-Account-ID.")
    return caller.account_id


async def get_schema(request: Request) -> Response:
    caller = await caller_for(request)
    return json_response(profiles.to_json(profiles.load(request.app.state.db.conn, _account(caller))))


async def put_schema(request: Request) -> Response:
    await require_account_admin(request)
    caller = await caller_for(request)
    body = await read_json(request)
    reason = audit_views.reason_from(request)
    saved = profiles.save(
        request.app.state.db.conn,
        _account(caller),
        body,
        audit_views.actor_from_auth(caller),
        audit_views.meta_from_request(request),
        reason,
    )
    return json_response(profiles.to_json(saved))


def _shown(request: Request, caller: Caller, user_id: str) -> Response:
    found = presenter.present_profiles(request.app.state.db.conn, caller, [user_id])
    if user_id not in found:
        raise ApiError(404, "not_found", "No profile with this id.")
    return json_response(found[user_id])


async def get_profile(request: Request) -> Response:
    caller = await caller_for(request)
    return _shown(request, caller, request.path_params["id"])


async def patch_profile(request: Request) -> Response:
    caller = await caller_for(request)
    body = await read_json(request)
    reason = audit_views.reason_from(request, body if isinstance(body, dict) else None)
    user_id = request.path_params["id"]
    profiles.update(
        request.app.state.db.conn, caller, user_id, body, audit_views.meta_from_request(request), reason
    )
    return _shown(request, caller, user_id)


async def list_profiles(request: Request) -> Response:
    caller = await caller_for(request)
    params = request.query_params
    query = profiles.ProfileQuery(params.get("filter", ""), params.get("sort", ""), paging(request))
    collection, page = profiles.list_page(request.app.state.db.conn, caller, _account(caller), query)
    page["items"] = presenter.present_profile_rows(collection, caller, page["items"])
    return json_response(page)


routes = [
    ("GET", "/profiles", list_profiles),
    ("GET", "/profiles/schema", get_schema),
    ("PUT", "/profiles/schema", put_schema),
    ("GET", "/profiles/{id}", get_profile),
    ("PATCH", "/profiles/{id}", patch_profile),
]
