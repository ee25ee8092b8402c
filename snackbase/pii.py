"""PII masks and field access: what of a record a caller may read, filter on and write (SPEC section 7).

Every read path — get, list, expand, the records returned by writes, record history, audit views and
exports — goes through `present` (records) or `mask_value` (audit entries), so a mask is defined once;
realtime, when it comes, must use `present` too.
"""

from __future__ import annotations

from typing import Any

import msgspec

from snackbase.errors import ApiError
from snackbase.rules import Caller
from snackbase.schema import Collection

_sorted_encoder = msgspec.json.Encoder(order="sorted")


def mask_value(kind: str, value: Any) -> Any:
    """SPEC section 7 masks. Null stays null (absence is not personal data); unknown kinds mask fully."""
    if value is None:
        return None
    text = value if isinstance(value, str) else _sorted_encoder.encode(value).decode()
    digits = "".join(ch for ch in text if ch.isdigit())
    if kind == "email" and "@" in text:
        local, domain = text.rsplit("@", 1)
        return f"{local[:1]}***@{domain}"
    if kind == "phone" and len(digits) >= 4:
        return "******" + digits[-4:]
    if kind == "ssn" and len(digits) >= 4:
        return "***-**-" + digits[-4:]
    if kind == "name" and text.strip():
        return " ".join(part[0] + "." for part in text.split())
    return "******"


def readable_fields(collection: Collection, caller: Caller, op: str) -> frozenset[str] | None:
    """The defined fields this caller may read for `op` (list or view); None means all of them."""
    names = collection.field_access.get(op, ["*"])
    return None if caller.is_superadmin or "*" in names else frozenset(names)


def pii_masks(collection: Collection, caller: Caller) -> dict[str, str]:
    """PII field → mask kind, for a caller who must see them masked (empty for the others)."""
    masks = collection.pii_kinds
    return dict(masks) if masks and not caller.sees_pii else {}


def hidden_fields(collection: Collection, caller: Caller, op: str) -> frozenset[str]:
    """Fields the caller may not filter or sort on: unreadable ones, and PII it sees masked (no oracle)."""
    readable = readable_fields(collection, caller, op)
    hidden = set(pii_masks(collection, caller))
    if readable is not None:
        hidden |= {f.name for f in collection.fields if f.name not in readable}
    return frozenset(hidden)


def present(
    collection: Collection, caller: Caller, op: str, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What this caller reads: unreadable fields removed, PII masked (every read path goes through here)."""
    readable, masks = readable_fields(collection, caller, op), pii_masks(collection, caller)
    if readable is None and not masks:
        return records
    dropped = [] if readable is None else [f.name for f in collection.fields if f.name not in readable]
    for record in records:
        for name in dropped:
            record.pop(name, None)
        for name, kind in masks.items():
            if name in record:
                record[name] = mask_value(kind, record[name])
    return records


def check_write_access(collection: Collection, caller: Caller, op: str, names: list[str]) -> None:
    allowed = collection.field_access.get(op, ["*"])
    if caller.is_superadmin or "*" in allowed:
        return
    denied = [n for n in names if n in collection.field_map and n not in allowed]
    if denied:
        raise ApiError(
            403,
            "field_access_denied",
            f"You may not {op} the field(s): {', '.join(denied)}.",
            {n: {"code": "field_access_denied", "message": f"Not writable on {op}."} for n in denied},
        )
