"""Single-use emailed tokens (password reset, email verification) and the emails that carry them."""

from __future__ import annotations

from typing import Any

import apsw

from snackbase import mail
from snackbase.accounts import get_account
from snackbase.auth import later_iso
from snackbase.config import Settings
from snackbase.db import fetch_one
from snackbase.times import now_iso
from snackbase.tokens import digest, new_one_time_token
from snackbase.unit_of_work import unit_of_work

LIFETIME_S = {"reset_password": 30 * 60, "verify_email": 24 * 3600}
VALID_TEXT = {"reset_password": "30 minutes", "verify_email": "24 hours"}
LINK_PATH = {"reset_password": "/_/#/reset-password?token=", "verify_email": "/_/#/verify-email?token="}
# At most one new emailed token per user and purpose per minute: forgot-password cannot mail-bomb.
RESEND_GAP_S = 60


def issue(conn: apsw.Connection, purpose: str, user_id: str) -> str | None:
    """A new token for the user (None when one was issued within the last minute)."""
    recent = fetch_one(
        conn,
        """
        SELECT 1 AS x FROM one_time_tokens WHERE user_id = ? AND purpose = ? AND created_at > ?
    """,
        (user_id, purpose, later_iso(-RESEND_GAP_S)),
    )
    if recent is not None:
        return None
    token = new_one_time_token()
    with unit_of_work(conn):
        conn.execute(
            """
            INSERT INTO one_time_tokens (token_hash, purpose, user_id, created_at, expires_at)
            VALUES (?, ?, ?, ?, ?)
        """,
            (digest(token), purpose, user_id, now_iso(), later_iso(LIFETIME_S[purpose])),
        )
    return token


def peek(conn: apsw.Connection, purpose: str, token: str) -> dict[str, Any] | None:
    """The active user a usable token belongs to, or None; the token is not spent.

    A reset link issued before the password last changed is dead, whatever changed it (the user, a
    reset, an admin, `superadmin create --force`): the link was for the old password."""
    return fetch_one(
        conn,
        """
        SELECT u.* FROM one_time_tokens t JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = ? AND t.purpose = ? AND t.used_at IS NULL AND t.expires_at > ?
          AND u.is_active = 1
          AND (t.purpose != 'reset_password' OR u.password_changed_at IS NULL
               OR t.created_at >= u.password_changed_at)
    """,
        (digest(token), purpose, now_iso()),
    )


def consume(conn: apsw.Connection, purpose: str, token: str) -> dict[str, Any] | None:
    """Spends a token (call inside the caller's unit of work): its active user's row, or None if unusable."""
    row = peek(conn, purpose, token)
    if row is None:
        return None
    conn.execute("UPDATE one_time_tokens SET used_at = ? WHERE token_hash = ?", (now_iso(), digest(token)))
    return row


def revoke_all(conn: apsw.Connection, purpose: str, user_id: str) -> None:
    conn.execute(
        """
        UPDATE one_time_tokens SET used_at = ? WHERE user_id = ? AND purpose = ? AND used_at IS NULL
    """,
        (now_iso(), user_id, purpose),
    )


def send_token_mail(
    settings: Settings, conn: apsw.Connection, purpose: str, user: dict[str, Any], token: str
) -> None:
    account = get_account(conn, user["account_id"])
    link = settings.base_url + LINK_PATH[purpose] + token
    message = mail.render(
        purpose,
        to=user["email"],
        account=account["name"] if account else "SnackBase",
        link=link,
        valid=VALID_TEXT[purpose],
        sender=settings.mail_from,
    )
    mail.send(settings, purpose, message)
