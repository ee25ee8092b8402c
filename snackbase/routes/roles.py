"""/roles: every user may list them; superadmins add custom roles and delete unused ones."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views
from snackbase.auth import audit_by_caller, require_superadmin, require_user
from snackbase.db import fetch_one, fetch_value
from snackbase.errors import ApiError, field_error
from snackbase.ids import SYSTEM_ACCOUNT_ID
from snackbase.listing import Source, paging, table_page
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work
from snackbase.web import json_response, no_content, read_struct

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class CreateRoleBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=32)]
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""


def public_role(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "description": row["description"],
        "builtin": bool(row["builtin"]),
        "created_at": row["created_at"],
    }


async def list_roles(request: Request) -> Response:
    await require_user(request)
    conn = request.app.state.db.conn
    source = Source("roles", "1 = 1", (), (("builtin", True), ("name", False)))
    return json_response(table_page(conn, source, paging(request), public_role))


async def create_role(request: Request) -> Response:
    auth = await require_superadmin(request)
    conn = request.app.state.db.conn
    body = await read_struct(request, CreateRoleBody)
    reason = audit_views.reason_from(request)
    if not _NAME.fullmatch(body.name):
        raise ApiError(
            400,
            "validation_failed",
            "The role name is not valid.",
            field_error(
                "name",
                "invalid",
                "1-32 characters: lowercase letters, digits and '_', starting with a letter.",
            ),
        )
    if fetch_one(conn, "SELECT name FROM roles WHERE name = ?", (body.name,)) is not None:
        raise ApiError(
            409,
            "conflict",
            "A role with this name exists.",
            field_error("name", "not_unique", "Role names are unique."),
        )
    with unit_of_work(conn):
        conn.execute(
            "INSERT INTO roles (name, description, builtin, created_at) VALUES (?, ?, 0, ?)",
            (body.name, body.description, now_iso()),
        )
        row = fetch_one(conn, "SELECT * FROM roles WHERE name = ?", (body.name,))
        assert row is not None
        _audit(request, auth, "role.create", row["name"], None, _view(row), reason)
    return json_response(public_role(row), status=201)


async def delete_role(request: Request) -> Response:
    auth = await require_superadmin(request)
    conn = request.app.state.db.conn
    reason = audit_views.reason_from(request)
    name = request.path_params["name"]
    row = fetch_one(conn, "SELECT * FROM roles WHERE name = ?", (name,))
    if row is None:
        raise ApiError(404, "not_found", "No role has this name.")
    if row["builtin"]:
        raise ApiError(409, "builtin_role", "Built-in roles cannot be deleted.")
    if _in_use(conn, name):
        raise ApiError(409, "role_in_use", "Users or pending invitations still have this role.")
    with unit_of_work(conn):
        conn.execute("DELETE FROM roles WHERE name = ?", (name,))
        _audit(request, auth, "role.delete", name, _view(row), None, reason)
    return no_content()


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "description": row["description"], "builtin": bool(row["builtin"])}


def _audit(
    request: Request,
    auth: Any,
    action: str,
    name: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None,
) -> None:
    """Roles are shared by all accounts, so their changes go into the system account's chain."""
    audit_by_caller(
        request,
        auth,
        action,
        account_id=SYSTEM_ACCOUNT_ID,
        collection="roles",
        record_id=name,
        before=before,
        after=after,
        reason=reason,
    )


def _in_use(conn: Any, name: str) -> bool:
    return (
        fetch_value(
            conn,
            """
        SELECT EXISTS (SELECT 1 FROM users WHERE role = ?1)
            OR EXISTS (SELECT 1 FROM invitations WHERE role = ?1 AND accepted_at IS NULL)
    """,
            (name,),
        )
        == 1
    )


routes = [
    ("GET", "/roles", list_roles),
    ("POST", "/roles", create_role),
    ("DELETE", "/roles/{name}", delete_role),
]
