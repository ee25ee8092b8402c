"""Electronic signatures and a record's history: POST …/sign, GET …/signatures, GET …/history."""

from __future__ import annotations

from typing import Any

import apsw
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from snackbase import audit_views, records, signatures
from snackbase.auth import require_user
from snackbase.context import caller_for
from snackbase.db import fetch_value
from snackbase.errors import ApiError
from snackbase.passwords import params_for, verify_password
from snackbase.presenter import present_entries, sees_whole_record
from snackbase.schema import Collection
from snackbase.unit_of_work import unit_of_work
from snackbase.web import json_response, read_struct


class SignBody(msgspec.Struct, forbid_unknown_fields=True):
    password: str
    meaning: str


def _collection(request: Request) -> Collection:
    return request.app.state.registry.get(request.app.state.db.conn, request.path_params["collection"])


async def sign(request: Request) -> Response:
    """Re-authenticates the signer first; then ONE unit of work reads the record as it is now and
    stores the signature bound to that exact version, so a concurrent edit cannot be signed unseen."""
    auth = await require_user(request)
    collection, caller = _collection(request), await caller_for(request)
    body = await read_struct(request, SignBody)
    meaning = signatures.check_meaning(body.meaning)
    reason = audit_views.reason_from(request)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    actor, meta = audit_views.actor_from_auth(caller), audit_views.meta_from_request(request)
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
    with unit_of_work(conn):
        record = records.stored_record(conn, registry, collection, caller, "view", record_id)
        if ok:
            signature = signatures.sign(conn, collection, record, actor, meta, meaning, reason)
        else:
            signatures.record_failure(conn, collection, record, actor, meta)
    signatures.require_password(ok)
    signature["record_hash"] = signature["record_hash"] if sees_whole_record(collection, caller) else None
    return json_response(signature, status=201)


async def list_signatures(request: Request) -> Response:
    collection, caller = _collection(request), await caller_for(request)
    registry, record_id = request.app.state.registry, request.path_params["id"]

    def read(conn: apsw.Connection) -> list[dict[str, Any]]:
        record = records.stored_record(conn, registry, collection, caller, "view", record_id)
        whole = sees_whole_record(collection, caller)
        return signatures.signatures_of(conn, record["account_id"], record["id"], record, whole)

    return json_response({"items": await request.app.state.db.read(read)})


async def history(request: Request) -> Response:
    """The record's audit entries and signatures, through the presenter (field access, PII masks, and
    the editors' details for account admins only). Deleted records' history stays readable by
    account admins (and superadmins naming the account): entries outlive the records they describe."""
    collection, caller = _collection(request), await caller_for(request)
    registry, record_id = request.app.state.registry, request.path_params["id"]

    def read(conn: apsw.Connection) -> dict[str, Any]:
        record: dict[str, Any] | None
        try:
            record = records.stored_record(conn, registry, collection, caller, "view", record_id)
            account_id = str(record["account_id"])
        except ApiError:
            if not caller.is_account_admin or caller.account_id is None:
                raise
            record, account_id = None, caller.account_id
        entries = audit_views.record_history(conn, account_id, collection.name, record_id)
        if not entries and record is None:
            raise ApiError(404, "not_found", "The record was not found.")
        shown = present_entries(entries, caller.sees_pii, is_admin=caller.is_account_admin,
                                collection=collection, caller=caller)  # fmt: skip
        whole = sees_whole_record(collection, caller)
        return {
            "items": shown,
            "signatures": signatures.signatures_of(conn, account_id, record_id, record, whole),
        }

    return json_response(await request.app.state.db.read(read))


routes = [
    ("POST", "/records/{collection}/{id}/sign", sign),
    ("GET", "/records/{collection}/{id}/signatures", list_signatures),
    ("GET", "/records/{collection}/{id}/history", history),
]
