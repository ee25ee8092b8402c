"""The record write pipeline — the one place every record change goes through.

Each write is one unit of work (snackbase.unit_of_work): BEGIN IMMEDIATE → the stored row read and
checked against the rules as it is now → hooks before_* (inside the transaction, so whatever they
write is rolled back with it) → validate (schema) → field access → rules on the result → references
checked in the record's account → INSERT/UPDATE/DELETE … RETURNING, and the rows that references
cascade to or set to null (snackbase.cascade) → one audit entry per changed row (and its stored files
kept or queued for deletion, snackbase.files) → COMMIT → after-commit: hooks after_*, removed files
deleted (realtime will plug in there). File fields take their value from `files.resolve`: uploads of
a multipart request (already moved into storage) and names of files the record holds. REST, batch and
the in-process API of hooks all call these functions; what a caller reads of the result comes from
snackbase.presenter.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import apsw
import msgspec

from snackbase import audit, cascade, files, versions
from snackbase.collections import Registry
from snackbase.db import Allowance, statement_budget
from snackbase.ddl import column_type
from snackbase.errors import (
    ApiError,
    FieldErrors,
    constraint_kind,
    field_error,
    unique_columns,
    validation_error,
)
from snackbase.filter import FilterError, compile_filter
from snackbase.ids import uuid7
from snackbase.pii import check_write_access, mask_value, pii_masks
from snackbase.presenter import present_json
from snackbase.record_changes import Change, WriteContext, record_change
from snackbase.rules import ALIAS, Caller, RecordResolver, allows_all, rule_clause, scope_clause, where_clause
from snackbase.schema import Collection, is_multi_reference, quote_ident
from snackbase.times import now_iso
from snackbase.unit_of_work import Work, unit_of_work
from snackbase.unit_of_work import current as current_work

__all__ = ["MAX_BATCH_OPS", "Change", "WriteContext", "batch", "create_record", "delete_record",
           "stored_record", "try_rule", "update_record"]  # fmt: skip

MAX_BATCH_OPS = 100
IF_MATCH_KEY = "@if_match"  # a batch operation's If-Match; `@` keeps it apart from field names


class _Op(msgspec.Struct, frozen=True):
    """One write as the pipeline runs it: the body without `_reason`, and the reason it carries."""

    body: dict[str, Any]
    reason: str | None
    uploads: list[files.Staged]  # files of a multipart request, staged and already in storage


# --- the public entry points: one unit of work each -----------------------------------------------


def create_record(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    body: Any,
    uploads: list[files.Staged] | None = None,
) -> dict[str, Any]:
    op = _op(body, ctx.reason, collection, uploads)
    with _writing(conn, collection) as work:
        stored = _create(conn, registry, collection, ctx, op, work)
    return present_json(conn, registry, collection, ctx.caller, "view", [stored])[0]


def update_record(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    record_id: str,
    body: Any,
    *,
    replace: bool = False,
    uploads: list[files.Staged] | None = None,
) -> dict[str, Any]:
    op = _op(body, ctx.reason, collection, uploads)
    with _writing(conn, collection) as work:
        stored = _update(conn, registry, collection, ctx, record_id, op, replace, work)
    return present_json(conn, registry, collection, ctx.caller, "view", [stored])[0]


def delete_record(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    record_id: str,
    body: Any = None,
) -> str:
    op = _op(body if isinstance(body, dict) else {}, ctx.reason, collection)
    with _writing(conn, collection) as work:
        return _delete(conn, registry, collection, ctx, record_id, op, work)


def _writing(conn: apsw.Connection, collection: Collection) -> unit_of_work:
    """The unit of work of a record write, with SQLite's constraint errors answered for this collection."""
    return unit_of_work(conn, on_constraint=lambda exc: _constraint_error(exc, collection))


def _constraint_error(exc: apsw.ConstraintError, collection: Collection) -> ApiError:
    kind = constraint_kind(exc)
    if kind == "unique":
        for column in unique_columns(exc):
            if column in collection.field_map:
                return validation_error(field_error(column, "not_unique", "This value is already taken."))
        return ApiError(409, "conflict", "A record with these values already exists.")
    if kind == "foreign_key":
        return ApiError(409, "conflict", "Other records still reference this record.")
    return ApiError(409, "conflict", "The change violates a constraint of the collection.")


# --- reasons --------------------------------------------------------------------------------------


