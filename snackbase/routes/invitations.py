"""/invitations: account admins invite people by email; the invitee accepts with the emailed token."""

from __future__ import annotations

import json
from typing import Annotated, Any

import apsw
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit, audit_views, mail
from snackbase.accounts import get_account, public_account
from snackbase.auth import Auth, audit_change, later_iso, require_account_admin, user_actor
from snackbase.config import Settings
from snackbase.db import fetch_one
from snackbase.errors import ApiError
from snackbase.ids import SYSTEM_ACCOUNT_ID, uuid7
from snackbase.listing import Source, paging, table_page
from snackbase.passwords import check_policy, hash_password, params_for
from snackbase.sessions import create_session, token_pair
from snackbase.times import now_iso
from snackbase.tokens import digest, new_one_time_token
from snackbase.unit_of_work import unit_of_work
from snackbase.users import (
    acting_account,
    audit_view,
    check_email,
    check_role,
    find_user,
    get_user,
    group_ids,
    insert_user,
    not_found,
    public_user,
    set_groups,
)
from snackbase.web import json_response, no_content, read_struct

NO_STORE = {"cache-control": "no-store"}  # responses carrying a token (RFC 6749 section 5.1)
Short = Annotated[str, msgspec.Meta(max_length=64)]


class CreateInvitationBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(max_length=320)]
    role: Short = "user"
    groups: Annotated[list[Short], msgspec.Meta(max_length=100)] = []
    account_id: Short | None = None


class AcceptBody(msgspec.Struct, forbid_unknown_fields=True):
    password: Annotated[str, msgspec.Meta(max_length=1024)]


def status_of(row: dict[str, Any]) -> str:
    if row["accepted_at"]:
        return "accepted"
    return "expired" if row["expires_at"] <= now_iso() else "pending"


