"""The record write pipeline and the record read queries — the one place every record goes through.

Write: validate (schema) → field access → rules (create: against the new values, as a CTE; update:
the stored row and the result) → hooks before_* → ONE transaction { references checked in the
caller's account, INSERT/UPDATE/DELETE … RETURNING, audit entry } → commit → after-commit effects
(hooks after_*, realtime). REST, batch and the in-process API of hooks all call these functions.

Read: one SELECT per request with the tenant scope, the rule and the client's filter compiled into
its WHERE clause; `expand` costs one query per expanded field (never one per row).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apsw
import msgspec

from snackbase import audit
from snackbase.collections import Registry
from snackbase.db import fetch_all, fetch_value, write_transaction
from snackbase.errors import ApiError, FieldErrors, field_error, validation_error
from snackbase.filter import FilterError, compile_filter, parse_sort
from snackbase.hooks import hooks
from snackbase.ids import uuid7
from snackbase.pii import check_write_access, hidden_fields, present
from snackbase.rules import ALIAS, Caller, RecordResolver, filter_clause, rule_clause
from snackbase.schema import SYSTEM_FIELDS, Collection, quote_ident
from snackbase.times import now_iso

MAX_PER_PAGE = 500
MAX_EXPAND_DEPTH = 3
MAX_BATCH_OPS = 100
# Write-pipeline seams: called with (conn, event) inside the transaction (audit) or after commit.
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
    """What the in-transaction listeners (the audit trail) receive for each record change."""

    action: str  # record.create | record.update | record.delete
    collection: Collection
    account_id: str
    record_id: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    ctx: WriteContext


WriteListener = Callable[[apsw.Connection, WriteEvent], None]
write_listeners: list[WriteListener] = []
# Called after commit with the event (hooks after_*, realtime publish).
commit_listeners: list[WriteListener] = []


@dataclass
class ListQuery:
    filter: str = ""
    sort: str = ""
    fields: list[str] | None = None
    expand: list[str] = field(default_factory=list)
    page: int = 1
    per_page: int = 30
    skip_total: bool = False
    after: str | None = None  # None: offset paging; "" or a cursor: cursor paging


# --- scope --------------------------------------------------------------------------------------


def _scope(caller: Caller) -> tuple[str, list[Any]]:
    if caller.account_id is None:
        if not caller.is_superadmin:
            raise ApiError(
                401, "unauthorized", "Authenticate, or name an account with the X-Account-ID header."
            )
        return "", []
    return f"{ALIAS}.account_id = ?", [caller.account_id]


def _where(*clauses: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
    parts = [sql for sql, _ in clauses if sql]
    params = [p for _, ps in clauses for p in ps]
    return (" WHERE " + " AND ".join(f"({p})" for p in parts) if parts else ""), params


# --- reads --------------------------------------------------------------------------------------


def get_record(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    record_id: str,
    fields: list[str] | None = None,
    expand: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    resolver = RecordResolver(collection, caller)
    where, params = _where(
        _scope(caller), rule_clause(collection, "view", resolver), (f"{ALIAS}.id = ?", [record_id])
    )
    rows = fetch_all(conn, f"SELECT * FROM {quote_ident(collection.table)} AS {ALIAS}{where}", params)
    if not rows:
        raise ApiError(404, "not_found", "The record was not found.")
    records = present(collection, caller, "view", [registry.validator(collection).to_json(rows[0])])
    expand_records(conn, registry, collection, caller, records, expand)
    return project(records, fields)[0]


def list_records(
    conn: apsw.Connection, registry: Registry, collection: Collection, caller: Caller, query: ListQuery
) -> dict[str, Any]:
    query = hooks.record_list(collection, caller, query)
    clauses = [_scope(caller), rule_clause(collection, "list", RecordResolver(collection, caller))]
    resolver = RecordResolver(collection, caller, hidden=hidden_fields(collection, caller, "list"))
    if query.filter.strip():
        clauses.append(filter_clause(query.filter, resolver))
    check_projection(collection, query.fields)
    check_expand(registry, conn, collection, query.expand)
    if query.after is not None:
        return _cursor_page(conn, registry, collection, caller, query, resolver, clauses)
    where, params = _where(*clauses)
    table = f"{quote_ident(collection.table)} AS {ALIAS}"
    order = _order_by(query.sort, resolver)
    offset = (query.page - 1) * query.per_page
    rows = fetch_all(
        conn,
        f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, query.per_page, offset],
    )
    items = _to_json(conn, registry, collection, caller, rows, query)
    total = -1 if query.skip_total else int(fetch_value(conn, f"SELECT count(*) FROM {table}{where}", params))
    pages = -1 if query.skip_total else (total + query.per_page - 1) // query.per_page
    return {
        "items": items,
        "page": query.page,
        "per_page": query.per_page,
        "total_items": total,
        "total_pages": pages,
    }


def _to_json(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    rows: list[dict[str, Any]],
    query: ListQuery,
) -> list[dict[str, Any]]:
    to_json = registry.validator(collection).to_json
    records = present(collection, caller, "list", [to_json(row) for row in rows])
    expand_records(conn, registry, collection, caller, records, query.expand)
    return project(records, query.fields)


def _sort_keys(sort: str) -> list[tuple[str, bool]]:
    if not sort.strip():
        return [("id", False)]
    try:
        keys = parse_sort(sort)
    except FilterError as exc:
        raise ApiError(
            400, "invalid_sort", f"Invalid sort: {exc}.", field_error("sort", "invalid_sort", str(exc))
        ) from None
    # `id` makes the order total; it follows the last key's direction so that an index on
    # (account_id, key, id) can serve the whole ORDER BY.
    return keys if any(name == "id" for name, _ in keys) else [*keys, ("id", keys[-1][1])]


def _order_by(sort: str, resolver: RecordResolver) -> str:
    parts = []
    for name, desc in _sort_keys(sort):
        try:
            expr = resolver.field(name, 0)
        except FilterError as exc:
            raise ApiError(
                400,
                "invalid_sort",
                f"Invalid sort: {exc.message}.",
                field_error("sort", "invalid_sort", exc.message),
            ) from None
        parts.append(f"{expr} {'DESC' if desc else 'ASC'}")
    return ", ".join(parts)


# --- cursor paging ------------------------------------------------------------------------------
# The cursor holds the sort values of the last row; the next page is every row strictly after it in
# the (total, because `id` ends every sort) order, so each row is visited once even while inserting.

_cursor_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(list[Any])


def _encode_cursor(sort: str, row: dict[str, Any], keys: list[tuple[str, bool]]) -> str:
    raw = _cursor_encoder.encode([sort, *(row[name] for name, _ in keys)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str, count: int) -> list[Any]:
    try:
        values = _cursor_decoder.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, msgspec.DecodeError):
        values = []
    if len(values) != count + 1 or values[0] != sort:
        raise ApiError(
            400, "invalid_cursor", "The cursor is not valid for this query; start again with after=."
        )
    return values[1:]


def _after_clause(
    keys: list[tuple[str, bool]], values: list[Any], resolver: RecordResolver
) -> tuple[str, list[Any]]:
    """(k1 after v1) OR (k1 IS v1 AND k2 after v2) OR … with SQLite's NULL order (NULLs sort first)."""
    ors, params = [], []
    for i, (name, desc) in enumerate(keys):
        ands, ps = [], []
        for prior, value in zip(keys[:i], values[:i], strict=True):
            ands.append(f"{resolver.field(prior[0], 0)} IS ?")
            ps.append(value)
        after_sql, after_params = _after_one(resolver.field(name, 0), values[i], desc)
        ors.append("(" + " AND ".join([*ands, after_sql]) + ")")
        params += ps + after_params
    return " OR ".join(ors), params


