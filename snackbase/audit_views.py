"""The audit trail as the HTTP side meets it: the reason and metadata of a request, the actor of a
caller, entries in the API shape, PII masks over `changes`, and a record's history.

The chain itself — canonical form, hashes, appending and verifying — is `snackbase.audit`; what a
given caller may see of entries is decided by `snackbase.presenter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import apsw

from snackbase import web
from snackbase.audit import (
    ANONYMOUS_ACTOR,
    COLUMNS,
    MAX_USER_AGENT_CHARS,
    REASON_BODY_KEY,
    REASON_HEADER,
    Actor,
    RequestMeta,
    decode_text,
    encode_json_text,
    reason_error,
    validate_reason,
)
from snackbase.pii import mask_value


def header_reason(raw: str) -> str:
    """The `X-Audit-Reason` header as text. HTTP headers carry bytes (Starlette gives them as Latin-1):
    raw UTF-8 is accepted, and the value is then percent-decoded, so a client can send any text with
    `encodeURIComponent(reason)` (a `%` not followed by two hex digits stays a `%`)."""
    try:
        text = raw.encode("latin-1").decode("utf-8")
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeError:
        raise reason_error("The X-Audit-Reason header must be UTF-8 (percent-encoded or raw).") from None


def reason_from(request: Any, body: dict[str, Any] | None = None) -> str | None:
    """The validated reason of a write: `_reason` in the body (taken out of it, so record validation
    never sees it) wins over the `X-Audit-Reason` header."""
    from_body = body.pop(REASON_BODY_KEY, None) if isinstance(body, dict) else None
    if from_body is not None:
        return validate_reason(from_body)
    raw = request.headers.get(REASON_HEADER)
    return validate_reason(header_reason(raw)) if raw is not None else None


def actor_from_auth(auth: Any) -> Actor:
    """The actor of a request from snackbase.auth's Auth (None: an anonymous caller)."""
    if auth is None:
        return ANONYMOUS_ACTOR
    role = "superadmin" if getattr(auth, "is_superadmin", False) else auth.role
    return Actor(auth.user_id, auth.email, role, auth.method or "token")


def meta_from_request(request: Any) -> RequestMeta:
    scope = request.scope
    state = scope.get("state") or {}
    client = scope.get("client")
    agent = web.header(scope, b"user-agent")
    return RequestMeta(
        request_id=state.get("request_id") or None,
        ip=client[0] if client else None,
        user_agent=agent[:MAX_USER_AGENT_CHARS] if agent else None,
    )


# --- reading: API shape and PII masks ----------------------------------------------------------

# (collection, field, value) -> the value a caller without `pii_access` sees. Built from the collection
# definitions (`schema_masker`, or the rules module's masker when it provides one).
Masker = Callable[[str | None, str, Any], Any]


def to_api(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row as the API shows it: actor and target grouped, `changes`/`extra` as JSON values."""
    return {
        "seq": row["seq"], "account_id": row["account_id"], "account_seq": row["account_seq"],
        "occurred_at": row["occurred_at"],
        "actor": {"user_id": row["actor_user_id"], "email": row["actor_email"], "role": row["actor_role"],
                  "method": row["auth_method"]},
        "action": row["action"], "target": {"collection": row["collection"], "record_id": row["record_id"]},
        "changes": decode_text(row["changes"]), "reason": row["reason"], "request_id": row["request_id"],
        "ip": row["ip"], "user_agent": row["user_agent"], "extra": decode_text(row["extra"]),
        "prev_hash": row["prev_hash"], "hash": row["hash"],
    }  # fmt: skip


def mask_changes(entries: list[dict[str, Any]], masker: Masker | None) -> list[dict[str, Any]]:
    """Masks PII in API-shaped entries, in place: a change that carries its own `"mask"` (written by
    `diff(pii=…)`) is always masked that way; any other field goes through `masker` when given."""
    for entry in entries:
        changes = entry.get("changes")
        if isinstance(changes, dict):
            collection = (entry.get("target") or {}).get("collection")
            entry["changes"] = {
                name: _mask_change(collection, name, change, masker) for name, change in changes.items()
            }
    return entries


def mask_row_changes(row: dict[str, Any], masker: Masker | None) -> dict[str, Any]:
    """The same for a stored (flat) row, whose `changes` is JSON text: for exports."""
    if row["changes"] is not None:
        view = {"target": {"collection": row["collection"]}, "changes": decode_text(row["changes"])}
        row = {**row, "changes": encode_json_text(mask_changes([view], masker)[0]["changes"])}
    return row


def _mask_change(collection: str | None, name: str, change: Any, masker: Masker | None) -> Any:
    if not isinstance(change, dict):
        return change
    kind = change.get("mask")
    if isinstance(kind, str):
        return {
            **change,
            "old": mask_value(kind, change.get("old")),
            "new": mask_value(kind, change.get("new")),
        }
    if masker is None:
        return change
    return {
        **change,
        "old": masker(collection, name, change.get("old")),
        "new": masker(collection, name, change.get("new")),
    }


def schema_masker(conn: apsw.Connection) -> Masker | None:
    """A masker from the current collection definitions (fields with `pii: true`), or None when no
    collection has PII. A field that no longer exists is shown as stored: pipelines that pass
    `diff(pii=…)` keep their masks in the entry itself, which survives schema changes."""
    masks = _pii_fields(conn)
    if not masks:
        return None

    def masker(collection: str | None, field: str, value: Any) -> Any:
        kind = masks.get(collection or "", {}).get(field)
        return value if kind is None else mask_value(kind, value)

    return masker


def _pii_fields(conn: apsw.Connection) -> dict[str, dict[str, str]]:
    has_collections = _HAS_COLLECTIONS if isinstance(conn, apsw.Connection) else _HAS_COLLECTIONS_POSTGRES
    if conn.execute(has_collections).fetchone() is None:
        return {}
    masks: dict[str, dict[str, str]] = {}
    for name, fields_json in conn.execute("SELECT name, fields FROM collections"):
        fields = [f for f in decode_text(fields_json) or [] if isinstance(f, dict) and f.get("pii")]
        if fields:
            masks[name] = {str(f["name"]): str(f.get("mask") or "full") for f in fields}
    return masks


_HAS_COLLECTIONS = "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'collections'"
_HAS_COLLECTIONS_POSTGRES = "SELECT 1 WHERE to_regclass('collections') IS NOT NULL"


def record_history(
    conn: apsw.Connection, account_id: str, collection: str, record_id: str
) -> list[dict[str, Any]]:
    """A record's entries, oldest first, in the API shape (unmasked: the caller applies `mask_changes`)."""
    history = _RECORD_HISTORY if isinstance(conn, apsw.Connection) else _RECORD_HISTORY_POSTGRES
    rows = conn.execute(history, (record_id, account_id, collection))
    return [to_api(dict(zip(COLUMNS, row, strict=True))) for row in rows]


# INDEXED BY: without statistics SQLite would rather walk the account's chain index to avoid a sort.
_RECORD_HISTORY = (
    f"SELECT {', '.join(COLUMNS)} FROM audit_log INDEXED BY audit_log_record "
    "WHERE record_id = ? AND account_id = ? AND collection = ? ORDER BY seq"
)
# PostgreSQL has no INDEXED BY; its planner has statistics (autovacuum's ANALYZE) and picks the index.
_RECORD_HISTORY_POSTGRES = _RECORD_HISTORY.replace(" INDEXED BY audit_log_record", "")
