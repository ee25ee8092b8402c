"""User profile fields: an account's own fields on its users (display name, title, phone …), who may
read them (a view rule over the profiles) and which fields (field access and PII masks).

Each account's definition is one row of `profile_schemas`; each user's values are one JSON object in
`user_profiles`. To rules, field access and masks a profile is a record of a collection named `users`
with the profile fields and the system fields: the definition becomes a `Collection`, and its rows
come from `profile_table`, a derived table over `users` (never its password hash, email or role) that
puts every profile field in a column — so the view rule compiles with the ordinary resolver into the
one query that reads the profiles, exactly as a collection's rules do.

Who reads a profile: its own user, the account's admins and superadmins always; anyone else of the
account as the view rule allows (`null`, the default: nobody else; `""`: everyone who names the
account). Profiles reach callers only through `snackbase.presenter.present_profiles` (GET
/profiles/{id}, and `expand` of `user` fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import apsw
import msgspec

from snackbase import audit, audit_views
from snackbase.collection_defs import field_to_json, new_collection, parse_collection_body
from snackbase.db import fetch_all, fetch_one, fetch_value
from snackbase.errors import ApiError, field_error, validation_error
from snackbase.field_types import RecordValidator
from snackbase.filter import FilterError, parse_sort
from snackbase.listing import Paging, after_clause, decode_cursor, encode_cursor, offset_page, order_sql
from snackbase.macros import param_counts
from snackbase.pii import check_write_access, hidden_fields
from snackbase.rules import (
    ALIAS,
    Caller,
    RecordResolver,
    check_rules,
    filter_clause,
    rule_clause,
    scope_clause,
    where_clause,
)
from snackbase.schema import Collection, Field
from snackbase.times import now_iso
from snackbase.unit_of_work import unit_of_work

PROFILE_TYPES: Final = ("text", "number", "boolean", "email", "url", "date", "datetime", "select", "json")
MAX_PROFILE_FIELDS: Final = 50
_json = msgspec.json.Encoder(order="sorted")


# --- the definition -------------------------------------------------------------------------------


def load(conn: apsw.Connection, account_id: str) -> Collection:
    """The account's profile definition as a collection named `users` (no fields when none is saved)."""
    row = fetch_one(
        conn, "SELECT definition, updated_at FROM profile_schemas WHERE account_id = ?", (account_id,)
    )
    definition = msgspec.json.decode(row["definition"]) if row else {}
    return _collection(account_id, definition, row["updated_at"] if row else "")


def _collection(account_id: str, definition: dict[str, Any], updated_at: str) -> Collection:
    body = {
        "name": "profiles",  # any valid name: parse_collection_body validates the rest
        "fields": definition.get("fields", []),
        "rules": {"view": definition.get("view_rule")},
        "field_access": definition.get("field_access", {}),
    }
    parsed = parse_collection_body(body)
    return msgspec.structs.replace(
        new_collection(parsed, id=f"profiles:{account_id}", now=updated_at), name="users"
    )


def to_json(collection: Collection) -> dict[str, Any]:
    return {
        "fields": [field_to_json(f) for f in collection.fields],
        "view_rule": collection.rules.get("view"),
        "field_access": collection.field_access,
        "updated_at": collection.updated_at or None,
    }


def save(
    conn: apsw.Connection,
    account_id: str,
    body: Any,
    actor: audit.Actor,
    meta: audit.RequestMeta,
    reason: str | None,
) -> Collection:
    """Replaces the account's definition (validated like a collection's) with its audit entry."""
    if not isinstance(body, dict) or set(body) - {"fields", "view_rule", "field_access"}:
        raise ApiError(400, "bad_request", "The body is {fields, view_rule, field_access}.")
    fields = body.get("fields", [])
    if not isinstance(fields, list) or len(fields) > MAX_PROFILE_FIELDS:
        raise validation_error(
            field_error("fields", "invalid_type", f"A list of at most {MAX_PROFILE_FIELDS} fields.")
        )
    for i, f in enumerate(fields):
        if isinstance(f, dict) and f.get("type") not in PROFILE_TYPES:
            allowed = ", ".join(PROFILE_TYPES)
            raise validation_error(
                field_error(f"fields.{i}.type", "invalid_value", f"Profile fields are: {allowed}.")
            )
    old = load(conn, account_id)
    now = now_iso()
    new = _collection(account_id, body, now)
    check_rules(msgspec.structs.replace(new, rules={"view": new.rules.get("view")}), param_counts(conn))
    stored = {k: v for k, v in to_json(new).items() if k != "updated_at"}
    with unit_of_work(conn):
        conn.execute(
            "INSERT INTO profile_schemas (account_id, definition, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (account_id) DO UPDATE SET definition = excluded.definition, "
            "updated_at = excluded.updated_at",
            (account_id, _json.encode(stored).decode(), now),
        )
        before = {k: v for k, v in to_json(old).items() if k != "updated_at"}
        audit.append(
            conn,
            account_id=account_id,
            actor=actor,
            action="profile_schema.update",
            collection="users",
            changes=audit.diff(before, stored),
            reason=reason,
            meta=meta,
        )
    return new


