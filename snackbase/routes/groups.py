"""/groups: per-account groups and their members (account admins; superadmins for any account)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import apsw
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views
from snackbase.auth import Auth, audit_by_caller, require_account_admin
from snackbase.db import fetch_all, fetch_one
from snackbase.errors import ApiError, field_error
from snackbase.ids import uuid7
from snackbase.listing import Source, paging, table_page
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work
from snackbase.users import acting_account, not_found, visible_user
from snackbase.web import json_response, no_content, read_struct

PROTECTED = "pii_access"  # every account has it; PII unmasking depends on its name
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
Description = Annotated[str, msgspec.Meta(max_length=500)]


class CreateGroupBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=64)]
    description: Description = ""
    account_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class PatchGroupBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    description: Description | None = None


def public_group(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("id", "account_id", "name", "description", "created_at", "updated_at")}


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "description": row["description"]}


def _audit(
    request: Request,
    auth: Auth,
    action: str,
    group: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """The group's entry (call inside the change's transaction); an update that changed nothing has none."""
    audit_by_caller(
        request,
        auth,
        action,
        account_id=group["account_id"],
        collection="groups",
        record_id=group["id"],
        before=before,
        after=after,
        reason=reason,
        extra=extra,
        only_if_changed=action == "group.update",
    )


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ApiError(
            400,
            "validation_failed",
            "The group name is not valid.",
            field_error(
                "name",
                "invalid",
                "1-64 characters: letters, digits, '_', '.', '-'; not starting with '.' or '-'.",
            ),
        )
    return name


def name_taken(conn: apsw.Connection, account_id: str, name: str) -> ApiError | None:
    if fetch_one(conn, "SELECT id FROM groups WHERE account_id = ? AND name = ?", (account_id, name)):
        return ApiError(
            409,
            "conflict",
            "A group with this name exists in the account.",
            field_error("name", "not_unique", "Group names are unique per account."),
        )
    return None


def visible_group(conn: apsw.Connection, auth: Any, group_id: str) -> dict[str, Any]:
    row = fetch_one(conn, "SELECT * FROM groups WHERE id = ?", (group_id,))
    if row is None or (not auth.is_superadmin and row["account_id"] != auth.account_id):
        raise not_found("group")
    return row


async def list_groups(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    account_id = acting_account(conn, auth, request.query_params.get("account_id"))
    source = Source("groups", "account_id = ?", (account_id,), (("name", False),))
    return json_response(table_page(conn, source, paging(request), public_group))


async def create_group(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    body = await read_struct(request, CreateGroupBody)
    reason = audit_views.reason_from(request)
    account_id = acting_account(conn, auth, body.account_id)
    name = check_name(body.name)
    if error := name_taken(conn, account_id, name):
        raise error
    group_id, now = uuid7(), now_iso()
    with unit_of_work(conn):
        conn.execute(
            """
            INSERT INTO groups (id, account_id, name, description, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?)
        """,
            (group_id, account_id, name, body.description, now, now),
        )
        group = {"id": group_id, "account_id": account_id, "name": name, "description": body.description}
        _audit(request, auth, "group.create", group, None, _view(group), reason)
    return json_response(public_group(visible_group(conn, auth, group_id)), status=201)


async def get_group(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    group = visible_group(conn, auth, request.path_params["id"])
    return json_response({**public_group(group), "members": _members(conn, group["id"])})


def _members(conn: apsw.Connection, group_id: str) -> list[dict[str, Any]]:
    return fetch_all(
        conn,
        """
        SELECT u.id, u.email FROM group_members m JOIN users u ON u.id = m.user_id WHERE m.group_id = ?
        ORDER BY u.email
    """,
        (group_id,),
    )


async def patch_group(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    body = await read_struct(request, PatchGroupBody)
    reason = audit_views.reason_from(request)
    group = visible_group(conn, auth, request.path_params["id"])
    name = check_name(body.name) if body.name is not None else group["name"]
    if name != group["name"]:
        if group["name"] == PROTECTED:
            raise ApiError(409, "conflict", "The pii_access group cannot be renamed.")
        if error := name_taken(conn, group["account_id"], name):
            raise error
    description = body.description if body.description is not None else group["description"]
    with unit_of_work(conn):
        conn.execute(
            "UPDATE groups SET name = ?, description = ?, updated_at = ? WHERE id = ?",
            (name, description, now_iso(), group["id"]),
        )
        after = {"name": name, "description": description}
        _audit(request, auth, "group.update", group, _view(group), after, reason)
    return json_response(public_group(visible_group(conn, auth, group["id"])))


async def delete_group(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    reason = audit_views.reason_from(request)
    group = visible_group(conn, auth, request.path_params["id"])
    if group["name"] == PROTECTED:
        raise ApiError(409, "conflict", "The pii_access group cannot be deleted.")
    with unit_of_work(conn):
        members = [row["email"] for row in _members(conn, group["id"])]
        conn.execute("DELETE FROM groups WHERE id = ?", (group["id"],))
        _audit(request, auth, "group.delete", group, _view(group), None, reason, {"members": members[:1000]})
    return no_content()


def _member_target(
    conn: apsw.Connection, auth: Any, request: Request
) -> tuple[dict[str, Any], dict[str, Any]]:
    group = visible_group(conn, auth, request.path_params["id"])
    user = visible_user(conn, auth, request.path_params["user_id"])
    if user["account_id"] != group["account_id"]:
        raise not_found("user")
    return group, user


async def add_member(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    reason = audit_views.reason_from(request)
    group, user = _member_target(conn, auth, request)
    with unit_of_work(conn):
        conn.execute(
            "INSERT INTO group_members (group_id, user_id, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (group["id"], user["id"], now_iso()),
        )
        if conn.changes():  # already a member: nothing changed, nothing to record
            _member_audit(request, auth, "group.member_add", group, user, reason)
    return no_content()


async def remove_member(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    reason = audit_views.reason_from(request)
    group, user = _member_target(conn, auth, request)
    with unit_of_work(conn):
        conn.execute(
            "DELETE FROM group_members WHERE group_id = ? AND user_id = ?", (group["id"], user["id"])
        )
        if conn.changes():
            _member_audit(request, auth, "group.member_remove", group, user, reason)
    return no_content()


def _member_audit(
    request: Request, auth: Auth, action: str, group: dict[str, Any], user: dict[str, Any], reason: str | None
) -> None:
    """Target: the group; `changes.member` holds the user's email as added (new) or removed (old)."""
    email = user["email"]
    before, after = ({}, {"member": email}) if action == "group.member_add" else ({"member": email}, {})
    extra = {"user_id": user["id"], "group": group["name"]}
    _audit(request, auth, action, group, before, after, reason, extra)


routes = [
    ("GET", "/groups", list_groups),
    ("POST", "/groups", create_group),
    ("GET", "/groups/{id}", get_group),
    ("PATCH", "/groups/{id}", patch_group),
    ("DELETE", "/groups/{id}", delete_group),
    ("POST", "/groups/{id}/members/{user_id}", add_member),
    ("DELETE", "/groups/{id}/members/{user_id}", remove_member),
]
