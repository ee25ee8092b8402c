"""/profiles: an account's user profile fields (the definition) and each user's profile values."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views, files, presenter, profiles, uploads
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
        request.app.state.registry,
        _account(caller),
        body,
        audit_views.actor_from_auth(caller),
        audit_views.meta_from_request(request),
        reason,
    )
    return json_response(profiles.to_json(saved))


def _expand(request: Request, caller: Caller) -> list[str]:
    """The `expand` names, checked against the caller's account's profile fields."""
    names = [n.strip() for n in request.query_params.get("expand", "").split(",") if n.strip()]
    if names:
        presenter.check_profile_expand(profiles.load(request.app.state.db.conn, _account(caller)), names[:64])
    return names[:64]


def _shown(request: Request, caller: Caller, user_id: str) -> Response:
    conn, registry = request.app.state.db.conn, request.app.state.registry
    found = presenter.present_profiles(conn, caller, [user_id], registry, _expand(request, caller))
    if user_id not in found:
        raise ApiError(404, "not_found", "No profile with this id.")
    return json_response(found[user_id])


async def get_profile(request: Request) -> Response:
    caller = await caller_for(request)
    return _shown(request, caller, request.path_params["id"])


async def patch_profile(request: Request) -> Response:
    """JSON, or multipart/form-data with files for the profile's file fields (an avatar): streamed to
    staging, moved into storage around the write and deleted again if it fails (snackbase.files)."""
    caller = await caller_for(request)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    user_id = request.path_params["id"]
    meta = audit_views.meta_from_request(request)

    def write(body: Any, staged: list[files.Staged]) -> None:
        reason = audit_views.reason_from(request, body if isinstance(body, dict) else None)
        profiles.update(conn, caller, user_id, body, meta, reason, registry, staged)

    if not uploads.is_multipart(request):
        write(await read_json(request), [])
        return _shown(request, caller, user_id)
    # Who may write is checked before any byte is stored: a stranger's upload never reaches storage.
    account_id = profiles.check_writer(conn, caller, user_id)["account_id"]
    collection = profiles.load(conn, account_id)
    body, staged = await uploads.read_multipart(request, collection, account_id)
    await files.write_with_uploads(conn, collection, staged, lambda: write(body, staged))
    return _shown(request, caller, user_id)


async def list_profiles(request: Request) -> Response:
    caller = await caller_for(request)
    params = request.query_params
    query = profiles.ProfileQuery(params.get("filter", ""), params.get("sort", ""), paging(request))
    expand = _expand(request, caller)
    conn = request.app.state.db.conn
    collection, page = profiles.list_page(conn, caller, _account(caller), query)
    page["items"] = presenter.present_profile_rows(collection, caller, page["items"])
    if expand:
        presenter.expand_profiles(conn, request.app.state.registry, collection, caller, page["items"], expand)
    return json_response(page)


routes = [
    ("GET", "/profiles", list_profiles),
    ("GET", "/profiles/schema", get_schema),
    ("PUT", "/profiles/schema", put_schema),
    ("GET", "/profiles/{id}", get_profile),
    ("PATCH", "/profiles/{id}", patch_profile),
]