def _op(
    body: Any, fallback: str | None, collection: Collection, uploads: list[files.Staged] | None = None
) -> _Op:
    """The body without `_reason`; its reason is its own `_reason`, else `fallback` (the batch's
    `_reason` or the X-Audit-Reason header). Collections with `require_reason` refuse a write without."""
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    body = dict(body)
    reason = fallback
    if audit.REASON_BODY_KEY in body:
        reason = audit.validate_reason(body.pop(audit.REASON_BODY_KEY)) or fallback
    if collection.audit.get("require_reason"):
        audit.require_reason(reason)
    return _Op(body, reason, uploads or [])


# --- create ---------------------------------------------------------------------------------------


def _create(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    op: _Op,
    work: Work,
) -> dict[str, Any]:
    account_id = _target_account(ctx.caller)
    body = ctx.hooks.record_before("create", collection, ctx, op.body) if ctx.hooks else op.body
    validator = registry.validator(collection)
    resolved = files.resolve(collection, body, None, op.uploads)
    values = validator.validate(resolved, mode="create")
    check_write_access(collection, ctx.caller, "create", list(resolved))
    now, user = now_iso(), ctx.caller.user_id
    row = {"id": uuid7(), "account_id": account_id, "created_at": now, "created_by": user,
           "updated_at": now, "updated_by": user, **values}  # fmt: skip
    if not _rule_holds(conn, collection, "create", ctx.caller, row, body):
        raise ApiError(403, "forbidden", "The create rule does not allow this record.")
    _check_references(conn, registry, collection, values, account_id)
    stored = validator.to_json(_insert(conn, collection, row))
    ctx.etag = versions.etag(stored)
    record_change(conn, work, Change("record.create", collection, account_id, row["id"], None, stored,
                                     ctx, op.reason))  # fmt: skip
    return stored


def _target_account(caller: Caller) -> str:
    if caller.account_id is None:
        raise ApiError(
            400, "account_required", "Superadmins name the account to write into with X-Account-ID."
        )
    return caller.account_id


def _insert(conn: apsw.Connection, collection: Collection, row: dict[str, Any]) -> dict[str, Any]:
    return _fetch_row(conn, _insert_sql(collection.table, tuple(row)), list(row.values()))


@functools.lru_cache(maxsize=1024)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """Built once per column set: quoting every name on every insert was ~6% of a create."""
    names = ", ".join(quote_ident(c) for c in columns)
    return f"INSERT INTO {quote_ident(table)} ({names}) VALUES ({', '.join('?' * len(columns))}) RETURNING *"


def _fetch_row(conn: apsw.Connection, sql: str, params: list[Any]) -> dict[str, Any]:
    cursor = conn.execute(sql, params)
    row = cursor.fetchone()
    names = [d[0] for d in cursor.get_description()]
    assert row is not None  # INSERT/UPDATE … RETURNING of a row known to exist
    return dict(zip(names, row, strict=True))


# --- update ---------------------------------------------------------------------------------------


def _update(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    record_id: str,
    op: _Op,
    replace: bool,
    work: Work,
) -> dict[str, Any]:
    validator = registry.validator(collection)
    # The rule sees the body as sent (`@request.data`), against the row as it is now: the write lock
    # is held, so no other process can change the row between this check and the UPDATE.
    old = _stored_for(conn, collection, ctx.caller, "update", record_id, data=op.body)
    versions.check_if_match(ctx.if_match, validator.to_json(old))
    sent = _without_masked_echoes(collection, ctx.caller, validator.to_json(old), op.body)
    body = ctx.hooks.record_before("update", collection, ctx, sent, old) if ctx.hooks else sent
    resolved = files.resolve(collection, body, validator.to_json(old), op.uploads)
    values = validator.validate(resolved, mode="replace" if replace else "update")
    # PUT writes every field (those not given get their default), so each must be writable.
    check_write_access(collection, ctx.caller, "update", list(values) if replace else list(resolved))
    changed = {k: v for k, v in values.items() if audit.differs(old.get(k), v)}
    new = {**old, **changed, "updated_at": now_iso(), "updated_by": ctx.caller.user_id}
    if not _rule_holds(conn, collection, "update", ctx.caller, new, body):
        raise ApiError(403, "forbidden", "The update rule does not allow the record as changed.")
    if not changed:  # nothing to write: no audit entry, updated_at stays
        ctx.etag = versions.etag(validator.to_json(old))
        return validator.to_json(old)
    _check_references(conn, registry, collection, changed, old["account_id"])
    assignments = {**changed, "updated_at": new["updated_at"], "updated_by": new["updated_by"]}
    stored = validator.to_json(
        _fetch_row(
            conn, _update_sql(collection.table, tuple(assignments)), [*assignments.values(), old["id"]]
        )
    )
    record_change(conn, work, Change("record.update", collection, old["account_id"], old["id"],
                                     validator.to_json(old), stored, ctx, op.reason))  # fmt: skip
    ctx.etag = versions.etag(stored)
    return stored


