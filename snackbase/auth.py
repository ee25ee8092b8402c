"""The identity of a request's caller (`Auth`, from its access token and session row), permission
checks, and the audit entries of auth-side changes. Sessions and refresh tokens are `sessions`; every
API request's caller is resolved before routing by `stack.RequestGate`.

Revocation across worker processes: an access token is a signed JWT, but its session is also checked
in SQL (the session and user rows) to be neither revoked nor expired with an active user; the role and
account come from that row, never only from the token, so a role change or a deactivation takes effect
on the next request. Each process remembers the sessions it verified, by token, while the database's
`auth_version` counter stands still: triggers move it on every change that could alter the answer
(migration 011), so a request reads the counter (`cache_versions`) instead of checking the signature
and joining session and user.
"""

from __future__ import annotations

import re
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

import apsw
import msgspec
from starlette.requests import Request
from starlette.types import Scope

from snackbase import audit, audit_views, cache_versions, web
from snackbase.config import Settings
from snackbase.db import fetch_one
from snackbase.errors import ApiError
from snackbase.ids import SYSTEM_ACCOUNT_ID
from snackbase.logs import request_context
from snackbase.times import format_ts, now_iso, parse_ts
from snackbase.tokens import LEEWAY_S, InvalidToken, decode_access_token, mint_access_token

__all__ = [
    "ANONYMOUS",
    "Auth",
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


class Auth(msgspec.Struct, frozen=True):
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


def anonymous_in(account_id: str) -> Auth:
    """An anonymous caller scoped to an account, as if it had sent X-Account-ID (file downloads for an
    `<img src>`; `dataclasses.replace` was ~3% of such a request)."""
    return Auth(None, account_id, None, None, None, False, "anonymous")


def unauthorized(message: str = "Authentication is required.") -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"www-authenticate": "Bearer"})


def later_iso(seconds: float) -> str:
    return format_ts(datetime.now(UTC) + timedelta(seconds=seconds))


async def get_auth(request: Request) -> Auth:
    """The caller, resolved once per request (stack.RequestGate usually did it already)."""
    return auth_of(request)


def auth_of(request: Request) -> Auth:
    """`get_auth` for synchronous code: the caller, resolved on first use and kept in the scope's state;
    ApiError 401 for a bad, expired or revoked token."""
    return auth_of_scope(request.scope)


def auth_of_scope(scope: Scope) -> Auth:
    """`auth_of` from the ASGI scope itself (the request gate has no Request to build)."""
    state = scope.setdefault("state", {})
    auth = state.get("auth")
    if auth is None:
        app_state = scope["app"].state
        conn, header = app_state.db.conn, web.header(scope, b"authorization")
        auth = resolve_auth(
            app_state.settings,
            conn,
            header,
            web.header(scope, b"x-account-id"),
            # Only a token needs the counter: an anonymous request reads the counters when (and if)
            # its route first needs them.
            None if header is None else cache_versions.of_request(state, conn).auth,
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
    settings: Settings,
    conn: apsw.Connection,
    header: str | None,
    account_ref: str | None,
    auth_version: int | None = None,
) -> Auth:
    """The caller named by the Authorization header (or anonymous, in the account named by
    `account_ref`). `auth_version`: the counter as the request saw it, when it was already read."""
    if header is None:
        return _anonymous(_anonymous_account(conn, account_ref))
    match = _BEARER.fullmatch(header.strip())
    if match is None:
        raise unauthorized("The Authorization header must be 'Bearer <access token>'.")
    token = match.group(1)
    verified = _verified.setdefault(conn, {})
    # Read before the session: a change in between shows up on the next request.
    version = cache_versions.read(conn).auth if auth_version is None else auth_version
    known = verified.get(token)
    if known is not None and known.version == version and time.time() < known.until:
        return known.auth
    try:
        claims = decode_access_token(settings, token)
    except InvalidToken:
        raise unauthorized("The access token is invalid or has expired.") from None
    row = _live_session(conn, claims["sid"], claims["sub"], now_iso())
    if row is None or row["account_id"] != claims["account_id"]:
        raise unauthorized("The session has ended; log in again.")
    account_id = row["account_id"]
    auth = Auth(
        claims["sub"],
        account_id,
        row["email"],
        row["role"],
        claims["sid"],
        account_id == SYSTEM_ACCOUNT_ID,
        "token",
        bool(row["pii_access"]),
    )
    if len(verified) >= VERIFIED_MAX:
        verified.clear()  # simpler than LRU; refilling costs one verification per live token
    until = min(claims["exp"] + LEEWAY_S, parse_ts(row["expires_at"]).timestamp())
    verified[token] = _Verified(auth, version, until)
    return auth


class _Verified(msgspec.Struct, frozen=True):
    """A token whose signature and session were checked while `auth_version` was `version`; good until
    the token or its session expires (epoch seconds), whichever comes first."""

    auth: Auth
    version: int
    until: float


# Verified tokens per database. Bounded: a flood of distinct valid tokens only costs re-verification.
VERIFIED_MAX = 10_000
_verified: weakref.WeakKeyDictionary[apsw.Connection, dict[str, _Verified]] = weakref.WeakKeyDictionary()


def _live_session(conn: apsw.Connection, session_id: str, user_id: str, now: str) -> dict[str, Any] | None:
    return fetch_one(
        conn,
        """
        SELECT u.account_id, u.email, u.role, s.expires_at, EXISTS (
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
    # The reference as sent: only well-formed references are remembered (find_account_id), so a hit
    # needs neither the strip nor the pattern check below.
    hit = _account_cache.get(conn, {}).get(ref)
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    ref = ref.strip()
    if not _well_formed(ref):
        raise ApiError(400, "bad_request", "X-Account-ID must be an account id or slug.")
    account_id = find_account_id(conn, ref)
    if account_id is None:
        raise ApiError(404, "not_found", "X-Account-ID names no account.")
    return account_id


# An anonymous caller depends on its account alone, and Auth is immutable: one per account, kept
# (building one was seven attribute sets on every anonymous request).
_anonymous_auths: dict[str | None, Auth] = {}


def _anonymous(account_id: str | None) -> Auth:
    auth = _anonymous_auths.get(account_id)
    if auth is None:
        if len(_anonymous_auths) >= 10_000:
            _anonymous_auths.clear()
        auth = _anonymous_auths[account_id] = Auth(None, account_id, None, None, None, False, "anonymous")
    return auth


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
    if _well_formed(ref):  # (a superadmin's X-Account-ID is looked up without the pattern check)
        if len(cache) > 10_000:
            cache.clear()
        cache[ref] = (row["id"], now + ACCOUNT_CACHE_SECONDS)
    return str(row["id"])


def _well_formed(ref: str) -> bool:
    """An account id or a slug, exactly (no surrounding space, no other case)."""
    return bool(ACCOUNT_ID_RE.fullmatch(ref) or SLUG_RE.fullmatch(ref))


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
        meta=audit_views.meta_from_request(request) if request is not None else None,
        extra=extra,
    )
    return True


def audit_by_caller(request: Request, auth: Auth, action: str, **entry: Any) -> bool:
    """`audit_change` for a change made by the authenticated caller of `request`."""
    return audit_change(
        request.app.state.db.conn, request, audit_views.actor_from_auth(auth), action, **entry
    )
