"""The caller of a request (`Auth`), the auth middleware, permission checks and sessions.

Revocation across worker processes: an access token is a signed JWT, but every request also checks in
SQL (one indexed query on the session and user primary keys) that its session is neither revoked nor
expired and its user is active; the role and account come from that row, never only from the token,
so a role change or a deactivation takes effect on the next request.
"""

from __future__ import annotations

import re
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import apsw
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from snackbase import audit
from snackbase.config import Settings
from snackbase.db import fetch_all, fetch_one
from snackbase.errors import ApiError, error_response
from snackbase.ids import SYSTEM_ACCOUNT_ID, uuid7
from snackbase.logs import request_context
from snackbase.times import format_ts, now_iso
from snackbase.tokens import InvalidToken, decode_access_token, digest, mint_access_token, new_refresh_token
from snackbase.unit_of_work import unit_of_work

__all__ = [
    "ANONYMOUS",
    "Auth",
    "AuthMiddleware",
    "audit_change",
    "get_auth",
    "mint_access_token",
    "require_account_admin",
    "require_superadmin",
    "require_user",
    "user_actor",
    "user_groups",
]

ACCOUNT_ID_RE = re.compile(r"[A-Z]{2}[0-9]{4}")
SLUG_RE = re.compile(r"[a-z][a-z0-9-]{2,31}")
_BEARER = re.compile(r"[Bb]earer +([A-Za-z0-9._~+/=-]{1,4096})")


@dataclass(frozen=True, slots=True)
class Auth:
    user_id: str | None
    account_id: str | None
    email: str | None
    role: str | None
    session_id: str | None
    is_superadmin: bool
    method: str  # "token" | "anonymous"
    # Member of its account's pii_access group (reads PII in clear); read with the session, so a
    # change of membership applies on the caller's next request.
    pii_access: bool = False

    @property
    def is_authenticated(self) -> bool:
        return self.user_id is not None

    @property
    def is_account_admin(self) -> bool:
        return self.is_superadmin or (self.user_id is not None and self.role == "admin")


ANONYMOUS = Auth(None, None, None, None, None, False, "anonymous")


def unauthorized(message: str = "Authentication is required.") -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"www-authenticate": "Bearer"})


def later_iso(seconds: float) -> str:
    return format_ts(datetime.now(UTC) + timedelta(seconds=seconds))


async def get_auth(request: Request) -> Auth:
    """The caller, resolved once per request (the middleware usually did it already)."""
    state = request.scope.setdefault("state", {})
    auth = state.get("auth")
    if auth is None:
        auth = resolve_auth(
            request.app.state.settings,
            request.app.state.db.conn,
            request.headers.get("authorization"),
            request.headers.get("x-account-id"),
        )
        state["auth"] = auth
        context = request_context.get()
        if context is not None and auth.account_id is not None:
            context["account_id"] = auth.account_id
            if auth.user_id is not None:
                context["user_id"] = auth.user_id
    assert isinstance(auth, Auth)
    return auth


def resolve_auth(
    settings: Settings, conn: apsw.Connection, header: str | None, account_ref: str | None
) -> Auth:
    if header is None:
        return Auth(None, _anonymous_account(conn, account_ref), None, None, None, False, "anonymous")
    match = _BEARER.fullmatch(header.strip())
    if match is None:
        raise unauthorized("The Authorization header must be 'Bearer <access token>'.")
    try:
        claims = decode_access_token(settings, match.group(1))
    except InvalidToken:
        raise unauthorized("The access token is invalid or has expired.") from None
    row = _live_session(conn, claims["sid"], claims["sub"], now_iso())
    if row is None or row["account_id"] != claims["account_id"]:
        raise unauthorized("The session has ended; log in again.")
    account_id = row["account_id"]
    return Auth(
        claims["sub"],
        account_id,
        row["email"],
        row["role"],
        claims["sid"],
        account_id == SYSTEM_ACCOUNT_ID,
        "token",
        bool(row["pii_access"]),
    )


def _live_session(conn: apsw.Connection, session_id: str, user_id: str, now: str) -> dict[str, Any] | None:
    return fetch_one(
        conn,
        """
        SELECT u.account_id, u.email, u.role, EXISTS (
            SELECT 1 FROM group_members m JOIN groups g ON g.id = m.group_id
            WHERE m.user_id = u.id AND g.name = 'pii_access') AS pii_access
        FROM sessions s JOIN users u ON u.id = s.user_id
        WHERE s.id = ? AND s.user_id = ? AND s.revoked_at IS NULL AND s.expires_at > ? AND u.is_active = 1
    """,
        (session_id, user_id, now),
    )


def _anonymous_account(conn: apsw.Connection, ref: str | None) -> str | None:
    if ref is None:
        return None
    ref = ref.strip()
    if not (ACCOUNT_ID_RE.fullmatch(ref) or SLUG_RE.fullmatch(ref)):
        raise ApiError(400, "bad_request", "X-Account-ID must be an account id or slug.")
    account_id = find_account_id(conn, ref)
    if account_id is None:
        raise ApiError(404, "not_found", "X-Account-ID names no account.")
    return account_id


