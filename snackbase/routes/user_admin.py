"""POST /users/{id}/password: an admin sets a new password for a user of their account (a superadmin:
for anyone). Every session of that user ends, a lockout is lifted, and the change is audited as
`auth.password_change` with `via: admin` in the same transaction."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views, throttle
from snackbase.auth import audit_by_caller, require_account_admin
from snackbase.errors import ApiError
from snackbase.passwords import check_policy, hash_password, params_for
from snackbase.sessions import revoke_user_sessions
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work
from snackbase.users import visible_user
from snackbase.web import no_content, read_struct


class SetPasswordBody(msgspec.Struct, forbid_unknown_fields=True):
    password: Annotated[str, msgspec.Meta(max_length=1024)]


async def set_password(request: Request) -> Response:
    auth = await require_account_admin(request)
    settings, conn = request.app.state.settings, request.app.state.db.conn
    body = await read_struct(request, SetPasswordBody)
    reason = audit_views.reason_from(request)
    user = visible_user(conn, auth, request.path_params["id"])
    if user["id"] == auth.user_id:
        raise ApiError(409, "conflict", "Change your own password with POST /auth/change-password.")
    check_policy(body.password, user["email"], settings.password_min_length)
    password_hash = await hash_password(params_for(settings.environment), body.password)
    with unit_of_work(conn):
        user = visible_user(conn, auth, user["id"])
        now = now_iso()
        conn.execute(
            "UPDATE users SET password_hash = ?, password_changed_at = ?, updated_at = ? WHERE id = ?",
            (password_hash, now, now, user["id"]),
        )
        revoked = revoke_user_sessions(conn, user["id"], "password_reset")
        throttle.clear_identity(conn, throttle.identity_key(user["account_id"], user["email"]))
        audit_by_caller(
            request,
            auth,
            "auth.password_change",
            account_id=user["account_id"],
            collection="users",
            record_id=user["id"],
            before={"password_changed_at": user["password_changed_at"]},
            after={"password_changed_at": now},
            reason=reason,
            extra={"via": "admin", "sessions_revoked": revoked},
        )
    return no_content()


routes = [("POST", "/users/{id}/password", set_password)]
