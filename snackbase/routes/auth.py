"""/auth: register, login, refresh, logout, me, sessions, passwords, email verification (SPEC 4)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views, onetime, throttle
from snackbase.accounts import clean_name, create_account, get_account, public_account
from snackbase.auth import (
    ACCOUNT_ID_RE,
    SLUG_RE,
    audit_by_caller,
    audit_change,
    find_account_id,
    require_user,
    user_actor,
)
from snackbase.errors import ApiError, field_error
from snackbase.listing import whole_list
from snackbase.passwords import check_policy, hash_password, params_for, verify_password
from snackbase.sessions import (
    active_sessions,
    create_session,
    revoke_session,
    revoke_user_sessions,
    rotate_refresh_token,
    session_of_refresh_token,
    token_pair,
)
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work
from snackbase.users import (
    audit_view,
    check_email,
    find_user,
    get_user,
    insert_user,
    normalize_email,
    public_user,
)
from snackbase.web import json_response, no_content, read_struct

Email = Annotated[str, msgspec.Meta(max_length=320)]
# Longer than the policy's 128 so a too-long new password gets the policy's message, yet bounded.
Password = Annotated[str, msgspec.Meta(max_length=1024)]
Secret = Annotated[str, msgspec.Meta(max_length=512)]
AccountRef = Annotated[str, msgspec.Meta(max_length=64)]
Name = Annotated[str, msgspec.Meta(max_length=100)]


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    account_name: Name
    email: Email
    password: Password
    account_slug: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    account_identifier: AccountRef


class RefreshBody(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Secret


class ChangePasswordBody(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password


class ForgotBody(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    account_identifier: AccountRef


class ResetBody(msgspec.Struct, forbid_unknown_fields=True):
    token: Secret
    new_password: Password


class TokenBody(msgspec.Struct, forbid_unknown_fields=True):
    token: Secret


INVALID_CREDENTIALS = "The email, password or account is not correct."
# Token responses must not be kept by browsers or proxies (RFC 6749 section 5.1).
NO_STORE = {"cache-control": "no-store"}
FORGOT_ANSWER = {"message": "If this account and email exist, an email with a reset link is on its way."}


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def user_agent(request: Request) -> str:
    return request.headers.get("user-agent", "")[:256]


def open_session(request: Request, user: dict[str, Any]) -> tuple[str, str]:
    """A new session for `user` (call inside the caller's unit of work): (session id, refresh token)."""
    conn, settings = request.app.state.db.conn, request.app.state.settings
    session_id, refresh = create_session(conn, settings, user["id"], client_ip(request), user_agent(request))
    conn.execute("UPDATE users SET last_login_at = ? WHERE id = ?", (now_iso(), user["id"]))
    return session_id, refresh


def logged_in(request: Request, user_id: str, session_id: str, refresh: str, status: int = 200) -> Response:
    """The token shape of SPEC section 4 for a session opened by `open_session`."""
    conn, settings = request.app.state.db.conn, request.app.state.settings
    user = get_user(conn, user_id)
    assert user is not None
    account = get_account(conn, user["account_id"])
    body = {
        "account": public_account(account or {}),
        "user": public_user(conn, user),
        **token_pair(settings, user, session_id, refresh),
    }
    return json_response(body, status=status, headers=NO_STORE)


async def register(request: Request) -> Response:
    settings, conn = request.app.state.settings, request.app.state.db.conn
    body = await read_struct(request, RegisterBody)
    await request.app.state.hooks.auth_before("register", body)
    if settings.registration == "closed":
        raise ApiError(403, "registration_closed", "Registration is closed; ask an administrator.")
    name = clean_name(body.account_name, "account_name")
    email = check_email(body.email)
    check_policy(body.password, email, settings.password_min_length)
    password_hash = await hash_password(params_for(settings.environment), body.password)
    with unit_of_work(conn):
        account = create_account(conn, name, body.account_slug)
        user = insert_user(conn, account["id"], email, password_hash, "admin")
        session_id, refresh = open_session(request, user)
        audit_change(
            conn,
            request,
            user_actor(user, "password"),
            "auth.register",
            account_id=account["id"],
            collection="users",
            record_id=user["id"],
            after=audit_view(conn, user),
            extra={
                "account": {"id": account["id"], "slug": account["slug"], "name": account["name"]},
                "session_id": session_id,
            },
        )
    request.app.state.hooks.auth_after("register", user)
    return logged_in(request, user["id"], session_id, refresh, status=201)


def _login_identity(conn: Any, ref: str, email: str) -> tuple[str | None, str]:
    ref = ref.strip()
    valid_ref = ACCOUNT_ID_RE.fullmatch(ref.upper()) or SLUG_RE.fullmatch(ref.lower())
    account_id = find_account_id(conn, ref) if valid_ref else None
    return account_id, throttle.identity_key(account_id or ref.lower(), email)


async def login(request: Request) -> Response:
    settings, conn = request.app.state.settings, request.app.state.db.conn
    body = await read_struct(request, LoginBody)
    await request.app.state.hooks.auth_before("login", body)
    email, ip = normalize_email(body.email), client_ip(request)
    account_id, identity = _login_identity(conn, body.account_identifier, email)
    throttle.check_login_allowed(conn, settings, ip, identity)
    user = find_user(conn, account_id, email) if account_id else None
    # Unknown account or email: verify against the dummy hash anyway, so every failure takes as long.
    params = params_for(settings.environment)
    matches, rehash = await verify_password(params, user["password_hash"] if user else None, body.password)
    user = get_user(conn, user["id"]) if user else None  # re-read: it may have changed while hashing
    if user is None or not matches or not user["is_active"]:
        reason = "unknown_user" if user is None else ("inactive" if not user["is_active"] else "bad_password")
        if account_id is None:
            reason = "unknown_account"
        _login_failed(request, body.account_identifier, user, email, identity, reason, count=True)
    assert user is not None
    if settings.require_verified_email and not user["email_verified"]:
        _login_failed(request, body.account_identifier, user, email, identity, "email_not_verified")
    new_hash = await hash_password(params, body.password) if rehash else None
    with unit_of_work(conn):
        if new_hash is not None:
            conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (new_hash, user["id"]))
        throttle.clear_pair(conn, identity, ip)
        session_id, refresh = open_session(request, user)
        _login_event(request, body.account_identifier, user, email, True, "", session_id)
    request.app.state.hooks.auth_after("login", user)
    return logged_in(request, user["id"], session_id, refresh)


