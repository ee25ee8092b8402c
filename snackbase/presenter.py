"""The one presenter: what a caller may see of a record, of its history and of its signatures.

Every read path — get, list, expand, the records a write answers with, batch answers, a record's
history, the audit views and exports, signatures, and realtime next — shows records only through
`present_rows` / `present_json` and audit entries only through `present_entries`, so field access and
PII masks are decided in one place and a new read path cannot forget them.

Rules for audit entries (history and the audit views):
- a change to a field the caller may not read (field access `view`) is left out;
- PII is masked by the kind recorded in the change (or the field's current mask) unless the caller
  reads PII in clear;
- an entry with a masked change carries no `hash`/`prev_hash`: the hash covers the clear values, and
  with every other field of the entry in hand, a low-entropy value (an SSN) could be recovered by
  hashing candidates;
- a signature's `record_hash` (in `extra`) is shown only to callers who read PII in clear, for the
  same reason;
- callers who are not account admins see who changed what and when, not the editor's email, address,
  user agent, request id or the entry's hashes (the chain is verified by `/audit-log/verify`).
"""

from __future__ import annotations

from typing import Any

import apsw
import msgspec

from snackbase import audit_views, files, profiles, versions
from snackbase.collections import Registry
from snackbase.db import fetch_all
from snackbase.errors import ApiError, field_error
from snackbase.pii import hidden_fields, mask_value, pii_masks, present, readable_fields
from snackbase.relations import BackRelation, back_relation
from snackbase.rules import ALIAS, Caller, RecordResolver, rule_clause, scope_clause, where_clause
from snackbase.schema import SYSTEM_FIELDS, Collection, Field, is_multi_reference, quote_ident

MAX_EXPAND_DEPTH = 3
VERSION_KEY = "@etag"  # a list item's version (its ETag)
MAX_BACK_EXPAND = 100  # back-related records one expand attaches to one record (oldest first)
# What a caller who is not an account admin sees of an entry's `extra` (e.g. a signature's meaning).
_PUBLIC_EXTRA = frozenset(("meaning", "signature_id", "cascade"))
_ADMIN_ONLY = ("ip", "user_agent", "request_id", "hash", "prev_hash")


# --- records ------------------------------------------------------------------------------------


def present_rows(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    op: str,
    rows: list[dict[str, Any]],
    expand: list[str] | tuple[str, ...] = (),
    fields: list[str] | None = None,
    versioned: bool = False,
) -> list[dict[str, Any]]:
    """Stored rows as this caller reads them (`op` is list or view): JSON values, field access, PII
    masks, expanded references (each passing its own view rule), then the `fields` projection.

    `versioned` (lists): each item also carries its version as `@etag` (snackbase.versions, the ETag a
    single read answers with), so a client can send `If-Match` after a list. A `fields` projection
    keeps it only when it names it (`fields=title,@etag`)."""
    to_json = registry.validator(collection).to_json
    records = [to_json(r) for r in rows]
    if versioned and (not fields or VERSION_KEY in fields):
        for record in records:  # the stored values: before masks and projection
            record[VERSION_KEY] = versions.etag(record)  # not a field: access and masks pass it by
    return _present(conn, registry, collection, caller, op, records, expand, fields)


