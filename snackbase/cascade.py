"""What deleting a record or a user does to the records that reference it, inside the same unit of work.

SQLite's foreign keys would do `cascade` and `set_null` silently, with no audit entry for the rows they
touch and no new `updated_at`. So the write path does them itself before the DELETE, row by row into
the audit trail (each entry's `extra.cascade` names the record that caused it), and the foreign keys
only stand guard. `restrict` is checked first and answers 409 naming the collection and field, instead
of SQLite's bare constraint error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import apsw
import msgspec

from snackbase import profile_links
from snackbase.db import fetch_all
from snackbase.errors import ApiError
from snackbase.record_changes import Change, WriteContext, record_change
from snackbase.schema import Collection, Field, is_multi_reference, quote_ident
from snackbase.times import now_iso
from snackbase.unit_of_work import Work

if TYPE_CHECKING:
    from snackbase.collections import Registry

USERS = None  # the target name of `user` fields
MAX_DEPTH = 16  # cascades deeper than this are refused rather than walked

_ids_json = msgspec.json.Encoder()


def referencing(
    registry: Registry, conn: apsw.Connection, target: str | None
) -> list[tuple[Collection, Field]]:
    """Every (collection, field) that references collection `target`, or users when `target` is None."""
    found = []
    for collection in registry.all(conn):
        for f in collection.fields:
            points_here = (
                f.type == "reference" and f.options.get("collection") == target
                if target is not None
                else f.type == "user"
            )
            if points_here:
                found.append((collection, f))
    return found


def before_delete(
    conn: apsw.Connection,
    registry: Registry,
    target: str | None,
    ids: list[str],
    ctx: WriteContext,
    work: Work,
    reason: str | None,
) -> None:
    """Refuses (restrict), nulls (set_null) or deletes (cascade) the rows referencing `ids` of `target`
    (a collection name, or None for users), each change with its audit entry."""
    if ids:
        seen = {(target or "users", i) for i in ids}
        _Deletion(conn, registry, ctx, work, reason, seen).referencing(target, ids, 0)


class _Deletion(msgspec.Struct):
    """One delete and everything it cascades to. `seen` holds the rows it already takes down, so a
    reference cycle ends instead of going round."""

    conn: apsw.Connection
    registry: Registry
    ctx: WriteContext
    work: Work
    reason: str | None
    seen: set[tuple[str, str]]

    def referencing(self, target: str | None, ids: list[str], depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ApiError(409, "conflict", f"Deleting this would cascade more than {MAX_DEPTH} levels deep.")
        fields = referencing(self.registry, self.conn, target)
        for collection, f in fields:  # every restrict first: nothing changes if any refuses
            if f.options.get("on_delete", "restrict") == "restrict":
                _refuse_if_referenced(self.conn, collection, f, ids, target)
        # Users' profiles that reference these rows: restrict refuses, set_null clears (audited).
        profile_links.before_delete(self.conn, self.registry, target, ids, self.ctx, self.reason)
        for collection, f in fields:
            on_delete = f.options.get("on_delete", "restrict")
            if is_multi_reference(f) and on_delete != "restrict":
                # A list of ids loses the deleted ones (cascade and set_null alike): the record stays.
                self._remove_ids(collection, f, ids, target, on_delete)
            elif on_delete == "set_null":
                self._set_null(collection, f, ids, target)
            elif on_delete == "cascade":
                self._cascade(collection, f, ids, target, depth)

    def _record(self, action: str, collection: Collection, row: dict[str, Any], old: Any, new: Any,
                cause: dict[str, Any]) -> None:  # fmt: skip
        change = Change(
            action, collection, row["account_id"], row["id"], old, new, self.ctx, self.reason, cause
        )
        record_change(self.conn, self.work, change)

    def _update_sql(self, collection: Collection, f: Field) -> str:
        return (
            f"UPDATE {quote_ident(collection.table)} SET {quote_ident(f.name)} = ?, updated_at = ?, "
            "updated_by = ? WHERE id = ? RETURNING *"
        )

    def _set_null(self, collection: Collection, f: Field, ids: list[str], target: str | None) -> None:
        to_json = self.registry.validator(collection).to_json
        now, user, sql = now_iso(), self.ctx.caller.user_id, self._update_sql(collection, f)
        for row in _referencing_rows(self.conn, collection, f, ids):
            new = fetch_all(self.conn, sql, (None, now, user, row["id"]))[0]
            cause = _cause(target, row[f.name], "set_null")
            self._record("record.update", collection, row, to_json(row), to_json(new), cause)

    def _remove_ids(
        self, collection: Collection, f: Field, ids: list[str], target: str | None, on_delete: str
    ) -> None:
        to_json = self.registry.validator(collection).to_json
        now, user, gone = now_iso(), self.ctx.caller.user_id, set(ids)
        sql = self._update_sql(collection, f)
        for row in _referencing_rows(self.conn, collection, f, ids):
            old = to_json(row)
            kept = [i for i in old[f.name] if i not in gone]
            removed = next(i for i in old[f.name] if i in gone)
            new = fetch_all(self.conn, sql, (_ids_json.encode(kept).decode(), now, user, row["id"]))[0]
            self._record(
                "record.update", collection, row, old, to_json(new), _cause(target, removed, on_delete)
            )

    def _cascade(
        self, collection: Collection, f: Field, ids: list[str], target: str | None, depth: int
    ) -> None:
        rows = [
            r
            for r in _referencing_rows(self.conn, collection, f, ids)
            if (collection.name, r["id"]) not in self.seen
        ]
        if not rows:
            return
        self.seen.update((collection.name, r["id"]) for r in rows)
        self.referencing(collection.name, [r["id"] for r in rows], depth + 1)
        to_json = self.registry.validator(collection).to_json
        delete = f"DELETE FROM {quote_ident(collection.table)} WHERE id = ? RETURNING id"
        for row in rows:
            if self.conn.execute(delete, (row["id"],)).fetchone() is None:
                continue  # deleted further down this same cascade
            self._record(
                "record.delete", collection, row, to_json(row), None, _cause(target, row[f.name], "cascade")
            )


def _referencing_rows(
    conn: apsw.Connection, collection: Collection, f: Field, ids: list[str], limit: int | None = None
) -> list[dict[str, Any]]:
    # One parameter for any number of ids (json_each), so a parent with 50,000 children needs no
    # statement with 50,000 placeholders.
    column = quote_ident(f.name)
    holds = (
        f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value IN (SELECT value FROM json_each(?1)))"
        if is_multi_reference(f)
        else f"{column} IN (SELECT value FROM json_each(?1))"
    )
    sql = f"SELECT * FROM {quote_ident(collection.table)} WHERE {holds}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return fetch_all(conn, sql, (_ids_json.encode(ids).decode(),))


def _refuse_if_referenced(
    conn: apsw.Connection, collection: Collection, f: Field, ids: list[str], target: str | None
) -> None:
    if _referencing_rows(conn, collection, f, ids, limit=1):
        what = "user" if target is USERS else "record"
        raise ApiError(
            409,
            "record_in_use",
            f"Records of '{collection.name}' still reference this {what} through '{f.name}' "
            f"(on_delete: restrict); change or delete them first.",
            {f"{collection.name}.{f.name}": {"code": "record_in_use", "message": "Still referenced."}},
        )


def _cause(target: str | None, parent_id: str, on_delete: str) -> dict[str, Any]:
    return {"collection": target or "users", "record_id": parent_id, "on_delete": on_delete}
