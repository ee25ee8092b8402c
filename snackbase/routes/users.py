"""/users: account admins manage their own account's users; superadmins manage everyone."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views, cascade, profiles, throttle
from snackbase.auth import Auth, audit_by_caller, require_account_admin
from snackbase.context import caller_for, write_context
from snackbase.errors import ApiError
from snackbase.listing import Source, paging, table_page
from snackbase.passwords import check_policy, hash_password, params_for
from snackbase.sessions import revoke_user_sessions
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work
from snackbase.users import (
    acting_account,
    audit_view,
    check_email,
    check_role,
    group_ids,
    insert_user,
    public_user,
    set_groups,
    visible_user,
)
from snackbase.web import json_response, no_content, read_struct

Short = Annotated[str, msgspec.Meta(max_length=64)]
GroupNames = Annotated[list[Short], msgspec.Meta(max_length=100)]


class CreateUserBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(max_length=320)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]
    role: Short = "user"
    groups: GroupNames = []
    account_id: Short | None = None
    is_active: bool = True


class PatchUserBody(msgspec.Struct, forbid_unknown_fields=True):
    role: Short | None = None
    groups: GroupNames | None = None
    is_active: bool | None = None


async def list_users(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    requested = request.query_params.get("account_id")
    params: tuple[Any, ...] = ()
    if auth.is_superadmin and requested is None:
        where = "1 = 1"
    else:
        where, params = "account_id = ?", (acting_account(conn, auth, requested),)
    source = Source("users", where, params, (("created_at", False), ("id", False)))
    return json_response(table_page(conn, source, paging(request), lambda row: public_user(conn, row)))


async def create_user(request: Request) -> Response:
    auth = await require_account_admin(request)
    settings, conn = request.app.state.settings, request.app.state.db.conn
    body = await read_struct(request, CreateUserBody)
    reason = audit_views.reason_from(request)
    account_id = acting_account(conn, auth, body.account_id)
    email = check_email(body.email)
    check_role(conn, body.role)
    ids = group_ids(conn, account_id, body.groups)
    check_policy(body.password, email, settings.password_min_length)
    password_hash = await hash_password(params_for(settings.environment), body.password)
    with unit_of_work(conn):
        user = insert_user(conn, account_id, email, password_hash, body.role)
        set_groups(conn, user["id"], ids)
        if not body.is_active:
            conn.execute("UPDATE users SET is_active = 0 WHERE id = ?", (user["id"],))
            user["is_active"] = 0
        _audit(request, auth, "user.create", user, None, audit_view(conn, user), reason)
    return json_response(public_user(conn, user), status=201)


def _audit(
    request: Request,
    auth: Auth,
    action: str,
    user: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None,
    extra: dict[str, Any] | None = None,
) -> bool:
    return audit_by_caller(
        request,
        auth,
        action,
        account_id=user["account_id"],
        collection="users",
        record_id=user["id"],
        before=before,
        after=after,
        reason=reason,
        extra=extra,
        only_if_changed=action == "user.update",
    )


async def get_user(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    return json_response(public_user(conn, visible_user(conn, auth, request.path_params["id"])))


async def patch_user(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    body = await read_struct(request, PatchUserBody)
    reason = audit_views.reason_from(request)
    user = visible_user(conn, auth, request.path_params["id"])
    if body.role is not None:
        check_role(conn, body.role)
    ids = group_ids(conn, user["account_id"], body.groups) if body.groups is not None else None
    if user["id"] == auth.user_id and (body.is_active is False or body.role not in (None, "admin")):
        raise ApiError(409, "conflict", "You cannot deactivate or demote yourself; ask another admin.")
    with unit_of_work(conn):
        before = audit_view(conn, visible_user(conn, auth, user["id"]))
        revoked = _apply_patch(conn, user, body, ids)
        after = audit_view(conn, visible_user(conn, auth, user["id"]))
        extra = {"sessions_revoked": revoked} if revoked else None
        _audit(request, auth, "user.update", user, before, after, reason, extra)
    return json_response(public_user(conn, visible_user(conn, auth, user["id"])))


def _apply_patch(conn: Any, user: dict[str, Any], body: PatchUserBody, ids: list[str] | None) -> int:
    """Applies a PATCH; how many sessions a deactivation ended."""
    now = now_iso()
    if body.role is not None:
        conn.execute("UPDATE users SET role = ?, updated_at = ? WHERE id = ?", (body.role, now, user["id"]))
    if ids is not None:
        set_groups(conn, user["id"], ids)
        conn.execute("UPDATE users SET updated_at = ? WHERE id = ?", (now, user["id"]))
    if body.is_active is not None:
        conn.execute(
            "UPDATE users SET is_active = ?, updated_at = ? WHERE id = ?",
            (int(body.is_active), now, user["id"]),
        )
        if not body.is_active:
            return revoke_user_sessions(conn, user["id"], "deactivated")
    return 0


async def delete_user(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    reason = audit_views.reason_from(request)
    user = visible_user(conn, auth, request.path_params["id"])
    if user["id"] == auth.user_id:
        raise ApiError(409, "conflict", "You cannot delete yourself.")
    ctx, registry = await write_context(request, await caller_for(request)), request.app.state.registry
    with unit_of_work(conn) as work:
        before = audit_view(conn, user)
        # Records whose `user` fields name this user: restrict refuses (409 naming the collection and
        # field), set_null clears them, each cleared record with its own audit entry.
        cascade.before_delete(conn, registry, cascade.USERS, [user["id"]], ctx, work, reason)
        profiles.before_user_delete(conn, work, user["id"])  # its avatar's files go too
        conn.execute("DELETE FROM users WHERE id = ?", (user["id"],))
        _audit(request, auth, "user.delete", user, before, None, reason)
    return no_content()


async def unlock_user(request: Request) -> Response:
    """Lifts a login lockout (and forgets the failed attempts) of a user."""
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    reason = audit_views.reason_from(request)
    user = visible_user(conn, auth, request.path_params["id"])
    identity = throttle.identity_key(user["account_id"], user["email"])
    with unit_of_work(conn):
        was_locked = throttle.is_locked(conn, identity)
        throttle.clear_identity(conn, identity)
        _audit(request, auth, "user.unlock", user, {"is_locked": was_locked}, {"is_locked": False}, reason)
    return no_content()


routes = [
    ("GET", "/users", list_users),
    ("POST", "/users", create_user),
    ("GET", "/users/{id}", get_user),
    ("PATCH", "/users/{id}", patch_user),
    ("DELETE", "/users/{id}", delete_user),
    ("POST", "/users/{id}/unlock", unlock_user),
]
