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
account). Profiles reach callers only through the presenter (`present_profiles`,
`present_profile_rows`: GET /profiles and /profiles/{id}, and `expand` of `user` fields).

File fields (an avatar) are written like a record's: `files.resolve` turns uploads and kept names into
the value inside the write, and `files.track` keeps storage in step with the profile's unit of work
(and with the user's delete, and with a file field dropped from the definition). `reference` and `user`
fields name one record (user) of the profile's own account; deleting what they name is
`snackbase.profile_links`'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import apsw
import msgspec

from snackbase import audit, audit_views, files
from snackbase.backends import dialect
from snackbase.collection_defs import field_to_json, new_collection, parse_collection_body
from snackbase.db import fetch_all, fetch_one, fetch_value
from snackbase.errors import ApiError, FieldErrors, field_error, validation_error
from snackbase.field_types import RecordValidator
from snackbase.filter import FilterError
from snackbase.listing import (
    Paging,
    after_clause,
    decode_cursor,
    encode_cursor,
    offset_page,
    order_sql,
    sort_keys,
)
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
from snackbase.schema import FK_TYPES, Collection, Field, is_multi_reference, quote_ident
from snackbase.times import now_iso
from snackbase.unit_of_work import Work, unit_of_work

if TYPE_CHECKING:
    from snackbase.collections import Registry

PROFILE_TYPES: Final = (
    "text", "number", "boolean", "email", "url", "date", "datetime", "select", "json",
    "file", "reference", "user",
)  # fmt: skip
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
    registry: Registry,
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
    _check_links(conn, registry, new)
    stored = {k: v for k, v in to_json(new).items() if k != "updated_at"}
    with unit_of_work(conn) as work:
        _drop_removed_files(conn, work, account_id, old, new)
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


def _check_links(conn: apsw.Connection, registry: Registry, collection: Collection) -> None:
    """Profile references name an existing collection, one record each; deleting what a profile
    references is refused (`restrict`, the default) or clears the value (`set_null`), see
    `before_delete`."""
    for i, f in enumerate(collection.fields):
        if f.type not in FK_TYPES:
            continue
        if f.options.get("on_delete") not in ("restrict", "set_null"):
            raise validation_error(field_error(f"fields.{i}.options.on_delete", "invalid_option",
                                               "Profile references take restrict or set_null."))  # fmt: skip
        if f.type == "reference":
            if is_multi_reference(f):
                raise validation_error(field_error(f"fields.{i}.options.max_select", "invalid_option",
                                                   "A profile reference names one record."))  # fmt: skip
            try:
                registry.get(conn, f.options["collection"])
            except ApiError:
                raise validation_error(field_error(f"fields.{i}.options.collection", "invalid_option",
                                                   "No collection of this name."))  from None  # fmt: skip


def _check_references(
    conn: apsw.Connection, registry: Registry, collection: Collection, values: dict[str, Any], account_id: str
) -> None:
    """A profile reference names a record (or user) of the profile's OWN account."""
    errors: FieldErrors = {}
    for name, value in values.items():
        f = collection.field_map[name]
        if value is None or f.type not in FK_TYPES:
            continue
        table = (
            "users" if f.type == "user" else quote_ident(registry.get(conn, f.options["collection"]).table)
        )
        if (
            fetch_one(conn, f"SELECT 1 FROM {table} WHERE id = ? AND account_id = ?", (value, account_id))
            is None
        ):
            errors.update(field_error(name, "reference_not_found", "No such record in this account."))
    if errors:
        raise validation_error(errors)


def _drop_removed_files(
    conn: apsw.Connection, work: Work, account_id: str, old: Collection, new: Collection
) -> None:
    """Files of file fields the new definition no longer has (or now types otherwise) are deleted
    with the change, and their bytes leave the account's usage (snackbase.files)."""
    kept = {f.name for f in new.fields if f.type == "file"}
    gone = [f.name for f in old.fields if f.type == "file" and f.name not in kept]
    if not gone:
        return
    for row in _stored_profiles(conn, account_id):
        data = msgspec.json.decode(row["data"])
        if any(data.get(name) for name in gone):
            files.track(conn, work, old, account_id, data, {k: v for k, v in data.items() if k not in gone})


def _stored_profiles(conn: apsw.Connection, account_id: str) -> list[dict[str, Any]]:
    return fetch_all(
        conn,
        "SELECT p.user_id, p.data FROM user_profiles AS p JOIN users AS u ON u.id = p.user_id "
        "WHERE u.account_id = ?",
        (account_id,),
    )


# --- reading --------------------------------------------------------------------------------------


def profile_table(collection: Collection) -> str:
    """`users` with each profile field as a column (names validated by the schema: safe as text)."""
    # JSON fields and multiple selects stay JSON text, the others are SQL values (text, numbers, 0/1):
    # SQLite's `->` and `->>`, PostgreSQL's casts of the same (backends/dialect.py, `json_field`).
    sql = dialect.current.get()
    columns = "".join(
        f', {dialect.json_field(sql, "p.data", f.name, _json_kind(f))} AS "{f.name}"'
        for f in collection.fields
    )
    return (
        "(SELECT u.id AS id, u.account_id AS account_id, u.created_at AS created_at, NULL AS created_by, "
        f"coalesce(p.updated_at, u.updated_at) AS updated_at, NULL AS updated_by{columns} "
        "FROM users AS u LEFT JOIN user_profiles AS p ON p.user_id = u.id)"
    )


def _json_kind(f: Field) -> str:
    if f.type in ("json", "file") or (f.type == "select" and bool(f.options.get("multiple"))):
        return "json"
    return f.type if f.type in ("number", "boolean") else "text"


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
    names = sort_keys(query.sort)
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


class ProfileQuery(msgspec.Struct, frozen=True):
    filter: str
    sort: str
    paging: Paging


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
    registry: Registry,
    uploads: list[files.Staged] | None = None,
) -> None:
    """Changes some of a user's profile values: the user itself or an admin of its account. `uploads`
    are the files of a multipart request, already in storage (files.write_with_uploads)."""
    user = check_writer(conn, caller, user_id)
    collection = load(conn, user["account_id"])
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The profile must be a JSON object.")
    validator = RecordValidator(collection)
    with unit_of_work(conn) as work:
        row = fetch_one(conn, "SELECT data FROM user_profiles WHERE user_id = ?", (user_id,))
        old = msgspec.json.decode(row["data"]) if row else {}
        # File fields take uploads and names of the files the profile holds (snackbase.files).
        resolved = files.resolve(collection, body, old, uploads or [])
        values = validator.to_json(validator.validate(resolved, mode="update"))
        check_write_access(collection, caller, "update", list(resolved))
        _check_references(conn, registry, collection, values, user["account_id"])
        new = {**old, **values}
        if new == old:
            return
        conn.execute(
            "INSERT INTO user_profiles (user_id, data, updated_at) VALUES (?, ?, ?) ON CONFLICT (user_id) "
            "DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            (user_id, _json.encode(new).decode(), now_iso()),
        )
        pii = collection.pii_kinds
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
        # Uploads kept, replaced or removed files deleted after COMMIT, the account's usage counted.
        files.track(conn, work, collection, user["account_id"], old, new)