# --- reading --------------------------------------------------------------------------------------


def profile_table(collection: Collection) -> str:
    """`users` with each profile field as a column (names validated by the schema: safe as text)."""
    # `->` keeps JSON (json fields, multiple selects), `->>` gives SQL values (text, numbers, 0/1).
    columns = "".join(
        f", p.data {'->' if _is_json(f) else '->>'} '$.{f.name}' AS \"{f.name}\"" for f in collection.fields
    )
    return (
        "(SELECT u.id AS id, u.account_id AS account_id, u.created_at AS created_at, NULL AS created_by, "
        f"coalesce(p.updated_at, u.updated_at) AS updated_at, NULL AS updated_by{columns} "
        "FROM users AS u LEFT JOIN user_profiles AS p ON p.user_id = u.id)"
    )


def _is_json(f: Field) -> bool:
    return f.type == "json" or (f.type == "select" and bool(f.options.get("multiple")))


def view_clause(collection: Collection, caller: Caller, alias: str = ALIAS) -> tuple[str, list[object]]:
    """Which profiles (the derived table as `alias`) the caller reads: its own, all for admins, else
    the view rule's."""
    if caller.is_account_admin:
        return "", []
    try:
        sql, params = rule_clause(collection, "view", RecordResolver(collection, caller, alias=alias))
    except ApiError:  # null rule: only oneself
        return (f"{alias}.id = ?", [caller.user_id]) if caller.user_id else ("0", [])
    if not sql:
        return "", []
    if caller.user_id is None:
        return sql, params
    return f"({sql}) OR {alias}.id = ?", [*params, caller.user_id]


def visible_rows(
    conn: apsw.Connection, caller: Caller, ids: list[str]
) -> list[tuple[Collection, list[dict[str, Any]]]]:
    """The stored profiles among `ids` the caller may read, per account (one query per account)."""
    if not ids:
        return []
    rows = fetch_all(
        conn,
        "SELECT DISTINCT account_id FROM users WHERE id IN (SELECT value FROM json_each(?))",
        (_json.encode(sorted(set(ids))).decode(),),
    )
    out = []
    for account in sorted(r["account_id"] for r in rows):
        if caller.account_id is not None and account != caller.account_id:
            continue  # another tenant's users are never read
        collection = load(conn, account)
        where, params = where_clause(
            scope_clause(caller),
            (f"{ALIAS}.account_id = ?", [account]),
            view_clause(collection, caller),
            (f"{ALIAS}.id IN (SELECT value FROM json_each(?))", [_json.encode(sorted(set(ids))).decode()]),
        )
        found = fetch_all(conn, f"SELECT * FROM {profile_table(collection)} AS {ALIAS}{where}", params)
        out.append((collection, [RecordValidator(collection).to_json(r) for r in found]))
    return out