@functools.lru_cache(maxsize=1024)
def _update_sql(table: str, columns: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{quote_ident(c)} = ?" for c in columns)
    return f"UPDATE {quote_ident(table)} SET {assignments} WHERE id = ? RETURNING *"


def _without_masked_echoes(
    collection: Collection, caller: Caller, old: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    """Drops PII values that are exactly the caller's own masked rendering of the stored value: a form
    that sends back what it was shown (`******`) must not replace the real value with the mask."""
    masks = pii_masks(collection, caller)
    echoes = {
        name for name, kind in masks.items()
        if name in body and old.get(name) is not None and body[name] == mask_value(kind, old[name])
    }  # fmt: skip
    return {k: v for k, v in body.items() if k not in echoes} if echoes else body


# --- delete ---------------------------------------------------------------------------------------


def _delete(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    record_id: Any,
    op: _Op,
    work: Work,
) -> str:
    old = _stored_for(conn, collection, ctx.caller, "delete", record_id, data=op.body)
    versions.check_if_match(ctx.if_match, registry.validator(collection).to_json(old))
    if ctx.hooks:
        ctx.hooks.record_before("delete", collection, ctx, None, old)
    cascade.before_delete(conn, registry, collection.name, [old["id"]], ctx, work, op.reason)
    conn.execute(f"DELETE FROM {quote_ident(collection.table)} WHERE id = ?", (old["id"],))
    previous = registry.validator(collection).to_json(old)
    record_change(conn, work, Change("record.delete", collection, old["account_id"], old["id"], previous,
                                     None, ctx, op.reason))  # fmt: skip
    return str(old["id"])


# --- reading the row a write is about --------------------------------------------------------------


def _stored_for(
    conn: apsw.Connection,
    collection: Collection,
    caller: Caller,
    op: str,
    record_id: Any,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stored row if it is in the caller's scope and passes the `op` rule; 404 otherwise."""
    if not isinstance(record_id, str):
        raise validation_error(field_error("id", "invalid_type", "The id must be text."))
    resolver = RecordResolver(collection, caller, data=data)
    with _rule_check(conn):
        where, params = where_clause(
            scope_clause(caller), rule_clause(collection, op, resolver), (f"{ALIAS}.id = ?", [record_id])
        )
        cursor = conn.execute(f"SELECT * FROM {quote_ident(collection.table)} AS {ALIAS}{where}", params)
        row = cursor.fetchone()
    if row is None:
        raise ApiError(404, "not_found", "The record was not found.")
    return dict(zip([d[0] for d in cursor.get_description()], row, strict=True))


def stored_record(
    conn: apsw.Connection, registry: Registry, collection: Collection, caller: Caller, op: str, record_id: str
) -> dict[str, Any]:
    """The stored record (unmasked JSON) if the caller may `op` it; 404 otherwise. For server-side use
    such as signing, which binds to the exact stored values, never for responses."""
    return registry.validator(collection).to_json(_stored_for(conn, collection, caller, op, record_id))


def _rule_holds(
    conn: apsw.Connection,
    collection: Collection,
    op: str,
    caller: Caller,
    row: dict[str, Any],
    data: dict[str, Any],
) -> bool:
    """Evaluates a rule against values not (yet) stored, as a one-row CTE named like the table alias."""
    if allows_all(collection, op, caller):  # no statement to run: no share of the loop to account for
        return True
    with _rule_check(conn):
        clause, params = rule_clause(collection, op, RecordResolver(collection, caller, data=data))
        if not clause:
            return True
        columns = list(row)
        names = ", ".join(quote_ident(c) for c in columns)
        if isinstance(conn, apsw.Connection):
            values = ", ".join("?" * len(columns))
        else:  # PostgreSQL types a VALUES parameter only from its use: a NULL alone needs its type
            values = ", ".join(f"CAST(? AS {column_type(collection, c)})" for c in columns)
        cte = f"{ALIAS}({names}) AS (VALUES ({values}))"
        sql = f"WITH {cte} SELECT EXISTS (SELECT 1 FROM {ALIAS} WHERE {clause})"
        return bool(_value(conn, sql, [*row.values(), *params]))


def _rule_check(conn: apsw.Connection) -> AbstractContextManager[None]:
    """Inside a write, rule checks (their macros included) run while the write lock and, on the event
    loop's connection, the event loop are held: all of one unit of work's checks together (a batch,
    hooks' own writes) get the loop's share (`SNACKBASE_LOOP_BUDGET_MS`). Past it, the statement is
    interrupted and the unit of work answers 503 `statement_timeout` after rolling everything back.
    Outside a write (a read through `stored_record`) the read's own allowance applies (Database.read)."""
    work = current_work(conn)
    budget = statement_budget(conn)
    if work is None or budget is None:
        return nullcontext()
    if work.rule_allowance is None:
        work.rule_allowance = Allowance(budget.share_s)
    return budget.spending(work.rule_allowance)


def _value(conn: apsw.Connection, sql: str, params: list[Any]) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def _check_references(
    conn: apsw.Connection, registry: Registry, collection: Collection, values: dict[str, Any], account_id: str
) -> None:
    """A reference must name a record of the SAME account; the foreign key alone would allow any tenant's."""
    errors: FieldErrors = {}
    for name, value in values.items():
        f = collection.field_map[name]
        if value is None or f.type not in ("reference", "user"):
            continue
        if f.type == "reference":
            target = quote_ident(registry.get(conn, f.options["collection"]).table)
            sql = f"SELECT 1 FROM {target} WHERE id = ? AND account_id = ?"
        else:
            sql = "SELECT 1 FROM users WHERE id = ? AND account_id = ?"
        if is_multi_reference(f):  # a JSON array of ids: every one must be in the account
            target = quote_ident(registry.get(conn, f.options["collection"]).table)
            sql = (
                f"SELECT count(*) = json_array_length(?1) FROM {target} "
                "WHERE id IN (SELECT value FROM json_each(?1)) AND account_id = ?2"
            )
            if not _value(conn, sql, [value, account_id]):
                errors.update(field_error(name, "reference_not_found", "No such record in this account."))
            continue
        if conn.execute(sql, (value, account_id)).fetchone() is None:
            errors.update(field_error(name, "reference_not_found", "No such record in this account."))
    if errors:
        raise validation_error(errors)


# --- batch ----------------------------------------------------------------------------------------


def batch(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    body: Any,
    uploads: dict[tuple[str, int], list[files.Staged]] | None = None,
) -> dict[str, list[Any]]:
    """All operations in one unit of work, in order create → update → delete; the first failure names
    its operation and index and undoes everything. Each operation's audit entry carries its own
    `_reason`, else the batch's top-level `_reason`, else the X-Audit-Reason header. `uploads` are
    the staged files of a multipart batch, by (kind, index) of the operation they belong to."""
    ops, batch_reason = _batch_ops(body, ctx.reason)
    if uploads and any(i >= len(body.get(kind, [])) for kind, i in uploads):
        raise ApiError(400, "bad_request", "A file part belongs to an operation the batch does not hold.")
    out: dict[str, list[Any]] = {"create": [], "update": [], "delete": []}
    stored: dict[str, list[Any]] = {"create": [], "update": [], "delete": []}
    with _writing(conn, collection) as work:
        for kind, index, item in ops:
            staged = (uploads or {}).get((kind, index), [])
            stored[kind].append(_batch_one(conn, registry, collection, ctx, kind, index, item, batch_reason,
                                           work, staged))  # fmt: skip
    for kind in ("create", "update"):
        out[kind] = present_json(conn, registry, collection, ctx.caller, "view", stored[kind], versioned=True)
    out["delete"] = stored["delete"]
    return out


def _batch_ops(body: Any, header_reason: str | None) -> tuple[list[tuple[str, int, Any]], str | None]:
    if not isinstance(body, dict) or set(body) - {"create", "update", "delete", audit.REASON_BODY_KEY}:
        raise ApiError(400, "bad_request", "A batch is an object with create, update and delete lists.")
    reason = audit.validate_reason(body.get(audit.REASON_BODY_KEY)) or header_reason
    ops = []
    for kind in ("create", "update", "delete"):
        items = body.get(kind, [])
        if not isinstance(items, list):
            raise validation_error(field_error(kind, "invalid_type", "Must be a list."))
        ops += [(kind, i, item) for i, item in enumerate(items)]
    if not ops or len(ops) > MAX_BATCH_OPS:
        raise ApiError(400, "bad_request", f"A batch holds 1 to {MAX_BATCH_OPS} operations.")
    return ops, reason


def _batch_one(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    kind: str,
    index: int,
    item: Any,
    reason: str | None,
    work: Work,
    staged: list[files.Staged],
) -> Any:
    try:
        if kind == "create":
            return _create(conn, registry, collection, ctx, _op(item, reason, collection, staged), work)
        one = _batch_context(ctx, item)
        if kind == "update":
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise validation_error(field_error("id", "required", "Each update names the record's id."))
            fields = {k: v for k, v in item.items() if k not in ("id", IF_MATCH_KEY)}
            return _update(
                conn,
                registry,
                collection,
                one,
                item["id"],
                _op(fields, reason, collection, staged),
                False,
                work,
            )
        body = {k: v for k, v in item.items() if k != IF_MATCH_KEY} if isinstance(item, dict) else {}
        record_id = item.get("id") if isinstance(item, dict) else item
        return _delete(conn, registry, collection, one, record_id, _op(body, reason, collection), work)
    except ApiError as exc:
        prefix = f"{kind}.{index}"
        fields = {f"{prefix}.{k}": v for k, v in exc.fields.items()} or field_error(
            prefix, exc.code, exc.message
        )
        raise ApiError(exc.status, exc.code, f"Operation {prefix} failed: {exc.message}", fields) from None


def _batch_context(ctx: WriteContext, item: Any) -> WriteContext:
    """The write context of one batch operation: an update or delete may carry its own `@if_match`
    (the `If-Match` of a single write, checked the same way: a stale one fails the whole batch)."""
    if not isinstance(item, dict) or IF_MATCH_KEY not in item:
        return ctx
    if_match = item[IF_MATCH_KEY]
    if not isinstance(if_match, str) or not if_match.strip():
        raise validation_error(
            field_error(IF_MATCH_KEY, "invalid_type", "An ETag (text), as If-Match takes.")
        )
    return msgspec.structs.replace(ctx, if_match=if_match)


# --- rule testing (admin tools) ------------------------------------------------------------------


def try_rule(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    rule: str | None,
    op: str,
    record_id: str | None,
    data: dict[str, Any] | None,
) -> bool:
    """Whether `rule` (not necessarily saved) allows `op` for `caller` on a stored record or on new data."""
    if rule is None:
        return caller.is_superadmin
    probe = Collection(
        collection.id,
        collection.name,
        collection.fields,
        {**collection.rules, op: rule},
        collection.field_access,
        collection.audit,
        collection.created_at,
        collection.updated_at,
    )
    if caller.is_superadmin or not rule.strip():
        return True
    check_rule_text(probe, op, rule, caller)
    if record_id is not None:
        return _rule_holds_for_stored(conn, probe, caller, op, record_id, data)
    if data is None:
        raise ApiError(400, "bad_request", "Give record_id or data to test a rule against a record.")
    values = registry.validator(collection).validate(data, mode="create")
    row = {
        "id": "",
        "account_id": caller.account_id,
        "created_at": now_iso(),
        "created_by": caller.user_id,
        "updated_at": now_iso(),
        "updated_by": caller.user_id,
        **values,
    }
    return _rule_holds(conn, probe, op, caller, row, data)


def check_rule_text(collection: Collection, op: str, rule: str, caller: Caller) -> None:
    try:
        compile_filter(rule, RecordResolver(collection, caller, data={}))
    except FilterError as exc:
        raise ApiError(
            400, "invalid_rule", f"Invalid rule: {exc}.", field_error("rule", "invalid_rule", str(exc))
        ) from None


def _rule_holds_for_stored(
    conn: apsw.Connection,
    collection: Collection,
    caller: Caller,
    op: str,
    record_id: str,
    data: dict[str, Any] | None,
) -> bool:
    clause, params = rule_clause(collection, op, RecordResolver(collection, caller, data=data))
    where, all_params = where_clause(
        (f"{ALIAS}.id = ?", [record_id]), (f"{ALIAS}.account_id = ?", [caller.account_id]), (clause, params)
    )
    sql = f"SELECT EXISTS (SELECT 1 FROM {quote_ident(collection.table)} AS {ALIAS}{where})"
    return bool(_value(conn, sql, all_params))
