"""Users: email rules, creation, the JSON shape, group membership, and superadmin creation."""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any

import apsw

from snackbase import audit
from snackbase.auth import audit_change
from snackbase.config import Settings
from snackbase.db import fetch_all, fetch_one
from snackbase.errors import ApiError, field_error
from snackbase.ids import SYSTEM_ACCOUNT_ID, uuid7
from snackbase.passwords import hasher, params_for, policy_errors
from snackbase.sessions import revoke_user_sessions
from snackbase.throttle import clear_identity, identity_key, is_locked
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work

log = logging.getLogger("snackbase.auth")

MAX_EMAIL = 254
# ASCII addresses only: they are what every SMTP server accepts, and they cannot smuggle header breaks.
_EMAIL = re.compile(
    r"[a-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
)


def normalize_email(email: str) -> str:
    """NFC, trimmed, lowercased: the stored form, so `Ann@X.com` and `ann@x.com` are one identity."""
    return unicodedata.normalize("NFC", email).strip().lower()


def valid_email(email: str) -> bool:
    return len(email) <= MAX_EMAIL and _EMAIL.fullmatch(email) is not None and ".." not in email


def check_email(email: str, field: str = "email") -> str:
    normalized = normalize_email(email)
    if not valid_email(normalized):
        raise ApiError(
            400,
            "validation_failed",
            "The email address is not valid.",
            field_error(field, "invalid_email", "Must be a valid email address."),
        )
    return normalized


def public_user(conn: apsw.Connection, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "account_id": row["account_id"],
        "email": row["email"],
        "role": row["role"],
        "groups": sorted(group_names(conn, row["id"])),
        "is_active": bool(row["is_active"]),
        "email_verified": bool(row["email_verified"]),
        "is_superadmin": row["account_id"] == SYSTEM_ACCOUNT_ID,
        "is_locked": is_locked(conn, identity_key(row["account_id"], row["email"])),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "last_login_at": row["last_login_at"],
    }


def audit_view(conn: apsw.Connection, row: dict[str, Any]) -> dict[str, Any]:
    """The user as its audit entries show it (field-level old/new): never the password hash."""
    return {
        "email": row["email"],
        "role": row["role"],
        "is_active": bool(row["is_active"]),
        "email_verified": bool(row["email_verified"]),
        "groups": sorted(group_names(conn, row["id"])),
    }


