"""Accounts (tenants): ids, slugs, creation with the `pii_access` group, and their JSON shape."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import apsw

from snackbase.db import fetch_one, fetch_value
from snackbase.errors import ApiError, field_error
from snackbase.ids import SYSTEM_ACCOUNT_ID, random_account_id, uuid7
from snackbase.times import now_iso

SLUG_RE = re.compile(r"[a-z][a-z0-9-]{2,31}")
RESERVED_SLUGS = frozenset({"system", "admin", "api", "www", "root", "superadmin", "snackbase"})
# 26*26-1 prefixes x 10,000 numbers: collisions stay rare long before the space is full; 50 tries make a
# false "exhausted" practically impossible while bounding the loop.
ID_ATTEMPTS = 50


class AccountIdsExhausted(Exception):
    """No free XX#### id was found (the id space is effectively full)."""


def public_account(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "slug": row["slug"],
        "name": row["name"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def get_account(conn: apsw.Connection, account_id: str) -> dict[str, Any] | None:
    return fetch_one(conn, "SELECT * FROM accounts WHERE id = ?", (account_id,))


def slugify(name: str) -> str:
    """A slug from free text: ASCII letters, digits and dashes, starting with a letter, 3 to 32 chars."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")
    slug = re.sub(r"^[^a-z]+", "", slug)[:32].rstrip("-")
    if len(slug) < 3:
        slug = (slug + "-account")[:32] if slug else "account"
    return slug


def check_slug(slug: str, field: str = "account_slug") -> None:
    if not SLUG_RE.fullmatch(slug) or slug.endswith("-"):
        raise ApiError(
            400,
            "validation_failed",
            "The slug is not valid.",
            field_error(
                field,
                "invalid_slug",
                "3-32 characters: lowercase letters, digits and '-', starting with a letter.",
            ),
        )


def slug_taken(conn: apsw.Connection, slug: str) -> bool:
    return slug in RESERVED_SLUGS or fetch_value(conn, "SELECT 1 FROM accounts WHERE slug = ?", (slug,)) == 1


def free_slug(conn: apsw.Connection, base: str) -> str:
    """`base`, or `base-2`, `base-3`… — the first one not taken (trimmed to stay within 32 chars)."""
    if not slug_taken(conn, base):
        return base
    number = 2
    while True:
        suffix = f"-{number}"
        candidate = base[: 32 - len(suffix)].rstrip("-") + suffix
        if not slug_taken(conn, candidate):
            return candidate
        number += 1


def new_account_id(conn: apsw.Connection) -> str:
    for _ in range(ID_ATTEMPTS):
        candidate = random_account_id()
        if fetch_value(conn, "SELECT 1 FROM accounts WHERE id = ?", (candidate,)) is None:
            return candidate
    raise AccountIdsExhausted(f"no free account id after {ID_ATTEMPTS} random tries; the id space is full")


def create_account(
    conn: apsw.Connection, name: str, slug: str | None = None, slug_field: str = "account_slug"
) -> dict[str, Any]:
    """Inserts an account and its `pii_access` group (inside the caller's unit of work); 409 slug_taken."""
    if slug is not None:
        check_slug(slug, slug_field)
        if slug_taken(conn, slug):
            raise ApiError(
                409,
                "slug_taken",
                "This account slug is already taken.",
                field_error(slug_field, "slug_taken", "Choose another slug."),
            )
    else:
        slug = free_slug(conn, slugify(name))
    try:
        account_id = new_account_id(conn)
    except AccountIdsExhausted:
        raise ApiError(503, "service_unavailable", "No account id is free; contact the operator.") from None
    now = now_iso()
    conn.execute(
        "INSERT INTO accounts (id, slug, name, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        (account_id, slug, name, now, now),
    )
    conn.execute(
        """
        INSERT INTO groups (id, account_id, name, description, created_at, updated_at)
        VALUES (?, ?, 'pii_access', 'Members read PII unmasked.', ?, ?)
    """,
        (uuid7(), account_id, now, now),
    )
    return {"id": account_id, "slug": slug, "name": name, "created_at": now, "updated_at": now}


def is_system(account_id: str) -> bool:
    return account_id == SYSTEM_ACCOUNT_ID


def clean_name(value: str, field: str) -> str:
    """An account name as stored: inner whitespace collapsed; empty or control characters are 400."""
    name = " ".join(value.split())
    if not name or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ApiError(
            400,
            "validation_failed",
            "The name is not valid.",
            field_error(field, "invalid", "Must be non-empty text without control characters."),
        )
    return name