def _login_failed(
    request: Request,
    account_ref: str,
    user: dict[str, Any] | None,
    email: str,
    identity: str,
    reason: str,
    count: bool = False,
) -> None:
    """Records a failed login (the throttle counters when `count`, and its audit entry) and raises."""
    conn = request.app.state.db.conn
    with unit_of_work(conn):
        if count:
            throttle.record_failure(conn, request.app.state.settings, client_ip(request), identity)
        _login_event(request, account_ref, user, email, False, reason)
    if reason == "email_not_verified":
        raise ApiError(403, "email_not_verified", "Verify your email address before logging in.")
    raise ApiError(401, "invalid_credentials", INVALID_CREDENTIALS)


def _login_event(
    request: Request,
    account_ref: str,
    user: dict[str, Any] | None,
    email: str,
    success: bool,
    reason: str,
    session_id: str | None = None,
) -> None:
    throttle.record_login_event(
        request.app.state.db.conn,
        user=user,
        email=email,
        account_ref=account_ref.strip(),
        success=success,
        reason=reason,
        meta=audit_views.meta_from_request(request),
        session_id=session_id,
    )


async def refresh(request: Request) -> Response:
    settings, conn = request.app.state.settings, request.app.state.db.conn
    body = await read_struct(request, RefreshBody)
    await request.app.state.hooks.auth_before("refresh", body)
    row, new_token = rotate_refresh_token(
        conn, settings, body.refresh_token, audit_views.meta_from_request(request)
    )
    request.app.state.hooks.auth_after("refresh", get_user(conn, str(row["id"])))
    return json_response(token_pair(settings, row, row["session_id"], new_token), headers=NO_STORE)


async def logout(request: Request) -> Response:
    auth = await require_user(request)
    body = await read_struct(request, RefreshBody)
    await request.app.state.hooks.auth_before("logout", body)
    conn = request.app.state.db.conn
    with unit_of_work(conn):
        ended = []
        session = session_of_refresh_token(conn, body.refresh_token)
        if session is not None and session["user_id"] == auth.user_id:
            ended += [session["id"]] if revoke_session(conn, session["id"], "logout") else []
        if revoke_session(conn, str(auth.session_id), "logout"):
            ended.append(str(auth.session_id))
        _audit_logout(request, auth, "session", str(auth.session_id), ended)
    request.app.state.hooks.auth_after("logout", get_user(conn, str(auth.user_id)))
    return no_content()


