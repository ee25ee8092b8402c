"""Sessions and refresh tokens: create, rotate (single use, reuse detection, idle limit), revoke, list,
and the token pair an answer carries. Every function runs inside the caller's unit of work, except
`rotate_refresh_token`, which is one of its own (a reuse revocation must commit even though the
refresh then answers 401)."""

from __future__ import annotations

from typing import Any

import apsw

from snackbase import audit
from snackbase.auth import later_iso, unauthorized
from snackbase.config import Settings
from snackbase.db import fetch_all, fetch_one
from snackbase.ids import uuid7
from snackbase.times import now_iso
from snackbase.tokens import digest, mint_access_token, new_refresh_token
from snackbase.unit_of_work import unit_of_work


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
        _reused(conn, row, meta)
        return None
    if not _usable(row, now) or _idle(row, settings):
        return None
    # `used_at IS NULL`: on PostgreSQL two nodes may read the token unspent at once; the second UPDATE
    # waits for the first one's row lock, then finds it spent — a reuse, as if it came later. (On
    # SQLite the write lock already serializes them: this changes one row every time.)
    conn.execute(
        "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
        (now, row["token_hash"]),
    )
    if conn.changes() == 0:
        _reused(conn, row, meta)
        return None
    new_token, expires = new_refresh_token(), later_iso(settings.refresh_token_expire_days * 86400)
    _insert_refresh(conn, digest(new_token), row["session_id"], now, expires)
    conn.execute(
        "UPDATE sessions SET last_used_at = ?, expires_at = ? WHERE id = ?", (now, expires, row["session_id"])
    )
    return new_token


def _reused(conn: apsw.Connection, row: dict[str, Any], meta: audit.RequestMeta | None) -> None:
    """A spent refresh token presented again: the session ends. Recorded only when it ends a live
    session: replaying a dead token again writes nothing, so an anonymous caller cannot grow the trail
    at will. The presenter is unknown (maybe a thief), so the actor is anonymous and the session's
    user goes into `extra`."""
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


def _usable(row: dict[str, Any], now: str) -> bool:
    return (
        row["expires_at"] > now
        and row["revoked_at"] is None
        and row["is_active"] == 1
        and row["session_expires_at"] > now
    )


def _idle(row: dict[str, Any], settings: Settings) -> bool:
    """A session unused (no refresh) for session_idle_minutes has ended: 21 CFR 11 / Annex 11 session
    control. The console refreshes at least every third of that period while its user is active."""
    if settings.session_idle_minutes <= 0:
        return False
    return bool(row["last_used_at"] < later_iso(-settings.session_idle_minutes * 60))


def _refresh_row(conn: apsw.Connection, token_hash: str) -> dict[str, Any] | None:
    return fetch_one(
        conn,
        """
        SELECT r.token_hash, r.session_id, r.expires_at, r.used_at, s.revoked_at, s.last_used_at,
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
    # `id <> coalesce(?, '')` rather than SQLite's `id IS NOT ?`: ids are never empty, and it reads the
    # same on PostgreSQL.
    conn.execute(
        """
        UPDATE sessions SET revoked_at = ?, revoked_reason = ?
        WHERE user_id = ? AND revoked_at IS NULL AND id <> coalesce(?, '')
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
        "session_idle_minutes": settings.session_idle_minutes,
    }
