"""Records of a collection: list, get, create, update (PATCH/PUT), delete, batch.

Every handler is the same three steps: who is calling, parse the input, call the record pipeline
(snackbase.records), which applies tenancy, rules, validation and the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from snackbase import aggregate, cache_versions, files, presenter, queries, records, uploads, versions
from snackbase.context import caller_for, write_context
from snackbase.errors import ApiError
from snackbase.listing import paging
from snackbase.record_changes import WriteContext
from snackbase.rules import Caller
from snackbase.schema import Collection
from snackbase.unit_of_work import write_turn
from snackbase.web import header, json_response, no_content, read_json

T = TypeVar("T")


def _collection(request: Request) -> Collection:
    conn = request.app.state.db.conn
    seen = cache_versions.of_request(request.scope.setdefault("state", {}), conn).collections
    return request.app.state.registry.get(conn, request.path_params["collection"], seen)


def _names(request: Request, param: str) -> list[str]:
    if not request.scope["query_string"]:  # most gets: parsing an empty query string still costs ~8 µs
        return []
    raw = request.query_params.get(param, "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if len(names) > 64:
        raise ApiError(400, "bad_request", f"Too many names in '{param}'.")
    return names


def _list_query(request: Request) -> queries.ListQuery:
    params, page = request.query_params, paging(request)
    return queries.ListQuery(
        filter=params.get("filter", ""), sort=params.get("sort", ""),
        fields=_names(request, "fields") or None, expand=_names(request, "expand"),
        page=page.page, per_page=page.per_page, skip_total=page.skip_total, after=page.after,
    )  # fmt: skip


async def list_records(request: Request) -> Response:
    collection = _collection(request)
    caller = await caller_for(request)
    state = request.app.state
    # Hooks run here, on the event loop: the read below may run again on a reader thread.
    query = state.hooks.record_list(collection, caller, _list_query(request))
    page = await state.db.read(
        lambda conn: queries.list_records(conn, state.registry, collection, caller, query)
    )
    return json_response(page)


async def aggregate_records(request: Request) -> Response:
    collection = _collection(request)
    caller = await caller_for(request)
    state = request.app.state
    query = aggregate.narrowed(aggregate.parse_query(request.query_params), collection, caller, state.hooks)
    result = await state.db.read(
        lambda conn: aggregate.aggregate(conn, state.registry, collection, caller, query)
    )
    return json_response(result)


async def get_record(request: Request) -> Response:
    collection = _collection(request)
    caller = await caller_for(request)
    fields, expand = _names(request, "fields") or None, _names(request, "expand")
    state, record_id = request.app.state, request.path_params["id"]
    presenter.check_projection(collection, fields)
    presenter.check_expand(state.registry, state.db.conn, collection, expand)
    record, etag = await state.db.read(
        lambda conn: queries.get_versioned(
            conn, state.registry, collection, caller, record_id, fields, expand
        )
    )
    # 304 only for the record itself: expanded records have versions of their own.
    if_none_match = header(request.scope, b"if-none-match")
    if if_none_match is not None and not expand and versions.matches(if_none_match, etag):
        return Response(status_code=304, headers={"etag": etag})
    return json_response(record, headers={"etag": etag})


async def create_record(request: Request) -> Response:
    collection = _collection(request)
    caller = await caller_for(request)
    ctx = await write_context(request, caller)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    record = await _with_body(
        request, collection, caller,
        lambda body, staged: records.create_record(conn, registry, collection, ctx, body, staged),
    )  # fmt: skip
    return json_response(record, status=201, headers=_etag(ctx))


async def _with_body(
    request: Request, collection: Collection, caller: Caller, write: Callable[[Any, list[files.Staged]], T]
) -> T:
    """Runs `write(body, staged uploads)` with the request's body: JSON, or multipart/form-data with the
    files streamed to staging first and moved into storage around the write (snackbase.files)."""
    conn = request.app.state.db.conn
    if not uploads.is_multipart(request):
        body = await read_json(request)
        async with write_turn(conn):
            return write(body, [])
    body, staged = await uploads.read_multipart(request, collection, caller.account_id)
    return await files.write_with_uploads(conn, collection, staged, lambda: write(body, staged))


def _etag(ctx: WriteContext) -> dict[str, str] | None:
    return {"etag": ctx.etag} if ctx.etag else None


async def _update(request: Request, replace: bool) -> Response:
    collection = _collection(request)
    caller = await caller_for(request)
    ctx = await write_context(request, caller)
    ctx.if_match = header(request.scope, b"if-match")
    conn, registry, record_id = (
        request.app.state.db.conn,
        request.app.state.registry,
        request.path_params["id"],
    )
    record = await _with_body(
        request, collection, caller,
        lambda body, staged: records.update_record(conn, registry, collection, ctx, record_id, body,
                                                   replace=replace, uploads=staged),
    )  # fmt: skip
    return json_response(record, headers=_etag(ctx))


async def patch_record(request: Request) -> Response:
    return await _update(request, replace=False)


async def put_record(request: Request) -> Response:
    return await _update(request, replace=True)


async def delete_record(request: Request) -> Response:
    collection = _collection(request)
    caller = await caller_for(request)
    ctx = await write_context(request, caller)
    ctx.if_match = header(request.scope, b"if-match")
    conn = request.app.state.db.conn
    async with write_turn(conn):
        records.delete_record(conn, request.app.state.registry, collection, ctx, request.path_params["id"])
    return no_content()


async def batch(request: Request) -> Response:
    collection = _collection(request)
    caller = await caller_for(request)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    ctx = await write_context(request, caller)  # before the body: a bad header leaves no staged file
    if not uploads.is_multipart(request):
        body = await read_json(request)
        async with write_turn(conn):
            result = records.batch(conn, registry, collection, ctx, body)
        return json_response(result)
    # Files streamed to staging first, then moved into storage around the batch's one unit of work:
    # any failed operation rolls it all back and deletes every file of the batch (snackbase.files).
    got = await uploads.read_batch_multipart(request, collection, caller.account_id)
    result = await files.write_with_uploads(
        conn, collection, got.staged,
        lambda: records.batch(conn, registry, collection, ctx, got.body, got.uploads),
    )  # fmt: skip
    return json_response(result)


routes = [
    ("GET", "/records/{collection}", list_records),
    ("POST", "/records/{collection}", create_record),
    ("POST", "/records/{collection}/batch", batch),
    ("GET", "/records/{collection}/aggregate", aggregate_records),  # before /{id}
    ("GET", "/records/{collection}/{id}", get_record),
    ("PATCH", "/records/{collection}/{id}", patch_record),
    ("PUT", "/records/{collection}/{id}", put_record),
    ("DELETE", "/records/{collection}/{id}", delete_record),
]