def _audit_logout(request: Request, auth: Any, scope: str, session_id: str | None, ended: list[str]) -> None:
    """`auth.logout` for logout (`scope` "session"), logout-all ("all") and revoking one session
    ("revoke"); `extra` lists the sessions that ended."""
    audit_by_caller(
        request,
        auth,
        "auth.logout",
        account_id=str(auth.account_id),
        collection="sessions",
        record_id=session_id,
        extra={"scope": scope, "sessions_revoked": len(ended), "session_ids": ended[:100]},
    )


async def logout_all(request: Request) -> Response:
    auth = await require_user(request)
    conn = request.app.state.db.conn
    with unit_of_work(conn):
        ended = [row["id"] for row in active_sessions(conn, str(auth.user_id))]
        revoke_user_sessions(conn, str(auth.user_id), "logout_all")
        _audit_logout(request, auth, "all", None, ended)
    return no_content()


async def me(request: Request) -> Response:
    auth = await require_user(request)
    conn = request.app.state.db.conn
    user = get_user(conn, str(auth.user_id))
    account = get_account(conn, str(auth.account_id))
    assert user is not None and account is not None
    return json_response({"user": public_user(conn, user), "account": public_account(account)})


async def list_sessions(request: Request) -> Response:
    auth = await require_user(request)
    rows = active_sessions(request.app.state.db.conn, str(auth.user_id))
    items = [{**row, "current": row["id"] == auth.session_id} for row in rows]
    return json_response(whole_list(items))


async def delete_session(request: Request) -> Response:
    auth = await require_user(request)
    conn = request.app.state.db.conn
    session_id = request.path_params["id"]
    if not any(row["id"] == session_id for row in active_sessions(conn, str(auth.user_id))):
        raise ApiError(404, "not_found", "No active session of yours has this id.")
    with unit_of_work(conn):
        if revoke_session(conn, session_id, "revoked_by_user"):
            _audit_logout(request, auth, "revoke", session_id, [session_id])
    return no_content()


async def change_password(request: Request) -> Response:
    auth = await require_user(request)
    settings, conn = request.app.state.settings, request.app.state.db.conn
    body = await read_struct(request, ChangePasswordBody)
    user = get_user(conn, str(auth.user_id))
    assert user is not None
    identity = throttle.identity_key(user["account_id"], user["email"])
    throttle.check_login_allowed(conn, settings, client_ip(request), identity)
    params = params_for(settings.environment)
    matches, _ = await verify_password(params, user["password_hash"], body.current_password)
    if not matches:
        throttle.record_failure(conn, settings, client_ip(request), identity)
        raise ApiError(
            400,
            "validation_failed",
            "The current password is not correct.",
            field_error("current_password", "invalid_password", "The current password is not correct."),
        )
    check_policy(body.new_password, user["email"], settings.password_min_length, "new_password")
    new_hash = await hash_password(params, body.new_password)
    with unit_of_work(conn):
        now = _set_password(conn, user["id"], new_hash)
        revoked = revoke_user_sessions(conn, user["id"], "password_change", keep=auth.session_id)
        audit_change(
            conn,
            request,
            audit_views.actor_from_auth(auth),
            "auth.password_change",
            account_id=user["account_id"],
            collection="users",
            record_id=user["id"],
            before={"password_changed_at": user["password_changed_at"]},
            after={"password_changed_at": now},
            extra={"via": "change_password", "sessions_revoked": revoked},
        )
    return no_content()


def _set_password(conn: Any, user_id: str, password_hash: str) -> str:
    now = now_iso()
    conn.execute(
        "UPDATE users SET password_hash = ?, password_changed_at = ?, updated_at = ? WHERE id = ?",
        (password_hash, now, now, user_id),
    )
    return now


async def forgot_password(request: Request) -> Response:
    """Always the same 202, answered before anything is looked up: the lookup, the token and the email
    happen after the response is sent, so its timing cannot tell which emails exist."""
    body = await read_struct(request, ForgotBody)
    response = json_response(FORGOT_ANSWER, status=202)
    response.background = BackgroundTask(_send_reset_link, request, body.email, body.account_identifier)
    return response


