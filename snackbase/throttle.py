"""Login throttling, lockout and the audit entries of login attempts.

Two counters of failed logins, kept in SQL so every worker process sees the same numbers (the OWASP
Authentication Cheat Sheet's pairing):
- per client IP: more than SNACKBASE_LOGIN_IP_MAX_FAILURES failures in 15 minutes → 429 until the
  window ends (slows password spraying across many accounts);
- per (identity, client IP), identity = account + email: from SNACKBASE_LOGIN_BACKOFF_AFTER failures
  in a row, each further attempt from that address must wait 30 s, 60 s, 120 s… (max 15 min) → 429
  with Retry-After; at SNACKBASE_LOGIN_LOCKOUT_AFTER failures in a row the identity is locked *for
  that address* (403 account_locked) until an admin unlocks the user or the user resets the password.
  Counting per pair is what keeps a stranger from locking the owner out: the stranger's failures
  slow and lock only the stranger's own address, while the owner, from another address, logs in.
Identities are counted whether or not the user exists, so the answers never reveal which emails exist.
Every failure is still an `auth.login_failed` audit entry, whoever makes it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import apsw

from snackbase import audit
from snackbase.auth import user_actor
from snackbase.config import Settings
from snackbase.db import fetch_all, fetch_one
from snackbase.errors import ApiError
from snackbase.ids import SYSTEM_ACCOUNT_ID
from snackbase.times import format_ts, now_iso, parse_ts
from snackbase.unit_of_work import unit_of_work

IP_WINDOW_S = 15 * 60
BACKOFF_BASE_S = 30
BACKOFF_MAX_S = 15 * 60


def identity_key(account_ref: str, email: str) -> str:
    return f"id:{account_ref}:{email}"


def ip_key(ip: str) -> str:
    return f"ip:{ip}"


def pair_key(identity: str, ip: str) -> str:
    """The counter of one identity from one address: `<identity>|<ip>`. An address never holds `|`,
    so the identity is everything before the last one, even when a guessed email contains `|`."""
    return f"{identity}|{ip}"


def _pair_rows(conn: apsw.Connection, identity: str) -> list[dict[str, Any]]:
    """Every address's counter of `identity` (a primary-key range, then the exact identity)."""
    rows = fetch_all(
        conn, "SELECT * FROM login_throttle WHERE key > ? AND key < ?", (identity + "|", identity + "}")
    )
    return [row for row in rows if row["key"].rsplit("|", 1)[0] == identity]


def _seconds_until(moment: datetime) -> int:
    return max(1, math.ceil((moment - datetime.now(UTC)).total_seconds()))


def _row(conn: apsw.Connection, key: str) -> dict[str, Any] | None:
    return fetch_one(conn, "SELECT * FROM login_throttle WHERE key = ?", (key,))


def backoff_s(settings: Settings, failures: int) -> int:
    if failures < settings.login_backoff_after:
        return 0
    return int(min(BACKOFF_BASE_S * 2 ** (failures - settings.login_backoff_after), BACKOFF_MAX_S))


def check_login_allowed(conn: apsw.Connection, settings: Settings, ip: str, identity: str) -> None:
    """Raises 429 (with Retry-After) or 403 account_locked before any password is checked."""
    row = _row(conn, ip_key(ip))
    if row and row["failures"] >= settings.login_ip_max_failures:
        window_end = parse_ts(row["window_start"]) + timedelta(seconds=IP_WINDOW_S)
        if window_end > datetime.now(UTC):
            raise _rate_limited(_seconds_until(window_end))
    row = _row(conn, pair_key(identity, ip))
    if row is None:
        return
    if row["locked_at"] is not None:
        raise ApiError(
            403,
            "account_locked",
            "Too many failed logins: this login is locked. Reset the password "
            "or ask an administrator to unlock it.",
        )
    wait_until = parse_ts(row["last_failure_at"]) + timedelta(seconds=backoff_s(settings, row["failures"]))
    if wait_until > datetime.now(UTC):
        raise _rate_limited(_seconds_until(wait_until))


