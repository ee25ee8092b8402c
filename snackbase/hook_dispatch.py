"""The dispatcher: the seams through which SnackBase's own modules fire hook events, bound to one app.

Hook files register on a registry (`snackbase.hooks.hooks`, the public API, which knows no app). Each
app holds one `HookDispatcher` over it as `app.state.hooks`: the app's settings, connection, collection
registry, the request's one caller and the records helper of `event.records` all come from there, so
no module-level state ties hooks to an app (two apps in one process each fire with their own).

Each seam is one line at its call site: `ctx.hooks.record_before(…)` in the record pipeline,
`request.app.state.hooks.auth_before(…)` in the auth routes, and so on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from snackbase.collection_defs import collection_to_json
from snackbase.errors import ApiError
from snackbase.hooks import (
    AuthEvent,
    CollectionEvent,
    Event,
    HookRegistry,
    ListEvent,
    RecordEvent,
    current_scope,
    request_id,
)
from snackbase.rules import Caller
from snackbase.schema import Collection

if TYPE_CHECKING:
    import apsw
    from starlette.types import Scope

    from snackbase.queries import ListQuery
    from snackbase.record_changes import Change, WriteContext

# Never handed to a hook (it would end up in its logs).
_SECRET_WORDS = ("password", "token", "secret")


class HookDispatcher:
    """One app's view of a hook registry."""

    def __init__(
        self,
        registry: HookRegistry,
        app: Any,
        make_caller: Callable[[Scope], Caller | None],
        make_records: Callable[[Event], Any],
    ) -> None:
        self.registry = registry
        self.app = app
        self._make_caller = make_caller  # the request's one Caller from its ASGI scope
        self._make_records = make_records  # event.records

    # the app's context for events

    def bind(self, event: Event) -> Event:
        event.dispatcher = self
        return event

    def fill(self, event: Event) -> None:
        """Called by the registry before hooks see an event: settings, connection and the caller."""
        event.settings = event.settings or self.app.state.settings
        event.conn = event.conn or self.app.state.db.conn
        if event.auth is None:
            scope = current_scope.get()
            event.auth = self._make_caller(scope) if scope is not None else None

    def records(self, event: Event) -> Any:
        return self._make_records(event)

    # the registry's dispatch, for events of this app

    def has(self, name: str, collection: str | None = None) -> bool:
        return self.registry.has(name, collection)

    async def dispatch(self, name: str, event: Event) -> Event:
        return await self.registry.dispatch(name, self.bind(event))

    def dispatch_sync(self, name: str, event: Event) -> Event:
        return self.registry.dispatch_sync(name, self.bind(event))

    def fire(self, name: str, event: Event) -> None:
        self.registry.fire(name, self.bind(event))

    # the record pipeline (synchronous: inside the write's unit of work)

    def record_before(
        self,
        action: str,
        collection: Collection,
        ctx: WriteContext,
        body: dict[str, Any] | None,
        stored: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """record.before_<action>: returns the body to continue with (hooks may change or replace it).
        `stored` is the stored row (update, delete); it is turned into the API record only when a hook
        will see it."""
        name = f"record.before_{action}"
        body = body if body is not None else {}
        if not self.has(name, collection.name):
            return body
        record = self.app.state.registry.validator(collection).to_json(stored) if stored is not None else None
        event = RecordEvent(collection=collection.name, data=body, record=record, auth=ctx.caller, ctx=ctx,
                            request_id=ctx.meta.request_id or request_id())  # fmt: skip
        self.dispatch_sync(name, event)
        if not isinstance(event.data, dict):
            raise ApiError(500)
        return event.data

    def record_committed(self, conn: apsw.Connection, change: Change) -> None:
        """record.after_<action> for a committed change (queued by record_changes as after-commit work)."""
        op = change.action.removeprefix("record.")
        record = change.new if change.new is not None else change.old
        event = RecordEvent(collection=change.collection.name, data=dict(change.new or {}), record=record,
                            old=change.old if op == "update" else None, auth=change.ctx.caller,
                            ctx=change.ctx, request_id=change.ctx.meta.request_id or request_id(),
                            conn=conn)  # fmt: skip
        self.fire(f"record.after_{op}", event)

    def record_list(self, collection: Collection, caller: Caller, query: ListQuery) -> ListQuery:
        if self.has("record.before_list", collection.name):
            event = ListEvent(collection=collection.name, query=query, auth=caller)
            self.dispatch_sync("record.before_list", event)
        return query

    # the async routes (collections, auth)

    async def collection_before(self, action: str, name: str, data: dict[str, Any] | None = None) -> None:
        """collection.before_<action>: `data` is the parsed definition body (hooks may change it in place)."""
        event_name = f"collection.before_{action}"
        if self.has(event_name, name):
            event = CollectionEvent(collection=name, data=data if data is not None else {},
                                    record=self._stored_collection(name))  # fmt: skip
            await self.dispatch(event_name, event)

    def _stored_collection(self, name: str) -> dict[str, Any] | None:
        registry = self.app.state.registry
        registry.refresh(self.app.state.db.conn)
        current = registry.by_name.get(name)
        return collection_to_json(current) if current is not None else None

    def collection_after(self, action: str, collection: Collection) -> None:
        """collection.after_<action> with the definition as stored (as it was, for delete)."""
        if self.has(f"collection.after_{action}", collection.name):
            event = CollectionEvent(collection=collection.name, record=collection_to_json(collection))
            self.fire(f"collection.after_{action}", event)

    async def auth_before(self, action: str, body: Any) -> None:
        """auth.before_<action> with the request body (a msgspec Struct or a dict) minus its secrets."""
        if self.has(f"auth.before_{action}"):
            await self.dispatch(f"auth.before_{action}", AuthEvent(data=without_secrets(body)))

    def auth_after(self, action: str, user: dict[str, Any] | None) -> None:
        """auth.after_<action> with the user row (its password hash and other secrets removed)."""
        if self.has(f"auth.after_{action}"):
            record = without_secrets(user) if user is not None else None
            self.fire(f"auth.after_{action}", AuthEvent(record=record, data=dict(record or {})))


def without_secrets(value: Any) -> dict[str, Any]:
    """Passwords, tokens and hashes never reach a hook (they would end up in its logs)."""
    data = msgspec.structs.asdict(value) if isinstance(value, msgspec.Struct) else dict(value)
    return {k: v for k, v in data.items() if not any(word in k.lower() for word in _SECRET_WORDS)}