def check_writer(conn: apsw.Connection, caller: Caller, user_id: str) -> dict[str, Any]:
    """The user whose profile the caller may change (itself, or as an account admin); 404 / 403."""
    user = fetch_one(conn, "SELECT id, account_id FROM users WHERE id = ?", (user_id,))
    same_account = user is not None and (caller.is_superadmin or user["account_id"] == caller.account_id)
    if user is None or not same_account:
        raise ApiError(404, "not_found", "No user with this id.")
    if caller.user_id != user_id and not caller.is_account_admin:
        raise ApiError(403, "forbidden", "Only the user or an account admin may change a profile.")
    return user


# --- deleting a user -----------------------------------------------------------------------------


def before_user_delete(conn: apsw.Connection, work: Work, user_id: str) -> None:
    """In the unit of work deleting a user (its profile goes with it, a foreign key): the profile's
    files are deleted after COMMIT and leave the account's usage."""
    row = fetch_one(
        conn,
        "SELECT u.account_id, p.data FROM user_profiles AS p JOIN users AS u ON u.id = p.user_id "
        "WHERE p.user_id = ?",
        (user_id,),
    )
    if row is not None:
        files.track(conn, work, load(conn, row["account_id"]), row["account_id"],
                    msgspec.json.decode(row["data"]), None)  # fmt: skip