def _rate_limited(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        "Too many failed logins; try again later.",
        headers={"retry-after": str(retry_after)},
    )


def record_failure(conn: apsw.Connection, settings: Settings, ip: str, identity: str) -> None:
    """Counts a failure against the address and against the (identity, address) pair."""
    now = now_iso()
    window_start = format_ts(datetime.now(UTC) - timedelta(seconds=IP_WINDOW_S))
    # The stored row's columns are named with the table: unqualified, PostgreSQL finds them ambiguous.
    with unit_of_work(conn):
        conn.execute(
            """
            INSERT INTO login_throttle (key, failures, window_start, last_failure_at) VALUES (?, 1, ?, ?)
            ON CONFLICT (key) DO UPDATE SET
                failures = CASE WHEN login_throttle.window_start < ? THEN 1
                                ELSE login_throttle.failures + 1 END,
                window_start = CASE WHEN login_throttle.window_start < ? THEN excluded.window_start
                                    ELSE login_throttle.window_start END,
                last_failure_at = excluded.last_failure_at
        """,
            (ip_key(ip), now, now, window_start, window_start),
        )
        conn.execute(
            """
            INSERT INTO login_throttle (key, failures, window_start, last_failure_at, locked_at)
            VALUES (?1, 1, ?2, ?2, CASE WHEN ?3 <= 1 THEN ?2 END)
            ON CONFLICT (key) DO UPDATE SET
                failures = login_throttle.failures + 1, last_failure_at = ?2,
                locked_at = CASE WHEN login_throttle.failures + 1 >= ?3
                                 THEN coalesce(login_throttle.locked_at, ?2) ELSE login_throttle.locked_at END
        """,
            (pair_key(identity, ip), now, settings.login_lockout_after),
        )


def clear_pair(conn: apsw.Connection, identity: str, ip: str) -> None:
    """Forgets this address's failures for the identity (a successful login from it)."""
    conn.execute("DELETE FROM login_throttle WHERE key = ?", (pair_key(identity, ip),))


def clear_identity(conn: apsw.Connection, identity: str) -> None:
    """Forgets failures and lifts lockouts from every address (admin unlock, password reset)."""
    keys = [row["key"] for row in _pair_rows(conn, identity)]
    # `identity` alone: the per-identity counter of versions before counting per address.
    for key in [identity, *keys]:
        conn.execute("DELETE FROM login_throttle WHERE key = ?", (key,))


def is_locked(conn: apsw.Connection, identity: str) -> bool:
    """Locked from at least one address."""
    return any(row["locked_at"] for row in _pair_rows(conn, identity))


def record_login_event(
    conn: apsw.Connection,
    *,
    user: dict[str, Any] | None,
    email: str,
    account_ref: str,
    success: bool,
    reason: str,
    meta: audit.RequestMeta,
    session_id: str | None = None,
) -> None:
    """One successful (`auth.login`) or failed (`auth.login_failed`) login, as an audit entry in the
    caller's unit of work. The password is never part of it.

    A known user's attempts go into its account's chain with the user as the actor (method `password`);
    attempts on an unknown account or email go into the system account's chain (SY0000) with an
    anonymous actor and the attempted identity in `extra`, so no tenant's trail fills with strangers'
    guesses and the answer stays the same for every kind of failure.
    """
    if user is not None:
        account_id, actor = user["account_id"], user_actor(user, "password")
        extra: dict[str, Any] = {} if success else {"reason": reason}
    else:
        account_id, actor = SYSTEM_ACCOUNT_ID, audit.ANONYMOUS_ACTOR
        extra = {"reason": reason, "email": email[:320], "account_identifier": account_ref[:64]}
    audit.append(
        conn,
        account_id=account_id,
        actor=actor,
        action="auth.login" if success else "auth.login_failed",
        collection="sessions" if session_id else "users",
        record_id=session_id or (user["id"] if user else None),
        meta=meta,
        extra=extra or None,
    )
