"""The in-process records API of hooks (`event.records`): the same pipeline as the REST API.

Reads and writes go through `snackbase.records` / `snackbase.queries`, so validation, rules, field
access, the audit trail and other hooks all apply; only `bypass_rules=True` steps around the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apsw

from snackbase import audit
from snackbase.hooks import MAX_NESTING, Event, _nesting, hooks
from snackbase.queries import MAX_PER_PAGE, ListQuery, get_record, list_records
from snackbase.records import WriteContext, create_record, delete_record, run_after_commit, update_record
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
        return list_records(conn, registry, registry.get(conn, collection), caller, query)

    def caller(self, account_id: str | None, bypass_rules: bool) -> Caller:
        base = _as_caller(self.event.auth)
        if bypass_rules:
            target = account_id or base.account_id
            return Caller(base.user_id, target, base.email, base.role, True, base.groups)
        if account_id is not None and account_id != base.account_id:
            raise ValueError("writing into another account than the caller's requires bypass_rules=True")
        return base

    def _app(self) -> tuple[apsw.Connection, Any]:
        if hooks.app is None:
            raise RuntimeError("the records helper needs a running app (hooks.attach was not called)")
        return hooks.app.state.db.conn, hooks.app.state.registry

    def _write(self, collection: str, account_id: str | None, bypass_rules: bool, reason: str | None,
               pipeline: Callable[..., Any], *args: Any) -> Any:  # fmt: skip
        if _nesting.get() >= MAX_NESTING:
            raise RuntimeError(
                f"hooks nested more than {MAX_NESTING} writes deep (a hook writing what fires it?)"
            )
        conn, registry = self._app()
        ctx = self._context(account_id, bypass_rules, reason)
        token = _nesting.set(_nesting.get() + 1)  # held through the after-effects: they may write too
        try:
            result = pipeline(conn, registry, registry.get(conn, collection), ctx, *args)
            outer = getattr(self.event, "ctx", None)
            if conn.in_transaction and outer is not None:  # inside a batch: after-effects wait for its commit
                outer.after_commit.extend(ctx.after_commit)
            else:
                run_after_commit(ctx)
        finally:
            _nesting.reset(token)
        return result

    def _context(self, account_id: str | None, bypass_rules: bool, reason: str | None) -> WriteContext:
        caller = self.caller(account_id, bypass_rules)
        outer = getattr(self.event, "ctx", None)
        meta = outer.meta if outer is not None else audit.RequestMeta(self.event.request_id, None, None)
        # The audit trail names the user the hook acted for, with method "hook".
        actor = audit.Actor(caller.user_id, caller.email, caller.role, "hook")
        return WriteContext(caller, actor, meta, reason)


def _no_groups() -> frozenset[str]:
    return frozenset()


def _as_caller(auth: Any) -> Caller:
    """The rules' view of an event's caller: a Caller as it is, an auth.Auth converted, None anonymous."""
    if isinstance(auth, Caller):
        return auth
    if auth is None:
        return Caller(None, None, None, None, False, _no_groups)
    is_super = bool(getattr(auth, "is_superadmin", False))
    account_id = None if is_super else auth.account_id
    return Caller(auth.user_id, account_id, auth.email, auth.role, is_super, _no_groups)