def _after_one(expr: str, value: Any, desc: bool) -> tuple[str, list[Any]]:
    if value is None:
        return ("0", []) if desc else (f"{expr} IS NOT NULL", [])
    if desc:
        return f"({expr} < ? OR {expr} IS NULL)", [value]
    return f"{expr} > ?", [value]


def _cursor_page(
    conn: apsw.Connection,
    registry: Registry,
    collection: Collection,
    caller: Caller,
    query: ListQuery,
    resolver: RecordResolver,
    clauses: list[tuple[str, list[Any]]],
) -> dict[str, Any]:
    keys = _sort_keys(query.sort)
    if query.after:
        clauses = [
            *clauses,
            _after_clause(keys, _decode_cursor(query.after, query.sort, len(keys)), resolver),
        ]
    where, params = _where(*clauses)
    sql = (
        f"SELECT * FROM {quote_ident(collection.table)} AS {ALIAS}{where} "
        f"ORDER BY {_order_by(query.sort, resolver)} LIMIT ?"
    )
    rows = fetch_all(conn, sql, [*params, query.per_page + 1])
    more = len(rows) > query.per_page
    rows = rows[: query.per_page]
    cursor = _encode_cursor(query.sort, rows[-1], keys) if more else None
    return {"items": _to_json(conn, registry, collection, caller, rows, query), "next_cursor": cursor}


