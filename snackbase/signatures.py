"""Electronic signatures bound to an exact record version, and a record's history.

A signature re-authenticates the signer (password, Argon2 off the event loop), then — in one
transaction — stores the signer's printed name, the time, the meaning and the SHA-256 of the record's
canonical JSON, and appends a `record.sign` entry to the account's audit chain. The record's hash is
recomputed whenever signatures are read, so any later change shows as `changed_since_signing`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import apsw

from snackbase import audit
from snackbase.db import fetch_all, fetch_value
from snackbase.errors import ApiError, field_error, validation_error
from snackbase.ids import uuid7
from snackbase.schema import Collection
from snackbase.times import format_ts, now_iso

MAX_MEANING_CHARS = 200
# Repeated wrong passwords on signing lock signing for the user for a while (21 CFR 11.300(d)).
MAX_FAILED_SIGNINGS = 5
FAILED_WINDOW = timedelta(minutes=15)


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON (sorted keys, no whitespace, UTF-8), unmasked."""
    return hashlib.sha256((audit.encode_json_text(record) or "").encode("utf-8")).hexdigest()


def check_meaning(meaning: Any) -> str:
    text = meaning.strip() if isinstance(meaning, str) else ""
    if not text or len(text) > MAX_MEANING_CHARS or any(ord(ch) < 32 for ch in text):
        raise validation_error(
            field_error(
                "meaning",
                "invalid",
                f"Say what the signature means, in 1 to "
                f"{MAX_MEANING_CHARS} characters (e.g. approved, reviewed).",
            )
        )
    return text


def too_many_failures(conn: apsw.Connection, user_id: str) -> bool:
    since = format_ts(datetime.now(UTC) - FAILED_WINDOW)
    count = fetch_value(
        conn,
        "SELECT count(*) FROM audit_log WHERE record_id IS NOT NULL AND actor_user_id = ? "
        "AND action = 'record.sign_failed' AND occurred_at > ?",
        (user_id, since),
    )
    return int(count or 0) >= MAX_FAILED_SIGNINGS


def record_failure(
    conn: apsw.Connection,
    collection: Collection,
    record: dict[str, Any],
    actor: audit.Actor,
    meta: audit.RequestMeta,
) -> None:
    """The `record.sign_failed` entry (call inside the caller's unit of work)."""
    audit.append(
        conn,
        account_id=record["account_id"],
        actor=actor,
        action="record.sign_failed",
        collection=collection.name,
        record_id=record["id"],
        meta=meta,
        extra={"reason": "wrong password"},
    )


def sign(
    conn: apsw.Connection,
    collection: Collection,
    record: dict[str, Any],
    actor: audit.Actor,
    meta: audit.RequestMeta,
    meaning: str,
    reason: str | None,
) -> dict[str, Any]:
    """Stores the signature and its audit entry (call inside the caller's unit of work, which read
    `record`, the stored unmasked JSON, so the version signed is the one committed with it)."""
    signature = {
        "id": uuid7(),
        "account_id": record["account_id"],
        "collection": collection.name,
        "record_id": record["id"],
        "signer_user_id": actor.user_id,
        "signer_name": actor.email or "",
        "meaning": meaning,
        "signed_at": now_iso(),
        "record_hash": record_hash(record),
    }
    seq = audit.append(
        conn,
        account_id=record["account_id"],
        actor=actor,
        action="record.sign",
        collection=collection.name,
        record_id=record["id"],
        reason=reason,
        meta=meta,
        extra={
            "meaning": meaning,
            "record_hash": signature["record_hash"],
            "signature_id": signature["id"],
            "signer_name": signature["signer_name"],
        },
    )
    signature["audit_seq"] = seq
    columns = ", ".join(signature)
    marks = ", ".join(f":{c}" for c in signature)
    conn.execute(f"INSERT INTO signatures ({columns}) VALUES ({marks})", signature)
    return to_api(signature, record)


def to_api(row: dict[str, Any], current: dict[str, Any] | None, show_hash: bool = True) -> dict[str, Any]:
    """A signature as the API shows it; `current` is the record now (None once deleted). The record
    hash is an unkeyed SHA-256 of the whole record, so it is shown only to callers who read the whole
    record in clear (`show_hash`): with the visible fields, a masked low-entropy value such as an SSN
    could otherwise be recovered by hashing every candidate."""
    out = {
        k: row[k]
        for k in (
            "id",
            "collection",
            "record_id",
            "signer_user_id",
            "signer_name",
            "meaning",
            "signed_at",
            "record_hash",
            "audit_seq",
        )
    }
    out["changed_since_signing"] = current is None or record_hash(current) != row["record_hash"]
    if not show_hash:
        out["record_hash"] = None
    return out


def signatures_of(
    conn: apsw.Connection,
    account_id: str,
    record_id: str,
    current: dict[str, Any] | None,
    show_hash: bool = True,
) -> list[dict[str, Any]]:
    rows = fetch_all(
        conn,
        "SELECT * FROM signatures WHERE record_id = ? AND account_id = ? ORDER BY signed_at",
        (record_id, account_id),
    )
    return [to_api(row, current, show_hash) for row in rows]


def require_password(ok: bool) -> None:
    if not ok:
        raise ApiError(401, "invalid_credentials", "The password is not correct; nothing was signed.")
