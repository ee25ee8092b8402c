"""Collection definitions in the database: the per-process cache, and create / update / delete.

Each change runs in ONE transaction: the `collections` row, the DDL of the collection's table, the
version bump that tells other processes to reload, and the audit entry. A change the existing data
cannot satisfy raises inside the transaction, so nothing of it remains.
"""

from __future__ import annotations

from typing import Any

import apsw
import msgspec

from snackbase import audit, files, search
from snackbase.collection_defs import (
    collection_from_row,
    collection_to_json,
    collection_to_row,
    new_collection,
    parse_collection_body,
)
from snackbase.db import execute_many, fetch_all, fetch_value
from snackbase.ddl import SchemaChange, create_table_sql, drop_table_sql, patch_collection
from snackbase.errors import ApiError, field_error, validation_error
from snackbase.field_types import RecordValidator
from snackbase.ids import SYSTEM_ACCOUNT_ID, uuid7
from snackbase.macros import param_counts
from snackbase.rules import check_rules
from snackbase.schema import Collection, referenced_collections, referencing_fields
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work


class ChangeContext(msgspec.Struct, frozen=True):
    """Who changes a definition and why, for the audit entry written in the same transaction."""

    actor: audit.Actor
    meta: audit.RequestMeta
    reason: str | None = None


class Registry(msgspec.Struct):
    """Every collection definition, cached; reloaded when `collections_version` moves."""

    version: int = -1
    by_name: dict[str, Collection] = msgspec.field(default_factory=dict)
    _validators: dict[str, RecordValidator] = msgspec.field(default_factory=dict)

    def refresh(self, conn: apsw.Connection, seen: int | None = None) -> None:
        """Reloads the definitions if `collections_version` moved. `seen`: the counter as the request
        already read it (cache_versions); the counter only grows, so a cache at least that new holds."""
        if seen is not None and seen <= self.version:
            return
        version = fetch_value(conn, "SELECT version FROM collections_version WHERE id = 1")
        if version != self.version:
            rows = fetch_all(conn, "SELECT * FROM collections ORDER BY name")
            self.by_name = {row["name"]: collection_from_row(row) for row in rows}
            self._validators = {}
            # Read inside a transaction, the definitions may yet be rolled back: remembered as of no
            # version, so that the next look reloads them.
            self.version = -1 if conn.in_transaction else version

    def get(self, conn: apsw.Connection, name: str, seen: int | None = None) -> Collection:
        self.refresh(conn, seen)
        collection = self.by_name.get(name)
        if collection is None:
            raise ApiError(404, "not_found", f"There is no collection named '{name[:64]}'.")
        return collection

    def all(self, conn: apsw.Connection) -> list[Collection]:
        self.refresh(conn)
        return list(self.by_name.values())

    def validator(self, collection: Collection) -> RecordValidator:
        """The record validator, compiled once per collection version."""
        validator = self._validators.get(collection.name)
        if validator is None:
            validator = self._validators[collection.name] = RecordValidator(collection)
        return validator


def _audit(
    conn: apsw.Connection, ctx: ChangeContext, action: str, old: Collection | None, new: Collection | None
) -> None:
    """Collections are shared by all accounts, so their changes go into the system account's chain."""
    before = collection_to_json(old) if old else None
    after = collection_to_json(new) if new else None
    subject = new or old
    audit.append(
        conn,
        account_id=SYSTEM_ACCOUNT_ID,
        actor=ctx.actor,
        action=action,
        collection=subject.name if subject else None,
        changes=audit.diff(before, after, skip=("id", "created_at", "updated_at")),
        reason=ctx.reason,
        meta=ctx.meta,
    )


def _bump_version(conn: apsw.Connection) -> None:
    conn.execute("UPDATE collections_version SET version = version + 1 WHERE id = 1")


def _check_references_exist(registry: Registry, collection: Collection) -> None:
    missing = sorted(
        name for name in referenced_collections(collection)
        if name not in registry.by_name and name != collection.name
    )  # fmt: skip
    if missing:
        raise validation_error(
            field_error("fields", "reference_not_found", f"No collection named {', '.join(missing)} exists."),
            "A reference field points at a collection that does not exist.",
        )


