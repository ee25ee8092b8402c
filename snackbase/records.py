"""The record write pipeline — the one place every record change goes through.

hooks before_* (their changes are validated like client input) → validate (schema) → field access →
rules (create: against the new values, as a CTE; update: the stored row and the result) → ONE
transaction { references checked in the caller's account, INSERT/UPDATE/DELETE … RETURNING, audit
entry } → commit → after-commit effects (hooks after_*; realtime will listen here). REST, batch and
the in-process API of hooks all call these functions. Reads live in `queries`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apsw

from snackbase import audit
from snackbase.collections import Registry
from snackbase.db import fetch_all, fetch_value, write_transaction
from snackbase.errors import ApiError, FieldErrors, field_error, validation_error
from snackbase.filter import FilterError, compile_filter
from snackbase.hooks import hooks
from snackbase.ids import uuid7
from snackbase.pii import check_write_access, present
from snackbase.queries import scope_clause, where_clause
from snackbase.rules import ALIAS, Caller, RecordResolver, rule_clause
from snackbase.schema import Collection, quote_ident
from snackbase.times import now_iso

MAX_BATCH_OPS = 100
# Work a write leaves for after its commit (hooks after_*, and later realtime).
Effect = Callable[[], None]


@dataclass
class WriteContext:
    """One write request: who (as rules and the audit trail see them), why, and what to do after commit."""

    caller: Caller
    actor: audit.Actor
    meta: audit.RequestMeta
    reason: str | None = None
    after_commit: list[Effect] = field(default_factory=list)


@dataclass(frozen=True)
class WriteEvent:
    """One record change, for the audit entry (in the transaction) and the commit listeners."""

    action: str  # record.create | record.update | record.delete
    collection: Collection
    account_id: str
    record_id: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    ctx: WriteContext


WriteListener = Callable[[apsw.Connection, WriteEvent], None]
# Called after commit with the event (hooks after_*; realtime publishing will listen here too).
commit_listeners: list[WriteListener] = []


# --- writes -------------------------------------------------------------------------------------


def _target_account(caller: Caller) -> str:
    if caller.account_id is None:
        raise ApiError(
            400, "account_required", "Superadmins name the account to write into with X-Account-ID."
        )
    return caller.account_id


def _take_reason(body: dict[str, Any], ctx: WriteContext, collection: Collection) -> dict[str, Any]:
    """Takes `_reason` out of the body (it wins over the X-Audit-Reason header already in ctx)."""
    body = dict(body)
    if audit.REASON_BODY_KEY in body:
        ctx.reason = audit.validate_reason(body.pop(audit.REASON_BODY_KEY))
    if collection.audit.get("require_reason"):
        audit.require_reason(ctx.reason)
    return body


def _rule_holds(
    conn: apsw.Connection,
    collection: Collection,
    op: str,
    caller: Caller,
    row: dict[str, Any],
    data: dict[str, Any],
) -> bool:
    """Evaluates a rule against values not (yet) stored, as a one-row CTE named like the table alias."""
    clause, params = rule_clause(collection, op, RecordResolver(collection, caller, data=data))
    if not clause:
        return True
    columns = list(row)
    cte = (
        f"{ALIAS}({', '.join(quote_ident(c) for c in columns)}) AS (VALUES ({', '.join('?' * len(columns))}))"
    )
    sql = f"WITH {cte} SELECT EXISTS (SELECT 1 FROM {ALIAS} WHERE {clause})"
    return bool(fetch_value(conn, sql, [*row.values(), *params]))


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
        if fetch_value(conn, sql, (value, account_id)) is None:
            errors.update(field_error(name, "reference_not_found", "No such record in this account."))
    if errors:
        raise validation_error(errors)


def _constraint_error(exc: apsw.ConstraintError, collection: Collection) -> ApiError:
    text = str(exc)
    if "UNIQUE" in text:
        for f in collection.fields:
            if f".{f.name}" in text.split("failed:", 1)[-1]:
                return validation_error(field_error(f.name, "not_unique", "This value is already taken."))
        return ApiError(409, "conflict", "A record with these values already exists.")
    if "FOREIGN KEY" in text:
        return ApiError(409, "conflict", "Other records still reference this record.")
    return ApiError(409, "conflict", "The change violates a constraint of the collection.")


def _run_write(
    conn: apsw.Connection, collection: Collection, fn: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    try:
        with write_transaction(conn):
            return fn()
    except apsw.ConstraintError as exc:
        raise _constraint_error(exc, collection) from None


def _emit(conn: apsw.Connection, event: WriteEvent) -> None:
    """In the write's transaction: the audit entry; after commit: the commit listeners."""
    pii = {f.name: f.mask or "full" for f in event.collection.fields if f.pii}
    audit.append(
        conn, account_id=event.account_id, actor=event.ctx.actor, action=event.action,
        collection=event.collection.name, record_id=event.record_id,
        changes=audit.diff(event.old, event.new, pii=pii),
        reason=event.ctx.reason, meta=event.ctx.meta,
    )  # fmt: skip
    if commit_listeners:
        event.ctx.after_commit.append(lambda: _committed(conn, event))