def public_invitation(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "account_id": row["account_id"],
        "email": row["email"],
        "role": row["role"],
        "groups": json.loads(row["groups"]),
        "status": status_of(row),
        "invited_by": row["invited_by"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "accepted_at": row["accepted_at"],
    }


def _send(settings: Settings, conn: apsw.Connection, row: dict[str, Any], token: str) -> None:
    account = get_account(conn, row["account_id"])
    message = mail.render(
        "invitation",
        to=row["email"],
        account=account["name"] if account else "SnackBase",
        link=f"{settings.base_url}/_/#/invitations/accept?token={token}",
        valid=f"{settings.invitation_expire_hours} hours",
        sender=settings.mail_from,
    )
    mail.send(settings, "invitation", message)


def _view(row: dict[str, Any]) -> dict[str, Any]:
    """The invitation as its audit entries show it: never the token or its digest."""
    return {
        "email": row["email"],
        "role": row["role"],
        "groups": json.loads(row["groups"]),
        "expires_at": row["expires_at"],
    }


def _audit(
    request: Request,
    actor: audit.Actor,
    action: str,
    row: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    audit_change(
        request.app.state.db.conn,
        request,
        actor,
        action,
        account_id=row["account_id"],
        collection="invitations",
        record_id=row["id"],
        before=before,
        after=after,
        reason=reason,
        extra=extra,
    )


def _visible(conn: apsw.Connection, auth: Auth, invitation_id: str) -> dict[str, Any]:
    row = fetch_one(conn, "SELECT * FROM invitations WHERE id = ?", (invitation_id,))
    if row is None or (not auth.is_superadmin and row["account_id"] != auth.account_id):
        raise not_found("invitation")
    return row


async def create(request: Request) -> Response:
    auth = await require_account_admin(request)
    settings, conn = request.app.state.settings, request.app.state.db.conn
    body = await read_struct(request, CreateInvitationBody)
    reason = audit_views.reason_from(request)
    account_id = acting_account(conn, auth, body.account_id)
    email = check_email(body.email)
    check_role(conn, body.role)
    group_ids(conn, account_id, body.groups)  # validates the names now; resolved again on accept
    if find_user(conn, account_id, email) is not None:
        raise ApiError(409, "email_taken", "A user with this email already exists in the account.")
    token, invitation_id = new_one_time_token(), uuid7()
    with unit_of_work(conn):
        conn.execute(
            """
            INSERT INTO invitations (id, account_id, email, role, groups, token_hash, invited_by, created_at,
                                     expires_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
            (
                invitation_id,
                account_id,
                email,
                body.role,
                json.dumps(list(dict.fromkeys(body.groups))),
                digest(token),
                auth.user_id,
                now_iso(),
                later_iso(settings.invitation_expire_hours * 3600),
            ),
        )
        row = _visible(conn, auth, invitation_id)
        _audit(request, audit_views.actor_from_auth(auth), "invitation.create", row, None, _view(row), reason)
    _send(settings, conn, row, token)
    return json_response({**public_invitation(row), "token": token}, status=201, headers=NO_STORE)


async def list_invitations(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    account_id = acting_account(conn, auth, request.query_params.get("account_id"))
    source = Source("invitations", "account_id = ?", (account_id,), (("created_at", True), ("id", False)))
    return json_response(table_page(conn, source, paging(request), public_invitation))


async def delete(request: Request) -> Response:
    auth = await require_account_admin(request)
    conn = request.app.state.db.conn
    reason = audit_views.reason_from(request)
    row = _visible(conn, auth, request.path_params["id"])
    with unit_of_work(conn):
        conn.execute("DELETE FROM invitations WHERE id = ?", (row["id"],))
        extra = {"status": status_of(row)}
        _audit(
            request,
            audit_views.actor_from_auth(auth),
            "invitation.delete",
            row,
            _view(row),
            None,
            reason,
            extra,
        )
    return no_content()


async def resend(request: Request) -> Response:
    """A new token and expiry (the old token stops working: only its hash was kept)."""
    auth = await require_account_admin(request)
    settings, conn = request.app.state.settings, request.app.state.db.conn
    reason = audit_views.reason_from(request)
    row = _visible(conn, auth, request.path_params["id"])
    if row["accepted_at"]:
        raise ApiError(410, "invitation_expired", "This invitation was already accepted.")
    token = new_one_time_token()
    with unit_of_work(conn):
        conn.execute(
            "UPDATE invitations SET token_hash = ?, expires_at = ? WHERE id = ?",
            (digest(token), later_iso(settings.invitation_expire_hours * 3600), row["id"]),
        )
        before, row = row, _visible(conn, auth, row["id"])
        # Always recorded: the token changed (never written) even when the expiry did not move.
        _audit(
            request,
            audit_views.actor_from_auth(auth),
            "invitation.resend",
            row,
            _view(before),
            _view(row),
            reason,
        )
    _send(settings, conn, row, token)
    return json_response({**public_invitation(row), "token": token}, headers=NO_STORE)


def _by_token(conn: apsw.Connection, token: str) -> dict[str, Any]:
    """The pending invitation of a token; 404 unknown, 410 invitation_expired when used or expired."""
    if len(token) > 512:
        raise not_found("invitation")
    row = fetch_one(conn, "SELECT * FROM invitations WHERE token_hash = ?", (digest(token),))
    if row is None:
        raise ApiError(404, "not_found", "This invitation does not exist.")
    if status_of(row) != "pending":
        raise ApiError(410, "invitation_expired", "This invitation was already used or has expired.")
    if not _inviter_still_may(conn, row):
        raise ApiError(410, "invitation_expired", "This invitation is no longer valid.")
    return row


def _inviter_still_may(conn: apsw.Connection, row: dict[str, Any]) -> bool:
    """An invitation carries its inviter's authority, so it dies with it: checked when the token is
    used (always current, nothing to revoke). The inviter must still exist (deletion sets invited_by
    to NULL), be active, and be a superadmin or an admin of the invitation's account — and an inviter
    demoted to a plain role can no longer hand out the admin role."""
    inviter = (
        fetch_one(conn, "SELECT account_id, role, is_active FROM users WHERE id = ?", (row["invited_by"],))
        if row["invited_by"]
        else None
    )
    if inviter is None or not inviter["is_active"]:
        return False
    if inviter["account_id"] == SYSTEM_ACCOUNT_ID:
        return True
    return inviter["account_id"] == row["account_id"] and _rank(inviter["role"]) >= _rank(row["role"])


def _rank(role: str) -> int:
    """admin above every other role (built-in `user` and custom roles rank alike)."""
    return 2 if role == "admin" else 1


async def show(request: Request) -> Response:
    conn = request.app.state.db.conn
    row = _by_token(conn, request.path_params["token"])
    account = get_account(conn, row["account_id"])
    assert account is not None
    return json_response(
        {
            "account": {"id": account["id"], "slug": account["slug"], "name": account["name"]},
            "email": row["email"],
            "role": row["role"],
            "expires_at": row["expires_at"],
        }
    )


async def accept(request: Request) -> Response:
    settings, conn = request.app.state.settings, request.app.state.db.conn
    token = request.path_params["token"]
    body = await read_struct(request, AcceptBody)
    row = _by_token(conn, token)
    check_policy(body.password, row["email"], settings.password_min_length)
    password_hash = await hash_password(params_for(settings.environment), body.password)
    with unit_of_work(conn):
        row = _by_token(conn, token)  # again: it may have been accepted while the password was hashed
        # The emailed link proved the mailbox, so the address counts as verified.
        user = insert_user(conn, row["account_id"], row["email"], password_hash, row["role"], verified=True)
        set_groups(conn, user["id"], _existing_groups(conn, row))
        accepted_at = now_iso()
        conn.execute(
            "UPDATE invitations SET accepted_at = ?, user_id = ? WHERE id = ?",
            (accepted_at, user["id"], row["id"]),
        )
        session_id, refresh = create_session(
            conn, settings, user["id"], _ip(request), request.headers.get("user-agent", "")
        )
        conn.execute("UPDATE users SET last_login_at = ? WHERE id = ?", (now_iso(), user["id"]))
        # One entry for the acceptance: the invitation spent, the user it created, the session it opened.
        _audit(
            request,
            user_actor(user, "token"),
            "invitation.accept",
            row,
            {"accepted_at": None, "user_id": None},
            {"accepted_at": accepted_at, "user_id": user["id"]},
            extra={"user": {"id": user["id"], **audit_view(conn, user)}, "session_id": session_id},
        )
    user = get_user(conn, user["id"]) or user
    account = get_account(conn, user["account_id"]) or {}
    return json_response(
        {
            "account": public_account(account),
            "user": public_user(conn, user),
            **token_pair(settings, user, session_id, refresh),
        },
        status=201,
        headers=NO_STORE,
    )


def _existing_groups(conn: apsw.Connection, row: dict[str, Any]) -> list[str]:
    """Groups deleted since the invitation was sent are skipped rather than failing the accept."""
    names = [name for name in json.loads(row["groups"]) if _exists(conn, row, name)]
    return group_ids(conn, row["account_id"], names)


def _exists(conn: apsw.Connection, row: dict[str, Any], name: str) -> bool:
    return (
        fetch_one(
            conn, "SELECT 1 AS x FROM groups WHERE account_id = ? AND name = ?", (row["account_id"], name)
        )
        is not None
    )


def _ip(request: Request) -> str:
    return request.client.host if request.client else ""


routes = [
    ("POST", "/invitations", create),
    ("GET", "/invitations", list_invitations),
    ("DELETE", "/invitations/{id}", delete),
    ("POST", "/invitations/{id}/resend", resend),
    ("GET", "/invitations/{token}", show),
    ("POST", "/invitations/{token}/accept", accept),
]