def create_collection(
    conn: apsw.Connection, registry: Registry, parsed: dict[str, Any], ctx: ChangeContext
) -> Collection:
    registry.refresh(conn)
    if parsed["name"] in registry.by_name:
        raise ApiError(
            409,
            "conflict",
            f"A collection named '{parsed['name']}' already exists.",
            field_error("name", "not_unique", "This name is taken."),
        )
    collection = new_collection(parsed, id=uuid7(), now=now_iso())
    _check_references_exist(registry, collection)
    check_rules(collection, param_counts(conn))
    with unit_of_work(conn):
        _insert_row(conn, collection)
        execute_many(conn, create_table_sql(collection))
        execute_many(conn, search.create_sql(collection))
        if not isinstance(conn, apsw.Connection):  # PostgreSQL: custom SQL macros may read it
            from snackbase.backends import macro_fence

            macro_fence.grant_reads(conn, collection.table)
        _bump_version(conn)
        _audit(conn, ctx, "collection.create", None, collection)
    registry.refresh(conn)
    return collection


def _insert_row(conn: apsw.Connection, collection: Collection) -> None:
    conn.execute(
        "INSERT INTO collections (id, name, fields, rules, field_access, audit, created_at, updated_at) "
        "VALUES (:id, :name, :fields, :rules, :field_access, :audit, :created_at, :updated_at)",
        collection_to_row(collection),
    )


def update_collection(
    conn: apsw.Connection, registry: Registry, name: str, parsed: dict[str, Any], ctx: ChangeContext
) -> Collection:
    old = registry.get(conn, name)
    new, change = patch_collection(old, parsed, now=now_iso())
    _check_references_exist(registry, new)
    check_rules(new, param_counts(conn))
    try:
        with unit_of_work(conn, foreign_keys_off=change is not None and change.needs_rebuild) as work:
            if change is not None:  # the stored files of dropped file fields go after COMMIT
                files.drop_fields(conn, work, old, [*change.dropped, *_no_longer_files(old, change)])
            reindex = bool(search.searchable(old) or search.searchable(new))
            if reindex:  # the full-text index follows the schema (see snackbase.search)
                execute_many(conn, search.drop_sql(old.name))
            _apply_change(conn, change)
            if reindex:
                execute_many(conn, search.create_sql(new))
            _update_row(conn, new)
            _bump_version(conn)
            _audit(conn, ctx, "collection.update", old, new)
    except apsw.ConstraintError as exc:
        raise _data_conflict(exc) from None
    registry.refresh(conn)
    return new


def _no_longer_files(old: Collection, change: SchemaChange) -> list[str]:
    """Old names of file fields that the change turns into another type."""
    new_type = {change.renames.get(f.name, f.name): f.type for f in change.fields}  # by old name
    return [f.name for f in old.fields if f.type == "file" and new_type.get(f.name, "file") != "file"]


def _apply_change(conn: apsw.Connection, change: SchemaChange | None) -> None:
    if change is None:
        return
    execute_many(conn, change.statements)
    if conn.execute(change.fk_check_sql).fetchall():
        raise ApiError(
            409, "conflict", "Existing records reference rows that the new schema would not allow."
        )


def _data_conflict(exc: apsw.ConstraintError) -> ApiError:
    text = str(exc)
    if "NOT NULL" in text:
        reason = "some existing records have no value for a field that would become required"
    elif "UNIQUE" in text:
        reason = "some existing records share a value in a field that would become unique"
    else:
        reason = "existing records do not satisfy the new definition"
    return ApiError(409, "conflict", f"The schema change was not applied: {reason}.")


def _update_row(conn: apsw.Connection, collection: Collection) -> None:
    conn.execute(
        "UPDATE collections SET fields = :fields, rules = :rules, field_access = :field_access, "
        "audit = :audit, updated_at = :updated_at WHERE id = :id",
        collection_to_row(collection),
    )


