"""/accounts: superadmins manage tenants; an account admin may read and rename its own account."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views, files, profiles
from snackbase.accounts import (
    check_slug,
    clean_name,
    create_account,
    get_account,
    is_system,
    public_account,
    slug_taken,
)
from snackbase.auth import Auth, audit_by_caller, forget_accounts, require_account_admin, require_superadmin
from snackbase.db import fetch_all
from snackbase.errors import ApiError, field_error
from snackbase.listing import Source, paging, table_page
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work
from snackbase.users import not_found
from snackbase.web import json_response, no_content, read_struct

Name = Annotated[str, msgspec.Meta(max_length=100)]
Slug = Annotated[str, msgspec.Meta(max_length=64)]


class CreateAccountBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    slug: Slug | None = None


class PatchAccountBody(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | None = None
    slug: Slug | None = None


def visible_account(request: Request, auth: Auth) -> dict[str, Any]:
    account = get_account(request.app.state.db.conn, request.path_params["id"])
    if account is None or (not auth.is_superadmin and account["id"] != auth.account_id):
        raise not_found("account")
    return account


async def list_accounts(request: Request) -> Response:
    await require_superadmin(request)
    conn = request.app.state.db.conn
    source = Source("accounts", "1 = 1", (), (("created_at", False), ("id", False)))
    return json_response(table_page(conn, source, paging(request), public_account))


async def create(request: Request) -> Response:
    auth = await require_superadmin(request)
    conn = request.app.state.db.conn
    body = await read_struct(request, CreateAccountBody)
    reason = audit_views.reason_from(request)
    name = clean_name(body.name, "name")
    with unit_of_work(conn):
        account = create_account(conn, name, body.slug, slug_field="slug")
        _audit(request, auth, "account.create", account["id"], None, _view(account), reason)
    return json_response(public_account(account), status=201)


async def get_one(request: Request) -> Response:
    auth = await require_account_admin(request)
    return json_response(public_account(visible_account(request, auth)))


async def patch(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    body = await read_struct(request, PatchAccountBody)
    reason = audit_views.reason_from(request)
    account = visible_account(request, auth)
    if body.slug is not None and body.slug != account["slug"]:
        if not auth.is_superadmin or is_system(account["id"]):
            raise ApiError(
                403, "forbidden", "Only a superadmin may change the slug (never the system account's)."
            )
        check_slug(body.slug, "slug")
        if slug_taken(conn, body.slug):
            raise ApiError(
                409,
                "slug_taken",
                "This account slug is already taken.",
                field_error("slug", "slug_taken", "Choose another slug."),
            )
    name = clean_name(body.name, "name") if body.name is not None else account["name"]
    slug = body.slug or account["slug"]
    with unit_of_work(conn):
        conn.execute(
            "UPDATE accounts SET name = ?, slug = ?, updated_at = ? WHERE id = ?",
            (name, slug, now_iso(), account["id"]),
        )
        after = {"slug": slug, "name": name}
        _audit(request, auth, "account.update", account["id"], _view(account), after, reason)
    return json_response(public_account(visible_account(request, auth)))


async def delete(request: Request) -> Response:
    auth = await require_superadmin(request)
    reason = audit_views.reason_from(request)
    account = visible_account(request, auth)
    if is_system(account["id"]):
        raise ApiError(409, "system_account", "The system account cannot be deleted.")
    conn = request.app.state.db.conn
    with unit_of_work(conn) as work:
        user_ids = [
            r["id"] for r in fetch_all(conn, "SELECT id FROM users WHERE account_id = ?", (account["id"],))
        ]
        # Stored files outlive rows: the records' and the profiles' go to file_trash (deleted after COMMIT).
        files.drop_account(conn, work, request.app.state.registry.all(conn), account["id"])
        for user_id in user_ids:
            profiles.before_user_delete(conn, work, user_id)
        conn.execute("DELETE FROM accounts WHERE id = ?", (account["id"],))
        # Into the deleted account's own chain, which outlives it (entries have no foreign keys).
        extra = {"users_deleted": len(user_ids)}
        _audit(request, auth, "account.delete", account["id"], _view(account), None, reason, extra)
    forget_accounts(conn)
    return no_content()


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"slug": row["slug"], "name": row["name"]}


def _audit(
    request: Request,
    auth: Auth,
    action: str,
    account_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """The account's entry, in its own chain; an update that changed nothing has none."""
    audit_by_caller(
        request,
        auth,
        action,
        account_id=account_id,
        collection="accounts",
        record_id=account_id,
        before=before,
        after=after,
        reason=reason,
        extra=extra,
        only_if_changed=action == "account.update",
    )


routes = [
    ("GET", "/accounts", list_accounts),
    ("POST", "/accounts", create),
    ("GET", "/accounts/{id}", get_one),
    ("PATCH", "/accounts/{id}", patch),
    ("DELETE", "/accounts/{id}", delete),
]