def list_page(
    conn: apsw.Connection, caller: Caller, account_id: str, query: ProfileQuery
) -> tuple[Collection, dict[str, Any]]:
    """One page of the account's profiles the caller may read (the view rule, as for one profile),
    filtered and sorted on the profile fields it may read in clear; by offset or cursor (listing.py).
    The items are stored values in JSON form: the caller shows them through the presenter."""
    collection = load(conn, account_id)
    resolver = RecordResolver(collection, caller, hidden=hidden_fields(collection, caller, "view"))
    clauses = [scope_clause(caller), (f"{ALIAS}.account_id = ?", [account_id])]
    if query.filter.strip():
        clauses.append(filter_clause(query.filter, resolver))
    clauses.append(view_clause(collection, caller))
    names = _sort_keys(query.sort)
    keys = [(_sort_expr(resolver, name), desc) for name, desc in names]
    table = f"{profile_table(collection)} AS {ALIAS}"
    paging, to_json = query.paging, RecordValidator(collection).to_json
    if paging.after is None:
        where, params = where_clause(*clauses)
        sql = f"SELECT {ALIAS}.* FROM {table}{where} ORDER BY {order_sql(keys)} LIMIT ? OFFSET ?"
        rows = fetch_all(conn, sql, [*params, paging.per_page, (paging.page - 1) * paging.per_page])
        count = f"SELECT count(*) FROM {table}{where}"
        items = [to_json(r) for r in rows]
        return collection, offset_page(items, paging, lambda: int(fetch_value(conn, count, params)))
    if paging.after:
        clauses.append(after_clause(keys, decode_cursor(paging.after, query.sort, len(keys))))
    where, params = where_clause(*clauses)
    rows = fetch_all(conn, f"SELECT {ALIAS}.* FROM {table}{where} ORDER BY {order_sql(keys)} LIMIT ?",
                     [*params, paging.per_page + 1])  # fmt: skip
    more = len(rows) > paging.per_page
    rows = rows[: paging.per_page]
    cursor = encode_cursor(query.sort, [rows[-1][name] for name, _ in names]) if more else None
    return collection, {"items": [to_json(r) for r in rows], "next_cursor": cursor}


@dataclass(frozen=True, slots=True)
class ProfileQuery:
    filter: str
    sort: str
    paging: Paging


def _sort_keys(sort: str) -> list[tuple[str, bool]]:
    """The sort's names, `id` last so that the order is total (a cursor needs it)."""
    if not sort.strip():
        return [("id", False)]
    try:
        keys = parse_sort(sort)
    except FilterError as exc:
        raise ApiError(
            400, "invalid_sort", f"Invalid sort: {exc}.", field_error("sort", "invalid_sort", str(exc))
        ) from None
    return keys if any(name == "id" for name, _ in keys) else [*keys, ("id", keys[-1][1])]


def _sort_expr(resolver: RecordResolver, name: str) -> str:
    try:
        if "." in name:  # a profile has no references to walk
            raise FilterError(f"unknown field '{name[:64]}'", 0)
        return resolver.field(name, 0)
    except FilterError as exc:
        raise ApiError(400, "invalid_sort", f"Invalid sort: {exc.message}.",
                       field_error("sort", "invalid_sort", exc.message)) from None  # fmt: skip


# --- writing --------------------------------------------------------------------------------------


def update(
    conn: apsw.Connection,
    caller: Caller,
    user_id: str,
    body: Any,
    meta: audit.RequestMeta,
    reason: str | None,
) -> None:
    """Changes some of a user's profile values: the user itself or an admin of its account."""
    user = fetch_one(conn, "SELECT id, account_id FROM users WHERE id = ?", (user_id,))
    same_account = user is not None and (caller.is_superadmin or user["account_id"] == caller.account_id)
    if user is None or not same_account:
        raise ApiError(404, "not_found", "No user with this id.")
    if caller.user_id != user_id and not caller.is_account_admin:
        raise ApiError(403, "forbidden", "Only the user or an account admin may change a profile.")
    collection = load(conn, user["account_id"])
    validator = RecordValidator(collection)
    values = validator.to_json(validator.validate(body, mode="update"))
    check_write_access(collection, caller, "update", list(values))
    with unit_of_work(conn):
        row = fetch_one(conn, "SELECT data FROM user_profiles WHERE user_id = ?", (user_id,))
        old = msgspec.json.decode(row["data"]) if row else {}
        new = {**old, **values}
        if new == old:
            return
        conn.execute(
            "INSERT INTO user_profiles (user_id, data, updated_at) VALUES (?, ?, ?) ON CONFLICT (user_id) "
            "DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            (user_id, _json.encode(new).decode(), now_iso()),
        )
        pii = {f.name: f.mask or "full" for f in collection.fields if f.pii}
        audit.append(
            conn,
            account_id=user["account_id"],
            actor=audit_views.actor_from_auth(caller),
            action="user.profile_update",
            collection="users",
            record_id=user_id,
            changes=audit.diff(old, new, pii=pii),
            reason=reason,
            meta=meta,
        )
