"""The in-process records API of hooks (`event.records`): the same pipeline as the REST API.

Reads and writes go through `snackbase.records` / `snackbase.queries`, so validation, rules, field
access, the audit trail and other hooks all apply; only `bypass_rules=True` steps around the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw
from msgspec.structs import replace

from snackbase import audit
from snackbase.hooks import MAX_NESTING, Event, _nesting
from snackbase.listing import MAX_PER_PAGE
from snackbase.queries import ListQuery, get_record, list_records
from snackbase.record_changes import WriteContext
from snackbase.records import create_record, delete_record, update_record
from snackbase.rules import Caller


class RecordsHelper:
    """Reads and writes records through the SAME pipeline as the REST API (validation, rules, audit,
    hooks). It acts as the event's caller; `bypass_rules=True` acts as a superadmin scoped to the
    caller's account (or `account_id`) instead, and is the only way around the rules."""

    def __init__(self, event: Event) -> None:
        self.event = event

    def create(self, collection: str, data: dict[str, Any], *, account_id: str | None = None,
               bypass_rules: bool = False, reason: str | None = None) -> dict[str, Any]:  # fmt: skip
        return self._write(collection, account_id, bypass_rules, reason, create_record, data)

    def update(self, collection: str, record_id: str, data: dict[str, Any], *, account_id: str | None = None,
               bypass_rules: bool = False, reason: str | None = None) -> dict[str, Any]:  # fmt: skip
        return self._write(collection, account_id, bypass_rules, reason, update_record, record_id, data)

    def delete(self, collection: str, record_id: str, *, account_id: str | None = None,
               bypass_rules: bool = False, reason: str | None = None) -> None:  # fmt: skip
        self._write(collection, account_id, bypass_rules, reason, delete_record, record_id)

    def get(self, collection: str, record_id: str, *, account_id: str | None = None,
            bypass_rules: bool = False) -> dict[str, Any]:  # fmt: skip
        conn, registry = self._app()
        caller = self.caller(account_id, bypass_rules)
        return get_record(conn, registry, registry.get(conn, collection), caller, record_id)

    def list(self, collection: str, *, filter: str = "", sort: str = "", page: int = 1, per_page: int = 30,
             account_id: str | None = None, bypass_rules: bool = False) -> dict[str, Any]:  # fmt: skip
        conn, registry = self._app()
        query = ListQuery(filter=filter, sort=sort, page=page, per_page=min(per_page, MAX_PER_PAGE))
        caller = self.caller(account_id, bypass_rules)
        return list_records(
            conn, registry, registry.get(conn, collection), caller, query, self.event.dispatcher
        )

    def caller(self, account_id: str | None, bypass_rules: bool) -> Caller:
        """The event's caller — the request's one Caller, with its groups and pii access — acting
        through a hook; `bypass_rules` makes it a superadmin scoped to `account_id` or its own account."""
        base = replace(_as_caller(self.event.auth), method="hook")
        if bypass_rules:
            return replace(base, account_id=account_id or base.account_id, is_superadmin=True)
        if account_id is not None and account_id != base.account_id:
            raise ValueError("writing into another account than the caller's requires bypass_rules=True")
        return base

    def _app(self) -> tuple[apsw.Connection, Any]:
        app = self.event.dispatcher.app
        return app.state.db.conn, app.state.registry

    def _write(self, collection: str, account_id: str | None, bypass_rules: bool, reason: str | None,
               pipeline: Callable[..., Any], *args: Any) -> Any:  # fmt: skip
        """One unit of work — or, inside a write's before-hook, part of that write's unit: rolled back
        with it, and its after-commit work waits for that commit."""
        if _nesting.get() >= MAX_NESTING:
            raise RuntimeError(
                f"hooks nested more than {MAX_NESTING} writes deep (a hook writing what fires it?)"
            )
        conn, registry = self._app()
        ctx = self._context(account_id, bypass_rules, reason)
        token = _nesting.set(_nesting.get() + 1)  # held through the after-effects: they may write too
        try:
            return pipeline(conn, registry, registry.get(conn, collection), ctx, *args)
        finally:
            _nesting.reset(token)

    def _context(self, account_id: str | None, bypass_rules: bool, reason: str | None) -> WriteContext:
        outer = getattr(self.event, "ctx", None)
        meta = outer.meta if outer is not None else audit.RequestMeta(self.event.request_id, None, None)
        caller = self.caller(account_id, bypass_rules)
        acting_for = replace(_as_caller(self.event.auth), method="hook")
        return WriteContext(caller, meta, reason, self.event.dispatcher, acting_for=acting_for)


def _no_groups() -> frozenset[str]:
    return frozenset()


ANONYMOUS = Caller(None, None, None, None, False, _no_groups, method="anonymous")


def _as_caller(auth: Any) -> Caller:
    """The event's caller. Events carry the request's Caller; outside a request (app events, the CLI)
    there is none, and the helper acts as an anonymous caller (only `bypass_rules` gets further)."""
    return auth if isinstance(auth, Caller) else ANONYMOUS
