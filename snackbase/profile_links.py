"""Deleting what users' profiles reference (snackbase.profiles `reference` and `user` fields).

Called from `snackbase.cascade` inside the delete's unit of work, for every record (or user) a delete
takes down: `restrict` (the default) refuses with 409 `record_in_use` naming `users.<field>`;
`set_null` clears the value with one `user.profile_update` audit entry per profile, whose
`extra.cascade` names the deleted record. Profile references offer no `cascade`: a profile cannot go
without its user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import apsw
import msgspec

from snackbase import audit, profiles
from snackbase.db import fetch_all
from snackbase.errors import ApiError
from snackbase.schema import Collection, Field, quote_ident
from snackbase.times import now_iso

if TYPE_CHECKING:
    from snackbase.collections import Registry
    from snackbase.record_changes import WriteContext

_json = msgspec.json.Encoder(order="sorted")


# --- deleting what profiles reference -----------------------------------------------------------


def before_delete(
    conn: apsw.Connection,
    registry: Registry,
    target: str | None,
    ids: list[str],
    ctx: WriteContext,
    reason: str | None,
) -> None:
    """Deleting records of `target` (None: users) that profiles reference: `restrict` refuses (409
    `record_in_use` naming the profile field), `set_null` clears the value — each changed profile with
    its own `user.profile_update` audit entry whose `extra.cascade` names the deleted record."""
    # Most deletes touch nothing here: first the definitions that could point at `target` at all
    # (stored with sorted keys and no spaces, so the text test is exact enough to narrow the search).
    needle = '"type":"user"' if target is None else f'"collection":{_json.encode(target).decode()}'
    candidates = fetch_all(
        conn, "SELECT account_id FROM profile_schemas WHERE instr(definition, ?) > 0", (needle,)
    )
    if not candidates:
        return
    table = "users" if target is None else quote_ident(registry.get(conn, target).table)
    accounts = fetch_all(
        conn,
        f"SELECT DISTINCT account_id FROM {table} WHERE id IN (SELECT value FROM json_each(?))",
        (_json.encode(ids).decode(),),
    )
    wanted = {r["account_id"] for r in candidates}
    for account_id in sorted(r["account_id"] for r in accounts if r["account_id"] in wanted):
        collection = profiles.load(conn, account_id)
        pointing = [f for f in collection.fields if _points_at(f, target)]
        for f in pointing:
            if f.options.get("on_delete", "restrict") == "restrict" and _holders(conn, account_id, f, ids):
                what = "user" if target is None else "record"
                message = (f"Users' profiles still reference this {what} through '{f.name}' "
                           "(on_delete: restrict); change those profiles first.")  # fmt: skip
                why = {f"users.{f.name}": {"code": "record_in_use", "message": "Still referenced."}}
                raise ApiError(409, "record_in_use", message, why)
        for f in pointing:
            for row in _holders(conn, account_id, f, ids):
                _clear(conn, collection, account_id, row, f, target, ctx, reason)


def _points_at(f: Field, target: str | None) -> bool:
    if target is None:
        return f.type == "user"
    return f.type == "reference" and f.options.get("collection") == target


def _holders(conn: apsw.Connection, account_id: str, f: Field, ids: list[str]) -> list[dict[str, Any]]:
    """The account's stored profiles whose field `f` names one of `ids`."""
    if isinstance(conn, apsw.Connection):
        return fetch_all(conn, _HOLDERS, (account_id, f"$.{f.name}", _json.encode(ids).decode()))
    return fetch_all(conn, _HOLDERS_POSTGRES, (account_id, f.name, _json.encode(ids).decode()))


_HOLDERS = (
    "SELECT p.user_id, p.data FROM user_profiles AS p JOIN users AS u ON u.id = p.user_id "
    "WHERE u.account_id = ? AND p.data ->> ? IN (SELECT value FROM json_each(?))"
)
# The data is JSON text on both engines; PostgreSQL reads a key of it as jsonb, by name (no `$.`).
_HOLDERS_POSTGRES = (
    "SELECT p.user_id, p.data FROM user_profiles AS p JOIN users AS u ON u.id = p.user_id "
    "WHERE u.account_id = ? AND p.data::jsonb ->> ? IN (SELECT value FROM json_each(?))"
)


def _clear(
    conn: apsw.Connection,
    collection: Collection,
    account_id: str,
    row: dict[str, Any],
    f: Field,
    target: str | None,
    ctx: WriteContext,
    reason: str | None,
) -> None:
    old = msgspec.json.decode(row["data"])
    new = {**old, f.name: None}
    conn.execute(
        "UPDATE user_profiles SET data = ?, updated_at = ? WHERE user_id = ?",
        (_json.encode(new).decode(), now_iso(), row["user_id"]),
    )
    cause = {"collection": target or "users", "record_id": old[f.name], "on_delete": "set_null"}
    pii = {p.name: p.mask or "full" for p in collection.fields if p.pii}
    audit.append(
        conn, account_id=account_id, actor=ctx.actor, action="user.profile_update", collection="users",
        record_id=row["user_id"], changes=audit.diff(old, new, pii=pii), reason=reason, meta=ctx.meta,
        extra={"cascade": cause},
    )  # fmt: skip
