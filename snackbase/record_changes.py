"""A record change as the write path records it: the audit entry inside the unit of work, and the
after-commit work (hooks `record.after_*`, the realtime broker) once it has committed.

Every changed row goes through `record_change` — the record a request writes, and every row its
references cascade to or set to null — so no change can reach the database without its audit entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import apsw
import msgspec

from snackbase import audit, audit_views, files, realtime_transport
from snackbase.rules import Caller
from snackbase.schema import Collection
from snackbase.unit_of_work import Work

if TYPE_CHECKING:
    from snackbase.hook_dispatch import HookDispatcher


class WriteContext(msgspec.Struct):
    """One write request: who (the request's one caller) and the request's metadata and header reason."""

    caller: Caller
    meta: audit.RequestMeta
    reason: str | None = None  # the X-Audit-Reason header; a body's `_reason` wins per operation
    # The app's hook dispatcher (app.state.hooks); None for writes that fire no hooks (tools, tests).
    hooks: HookDispatcher | None = None
    # Optimistic concurrency (snackbase.versions): the request's If-Match, checked against the row
    # under the write lock; and the ETag of the record as written, for the answer's header.
    if_match: str | None = None
    etag: str | None = None
    # Who the audit trail names, when not `caller`: a hook writing with `bypass_rules=True` acts with a
    # superadmin's reach, but is recorded as the user it acts for (with that user's role).
    acting_for: Caller | None = None

    @property
    def actor(self) -> audit.Actor:
        return audit_views.actor_from_auth(self.acting_for or self.caller)


class Change(msgspec.Struct, frozen=True):
    """One changed record row."""

    action: str  # record.create | record.update | record.delete
    collection: Collection
    account_id: str
    record_id: str
    old: dict[str, Any] | None  # JSON values before (None on create)
    new: dict[str, Any] | None  # JSON values after (None on delete)
    ctx: WriteContext
    reason: str | None
    # Why a row changed that the request did not name: {"collection", "record_id", "on_delete"}.
    cascade: dict[str, Any] | None = None


def record_change(conn: apsw.Connection, work: Work, change: Change) -> None:
    """In the unit of work: the change's audit entry and realtime event; after its commit: the
    after-hooks and the realtime delivery."""
    pii = change.collection.pii_kinds
    audit.append(
        conn, account_id=change.account_id, actor=change.ctx.actor, action=change.action,
        collection=change.collection.name, record_id=change.record_id,
        changes=audit.diff(change.old, change.new, pii=pii), reason=change.reason, meta=change.ctx.meta,
        extra={"cascade": change.cascade} if change.cascade else None,
    )  # fmt: skip
    # Stored files follow the change: uploads kept, removed files deleted after COMMIT, quota counted.
    files.track(conn, work, change.collection, change.account_id, change.old, change.new)
    # The realtime event commits with the change (a rolled-back write publishes nothing); every
    # server process delivers it after COMMIT (snackbase/realtime_transport.py).
    record = change.new if change.new is not None else change.old
    realtime_transport.publish(conn, work, change.action.removeprefix("record."), change.account_id,
                               change.collection.name, change.record_id, record or {})  # fmt: skip
    dispatcher = change.ctx.hooks
    after = f"record.after_{change.action.removeprefix('record.')}"
    if dispatcher and dispatcher.has(after, change.collection.name):
        work.after_commit(lambda: dispatcher.record_committed(conn, change))