# --- projection and expansion -------------------------------------------------------------------


def check_projection(collection: Collection, fields: list[str] | None) -> None:
    for name in fields or ():
        if name not in collection.field_map and name not in SYSTEM_FIELDS and name != "expand":
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
            if f is None or f.type != "reference":
                raise ApiError(
                    400,
                    "bad_request",
                    f"Cannot expand '{path[:64]}': '{part[:64]}' is not a reference field.",
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
    """Attaches referenced records under record["expand"][field]; each passes its own view rule."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        groups.setdefault(head, [])
        if rest:
            groups[head].append(rest)
    for name, nested in groups.items():
        target = registry.get(conn, collection.field_map[name].options["collection"])
        ids = sorted({r[name] for r in records if isinstance(r.get(name), str)})
        found = _viewable_by_id(conn, registry, target, caller, ids)
        expand_records(conn, registry, target, caller, list(found.values()), nested)
        for record in records:
            if record.get(name) in found:
                record.setdefault("expand", {})[name] = found[record[name]]


def _viewable_by_id(
    conn: apsw.Connection, registry: Registry, target: Collection, caller: Caller, ids: list[str]
) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    try:
        rule = rule_clause(target, "view", RecordResolver(target, caller))
    except ApiError:  # the caller may not view that collection at all: nothing is expanded
        return {}
    marks = ", ".join("?" * len(ids))
    where, params = _where(_scope(caller), rule, (f"{ALIAS}.id IN ({marks})", ids))
    rows = fetch_all(conn, f"SELECT * FROM {quote_ident(target.table)} AS {ALIAS}{where}", params)
    to_json = registry.validator(target).to_json
    return {r["id"]: r for r in present(target, caller, "view", [to_json(row) for row in rows])}


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
    """In the write's transaction: the audit entry, then other listeners; after commit: the rest."""
    pii = {f.name: f.mask or "full" for f in event.collection.fields if f.pii}
    audit.append(
        conn, account_id=event.account_id, actor=event.ctx.actor, action=event.action,
        collection=event.collection.name, record_id=event.record_id,
        changes=audit.diff(event.old, event.new, pii=pii),
        reason=event.ctx.reason, meta=event.ctx.meta,
    )  # fmt: skip
    for listener in write_listeners:
        listener(conn, event)
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
    columns = ", ".join(quote_ident(c) for c in row)
    marks = ", ".join("?" * len(row))
    sql = f"INSERT INTO {quote_ident(collection.table)} ({columns}) VALUES ({marks}) RETURNING *"
    return fetch_all(conn, sql, list(row.values()))[0]


def _stored_for(
    conn: apsw.Connection, collection: Collection, caller: Caller, op: str, record_id: str
) -> dict[str, Any]:
    """The stored row if it is in the caller's scope and passes the `op` rule; 404 otherwise."""
    if not isinstance(record_id, str):
        raise validation_error(field_error("id", "invalid_type", "The id must be text."))
    resolver = RecordResolver(collection, caller)
    where, params = _where(
        _scope(caller), rule_clause(collection, op, resolver), (f"{ALIAS}.id = ?", [record_id])
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
    assignments = ", ".join(f"{quote_ident(c)} = ?" for c in changes)
    sql = f"UPDATE {quote_ident(collection.table)} SET {assignments} WHERE id = ? RETURNING *"
    return fetch_all(conn, sql, [*changes.values(), record_id])[0]


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
    where, all_params = _where(
        (f"{ALIAS}.id = ?", [record_id]), (f"{ALIAS}.account_id = ?", [caller.account_id]), (clause, params)
    )
    return bool(
        fetch_value(
            conn,
            f"SELECT EXISTS (SELECT 1 FROM {quote_ident(collection.table)} AS {ALIAS}{where})",
            all_params,
        )
    )