def _committed(conn: apsw.Connection, event: WriteEvent) -> None:
    for listener in commit_listeners:
        listener(conn, event)


def create_record(
    conn: apsw.Connection, registry: Registry, collection: Collection, ctx: WriteContext, body: Any
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    body = _take_reason(body, ctx, collection)
    body = hooks.record_before("create", collection, ctx, body)
    values = registry.validator(collection).validate(body, mode="create")
    check_write_access(collection, ctx.caller, "create", list(body))
    account_id = _target_account(ctx.caller)
    now, user = now_iso(), ctx.caller.user_id
    row = {
        "id": uuid7(),
        "account_id": account_id,
        "created_at": now,
        "created_by": user,
        "updated_at": now,
        "updated_by": user,
        **values,
    }
    if not _rule_holds(conn, collection, "create", ctx.caller, row, body):
        raise ApiError(403, "forbidden", "The create rule does not allow this record.")

    def write() -> dict[str, Any]:
        _check_references(conn, registry, collection, values, account_id)
        stored = to_json(_insert(conn, collection, row))
        _emit(conn, WriteEvent("record.create", collection, account_id, row["id"], None, stored, ctx))
        return stored

    to_json = registry.validator(collection).to_json
    # A copy: the stored values also travel to the after-commit listeners, which must see them unmasked.
    return present(collection, ctx.caller, "view", [dict(_run_write(conn, collection, write))])[0]


def _insert(conn: apsw.Connection, collection: Collection, row: dict[str, Any]) -> dict[str, Any]:
    return fetch_all(conn, _insert_sql(collection.table, tuple(row)), list(row.values()))[0]


@functools.lru_cache(maxsize=1024)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """Built once per column set: quoting every name on every insert was ~6% of a create."""
    names = ", ".join(quote_ident(c) for c in columns)
    return f"INSERT INTO {quote_ident(table)} ({names}) VALUES ({', '.join('?' * len(columns))}) RETURNING *"


def _stored_for(
    conn: apsw.Connection, collection: Collection, caller: Caller, op: str, record_id: str
) -> dict[str, Any]:
    """The stored row if it is in the caller's scope and passes the `op` rule; 404 otherwise."""
    if not isinstance(record_id, str):
        raise validation_error(field_error("id", "invalid_type", "The id must be text."))
    resolver = RecordResolver(collection, caller)
    where, params = where_clause(
        scope_clause(caller), rule_clause(collection, op, resolver), (f"{ALIAS}.id = ?", [record_id])
    )
    rows = fetch_all(conn, f"SELECT * FROM {quote_ident(collection.table)} AS {ALIAS}{where}", params)
    if not rows:
        raise ApiError(404, "not_found", "The record was not found.")
    return rows[0]


def stored_record(
    conn: apsw.Connection, registry: Registry, collection: Collection, caller: Caller, op: str, record_id: str
) -> dict[str, Any]:
    """The stored record (unmasked JSON) if the caller may `op` it; 404 otherwise. For server-side use
    such as signing, which binds to the exact stored values, never for responses."""
    return registry.validator(collection).to_json(_stored_for(conn, collection, caller, op, record_id))


def update_record(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    record_id: str,
    body: Any,
    *,
    replace: bool = False,
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be a JSON object.")
    body = _take_reason(body, ctx, collection)
    old = _stored_for(conn, collection, ctx.caller, "update", record_id)
    body = hooks.record_before("update", collection, ctx, body, old)
    values = registry.validator(collection).validate(body, mode="replace" if replace else "update")
    # PUT writes every field (those not given get their default), so each must be writable.
    check_write_access(collection, ctx.caller, "update", list(values) if replace else list(body))
    new = {**old, **values, "updated_at": now_iso(), "updated_by": ctx.caller.user_id}
    if not _rule_holds(conn, collection, "update", ctx.caller, new, body):
        raise ApiError(403, "forbidden", "The update rule does not allow the record as changed.")

    def write() -> dict[str, Any]:
        _check_references(conn, registry, collection, values, old["account_id"])
        changes = {**values, "updated_at": new["updated_at"], "updated_by": new["updated_by"]}
        stored = to_json(_update(conn, collection, old["id"], changes))
        _emit(
            conn,
            WriteEvent("record.update", collection, old["account_id"], old["id"], to_json(old), stored, ctx),
        )
        return stored

    to_json = registry.validator(collection).to_json
    # A copy: the stored values also travel to the after-commit listeners, which must see them unmasked.
    return present(collection, ctx.caller, "view", [dict(_run_write(conn, collection, write))])[0]


def _update(
    conn: apsw.Connection, collection: Collection, record_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    sql = _update_sql(collection.table, tuple(changes))
    return fetch_all(conn, sql, [*changes.values(), record_id])[0]


@functools.lru_cache(maxsize=1024)
def _update_sql(table: str, columns: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{quote_ident(c)} = ?" for c in columns)
    return f"UPDATE {quote_ident(table)} SET {assignments} WHERE id = ? RETURNING *"


def delete_record(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    record_id: str,
    body: Any = None,
) -> str:
    _take_reason(body if isinstance(body, dict) else {}, ctx, collection)
    old = _stored_for(conn, collection, ctx.caller, "delete", record_id)
    hooks.record_before("delete", collection, ctx, None, old)

    def write() -> dict[str, Any]:
        conn.execute(f"DELETE FROM {quote_ident(collection.table)} WHERE id = ?", (old["id"],))
        previous = registry.validator(collection).to_json(old)
        _emit(
            conn, WriteEvent("record.delete", collection, old["account_id"], old["id"], previous, None, ctx)
        )
        return old

    _run_write(conn, collection, write)
    return str(old["id"])


def run_after_commit(ctx: WriteContext) -> None:
    for effect in ctx.after_commit:
        effect()
    ctx.after_commit.clear()


# --- batch --------------------------------------------------------------------------------------


def batch(
    conn: apsw.Connection, registry: Registry, collection: Collection, ctx: WriteContext, body: Any
) -> dict[str, list[Any]]:
    """All operations in one transaction, in order create → update → delete; the first failure names
    its operation and index and undoes everything."""
    ops = _batch_ops(body)
    out: dict[str, list[Any]] = {"create": [], "update": [], "delete": []}
    try:
        with write_transaction(conn):
            for kind, index, item in ops:
                out[kind].append(_batch_one(conn, registry, collection, ctx, kind, index, item))
    except apsw.ConstraintError as exc:
        raise _constraint_error(exc, collection) from None
    return out


def _batch_ops(body: Any) -> list[tuple[str, int, Any]]:
    if not isinstance(body, dict) or set(body) - {"create", "update", "delete", "_reason"}:
        raise ApiError(400, "bad_request", "A batch is an object with create, update and delete lists.")
    ops = []
    for kind in ("create", "update", "delete"):
        items = body.get(kind, [])
        if not isinstance(items, list):
            raise validation_error(field_error(kind, "invalid_type", "Must be a list."))
        ops += [(kind, i, item) for i, item in enumerate(items)]
    if not ops or len(ops) > MAX_BATCH_OPS:
        raise ApiError(400, "bad_request", f"A batch holds 1 to {MAX_BATCH_OPS} operations.")
    return ops


def _batch_one(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    ctx: WriteContext,
    kind: str,
    index: int,
    item: Any,
) -> Any:
    try:
        if kind == "create":
            return create_record(conn, registry, collection, ctx, item)
        if kind == "update":
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise validation_error(field_error("id", "required", "Each update names the record's id."))
            body = {k: v for k, v in item.items() if k != "id"}
            return update_record(conn, registry, collection, ctx, item["id"], body)
        return delete_record(conn, registry, collection, ctx, item)
    except ApiError as exc:
        prefix = f"{kind}.{index}"
        fields = {f"{prefix}.{k}": v for k, v in exc.fields.items()} or field_error(
            prefix, exc.code, exc.message
        )
        raise ApiError(exc.status, exc.code, f"Operation {prefix} failed: {exc.message}", fields) from None


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
    return bool(
        fetch_value(
            conn,
            f"SELECT EXISTS (SELECT 1 FROM {quote_ident(collection.table)} AS {ALIAS}{where})",
            all_params,
        )
    )