def present_versioned(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    row: dict[str, Any],
    expand: list[str] | tuple[str, ...] = (),
    fields: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """One stored row as `present_rows` shows it to a single read, and its version (the ETag), from one
    conversion to JSON values (the version is taken before masks and projection change them)."""
    record = registry.validator(collection).to_json(row)
    tag = versions.etag(record)
    return _present(conn, registry, collection, caller, "view", [record], expand, fields)[0], tag


def present_json(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    op: str,
    records: list[dict[str, Any]],
    expand: list[str] | tuple[str, ...] = (),
    fields: list[str] | None = None,
    *,
    versioned: bool = False,
) -> list[dict[str, Any]]:
    """`present_rows` for records already in JSON form (the answers of writes). Works on copies: the
    stored values also travel to after-commit work, which must see them unmasked. `versioned` adds
    each record's `@etag`, as in lists (a batch's answer)."""
    copies = [{**r, VERSION_KEY: versions.etag(r)} if versioned else dict(r) for r in records]
    return _present(conn, registry, collection, caller, op, copies, expand, fields)


def _present(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    op: str,
    records: list[dict[str, Any]],
    expand: list[str] | tuple[str, ...],
    fields: list[str] | None,
) -> list[dict[str, Any]]:
    """Changes `records` (fresh dicts of this call) in place: field access, masks, expand, projection."""
    shown = present(collection, caller, op, records)
    if expand:
        expand_records(conn, registry, collection, caller, shown, expand)
    return project(shown, fields)


def check_projection(collection: Collection, fields: list[str] | None) -> None:
    for name in fields or ():
        if (
            name not in collection.field_map
            and name not in SYSTEM_FIELDS
            and name not in ("expand", VERSION_KEY)
        ):
            raise ApiError(
                400,
                "bad_request",
                f"Unknown field '{name[:64]}' in fields.",
                field_error("fields", "unknown_field", f"'{name[:64]}' is not a field."),
            )


def project(records: list[dict[str, Any]], fields: list[str] | None) -> list[dict[str, Any]]:
    if not fields:
        return records
    keep = [*fields, "expand"]
    return [{k: r[k] for k in keep if k in r} for r in records]


def check_expand(registry: Registry, conn: apsw.Connection, collection: Collection, paths: list[str]) -> None:
    for path in paths:
        parts = path.split(".")
        if len(parts) > MAX_EXPAND_DEPTH:
            raise ApiError(
                400, "bad_request", f"expand '{path[:64]}' is deeper than {MAX_EXPAND_DEPTH} levels."
            )
        current = collection
        for part in parts:
            f = current.field_map.get(part)
            back = back_relation(conn, registry, current, part) if f is None else None
            if back is not None:
                current = back.source
                continue
            if f is not None and f.type == "user" and part == parts[-1]:
                break  # a user's profile (snackbase.profiles); nothing expands below it
            if f is None or f.type != "reference":
                raise ApiError(
                    400,
                    "bad_request",
                    f"Cannot expand '{path[:64]}': '{part[:64]}' is not a reference field or back-relation.",
                    field_error("expand", "unknown_field", f"'{part[:64]}' is not a reference field."),
                )
            current = registry.get(conn, f.options["collection"])


def expand_records(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    records: list[dict[str, Any]],
    paths: list[str] | tuple[str, ...],
) -> None:
    """Attaches referenced records under record["expand"][field] (a list for a multi-reference or a
    back-relation); one query per field, never per row."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        groups.setdefault(head, [])
        if rest:
            groups[head].append(rest)
    for name, nested in groups.items():
        if name not in collection.field_map:
            back = back_relation(conn, registry, collection, name)
            if back is not None:
                _expand_back(conn, registry, back, caller, records, name, nested)
            continue
        if collection.field_map[name].type == "user":
            profiles_by_id = present_profiles(
                conn, caller, [r[name] for r in records if isinstance(r.get(name), str)]
            )
            for record in records:
                if record.get(name) in profiles_by_id:
                    record.setdefault("expand", {})[name] = profiles_by_id[record[name]]
            continue
        target = registry.get(conn, collection.field_map[name].options["collection"])
        if is_multi_reference(collection.field_map[name]):
            _expand_many(conn, registry, target, caller, records, name, nested)
            continue
        # A field the caller may not read was removed by `present`: nothing to expand for it.
        ids = sorted({r[name] for r in records if isinstance(r.get(name), str)})
        found = _viewable_by_id(conn, registry, target, caller, ids, nested)
        for record in records:
            if record.get(name) in found:
                record.setdefault("expand", {})[name] = found[record[name]]


def _expand_many(
    conn: apsw.Connection,
    registry: Registry,
    target: Collection,
    caller: Caller,
    records: list[dict[str, Any]],
    name: str,
    nested: list[str],
) -> None:
    """A multi-reference: the records the caller may view, in the order the list holds them."""
    lists: list[list[Any]] = [r[name] if isinstance(r.get(name), list) else [] for r in records]
    wanted = sorted({i for ids in lists for i in ids if isinstance(i, str)})
    found = _viewable_by_id(conn, registry, target, caller, wanted, nested)
    for record, ids in zip(records, lists, strict=True):
        shown = [found[i] for i in ids if i in found]
        if shown:  # like a single reference: nothing the caller may view, nothing expanded
            record.setdefault("expand", {})[name] = shown


def _expand_back(
    conn: apsw.Connection,
    registry: Registry,
    back: BackRelation,
    caller: Caller,
    records: list[dict[str, Any]],
    name: str,
    nested: list[str],
) -> None:
    """`<source>_via_<field>`: the source records the caller may view that reference each record,
    oldest first, at most MAX_BACK_EXPAND per record; one query (a window per parent)."""
    source, f = back.source, back.field
    parents = sorted({r["id"] for r in records if isinstance(r.get("id"), str)})
    if not parents or f.name in hidden_fields(source, caller, "view"):
        return  # a reference the caller may not read must not reveal who points where
    try:
        rule = rule_clause(source, "view", RecordResolver(source, caller))
    except ApiError:  # the caller may not view that collection at all: nothing is expanded
        return
    column = f"{ALIAS}.{quote_ident(f.name)}"
    table = f"{quote_ident(source.table)} AS {ALIAS}"
    parent, joined = (
        ("je.value", f"{table}, json_each({column}) AS je") if is_multi_reference(f) else (column, table)
    )
    where, params = where_clause(
        scope_clause(caller), rule, (f"{parent} IN (SELECT value FROM json_each(?))", [_ids_json(parents)])
    )
    # The subquery's alias: PostgreSQL (before 16) requires one; SQLite ignores it.
    sql = (
        f"SELECT * FROM (SELECT {ALIAS}.*, {parent} AS _parent, row_number() OVER (PARTITION BY {parent} "
        f"ORDER BY {ALIAS}.created_at, {ALIAS}.id) AS _n FROM {joined}{where}) AS ranked "
        "WHERE _n <= ? ORDER BY _n"
    )
    rows = fetch_all(conn, sql, [*params, MAX_BACK_EXPAND])
    owners = [(row.pop("_parent"), row.pop("_n")) for row in rows]
    shown = present_rows(conn, registry, source, caller, "view", rows, nested)
    by_parent: dict[str, list[dict[str, Any]]] = {}
    for (owner, _), record in zip(owners, shown, strict=True):
        by_parent.setdefault(owner, []).append(record)
    for record in records:
        if record.get("id") in by_parent:
            record.setdefault("expand", {})[name] = by_parent[record["id"]]


def _ids_json(ids: list[str]) -> str:
    return msgspec.json.encode(ids).decode()


def _viewable_by_id(
    conn: apsw.Connection,
    registry: Registry,
    target: Collection,
    caller: Caller,
    ids: list[str],
    nested: list[str],
) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    try:
        rule = rule_clause(target, "view", RecordResolver(target, caller))
    except ApiError:  # the caller may not view that collection at all: nothing is expanded
        return {}
    marks = ", ".join("?" * len(ids))
    where, params = where_clause(scope_clause(caller), rule, (f"{ALIAS}.id IN ({marks})", ids))
    rows = fetch_all(conn, f"SELECT * FROM {quote_ident(target.table)} AS {ALIAS}{where}", params)
    shown = present_rows(conn, registry, target, caller, "view", rows, nested)
    return {r["id"]: r for r in shown}


def present_profiles(
    conn: apsw.Connection,
    caller: Caller,
    ids: list[str],
    registry: Registry | None = None,
    expand: list[str] | tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """User profiles (snackbase.profiles) as this caller reads them, by user id: the profiles the
    caller may see, each with `id` and the profile fields its field access and masks allow, and the
    `expand`ed references (`registry` needed then)."""
    shown: dict[str, dict[str, Any]] = {}
    for collection, rows in profiles.visible_rows(conn, caller, ids):
        records = present_profile_rows(collection, caller, rows)
        if expand and registry is not None:
            expand_profiles(conn, registry, collection, caller, records, expand)
        for record in records:
            shown[record["id"]] = record
    return shown


def shown_profile_file(
    conn: apsw.Connection, caller: Caller, user_id: str, filename: str
) -> tuple[Collection, Field, dict[str, Any]] | None:
    """The profile's file named `filename` if the caller reads it: the profile passes the users view
    rule and the file's field is in what the caller sees of it (field access) — for downloads."""
    for collection, rows in profiles.visible_rows(conn, caller, [user_id]):
        for record in present_profile_rows(collection, caller, rows):
            for f in files.file_fields(collection):
                for meta in files.metas(record.get(f.name)):
                    if meta.get("name") == filename:
                        return collection, f, meta
    return None


def check_profile_expand(collection: Collection, names: list[str]) -> None:
    """`expand` on profiles names their reference and user fields (one level)."""
    for name in names:
        f = collection.field_map.get(name)
        if f is None or f.type not in ("reference", "user"):
            raise ApiError(
                400,
                "bad_request",
                f"Cannot expand '{name[:64]}': not a reference or user field of the profiles.",
                field_error("expand", "unknown_field", f"'{name[:64]}' is not a reference field."),
            )


def expand_profiles(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    records: list[dict[str, Any]],
    names: list[str] | tuple[str, ...],
) -> None:
    """Attaches what profile references name under record["expand"][field]: a referenced record as
    its own collection's view rule, field access and masks let the caller see it; a user's profile
    as the users view rule does. A field the caller may not read was removed: nothing to expand."""
    for name in names:
        f = collection.field_map[name]
        ids = sorted({r[name] for r in records if isinstance(r.get(name), str)})
        if f.type == "user":
            found = present_profiles(conn, caller, ids)
        else:
            try:
                target = registry.get(conn, f.options["collection"])
            except ApiError:  # the referenced collection was deleted: nothing to expand
                continue
            found = _viewable_by_id(conn, registry, target, caller, ids, [])
        for record in records:
            if record.get(name) in found:
                record.setdefault("expand", {})[name] = found[record[name]]


def present_profile_rows(
    collection: Collection, caller: Caller, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Profiles the caller may read (rows of `profiles.profile_table` in JSON form) as it reads them:
    `id` and the profile fields its field access and masks allow. Works on copies."""
    names = ("id", *(f.name for f in collection.fields))
    return [
        {k: r[k] for k in names if k in r}
        for r in present(collection, caller, "view", [dict(r) for r in rows])
    ]


def sees_whole_record(collection: Collection, caller: Caller) -> bool:
    """True when the caller reads every field of the collection in clear (nothing hidden, no mask)."""
    return readable_fields(collection, caller, "view") is None and not pii_masks(collection, caller)


# --- audit entries (history, audit views, exports) ----------------------------------------------


def present_entries(
    entries: list[dict[str, Any]],
    caller_sees_pii: bool,
    *,
    is_admin: bool,
    collection: Collection | None = None,
    caller: Caller | None = None,
    masker: audit_views.Masker | None = None,
) -> list[dict[str, Any]]:
    """API-shaped audit entries as this caller may see them (the rules are in the module docstring).

    `collection` and `caller` give field access and the current PII masks of one collection (history);
    `masker` gives the current masks of every collection (the audit views)."""
    readable = readable_fields(collection, caller, "view") if collection and caller else None
    current_masks = collection.pii_kinds if collection else {}
    for entry in entries:
        masked = _present_changes(entry, readable, current_masks, caller_sees_pii, masker)
        if masked:
            entry["hash"] = entry["prev_hash"] = None
        if not caller_sees_pii and isinstance(entry.get("extra"), dict):
            # A signature's record hash covers the whole record, masked fields included.
            entry["extra"].pop("record_hash", None)
        if not is_admin:
            _hide_editor_details(entry)
    return entries


def _present_changes(
    entry: dict[str, Any],
    readable: frozenset[str] | None,
    current_masks: dict[str, str],
    sees_pii: bool,
    masker: audit_views.Masker | None,
) -> bool:
    """Filters and masks `entry["changes"]` in place; True when a value was masked."""
    changes = entry.get("changes")
    if not isinstance(changes, dict):
        return False
    target = (entry.get("target") or {}).get("collection")
    shown: dict[str, Any] = {}
    masked = False
    for name, change in changes.items():
        if readable is not None and name not in readable:
            continue
        if not sees_pii and isinstance(change, dict):
            kind = change.get("mask") or current_masks.get(name)
            if isinstance(kind, str):
                change = {**change, "old": mask_value(kind, change.get("old")),
                          "new": mask_value(kind, change.get("new"))}  # fmt: skip
                masked = True
            elif masker is not None:
                old, new = change.get("old"), change.get("new")
                shown_old, shown_new = masker(target, name, old), masker(target, name, new)
                if (shown_old, shown_new) != (old, new):
                    change, masked = {**change, "old": shown_old, "new": shown_new}, True
        shown[name] = change
    entry["changes"] = shown
    return masked


def _hide_editor_details(entry: dict[str, Any]) -> None:
    actor = entry.get("actor")
    if isinstance(actor, dict):
        entry["actor"] = {k: actor.get(k) for k in ("user_id", "role", "method")}
    for key in _ADMIN_ONLY:
        entry.pop(key, None)
    extra = entry.get("extra")
    if isinstance(extra, dict):
        entry["extra"] = {k: v for k, v in extra.items() if k in _PUBLIC_EXTRA} or None


def present_stored_row(row: dict[str, Any], masker: audit_views.Masker | None) -> dict[str, Any]:
    """A stored audit row for an export to a caller without pii_access: PII masked, and no hashes on a
    row that was masked (see the module docstring)."""
    shown = audit_views.mask_row_changes(row, masker)
    if shown["changes"] != row["changes"]:
        shown = {**shown, "hash": None, "prev_hash": None}
    return shown