def group_names(conn: apsw.Connection, user_id: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT g.name FROM group_members m JOIN groups g ON g.id = m.group_id WHERE m.user_id = ?
    """,
        (user_id,),
    )
    return [row[0] for row in rows]


def get_user(conn: apsw.Connection, user_id: str) -> dict[str, Any] | None:
    return fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))


def find_user(conn: apsw.Connection, account_id: str, email: str) -> dict[str, Any] | None:
    return fetch_one(conn, "SELECT * FROM users WHERE account_id = ? AND email = ?", (account_id, email))


def insert_user(
    conn: apsw.Connection, account_id: str, email: str, password_hash: str, role: str, verified: bool = False
) -> dict[str, Any]:
    """Inserts a user (inside the caller's unit of work); 409 email_taken when (account, email) exists."""
    if find_user(conn, account_id, email) is not None:
        raise ApiError(
            409,
            "email_taken",
            "A user with this email already exists in the account.",
            field_error("email", "email_taken", "This email is already used in this account."),
        )
    check_role(conn, role)
    user_id, now = uuid7(), now_iso()
    conn.execute(
        """
        INSERT INTO users (id, account_id, email, password_hash, role, email_verified, created_at, updated_at,
                           password_changed_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    """,
        (user_id, account_id, email, password_hash, role, int(verified), now, now, now),
    )
    row = get_user(conn, user_id)
    assert row is not None
    return row


def check_role(conn: apsw.Connection, role: str) -> None:
    if fetch_one(conn, "SELECT name FROM roles WHERE name = ?", (role,)) is None:
        raise ApiError(
            400,
            "validation_failed",
            "The role does not exist.",
            field_error("role", "unknown_role", "No role has this name."),
        )


def group_ids(conn: apsw.Connection, account_id: str, names: list[str], field: str = "groups") -> list[str]:
    """The ids of the named groups of an account; 400 naming the first unknown group."""
    ids = []
    for name in dict.fromkeys(names):
        row = fetch_one(conn, "SELECT id FROM groups WHERE account_id = ? AND name = ?", (account_id, name))
        if row is None:
            raise ApiError(
                400,
                "validation_failed",
                f"The group '{name[:64]}' does not exist in this account.",
                field_error(field, "unknown_group", "No group of this account has this name."),
            )
        ids.append(row["id"])
    return ids


def set_groups(conn: apsw.Connection, user_id: str, ids: list[str]) -> None:
    conn.execute("DELETE FROM group_members WHERE user_id = ?", (user_id,))
    now = now_iso()
    for group_id in ids:
        conn.execute(
            "INSERT INTO group_members (group_id, user_id, created_at) VALUES (?, ?, ?)",
            (group_id, user_id, now),
        )


def list_rows(conn: apsw.Connection, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    return fetch_all(conn, sql, params)


# --- superadmins (CLI and SNACKBASE_SUPERADMIN_EMAIL; synchronous: not on the event loop) -----------


class SuperadminError(Exception):
    """A superadmin could not be created; the message is one line for the CLI."""


def create_superadmin(
    settings: Settings,
    conn: apsw.Connection,
    email: str,
    password: str,
    force: bool = False,
    actor: audit.Actor = audit.CLI_ACTOR,
) -> tuple[str, bool]:
    """Creates (or with force resets the password of) a superadmin: (user id, created). Audited as
    `user.create` or `auth.password_change` in the system account, by `actor` (the CLI by default)."""
    normalized = normalize_email(email)
    if not valid_email(normalized):
        raise SuperadminError(f"not a valid email address: {email[:80]!r}")
    errors = policy_errors(password, normalized, settings.password_min_length)
    if errors:
        raise SuperadminError("password refused: " + next(iter(errors.values()))["message"])
    password_hash = hasher(params_for(settings.environment)).hash(unicodedata.normalize("NFC", password))
    existing = find_user(conn, SYSTEM_ACCOUNT_ID, normalized)
    if existing is None:
        with unit_of_work(conn):
            user = insert_user(conn, SYSTEM_ACCOUNT_ID, normalized, password_hash, "admin", verified=True)
            audit_change(
                conn,
                None,
                actor,
                "user.create",
                account_id=SYSTEM_ACCOUNT_ID,
                collection="users",
                record_id=user["id"],
                after=audit_view(conn, user),
            )
        return user["id"], True
    with unit_of_work(conn):
        if not force:
            raise SuperadminError(
                f"superadmin {normalized} already exists; use --force to reset its password"
            )
        now = now_iso()
        conn.execute(
            """
            UPDATE users SET password_hash = ?, is_active = 1, password_changed_at = ?, updated_at = ?
            WHERE id = ?
        """,
            (password_hash, now, now, existing["id"]),
        )
        revoked = revoke_user_sessions(conn, existing["id"], "password_reset")
        clear_identity(conn, identity_key(SYSTEM_ACCOUNT_ID, normalized))
        audit_change(
            conn,
            None,
            actor,
            "auth.password_change",
            account_id=SYSTEM_ACCOUNT_ID,
            collection="users",
            record_id=existing["id"],
            before={
                "password_changed_at": existing["password_changed_at"],
                "is_active": bool(existing["is_active"]),
            },
            after={"password_changed_at": now, "is_active": True},
            extra={"via": "cli", "sessions_revoked": revoked},
        )
    return existing["id"], False


def ensure_superadmin_from_settings(settings: Settings, conn: apsw.Connection) -> None:
    """SNACKBASE_SUPERADMIN_EMAIL/PASSWORD: create that superadmin at start when it does not exist yet."""
    if not settings.superadmin_email:
        return
    if not settings.superadmin_password:
        log.warning("SNACKBASE_SUPERADMIN_EMAIL is set without SNACKBASE_SUPERADMIN_PASSWORD; ignored")
        return
    if find_user(conn, SYSTEM_ACCOUNT_ID, normalize_email(settings.superadmin_email)) is not None:
        return
    try:
        create_superadmin(
            settings, conn, settings.superadmin_email, settings.superadmin_password, actor=audit.SYSTEM_ACTOR
        )
    except SuperadminError as exc:
        from snackbase.config import ConfigError

        raise ConfigError(f"SNACKBASE_SUPERADMIN_EMAIL: {exc}") from None
    log.info("superadmin created from SNACKBASE_SUPERADMIN_EMAIL")


# --- tenancy checks shared by the admin endpoints ---------------------------------------------------


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"No {what} with this id.")


def acting_account(conn: apsw.Connection, auth: Any, requested: str | None) -> str:
    """The account an admin acts on: its own; a superadmin may name any existing account.

    Another tenant's id is answered 404 like a missing one, so ids of other tenants do not leak.
    """
    if requested is None or requested == auth.account_id:
        return str(auth.account_id)
    if (
        not auth.is_superadmin
        or fetch_one(conn, "SELECT id FROM accounts WHERE id = ?", (requested,)) is None
    ):
        raise not_found("account")
    return requested


def visible_user(conn: apsw.Connection, auth: Any, user_id: str) -> dict[str, Any]:
    row = get_user(conn, user_id)
    if row is None or (not auth.is_superadmin and row["account_id"] != auth.account_id):
        raise not_found("user")
    return row
