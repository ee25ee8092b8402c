"""From an HTTP request to the caller and write context that records, rules and audit work with."""

from __future__ import annotations

from starlette.requests import Request

from snackbase import audit
from snackbase.auth import Auth, find_account_id, get_auth, user_groups
from snackbase.collections import ChangeContext
from snackbase.errors import ApiError
from snackbase.records import WriteContext
from snackbase.rules import Caller


def _no_groups() -> frozenset[str]:
    return frozenset()


async def caller_for(request: Request) -> Caller:
    """The caller as rules see it. A superadmin's scope is the account named by X-Account-ID, or all."""
    auth = await get_auth(request)
    conn = request.app.state.db.conn
    if auth.is_superadmin:
        return Caller(auth.user_id, _named_account(request), auth.email, auth.role, True, _no_groups)
    if auth.user_id is None:
        return Caller(None, auth.account_id, None, None, False, _no_groups)
    user_id = auth.user_id
    cache: list[frozenset[str]] = []

    def groups() -> frozenset[str]:
        if not cache:
            cache.append(user_groups(conn, user_id))
        return cache[0]

    return Caller(user_id, auth.account_id, auth.email, auth.role, False, groups)


def _named_account(request: Request) -> str | None:
    ref = request.headers.get("x-account-id")
    if not ref:
        return None
    account_id = find_account_id(request.app.state.db.conn, ref.strip()[:64])
    if account_id is None:
        raise ApiError(404, "not_found", "X-Account-ID names no account.")
    return account_id


async def write_context(request: Request, caller: Caller) -> WriteContext:
    auth: Auth = await get_auth(request)
    return WriteContext(caller, audit.actor_from_auth(auth), audit.meta_from_request(request), _header_reason(request))


async def change_context(request: Request) -> ChangeContext:
    auth = await get_auth(request)
    return ChangeContext(audit.actor_from_auth(auth), audit.meta_from_request(request), _header_reason(request))


def _header_reason(request: Request) -> str | None:
    raw = request.headers.get(audit.REASON_HEADER)
    return audit.validate_reason(audit.header_reason(raw)) if raw is not None else None