# X-Account-ID arrives on every anonymous request: remember what each reference named for a few
# seconds, per database. Only hits are kept, so a new account is usable at once; a deleted one
# lingers at most this long, and writing into it then fails on the foreign key.
ACCOUNT_CACHE_SECONDS = 5.0
_account_cache: weakref.WeakKeyDictionary[apsw.Connection, dict[str, tuple[str, float]]] = (
    weakref.WeakKeyDictionary()
)


def forget_accounts(conn: apsw.Connection) -> None:
    """Drops the remembered references (after an account is deleted)."""
    _account_cache.pop(conn, None)


def find_account_id(conn: apsw.Connection, ref: str) -> str | None:
    """The id of the account named by id or slug (ids are uppercase, slugs lowercase: no overlap)."""
    cache = _account_cache.setdefault(conn, {})
    now = time.monotonic()
    hit = cache.get(ref)
    if hit is not None and hit[1] > now:
        return hit[0]
    row = fetch_one(conn, "SELECT id FROM accounts WHERE id = ? OR slug = ?", (ref.upper(), ref.lower()))
    if row is None:
        return None
    if len(cache) > 10_000:
        cache.clear()
    cache[ref] = (row["id"], now + ACCOUNT_CACHE_SECONDS)
    return str(row["id"])


async def require_user(request: Request) -> Auth:
    auth = await get_auth(request)
    if not auth.is_authenticated:
        raise unauthorized()
    return auth


async def require_account_admin(request: Request) -> Auth:
    auth = await require_user(request)
    if not auth.is_account_admin:
        raise ApiError(403, "forbidden", "Only an account admin may do this.")
    return auth


async def require_superadmin(request: Request) -> Auth:
    auth = await require_user(request)
    if not auth.is_superadmin:
        raise ApiError(403, "forbidden", "Only a superadmin may do this.")
    return auth


def user_groups(conn: apsw.Connection, user_id: str) -> frozenset[str]:
    rows = conn.execute(
        """
        SELECT g.name FROM group_members m JOIN groups g ON g.id = m.group_id WHERE m.user_id = ?
    """,
        (user_id,),
    )
    return frozenset(row[0] for row in rows)


class AuthMiddleware:
    """Puts the caller on every API request (`request.state.auth`), answering bad tokens with 401.

    Pure ASGI like RequestMiddleware; it runs inside it, so the access log line carries the user id.
    """

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # WebSockets (realtime) authenticate in their route: by header or by their first message.
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            try:
                await get_auth(Request(scope))
            except ApiError as exc:
                response = error_response(exc, str(scope.get("state", {}).get("request_id", "")))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- sessions -------------------------------------------------------------------------------------


def create_session(
    conn: apsw.Connection, settings: Settings, user_id: str, ip: str, user_agent: str
) -> tuple[str, str]:
    """A new session and its first refresh token: (session id, refresh token); in a unit of work."""
    session_id, token, now = uuid7(), new_refresh_token(), now_iso()
    expires = later_iso(settings.refresh_token_expire_days * 86400)
    conn.execute(
        """
        INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, ip, user_agent)
        VALUES (?, ?, ?, ?, ?, ?, ?)
    """,
        (session_id, user_id, now, now, expires, ip[:64], user_agent[:256]),
    )
    _insert_refresh(conn, digest(token), session_id, now, expires)
    return session_id, token


def _insert_refresh(conn: apsw.Connection, token_hash: str, session_id: str, now: str, expires: str) -> None:
    conn.execute(
        """
        INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) VALUES (?, ?, ?, ?)
    """,
        (token_hash, session_id, now, expires),
    )


def rotate_refresh_token(
    conn: apsw.Connection, settings: Settings, token: str, meta: audit.RequestMeta | None = None
) -> tuple[dict[str, Any], str]:
    """Spends a refresh token: (user row, new refresh token). Reuse revokes the session (audited as
    `auth.refresh_reuse`); 401 on failure."""
    with unit_of_work(conn):
        row = _refresh_row(conn, digest(token))
        new_token = _spend(conn, settings, row, now_iso(), meta) if row else None
    # Raised after the transaction committed, so a reuse revocation is kept.
    if row is None or new_token is None:
        raise unauthorized("The refresh token is invalid or has expired.")
    return row, new_token


