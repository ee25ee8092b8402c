"""Custom SQL macros for rules (superadmin): CRUD and a test endpoint. See snackbase/macros.py."""

from __future__ import annotations

from typing import Any

import apsw
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit, macros
from snackbase.auth import require_superadmin
from snackbase.context import caller_for_user, change_context
from snackbase.errors import ApiError
from snackbase.filter import parse
from snackbase.ids import SYSTEM_ACCOUNT_ID
from snackbase.listing import whole_list
from snackbase.rules import check_rules, used_macros
from snackbase.unit_of_work import unit_of_work
from snackbase.web import json_response, no_content, read_struct


class MacroCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    sql: str
    description: str = ""


class MacroPatch(msgspec.Struct, forbid_unknown_fields=True):
    sql: str | None = None
    description: str | None = None


class MacroTest(msgspec.Struct, forbid_unknown_fields=True):
    args: list[Any] = []
    as_user: str | None = None


def _store(request: Request) -> macros.MacroStore:
    """The macro definitions; on PostgreSQL without the macro role (see macro_fence) a 501 instead."""
    conn = request.app.state.db.conn
    if not isinstance(conn, apsw.Connection):
        from snackbase.backends import macro_fence

        macro_fence.refuse_without_role(conn)
    store: macros.MacroStore = request.app.state.macros
    return store


def _description(text: str) -> str:
    if len(text) > 1000:
        raise ApiError(
            400,
            "validation_failed",
            "The description is too long.",
            {"description": {"code": "too_long", "message": "At most 1000 characters."}},
        )
    return text


async def list_macros(request: Request) -> Response:
    await require_superadmin(request)
    items = [m.to_json() for m in _store(request).all(request.app.state.db.conn).values()]
    return json_response(whole_list(items))


async def create(request: Request) -> Response:
    await require_superadmin(request)
    body = await read_struct(request, MacroCreate)
    conn = request.app.state.db.conn
    name = macros.check_name(body.name)
    if name in _store(request).all(conn):
        raise ApiError(409, "conflict", f"A macro named '{name}' already exists.")
    sql, params = macros.check_sql(conn, body.sql)
    ctx = await change_context(request)
    with unit_of_work(conn):
        macro = macros.insert(conn, name, sql, params, _description(body.description))
        _audit(conn, ctx, "macro.create", None, macro)
    _store(request).invalidate()
    return json_response(macro.to_json(), status=201)


async def get_one(request: Request) -> Response:
    await require_superadmin(request)
    return json_response(
        _store(request).get(request.app.state.db.conn, request.path_params["name"]).to_json()
    )


async def update(request: Request) -> Response:
    await require_superadmin(request)
    body = await read_struct(request, MacroPatch)
    conn = request.app.state.db.conn
    old = _store(request).get(conn, request.path_params["name"])
    sql, params = macros.check_sql(conn, body.sql) if body.sql is not None else (old.sql, old.params)
    description = _description(body.description) if body.description is not None else old.description
    ctx = await change_context(request)
    with unit_of_work(conn):
        macro = macros.update(conn, old, sql, params, description)
        _check_rules_still_valid(request, conn)
        _audit(conn, ctx, "macro.update", old, macro)
    _store(request).invalidate()
    return json_response(macro.to_json())


async def delete(request: Request) -> Response:
    await require_superadmin(request)
    conn = request.app.state.db.conn
    old = _store(request).get(conn, request.path_params["name"])
    users = _collections_using(request, old.name)
    if users:
        raise ApiError(409, "macro_in_use", f"Rules of {', '.join(users)} use @{old.name}().")
    ctx = await change_context(request)
    with unit_of_work(conn):
        macros.delete(conn, old.name)
        _audit(conn, ctx, "macro.delete", old, None)
    _store(request).invalidate()
    return no_content()


async def test(request: Request) -> Response:
    await require_superadmin(request)
    body = await read_struct(request, MacroTest)
    conn = request.app.state.db.conn
    macro = _store(request).get(conn, request.path_params["name"])
    if body.as_user is not None:
        caller_for_user(request, body.as_user)  # 404 for an unknown user; macros see callers only via args
    if len(body.args) != macro.params:
        raise ApiError(
            400,
            "validation_failed",
            f"@{macro.name}() takes {macro.params} argument(s).",
            {"args": {"code": "invalid_length", "message": f"Give {macro.params} argument(s)."}},
        )
    if not all(macros.bindable(a) for a in body.args):
        raise ApiError(
            400,
            "validation_failed",
            "An argument is an integer outside SQLite's 64-bit range.",
            {"args": {"code": "out_of_range", "message": "Integers must fit in 64 bits (signed)."}},
        )
    return json_response({"result": macros.run(conn, macro, body.args)})


def _collections_using(request: Request, name: str) -> list[str]:
    using = []
    for collection in request.app.state.registry.all(request.app.state.db.conn):
        rules = [r for r in collection.rules.values() if r]
        if any(m.name == name for rule in rules for m in used_macros(parse(rule))):
            using.append(collection.name)
    return using


def _check_rules_still_valid(request: Request, conn: apsw.Connection) -> None:
    """A changed parameter count must not break a saved rule (409 then; the transaction rolls back)."""
    counts = macros.param_counts(conn)
    for collection in request.app.state.registry.all(conn):
        try:
            check_rules(collection, counts)
        except ApiError:
            raise ApiError(
                409, "macro_in_use", f"The change would break the rules of '{collection.name}'."
            ) from None


def _audit(
    conn: apsw.Connection, ctx: Any, action: str, old: macros.Macro | None, new: macros.Macro | None
) -> None:
    """Macros are shared by all accounts: their changes go into the system account's chain."""
    before, after = (old.to_json() if old else None), (new.to_json() if new else None)
    audit.append(
        conn,
        account_id=SYSTEM_ACCOUNT_ID,
        actor=ctx.actor,
        action=action,
        record_id=new.name if new else old.name if old else None,
        changes=audit.diff(before, after, skip=("created_at", "updated_at")),
        reason=ctx.reason,
        meta=ctx.meta,
    )


routes = [
    ("GET", "/macros", list_macros),
    ("POST", "/macros", create),
    ("GET", "/macros/{name}", get_one),
    ("PATCH", "/macros/{name}", update),
    ("DELETE", "/macros/{name}", delete),
    ("POST", "/macros/{name}/test", test),
]
