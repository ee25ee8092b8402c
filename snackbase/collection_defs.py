"""Collection definitions as they travel: the `/collections` body parser (every field, rule,
field-access and audit setting checked, with a path per error), the API shape, and the stored form
(the `collections` row: `fields`, `rules`, `field_access` and `audit` as JSON text). Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from snackbase.errors import ApiError, FieldErrors, field_error, validation_error
from snackbase.field_types import field_defs_errors, normalize_field
from snackbase.schema import (
    FIELD_ACCESS_OPS,
    RESERVED_COLLECTION_NAMES,
    RULE_OPS,
    SYSTEM_FIELDS,
    Collection,
    Field,
    name_problem,
)

_json_encode = msgspec.json.Encoder().encode


# --- the /collections body ---------------------------------------------------------------------

_BODY_KEYS = ("name", "fields", "rules", "field_access", "audit")
_FIELD_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "type": (str,),
    "required": (bool,),
    "unique": (bool,),
    "default": (object,),
    "options": (dict,),
    "pii": (bool,),
    "mask": (str, type(None)),
    "previous_name": (str, type(None)),
}
_FIELD_KEY_TYPES_POST = {k: v for k, v in _FIELD_KEYS.items() if k != "previous_name"}


def _unknown(key: str, what: str = "key") -> FieldErrors:
    return field_error(key, "unknown_field", f"Unknown {what} `{key.rsplit('.', 1)[-1]}`.")


def _parse_field(item: object, prefix: str, partial: bool, errors: FieldErrors) -> Field | None:
    if not isinstance(item, dict):
        errors.update(field_error(prefix.rstrip("."), "invalid_type", "Each field must be an object."))
        return None
    before = len(errors)
    for key, value in item.items():
        types = _FIELD_KEY_TYPES_POST if not partial else _FIELD_KEYS
        if key not in types:
            errors.update(_unknown(prefix + str(key)))
        elif not isinstance(value, types[key]):
            errors.update(field_error(prefix + key, "invalid_type", f"Wrong type for `{key}`."))
    for key in ("name", "type"):
        if key not in item:
            errors.update(field_error(prefix + key, "required", f"`{key}` is required."))
    return Field(**item) if len(errors) == before else None


def _parse_fields(value: object, partial: bool, errors: FieldErrors) -> list[Field]:
    if not isinstance(value, list):
        errors.update(field_error("fields", "invalid_type", "Must be a list of fields."))
        return []
    parsed = [_parse_field(item, f"fields.{i}.", partial, errors) for i, item in enumerate(value)]
    errors.update(field_defs_errors(parsed))
    return [normalize_field(f) for f in parsed if f is not None]


def _parse_object(value: object, key: str, allowed: Iterable[str], errors: FieldErrors) -> dict[str, Any]:
    if not isinstance(value, dict):
        errors.update(field_error(key, "invalid_type", "Must be an object."))
        return {}
    allowed = tuple(allowed)
    for k in value:
        if k not in allowed:
            errors.update(_unknown(f"{key}.{k}"))
    return {k: v for k, v in value.items() if k in allowed}


def _parse_rules(value: object, partial: bool, errors: FieldErrors) -> dict[str, str | None]:
    rules = _parse_object(value, "rules", RULE_OPS, errors)
    for op, rule in rules.items():
        if rule is not None and not isinstance(rule, str):
            errors.update(field_error(f"rules.{op}", "invalid_type", "Must be null or a string."))
    return rules if partial else {op: rules.get(op) for op in RULE_OPS}


def _access_list_problem(names: object) -> str | None:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return 'Must be a list of field names, or ["*"].'
    if "*" in names and names != ["*"]:
        return '"*" must stand alone.'
    return None if len(set(names)) == len(names) else "Field names must be unique."


def _parse_field_access(value: object, partial: bool, errors: FieldErrors) -> dict[str, list[str]]:
    access = _parse_object(value, "field_access", FIELD_ACCESS_OPS, errors)
    for op, names in access.items():
        if problem := _access_list_problem(names):
            errors.update(field_error(f"field_access.{op}", "invalid_value", problem))
    return access if partial else {op: list(access.get(op, ["*"])) for op in FIELD_ACCESS_OPS}


def _parse_audit(value: object, partial: bool, errors: FieldErrors) -> dict[str, Any]:
    audit = _parse_object(value, "audit", ("require_reason",), errors)
    if not isinstance(audit.get("require_reason", False), bool):
        errors.update(field_error("audit.require_reason", "invalid_type", "Must be true or false."))
    return audit if partial else {"require_reason": audit.get("require_reason", False)}


def field_access_errors(access: Mapping[str, list[str]], fields: Iterable[Field]) -> FieldErrors:
    known = {f.name for f in fields}
    errors: FieldErrors = {}
    for op, names in access.items():
        readable = SYSTEM_FIELDS if op in ("list", "view") else ()
        unknown = [n for n in names if n != "*" and n not in known and n not in readable]
        if unknown:
            message = "Unknown field(s): " + ", ".join(unknown) + "."
            errors.update(field_error(f"field_access.{op}", "unknown_field", message))
    return errors


_SECTION_PARSERS: dict[str, Callable[[object, bool, FieldErrors], Any]] = {
    "fields": _parse_fields,
    "rules": _parse_rules,
    "field_access": _parse_field_access,
    "audit": _parse_audit,
}


def parse_collection_body(body: object, *, partial: bool = False) -> dict[str, Any]:
    """Validate a POST (`partial=False`) or PATCH (`partial=True`) /collections body.

    POST: `name` and `fields` are required; missing rules are null, missing field_access lists are
    ["*"], audit defaults to require_reason false. PATCH: only the given keys are returned, and
    within rules/field_access/audit only the given sub-keys (`patch_collection` merges them).
    """
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    errors: FieldErrors = {}
    for key in body:
        if key not in _BODY_KEYS:
            errors.update(_unknown(str(key)))
    out: dict[str, Any] = {}
    if "name" in body:
        if problem := name_problem(body["name"], RESERVED_COLLECTION_NAMES):
            errors.update(field_error("name", *problem))
        out["name"] = body["name"]
    for key, parse in _SECTION_PARSERS.items():
        if key in body or not partial:
            out[key] = parse(body.get(key, {}), partial, errors)
    for key in ("name", "fields"):
        if not partial and key not in body:
            errors.update(field_error(key, "required", f"`{key}` is required."))
    if not partial and not errors:
        errors.update(field_access_errors(out["field_access"], out["fields"]))
    if errors:
        raise validation_error(errors)
    return out


def new_collection(parsed: Mapping[str, Any], *, id: str, now: str) -> Collection:
    """The Collection for a parsed POST body (`parse_collection_body(body)`)."""
    fields = tuple(normalize_field(f) for f in parsed["fields"])
    return Collection(
        id, parsed["name"], fields, dict(parsed["rules"]), dict(parsed["field_access"]),
        dict(parsed["audit"]), now, now,
    )  # fmt: skip


# --- API shape and storage ---------------------------------------------------------------------


def field_to_json(f: Field) -> dict[str, Any]:
    return {
        "name": f.name, "type": f.type, "required": f.required, "unique": f.unique,
        "default": f.default, "options": f.options, "pii": f.pii, "mask": f.mask,
    }  # fmt: skip


def collection_to_json(c: Collection) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "fields": [field_to_json(f) for f in c.fields],
        "rules": {op: c.rules.get(op) for op in RULE_OPS},
        "field_access": {op: c.field_access.get(op, ["*"]) for op in FIELD_ACCESS_OPS},
        "audit": {"require_reason": bool(c.audit.get("require_reason", False))},
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


def collection_to_row(c: Collection) -> dict[str, str]:
    """Column -> value for the `collections` row; the four structured columns hold JSON text."""
    api = collection_to_json(c)
    row = {key: _json_encode(api[key]).decode() for key in ("fields", "rules", "field_access", "audit")}
    return {"id": c.id, "name": c.name, **row, "created_at": c.created_at, "updated_at": c.updated_at}


_fields_decoder = msgspec.json.Decoder(list[Field])
_rules_decoder = msgspec.json.Decoder(dict[str, str | None])
_access_decoder = msgspec.json.Decoder(dict[str, list[str]])
_audit_decoder = msgspec.json.Decoder(dict[str, Any])


def collection_from_json(
    id: str, name: str, fields_json: str, rules_json: str, field_access_json: str, audit_json: str,
    created_at: str, updated_at: str,
) -> Collection:  # fmt: skip
    rules, access = _rules_decoder.decode(rules_json), _access_decoder.decode(field_access_json)
    audit = _audit_decoder.decode(audit_json)
    return Collection(
        id, name, tuple(_fields_decoder.decode(fields_json)),
        {op: rules.get(op) for op in RULE_OPS},
        {op: access.get(op, ["*"]) for op in FIELD_ACCESS_OPS},
        {"require_reason": bool(audit.get("require_reason", False))},
        created_at, updated_at,
    )  # fmt: skip


def collection_from_row(row: Mapping[str, Any]) -> Collection:
    keys = ("id", "name", "fields", "rules", "field_access", "audit", "created_at", "updated_at")
    return collection_from_json(*(row[k] for k in keys))