def delete_collection(conn: apsw.Connection, registry: Registry, name: str, ctx: ChangeContext) -> Collection:
    old = registry.get(conn, name)
    users = referencing_fields(name, registry.all(conn))
    if users:
        where = ", ".join(f"{c}.{f}" for c, f in users)
        raise ApiError(409, "collection_in_use", f"Reference fields still point at '{name}': {where}.")
    # Foreign keys off: DROP TABLE deletes row by row first, which a self-reference with `restrict`
    # would refuse; no other collection references this one (checked above).
    with unit_of_work(conn, foreign_keys_off=True) as work:
        files.drop_fields(conn, work, old, [f.name for f in old.fields])  # deleted after COMMIT
        execute_many(conn, search.drop_sql(name))
        execute_many(conn, drop_table_sql(name))
        conn.execute("DELETE FROM collections WHERE id = ?", (old.id,))
        _bump_version(conn)
        _audit(conn, ctx, "collection.delete", old, None)
    registry.refresh(conn)
    return old


# --- export / import (schema kept in git) -------------------------------------------------------


def export_definitions(conn: apsw.Connection, registry: Registry) -> list[dict[str, Any]]:
    """Every definition in API shape, without ids and timestamps (they differ between installations)."""
    out = []
    for collection in registry.all(conn):
        body = collection_to_json(collection)
        out.append({k: body[k] for k in ("name", "fields", "rules", "field_access", "audit")})
    return out


def import_definitions(
    conn: apsw.Connection, registry: Registry, definitions: Any, ctx: ChangeContext
) -> dict[str, list[str]]:
    """Creates missing collections and updates changed ones; idempotent. Returns what happened to each.

    One transaction for the whole file, so a definition that fails leaves everything as it was. Foreign
    keys are off for it (a PRAGMA is a no-op inside a transaction, so the rebuilds inside could not turn
    them off themselves) and every table's references are checked before commit.
    """
    if not isinstance(definitions, list):
        raise ApiError(400, "bad_request", "The file must hold a JSON list of collection definitions.")
    report: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
    with unit_of_work(conn, foreign_keys_off=True):
        for body in _dependency_order(definitions):
            _import_one(conn, registry, body, ctx, report)
        if conn.execute(_FK_CHECK if isinstance(conn, apsw.Connection) else _FK_CHECK_POSTGRES).fetchall():
            raise ApiError(
                409, "conflict", "Existing records reference rows the new definitions would not allow."
            )
    registry.refresh(conn)
    return report


_FK_CHECK = "PRAGMA foreign_key_check"
# PostgreSQL checks every reference as each statement runs (its foreign keys are never off).
_FK_CHECK_POSTGRES = "SELECT 1 WHERE FALSE"


def _import_one(
    conn: apsw.Connection, registry: Registry, body: Any, ctx: ChangeContext, report: dict[str, list[str]]
) -> None:
    parsed = parse_collection_body(body)
    registry.refresh(conn)
    existing = registry.by_name.get(parsed["name"])
    if existing is None:
        create_collection(conn, registry, parsed, ctx)
        report["created"].append(parsed["name"])
        return
    current = collection_to_json(existing)
    wanted = collection_to_json(new_collection(parsed, id=existing.id, now=existing.created_at))
    if all(current[k] == wanted[k] for k in ("fields", "rules", "field_access", "audit")):
        report["unchanged"].append(parsed["name"])
        return
    update_collection(conn, registry, parsed["name"], {k: parsed[k] for k in body if k != "name"}, ctx)
    report["updated"].append(parsed["name"])


def _references(item: Any) -> list[str]:
    fields = item.get("fields") if isinstance(item, dict) else None
    options = [f.get("options") for f in fields if isinstance(f, dict)] if isinstance(fields, list) else []
    return [o["collection"] for o in options if isinstance(o, dict) and isinstance(o.get("collection"), str)]


def _dependency_order(definitions: list[Any]) -> list[Any]:
    """Referenced collections first, so a reference field always finds its target (cycles keep file order)."""
    by_name = {d["name"]: d for d in definitions if isinstance(d, dict) and isinstance(d.get("name"), str)}
    ordered: list[Any] = []
    visiting: set[int] = set()

    def visit(item: Any) -> None:
        if id(item) in visiting:
            return
        visiting.add(id(item))
        for target in _references(item):
            if target in by_name:
                visit(by_name[target])
        ordered.append(item)

    for item in definitions:
        visit(item)
    return ordered