async def _send_reset_link(request: Request, email_text: str, account_ref: str) -> None:
    """Runs on the event loop (it is async), after the response: the connection belongs to the loop."""
    settings, conn = request.app.state.settings, request.app.state.db.conn
    email = normalize_email(email_text)
    account_id, _ = _login_identity(conn, account_ref, email)
    user = find_user(conn, account_id, email) if account_id else None
    if user is not None and user["is_active"]:
        token = onetime.issue(conn, "reset_password", user["id"])
        if token is not None:
            onetime.send_token_mail(settings, conn, "reset_password", user, token)


def _bad_token() -> ApiError:
    return ApiError(
        400,
        "invalid_token",
        "The link is invalid, expired or already used.",
        field_error("token", "invalid_token", "The link is invalid, expired or already used."),
    )


async def reset_password(request: Request) -> Response:
    settings, conn = request.app.state.settings, request.app.state.db.conn
    body = await read_struct(request, ResetBody)
    user = _peek_token_user(conn, "reset_password", body.token)
    check_policy(body.new_password, user["email"], settings.password_min_length, "new_password")
    new_hash = await hash_password(params_for(settings.environment), body.new_password)
    with unit_of_work(conn):
        spent = onetime.consume(conn, "reset_password", body.token)  # again: it may have been used meanwhile
        if spent is None:
            raise _bad_token()
        user = spent
        now = _set_password(conn, user["id"], new_hash)
        # The reset link proved control of the mailbox, which is what verification proves too.
        conn.execute("UPDATE users SET email_verified = 1 WHERE id = ?", (user["id"],))
        revoked = revoke_user_sessions(conn, user["id"], "password_reset")
        onetime.revoke_all(conn, "reset_password", user["id"])
        throttle.clear_identity(conn, throttle.identity_key(user["account_id"], user["email"]))
        audit_change(
            conn,
            request,
            user_actor(user, "token"),
            "auth.password_change",
            account_id=user["account_id"],
            collection="users",
            record_id=user["id"],
            before={
                "password_changed_at": user["password_changed_at"],
                "email_verified": bool(user["email_verified"]),
            },
            after={"password_changed_at": now, "email_verified": True},
            extra={"via": "reset_password", "sessions_revoked": revoked},
        )
    return no_content()


def _peek_token_user(conn: Any, purpose: str, token: str) -> dict[str, Any]:
    """Checks a token without spending it (the new password is validated and hashed before the spend)."""
    user = onetime.peek(conn, purpose, token)
    if user is None:
        raise _bad_token()
    return user


async def verify_email_request(request: Request) -> Response:
    auth = await require_user(request)
    settings, conn = request.app.state.settings, request.app.state.db.conn
    user = get_user(conn, str(auth.user_id))
    assert user is not None
    if not user["email_verified"]:
        token = onetime.issue(conn, "verify_email", user["id"])
        if token is not None:
            onetime.send_token_mail(settings, conn, "verify_email", user, token)
    return json_response(
        {"message": "If the address is not verified yet, a verification email is on its way."}, status=202
    )


async def verify_email_confirm(request: Request) -> Response:
    conn = request.app.state.db.conn
    body = await read_struct(request, TokenBody)
    with unit_of_work(conn):
        user = onetime.consume(conn, "verify_email", body.token)
        if user is None:
            raise _bad_token()
        conn.execute(
            "UPDATE users SET email_verified = 1, updated_at = ? WHERE id = ?", (now_iso(), user["id"])
        )
        audit_change(
            conn,
            request,
            user_actor(user, "token"),
            "auth.email_verified",
            account_id=user["account_id"],
            collection="users",
            record_id=user["id"],
            before={"email_verified": bool(user["email_verified"])},
            after={"email_verified": True},
        )
    return no_content()


routes = [
    ("POST", "/auth/register", register),
    ("POST", "/auth/login", login),
    ("POST", "/auth/refresh", refresh),
    ("POST", "/auth/logout", logout),
    ("POST", "/auth/logout-all", logout_all),
    ("GET", "/auth/me", me),
    ("GET", "/auth/sessions", list_sessions),
    ("DELETE", "/auth/sessions/{id}", delete_session),
    ("POST", "/auth/change-password", change_password),
    ("POST", "/auth/forgot-password", forgot_password),
    ("POST", "/auth/reset-password", reset_password),
    ("POST", "/auth/verify-email/request", verify_email_request),
    ("POST", "/auth/verify-email/confirm", verify_email_confirm),
]