def _spend(
    conn: apsw.Connection, settings: Settings, row: dict[str, Any], now: str, meta: audit.RequestMeta | None
) -> str | None:
    if row["used_at"] is not None:
        # Recorded only when it ends a live session: replaying a dead token again writes nothing, so an
        # anonymous caller cannot grow the trail at will. The presenter is unknown (maybe a thief), so
        # the actor is anonymous and the session's user goes into `extra`.
        if revoke_session(conn, row["session_id"], "refresh_token_reuse"):
            audit.append(
                conn,
                account_id=row["account_id"],
                actor=audit.ANONYMOUS_ACTOR,
                action="auth.refresh_reuse",
                collection="sessions",
                record_id=row["session_id"],
                meta=meta,
                extra={"user_id": row["id"], "email": row["email"], "revoked_reason": "refresh_token_reuse"},
            )
        return None
    if not _usable(row, now):
        return None
    conn.execute("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?", (now, row["token_hash"]))
    new_token, expires = new_refresh_token(), later_iso(settings.refresh_token_expire_days * 86400)
    _insert_refresh(conn, digest(new_token), row["session_id"], now, expires)
    conn.execute(
        "UPDATE sessions SET last_used_at = ?, expires_at = ? WHERE id = ?", (now, expires, row["session_id"])
    )
    return new_token


def _usable(row: dict[str, Any], now: str) -> bool:
    return (
        row["expires_at"] > now
        and row["revoked_at"] is None
        and row["is_active"] == 1
        and row["session_expires_at"] > now
    )


def _refresh_row(conn: apsw.Connection, token_hash: str) -> dict[str, Any] | None:
    return fetch_one(
        conn,
        """
        SELECT r.token_hash, r.session_id, r.expires_at, r.used_at, s.revoked_at,
               s.expires_at AS session_expires_at, u.id, u.account_id, u.email, u.role, u.is_active
        FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id
        WHERE r.token_hash = ?
    """,
        (token_hash,),
    )


def session_of_refresh_token(conn: apsw.Connection, token: str) -> dict[str, Any] | None:
    return fetch_one(
        conn,
        """
        SELECT s.id, s.user_id FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id
        WHERE r.token_hash = ?
    """,
        (digest(token),),
    )


def revoke_session(conn: apsw.Connection, session_id: str, reason: str) -> bool:
    """Ends one session; True when it was live (False: unknown or already revoked)."""
    conn.execute(
        """
        UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL
    """,
        (now_iso(), reason, session_id),
    )
    return conn.changes() > 0


def revoke_user_sessions(conn: apsw.Connection, user_id: str, reason: str, keep: str | None = None) -> int:
    """Ends every session of a user (except `keep`, the caller's own, when given); how many were live."""
    conn.execute(
        """
        UPDATE sessions SET revoked_at = ?, revoked_reason = ?
        WHERE user_id = ? AND revoked_at IS NULL AND id IS NOT ?
    """,
        (now_iso(), reason, user_id, keep),
    )
    return int(conn.changes())


def active_sessions(conn: apsw.Connection, user_id: str) -> list[dict[str, Any]]:
    return fetch_all(
        conn,
        """
        SELECT id, created_at, last_used_at, ip, user_agent FROM sessions
        WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? ORDER BY created_at DESC
    """,
        (user_id, now_iso()),
    )


def token_pair(
    settings: Settings, user: dict[str, Any], session_id: str, refresh_token: str
) -> dict[str, Any]:
    access = mint_access_token(
        settings, user_id=user["id"], account_id=user["account_id"], role=user["role"], session_id=session_id
    )
    return {
        "access_token": access,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": settings.access_token_expire_minutes * 60,
    }


# --- the audit trail of auth-side changes (SPEC section 8; docs/audit.md lists the actions) ------------

# Never written into an entry, whatever a snapshot holds: password hashes, tokens and their digests.
SECRET_FIELDS = frozenset(
    ("password", "password_hash", "current_password", "new_password", "token", "token_hash", "refresh_token",
     "access_token")
)  # fmt: skip
AUDIT_SKIP = audit.DIFF_SKIP | SECRET_FIELDS


def user_actor(user: dict[str, Any], method: str) -> audit.Actor:
    """The user concerned as the actor of its own login, registration, reset or acceptance."""
    role = "superadmin" if user["account_id"] == SYSTEM_ACCOUNT_ID else user["role"]
    return audit.Actor(user["id"], user["email"], role, method)


def audit_change(
    conn: apsw.Connection,
    request: Request | None,
    actor: audit.Actor,
    action: str,
    *,
    account_id: str,
    collection: str,
    record_id: str | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str | None = None,
    extra: dict[str, Any] | None = None,
    only_if_changed: bool = False,
) -> bool:
    """One audit entry for an auth-side change (call inside the change's unit of work): `changes` is the
    field-level diff of the two snapshots without secrets. With `only_if_changed`, a write that changed
    no field writes no entry. True when an entry was written."""
    changes = audit.diff(before, after, skip=AUDIT_SKIP)
    if only_if_changed and not changes:
        return False
    audit.append(
        conn,
        account_id=account_id,
        actor=actor,
        action=action,
        collection=collection,
        record_id=record_id,
        changes=changes or None,
        reason=reason,
        meta=audit.meta_from_request(request) if request is not None else None,
        extra=extra,
    )
    return True


def audit_by_caller(request: Request, auth: Auth, action: str, **entry: Any) -> bool:
    """`audit_change` for a change made by the authenticated caller of `request`."""
    return audit_change(request.app.state.db.conn, request, audit.actor_from_auth(auth), action, **entry)
