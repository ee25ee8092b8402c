"""Electronic signatures and a record's history: POST …/sign, GET …/signatures, GET …/history."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit, records, signatures
from snackbase.auth import get_auth, require_user
from snackbase.context import caller_for
from snackbase.db import fetch_value, write_transaction
from snackbase.errors import ApiError
from snackbase.passwords import params_for, verify_password
from snackbase.schema import Collection
from snackbase.web import json_response, read_struct


class SignBody(msgspec.Struct, forbid_unknown_fields=True):
    password: str
    meaning: str


def _collection(request: Request) -> Collection:
    return request.app.state.registry.get(request.app.state.db.conn, request.path_params["collection"])


async def sign(request: Request) -> Response:
    auth = await require_user(request)
    collection, caller = _collection(request), await caller_for(request)
    body = await read_struct(request, SignBody)
    meaning = signatures.check_meaning(body.meaning)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    actor, meta = audit.actor_from_auth(auth), audit.meta_from_request(request)
    if signatures.too_many_failures(conn, auth.user_id or ""):
        raise ApiError(
            429,
            "rate_limited",
            "Too many failed signing attempts; try again later.",
            headers={"retry-after": str(int(signatures.FAILED_WINDOW.total_seconds()))},
        )
    stored_hash = fetch_value(conn, "SELECT password_hash FROM users WHERE id = ?", (auth.user_id,))
    password = body.password if len(body.password) <= 1024 else ""
    ok, _ = await verify_password(params_for(request.app.state.settings.environment), stored_hash, password)
    record_id = request.path_params["id"]
    if not ok:
        record = records.stored_record(conn, registry, collection, caller, "view", record_id)
        signatures.record_failure(conn, collection, record, actor, meta)
        signatures.require_password(ok)
    reason = audit.reason_from(request)
    # The password is checked first (it awaits the hash); the record is read after it, in the write
    # transaction that stores the signature, so what is signed is the version stored at that moment.
    with write_transaction(conn):
        record = records.stored_record(conn, registry, collection, caller, "view", record_id)
        signed = signatures.sign(conn, collection, record, actor, meta, meaning, reason)
    return json_response(signed, status=201)


async def list_signatures(request: Request) -> Response:
    collection, caller = _collection(request), await caller_for(request)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    record = records.stored_record(conn, registry, collection, caller, "view", request.path_params["id"])
    return json_response(
        {"items": signatures.signatures_of(conn, record["account_id"], record["id"], record)}
    )


async def history(request: Request) -> Response:
    """The record's audit entries and signatures. Deleted records' history stays readable by account
    admins (and superadmins naming the account), since entries outlive the records they describe."""
    collection, caller = _collection(request), await caller_for(request)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    record_id = request.path_params["id"]
    record: dict[str, Any] | None
    try:
        record = records.stored_record(conn, registry, collection, caller, "view", record_id)
        account_id = str(record["account_id"])
    except ApiError:
        auth = await get_auth(request)
        if not auth.is_account_admin or caller.account_id is None:
            raise
        record, account_id = None, caller.account_id
    entries = signatures.history(conn, account_id, collection, record_id, caller.sees_pii)
    if not entries and record is None:
        raise ApiError(404, "not_found", "The record was not found.")
    return json_response(
        {"items": entries, "signatures": signatures.signatures_of(conn, account_id, record_id, record)}
    )


routes = [
    ("POST", "/records/{collection}/{id}/sign", sign),
    ("GET", "/records/{collection}/{id}/signatures", list_signatures),
    ("GET", "/records/{collection}/{id}/history", history),
]
