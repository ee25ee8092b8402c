"""From an HTTP request to the caller and write context that records, rules and audit work with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from snackbase import audit, audit_views, macros
from snackbase.auth import Auth, auth_of, find_account_id, get_auth, user_groups
from snackbase.collections import ChangeContext
from snackbase.db import Database
from snackbase.errors import ApiError
from snackbase.filter import FilterError
from snackbase.ids import SYSTEM_ACCOUNT_ID
from snackbase.record_changes import WriteContext
from snackbase.rules import Caller
from snackbase.users import get_user
from snackbase.web import header


def _no_groups() -> frozenset[str]:
    return frozenset()


async def caller_for(request: Request) -> Caller:
    """The request's one caller — for rules, the audit trail, hooks and `event.records` alike — built
    once per request. A superadmin's scope is the account named by X-Account-ID, or all accounts."""
    state = request.scope.setdefault("state", {})
    caller = state.get("caller")
    if caller is None:
        caller = state["caller"] = _build_caller(request, auth_of(request))
    assert isinstance(caller, Caller)
    return caller


def _build_caller(request: Request, auth: Auth) -> Caller:
    kit = _kit(request.app.state)
    if auth.is_superadmin:
        return Caller(auth.user_id, _named_account(request), auth.email, auth.role, True, _no_groups,
                      kit.run_macro, session_id=auth.session_id, method=auth.method)  # fmt: skip
    if auth.user_id is None:
        return kit.anonymous(auth.account_id)
    return Caller(auth.user_id, auth.account_id, auth.email, auth.role, False,
                  _groups_of(kit.state.db, auth.user_id), kit.run_macro, auth.pii_access, auth.session_id,
                  auth.method)  # fmt: skip


class _CallerKit:
    """Per app, what callers share: the macro runner, and the anonymous caller of each account (a Caller
    is immutable, and an anonymous one depends on its account alone: building one per request was
    ten attribute sets and a closure)."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self._anonymous: dict[str | None, Caller] = {}

    def run_macro(self, name: str, args: list[object], position: int) -> bool:
        conn = self.state.db.connection()
        macro = self.state.macros.all(conn).get(name)
        if macro is None:  # deleted since the rule was saved: the rule fails closed
            raise FilterError(f"unknown macro '@{name[:64]}'", position)
        return macros.run(conn, macro, list(args))

    def anonymous(self, account_id: str | None) -> Caller:
        caller = self._anonymous.get(account_id)
        if caller is None:
            if len(self._anonymous) >= 10_000:
                self._anonymous.clear()
            caller = Caller(None, account_id, None, None, False, _no_groups, self.run_macro,
                            method="anonymous")  # fmt: skip
            self._anonymous[account_id] = caller
        return caller


def _kit(state: Any) -> _CallerKit:
    kit = state._state.get(_KIT)
    if kit is None:
        kit = state._state[_KIT] = _CallerKit(state)
    assert isinstance(kit, _CallerKit)
    return kit


_KIT = "caller_kit"


# The caller's groups and macros are looked up on the connection of the thread that asks
# (`Database.connection`): a read that outgrew the event loop's share runs on a reader thread with the
# same caller, and an apsw connection is never used from two threads.


def _groups_of(db: Database, user_id: str) -> Callable[[], frozenset[str]]:
    """The user's group names, read at most once per request and only if something asks."""
    cache: list[frozenset[str]] = []

    def groups() -> frozenset[str]:
        if not cache:
            cache.append(user_groups(db.connection(), user_id))
        return cache[0]

    return groups


def _named_account(request: Request) -> str | None:
    ref = request.headers.get("x-account-id")
    if not ref:
        return None
    account_id = find_account_id(request.app.state.db.conn, ref.strip()[:64])
    if account_id is None:
        raise ApiError(404, "not_found", "X-Account-ID names no account.")
    return account_id


async def write_context(request: Request, caller: Caller) -> WriteContext:
    meta = audit_views.meta_from_request(request)
    return WriteContext(caller, meta, _header_reason(request), request.app.state.hooks)


async def change_context(request: Request) -> ChangeContext:
    auth = await get_auth(request)
    return ChangeContext(
        audit_views.actor_from_auth(auth), audit_views.meta_from_request(request), _header_reason(request)
    )


REASON_HEADER_BYTES = audit.REASON_HEADER.encode()


def _header_reason(request: Request) -> str | None:
    raw = header(request.scope, REASON_HEADER_BYTES)
    return audit.validate_reason(audit_views.header_reason(raw)) if raw is not None else None


def caller_for_user(request: Request, user_id: str) -> Caller:
    """The caller as rules would see user `user_id` (for the rule and macro test endpoints)."""
    db = request.app.state.db
    row = get_user(db.conn, user_id) if isinstance(user_id, str) else None
    if row is None:
        raise ApiError(
            404,
            "not_found",
            "as_user names no user.",
            {"as_user": {"code": "not_found", "message": "No such user."}},
        )
    is_superadmin = row["account_id"] == SYSTEM_ACCOUNT_ID
    return Caller(
        row["id"],
        row["account_id"],
        row["email"],
        row["role"],
        is_superadmin,
        _groups_of(db, row["id"]),
        _kit(request.app.state).run_macro,
    )


def scope_caller(scope: Scope) -> Caller | None:
    """The request's one caller for hook events fired while it is served (see HookRegistry.fill)."""
    state = scope.get("state") or {}
    caller = state.get("caller")
    if caller is None and state.get("auth") is not None:
        try:
            caller = state["caller"] = _build_caller(Request(scope), state["auth"])
        except ApiError:  # X-Account-ID names no account: the route answers that itself
            return None
    return caller if isinstance(caller, Caller) else None
