"""The OpenAPI 3.1 document of the running server, built from the route tables and the request Structs.

What comes from the code (so it cannot drift): every path and method (the route tables of `app`),
path parameters (the `{name}` segments), request bodies (the msgspec Struct a handler passes to
`read_struct`, turned into JSON Schema by `msgspec.json.schema_components`), the success status (a
handler that answers `no_content()` is 204, one that passes `status=201` is 201), and per collection
the record schemas (field types, options, `required`, `select` values) from the collection
definitions, as the calling account sees them (field access, PII masks).

What is written here: a one-line summary, who may call, and the query parameters of each operation
(`OPERATIONS`). tests/test_openapi.py fails when a route has no entry or an entry has no route.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from snackbase import __version__
from snackbase.rules import Caller
from snackbase.schema import FIELD_TYPES, SYSTEM_FIELDS, Collection, Field

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{name}"


class Op(msgspec.Struct, frozen=True):
    summary: str
    access: str  # public | account (anonymous callers name an account) | user | admin | superadmin
    query: tuple[str, ...] = ()
    response: str | None = None  # a component name; None: any JSON object
    body: str | None = None  # a component name for bodies read with read_json (no Struct)
    media: str = "application/json"


# --- the query parameters operations take ------------------------------------------------------

_INT = {"type": "integer"}
_STR = {"type": "string"}
QUERY_PARAMS: dict[str, tuple[dict[str, Any], str]] = {
    "page": ({"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}, "Page number (1-based)."),
    "per_page": ({"type": "integer", "minimum": 1, "maximum": 500, "default": 30}, "Items per page."),
    "skip_total": ({"type": "boolean", "default": False}, "Skip the COUNT: both totals answer -1."),
    "filter": ({"type": "string", "maxLength": 3500}, "A filter expression (see docs/filters.md)."),
    "sort": ({"type": "string", "maxLength": 3500}, "Comma-separated fields, `-` for descending."),
    "fields": ({"type": "string"}, "Comma-separated fields to return (at most 64)."),
    "expand": ({"type": "string"}, "Comma-separated reference fields to expand (depth <= 3)."),
    "after": ({"type": "string"}, "Cursor paging: empty to start, then the previous `next_cursor`."),
    "account_id": ({"type": "string"}, "Superadmins: the account to act in."),
    "account": ({"type": "string", "pattern": "^[A-Za-z]{2}[0-9]{4}$"}, "Superadmins: one account's log."),
    "collection": (_STR, "Only entries about this collection."),
    "record_id": (_STR, "Only entries about this record."),
    "user_id": (_STR, "Only entries by this user."),
    "action": (_STR, "An action (`record.update`) or a family (`record.*`)."),
    "from": ({"type": "string", "format": "date-time"}, "Entries at or after this time."),
    "to": ({"type": "string", "format": "date-time"}, "Entries at or before this time."),
    "audit_sort": ({"type": "string", "enum": ["seq", "-seq", "occurred_at", "-occurred_at"]}, "Order."),
    "format": ({"type": "string", "enum": ["json", "csv"], "default": "json"}, "Export format."),
    "group_by": (_STR, "Comma-separated fields (or reference paths) to group by, at most 3."),
    "count": (_STR, "`*` or comma-separated fields to count."),
    "sum": (_STR, "Comma-separated number fields to sum."),
    "avg": (_STR, "Comma-separated number fields to average."),
    "min": (_STR, "Comma-separated fields: their smallest value per group."),
    "max": (_STR, "Comma-separated fields: their largest value per group."),
    "limit": ({"type": "integer", "minimum": 1, "maximum": 1000}, "At most this many groups."),
    "thumb": (_STR, "A thumbnail size of the field (`100x100`, `0x300`, `200x200f`) for images."),
    "download": ({"type": "string", "enum": ["1", "true"]}, "Serve as an attachment."),
    "token": (_STR, "A file token from POST /files/token (protected files)."),
    "method": (_STR, "Only requests with this HTTP method."),
    "route": (_STR, "Only requests to this route template (`/api/v1/records/{collection}`)."),
    "status": (_STR, "A status (`404`) or a class (`5xx`)."),
    "ip": (_STR, "Only requests from this client address."),
    "request_id": (_STR, "Only the request with this id."),
    "since": ({"type": "string", "format": "date-time"}, "Requests at or after this time."),
    "until": ({"type": "string", "format": "date-time"}, "Requests before this time."),
}
_PAGED = ("page", "per_page", "skip_total", "after")
_RECORD_LIST = ("filter", "sort", "fields", "expand", *_PAGED)
_AUDIT_FILTERS = ("account", "collection", "record_id", "user_id", "action", "from", "to")
_LOG_FILTERS = ("method", "route", "status", "user_id", "account_id", "ip", "request_id", "since", "until")

# --- one entry per route -----------------------------------------------------------------------

OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/health"): Op("Liveness of the process", "public", response="Status"),
    ("GET", "/live"): Op("Liveness probe", "public", response="Status"),
    ("GET", "/ready"): Op("Readiness: the database answers", "public", response="Status"),
    ("GET", ""): Op("What this API is", "public", response="ApiInfo"),
    ("GET", "/openapi.json"): Op("This document, for the calling account", "public"),
    ("GET", "/docs"): Op("The interactive API docs (HTML)", "public", media="text/html"),
    ("GET", "/docs/{name}"): Op("A file of the docs page (docs.js, docs.css)", "public", media="text/plain"),
    # records
    ("GET", "/records/{collection}"): Op("List records", "account", _RECORD_LIST, "RecordPage"),
    ("POST", "/records/{collection}"): Op("Create a record", "account", response="Record", body="RecordBody"),
    ("POST", "/records/{collection}/batch"): Op(
        "Create, update and delete records in one transaction",
        "account",
        response="BatchResult",
        body="BatchBody",
    ),
    ("GET", "/records/{collection}/{id}"): Op("Get a record", "account", ("fields", "expand"), "Record"),
    ("GET", "/records/{collection}/aggregate"): Op(
        "Grouped counts, sums and averages",
        "account",
        ("group_by", "count", "sum", "avg", "min", "max", "filter", "limit"),
    ),
    # files
    ("POST", "/files/token"): Op("A short-lived token for protected files", "user"),
    ("GET", "/files/{collection}/{record_id}/{filename}"): Op(
        "Download a file (Range, ETag, thumbnails)",
        "account",
        ("thumb", "download", "token"),
        media="application/octet-stream",
    ),
    ("GET", "/profiles/{id}/files/{filename}"): Op(
        "Download a file of a user's profile (an avatar; Range, ETag, thumbnails)",
        "account",
        ("thumb", "download", "token"),
        media="application/octet-stream",
    ),
    # realtime (the WebSocket at /realtime is described in docs/realtime.md: OpenAPI has no WebSockets)
    ("GET", "/realtime/sse"): Op(
        "Server-Sent Events: committed changes the caller may see", "account", media="text/event-stream"
    ),
    ("POST", "/realtime/subscriptions"): Op("Set an SSE client's topics", "account", body="JsonObject"),
    # user profiles
    ("GET", "/profiles"): Op(
        "List the account's users' profiles the caller may see",
        "user",
        ("filter", "sort", "expand", *_PAGED),
        "Page",
    ),
    ("GET", "/profiles/schema"): Op("The account's profile fields and users view rule", "user"),
    ("PUT", "/profiles/schema"): Op(
        "Define the account's profile fields and users view rule", "admin", body="JsonObject"
    ),
    ("GET", "/profiles/{id}"): Op("A user's profile, as the caller may see it", "user", ("expand",)),
    ("PATCH", "/profiles/{id}"): Op(
        "Change a user's profile (audited; multipart/form-data for files)",
        "user",
        ("expand",),
        body="JsonObject",
    ),
    ("PATCH", "/records/{collection}/{id}"): Op(
        "Update a record", "account", response="Record", body="RecordBody"
    ),
    ("PUT", "/records/{collection}/{id}"): Op(
        "Replace a record", "account", response="Record", body="RecordBody"
    ),
    ("DELETE", "/records/{collection}/{id}"): Op("Delete a record", "account"),
    ("POST", "/records/{collection}/{id}/sign"): Op("Sign a record electronically", "user"),
    ("GET", "/records/{collection}/{id}/signatures"): Op("A record's signatures", "account"),
    ("GET", "/records/{collection}/{id}/history"): Op("A record's audit history", "account"),
    # collections and macros
    ("GET", "/collections"): Op("List collections", "admin", response="Page"),
    ("POST", "/collections"): Op("Create a collection", "superadmin", body="CollectionBody"),
    ("GET", "/collections/{name}"): Op("Get a collection", "admin"),
    ("PATCH", "/collections/{name}"): Op("Change a collection", "superadmin", body="CollectionPatch"),
    ("DELETE", "/collections/{name}"): Op("Delete a collection and its records", "superadmin"),
    ("POST", "/collections/{name}/rules/test"): Op("Evaluate a rule for a user", "superadmin"),
    ("GET", "/collections/export"): Op("Every collection definition, as one list", "superadmin"),
    ("POST", "/collections/import"): Op(
        "Create or change collections from definitions (`?dry_run=true`)", "superadmin", body="Definitions"
    ),
    # operations: backups, request logs, metrics
    ("GET", "/backups"): Op("Backup archives, the running backup and the schedule", "superadmin"),
    ("POST", "/backups"): Op("Make a backup archive now (audited)", "superadmin"),
    ("GET", "/backups/{name}"): Op(
        "Download a backup archive (audited)", "superadmin", media="application/x-tar"
    ),
    ("POST", "/backups/{name}/verify"): Op("Verify a backup archive", "superadmin"),
    ("DELETE", "/backups/{name}"): Op("Delete a backup archive (audited)", "superadmin"),
    ("GET", "/logs/requests"): Op(
        "The request log, newest first", "superadmin", (*_LOG_FILTERS, "per_page", "after")
    ),
    ("GET", "/logs/requests/per-minute"): Op("Requests per minute", "superadmin", _LOG_FILTERS),
    ("GET", "/metrics"): Op("Prometheus metrics (when enabled)", "public", media="text/plain"),
    # settings changed at run time
    ("GET", "/settings"): Op("The settings a superadmin may change at run time", "superadmin"),
    ("PATCH", "/settings"): Op("Change settings at run time (audited)", "superadmin", body="JsonObject"),
    ("POST", "/settings/test-email"): Op("Send a test email with the current mail settings", "superadmin"),
    ("GET", "/macros"): Op("List macros", "admin", response="Page"),
    ("POST", "/macros"): Op("Create a macro", "superadmin"),
    ("GET", "/macros/{name}"): Op("Get a macro", "admin"),
    ("PATCH", "/macros/{name}"): Op("Change a macro", "superadmin"),
    ("DELETE", "/macros/{name}"): Op("Delete a macro", "superadmin"),
    ("POST", "/macros/{name}/test"): Op("Run a macro", "superadmin"),
    # audit trail
    ("GET", "/audit-log"): Op("List audit entries", "admin", (*_AUDIT_FILTERS, "audit_sort", *_PAGED)),
    ("GET", "/audit-log/verify"): Op("Verify the hash chains", "admin", ("account",)),
    ("GET", "/audit-log/export"): Op("Export audit entries", "admin", (*_AUDIT_FILTERS, "format")),
    ("GET", "/audit-log/{seq}"): Op("Get an audit entry", "admin"),
    # auth
    ("POST", "/auth/register"): Op("Register an account and its first admin", "public", response="Login"),
    ("POST", "/auth/login"): Op("Log in", "public", response="Login"),
    ("POST", "/auth/refresh"): Op("Swap a refresh token for new tokens", "public", response="Tokens"),
    ("POST", "/auth/logout"): Op("End the session of a refresh token", "public"),
    ("POST", "/auth/logout-all"): Op("End every session of the caller", "user"),
    ("GET", "/auth/me"): Op("The caller", "user"),
    ("GET", "/auth/sessions"): Op("The caller's sessions", "user"),
    ("DELETE", "/auth/sessions/{id}"): Op("End one of the caller's sessions", "user"),
    ("POST", "/auth/change-password"): Op("Change the caller's password", "user"),
    ("POST", "/auth/forgot-password"): Op("Email a password reset link", "public"),
    ("POST", "/auth/reset-password"): Op("Set a new password with a reset token", "public"),
    ("POST", "/auth/verify-email/request"): Op("Email a verification link", "user"),
    ("POST", "/auth/verify-email/confirm"): Op("Confirm an email address", "public"),
    # accounts, users, groups, roles, invitations
    ("GET", "/accounts"): Op("List accounts", "superadmin", _PAGED, "Page"),
    ("POST", "/accounts"): Op("Create an account", "superadmin"),
    ("GET", "/accounts/{id}"): Op("Get an account", "admin"),
    ("PATCH", "/accounts/{id}"): Op("Change an account", "admin"),
    ("DELETE", "/accounts/{id}"): Op("Delete an account", "superadmin"),
    ("GET", "/users"): Op("List users", "admin", ("account_id", *_PAGED), "Page"),
    ("POST", "/users"): Op("Create a user", "admin"),
    ("GET", "/users/{id}"): Op("Get a user", "admin"),
    ("PATCH", "/users/{id}"): Op("Change a user", "admin"),
    ("DELETE", "/users/{id}"): Op("Delete a user", "admin"),
    ("POST", "/users/{id}/unlock"): Op("Lift a login lock", "admin"),
    ("POST", "/users/{id}/password"): Op("Set a user's password (ends its sessions)", "admin"),
    ("GET", "/groups"): Op("List groups", "admin", ("account_id", *_PAGED), "Page"),
    ("POST", "/groups"): Op("Create a group", "admin"),
    ("GET", "/groups/{id}"): Op("Get a group", "admin"),
    ("PATCH", "/groups/{id}"): Op("Change a group", "admin"),
    ("DELETE", "/groups/{id}"): Op("Delete a group", "admin"),
    ("POST", "/groups/{id}/members/{user_id}"): Op("Add a member", "admin"),
    ("DELETE", "/groups/{id}/members/{user_id}"): Op("Remove a member", "admin"),
    ("GET", "/roles"): Op("List roles", "admin", response="Page"),
    ("POST", "/roles"): Op("Create a role", "superadmin"),
    ("DELETE", "/roles/{name}"): Op("Delete a role", "superadmin"),
    ("POST", "/invitations"): Op("Invite someone by email", "admin"),
    ("GET", "/invitations"): Op("List pending invitations", "admin", ("account_id", *_PAGED), "Page"),
    ("DELETE", "/invitations/{id}"): Op("Withdraw an invitation", "admin"),
    ("POST", "/invitations/{id}/resend"): Op("Send an invitation again", "admin"),
    ("GET", "/invitations/{token}"): Op("Show an invitation by its token", "public"),
    ("POST", "/invitations/{token}/accept"): Op("Accept an invitation", "public", response="Login"),
}

_ACCESS_TEXT = {
    "public": "Anyone.",
    "account": "Anyone the collection's rules allow; anonymous callers name an account with X-Account-ID.",
    "user": "A signed-in user.",
    "admin": "An account admin (own account) or a superadmin.",
    "superadmin": "A superadmin.",
}

# --- response and body components (documentation types) ----------------------------------------


class FieldError(msgspec.Struct):
    code: str
    message: str


class Error(msgspec.Struct):
    """The one error envelope."""

    status: int
    code: str
    message: str
    fields: dict[str, FieldError]
    request_id: str


class Status(msgspec.Struct):
    status: str


class ApiInfo(msgspec.Struct):
    name: str
    version: str
    api_version: str


class Tokens(msgspec.Struct):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class Login(msgspec.Struct):
    account: dict[str, Any]
    user: dict[str, Any]
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class CollectionBody(msgspec.Struct):
    name: str
    fields: list[Field]
    rules: dict[str, str | None] = {}
    field_access: dict[str, list[str]] = {}
    audit: dict[str, bool] = {}


class CollectionPatch(msgspec.Struct):
    fields: list[Field] = []
    rules: dict[str, str | None] = {}
    field_access: dict[str, list[str]] = {}
    audit: dict[str, bool] = {}


_DOC_TYPES: tuple[type, ...] = (Error, Status, ApiInfo, Tokens, Login, CollectionBody, CollectionPatch)


def _page_schema(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": item},
            "page": _INT, "per_page": _INT, "total_items": _INT, "total_pages": _INT,
            "next_cursor": {"type": ["string", "null"]},
        },
        "required": ["items"],
    }  # fmt: skip


def _generic_components() -> dict[str, Any]:
    record = {"type": "object", "properties": {"id": _STR}, "additionalProperties": True}
    return {
        "Page": _page_schema({"type": "object"}),
        "Record": record,
        "RecordBody": {"type": "object", "additionalProperties": True},
        "RecordPage": _page_schema({"$ref": _REF.format(name="Record")}),
        "BatchBody": _batch_schema("RecordBody", "RecordBody"),
        "BatchResult": _batch_result("Record"),
        "JsonObject": {"type": "object", "additionalProperties": True},
        "Definitions": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
    }


def _batch_schema(create: str, update: str) -> dict[str, Any]:
    update_item = {"allOf": [{"$ref": _REF.format(name=update)}, {"type": "object", "required": ["id"],
                   "properties": {"id": _STR, "@if_match": _STR}}]}  # fmt: skip
    return {
        "type": "object",
        "properties": {
            "create": {"type": "array", "items": {"$ref": _REF.format(name=create)}},
            "update": {"type": "array", "items": update_item},
            "delete": {
                "type": "array",
                "items": {
                    "anyOf": [
                        _STR,
                        {
                            "type": "object",
                            "required": ["id"],
                            "properties": {"id": _STR, "_reason": _STR, "@if_match": _STR},
                            "additionalProperties": False,
                        },
                    ]
                },
            },
            "_reason": _STR,
        },
        "additionalProperties": False,
    }


def _batch_result(record: str) -> dict[str, Any]:
    items = {"type": "array", "items": {"$ref": _REF.format(name=record)}}
    return {"type": "object", "properties": {"create": items, "update": items, "delete": {"type": "array"}}}


# --- request Structs, found in the handlers ----------------------------------------------------

_READ_STRUCT_RE = re.compile(r"read_struct\(\s*request\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")
_CALL_RE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\(")


def _handler_source(handler: Callable[..., Any]) -> str:
    """The handler's source and that of the functions of its own module it calls (one level)."""
    module = inspect.getmodule(handler)
    source = inspect.getsource(handler)
    parts = [source]
    for name in dict.fromkeys(_CALL_RE.findall(source)):
        helper = getattr(module, name, None)
        if inspect.isfunction(helper) and helper is not handler and inspect.getmodule(helper) is module:
            parts.append(inspect.getsource(helper))
    return "\n".join(parts)


def request_struct(handler: Callable[..., Any]) -> type | None:
    """The msgspec Struct the handler decodes its body into, if any."""
    match = _READ_STRUCT_RE.search(_handler_source(handler))
    if match is None:
        return None
    found = getattr(inspect.getmodule(handler), match.group(1), None)
    return found if isinstance(found, type) and issubclass(found, msgspec.Struct) else None


_STATUS_RE = re.compile(r"status=(2[0-9][0-9])\b")


def success_status(handler: Callable[..., Any]) -> int:
    """201/202 where the handler says so, 204 when it answers `no_content()`, else 200."""
    source = _handler_source(handler)
    if match := _STATUS_RE.search(source):
        return int(match.group(1))
    return 204 if "no_content()" in source else 200


def reads_body(handler: Callable[..., Any]) -> bool:
    source = _handler_source(handler)
    return "read_struct(" in source or "read_json(" in source


# --- records as JSON Schema --------------------------------------------------------------------

_NULL = {"type": "null"}


def _value_schema(field: Field, *, write: bool) -> dict[str, Any]:
    """One field's value; `write` adds the option limits a body must keep."""
    opts, kind = field.options, field.type
    if kind == "text":
        schema: dict[str, Any] = {"type": "string"}
        if write:
            schema |= {k: opts[o] for k, o in (("minLength", "min_length"), ("maxLength", "max_length"))
                       if opts.get(o) is not None}  # fmt: skip
        return schema
    if kind == "number":
        schema = {"type": "integer" if opts.get("integer_only") else "number"}
        if write:
            schema |= {k: opts[k[:3]] for k in ("minimum", "maximum") if opts.get(k[:3]) is not None}
        return schema
    if kind == "select":
        one = {"type": "string", "enum": list(opts.get("values") or [])}
        return {"type": "array", "items": one, "uniqueItems": write} if opts.get("multiple") else one
    if kind == "file":
        meta = {"type": "object"}
        return {"type": "array", "items": meta} if opts.get("multiple") else meta
    if kind == "json":
        return {}
    return dict(_SIMPLE[kind])


_SIMPLE: dict[str, dict[str, Any]] = {
    "boolean": {"type": "boolean"},
    "email": {"type": "string", "format": "email", "maxLength": 254},
    "url": {"type": "string", "format": "uri", "maxLength": 2048},
    "date": {"type": "string", "format": "date"},
    "datetime": {"type": "string", "format": "date-time"},
    "reference": {"type": "string", "maxLength": 128, "description": "A record id."},
    "user": {"type": "string", "maxLength": 128, "description": "A user id."},
}
assert set(_SIMPLE) | {"text", "number", "select", "file", "json"} == set(FIELD_TYPES)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _NULL]} if schema else schema


def _described(schema: dict[str, Any], field: Field) -> dict[str, Any]:
    return {**schema, "description": f"{field.type} field" + (" (PII)" if field.pii else "")}


def record_schemas(collection: Collection, caller: Caller) -> dict[str, dict[str, Any]]:
    """`<name>.record` (what the caller reads), `<name>.create` and `<name>.update` (what it may send)."""
    from snackbase.pii import pii_masks, readable_fields

    view = readable_fields(collection, caller, "view")
    masks = pii_masks(collection, caller)
    read: dict[str, Any] = {name: {"type": "string"} for name in SYSTEM_FIELDS}
    for f in collection.fields:
        if view is None or f.name in view:
            # a masked value is a string whatever the type ("******", "j***@example.com")
            value = {"type": "string"} if f.name in masks else _value_schema(f, write=False)
            read[f.name] = _described(_nullable(value), f)
    read["expand"] = {"type": "object", "description": "Expanded references, by field name."}
    read["@etag"] = {"type": "string", "description": "In lists: the record's version (its ETag)."}
    record = {"type": "object", "properties": read, "additionalProperties": False}
    return {
        "record": record,
        "create": _write_schema(collection, caller, "create"),
        "update": _write_schema(collection, caller, "update"),
    }


def _write_schema(collection: Collection, caller: Caller, op: str) -> dict[str, Any]:
    allowed = collection.field_access.get(op, ["*"])
    writable = [f for f in collection.fields if caller.is_superadmin or "*" in allowed or f.name in allowed]
    props: dict[str, Any] = {}
    for f in writable:
        value = _value_schema(f, write=True)
        props[f.name] = _described(value if f.required else _nullable(value), f)
    props["_reason"] = {"type": "string", "description": "The audit reason (or the X-Audit-Reason header)."}
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    required = [f.name for f in writable if f.required and f.default is None]
    if op == "create" and required:
        schema["required"] = required
    return schema


def visible_collections(collections: Iterable[Collection], caller: Caller) -> list[Collection]:
    """Superadmins see every collection; others those with a rule that may let them in (a rule of
    null is superadmin-only; anonymous callers only get the public rule "")."""
    if caller.is_superadmin:
        return list(collections)
    wanted = (lambda r: r is not None) if caller.is_authenticated else (lambda r: r == "")
    return [c for c in collections if any(wanted(r) for r in c.rules.values())]


# --- the document ------------------------------------------------------------------------------

_PATH_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}")


def build_document(
    prefix: str,
    root_routes: list[tuple[str, str, Callable[..., Any]]],
    api_routes: list[tuple[str, str, Callable[..., Any]]],
    collections: list[Collection],
    caller: Caller,
) -> dict[str, Any]:
    structs = {s for _, _, h in api_routes if (s := request_struct(h)) is not None}
    types = sorted(structs | set(_DOC_TYPES), key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    components |= _generic_components()
    paths: dict[str, dict[str, Any]] = {}
    for base, table in (("", root_routes), (prefix, api_routes)):
        for method, path, handler in table:
            if method == "WS":
                continue
            op = OPERATIONS[(method, path)]
            struct = request_struct(handler)
            body = struct.__name__ if struct is not None else op.body
            operation = _operation(method, path, op, handler, body, op.response)
            paths.setdefault(base + path or "/", {})[method.lower()] = operation
    for collection in collections:
        schemas = record_schemas(collection, caller)
        names = {kind: f"{collection.name}.{kind}" for kind in schemas}
        for kind, schema in schemas.items():
            components[names[kind]] = schema
        components[f"{collection.name}.page"] = _page_schema({"$ref": _REF.format(name=names["record"])})
        components[f"{collection.name}.batch"] = _batch_schema(names["create"], names["update"])
        components[f"{collection.name}.batch_result"] = _batch_result(names["record"])
        _collection_paths(paths, prefix, collection.name, api_routes)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "SnackBase API",
            "version": __version__,
            "description": "Generated by the server from its route tables and collection definitions, "
            "as the calling account sees them. Every error answers the `Error` envelope.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {
                "Error": {
                    "description": "The error envelope.",
                    "content": {"application/json": {"schema": {"$ref": _REF.format(name="Error")}}},
                }
            },
        },
    }


# record route -> (operation id suffix, body schema, response schema) of its per-collection copy
_COLLECTION_OPS = {
    ("GET", "/records/{collection}"): ("list", None, "page"),
    ("POST", "/records/{collection}"): ("create", "create", "record"),
    ("POST", "/records/{collection}/batch"): ("batch", "batch", "batch_result"),
    ("GET", "/records/{collection}/{id}"): ("get", None, "record"),
    ("PATCH", "/records/{collection}/{id}"): ("update", "update", "record"),
    ("PUT", "/records/{collection}/{id}"): ("replace", "create", "record"),
    ("DELETE", "/records/{collection}/{id}"): ("delete", None, None),
}


def _collection_paths(
    paths: dict[str, dict[str, Any]],
    prefix: str,
    name: str,
    api_routes: list[tuple[str, str, Callable[..., Any]]],
) -> None:
    """The record routes once more with the collection filled in and its own schemas."""
    for method, path, handler in api_routes:
        kinds = _COLLECTION_OPS.get((method, path))
        if kinds is None:
            continue
        verb, body, response = (f"{name}.{k}" if k else None for k in kinds)
        op = OPERATIONS[(method, path)]
        concrete = path.replace("{collection}", name)
        operation = _operation(method, concrete, op, handler, body, response)
        # "posts.list": the dot never occurs in the generated ids of the generic routes, and collection
        # names are unique, so ids stay unique whatever a collection is called
        operation["operationId"] = verb
        operation["tags"] = [f"records: {name}"]
        paths.setdefault(prefix + concrete, {})[method.lower()] = operation


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[{}]", "", path).replace("-", "_").replace(".", "_").strip("/").split("/")
    return method.lower() + "_" + "_".join(w for w in words if w) if path.strip("/") else method.lower()


def _operation(
    method: str, path: str, op: Op, handler: Callable[..., Any], body: str | None, response: str | None
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for p in _PATH_PARAM_RE.findall(path)
    ]
    for name in op.query:
        schema, description = QUERY_PARAMS[name]
        params.append({"name": "sort" if name == "audit_sort" else name, "in": "query",
                       "required": False, "schema": schema, "description": description})  # fmt: skip
    if op.access != "public":
        params.append({"name": "X-Account-ID", "in": "header", "required": False, "schema": _STR,
                       "description": "Anonymous callers: the account (id or slug); superadmins: the "
                       "account to act in."})  # fmt: skip
    if method in ("POST", "PATCH", "PUT", "DELETE") and path.startswith(("/records", "/collections")):
        params.append({"name": "X-Audit-Reason", "in": "header", "required": False, "schema": _STR,
                       "description": "Why this change is made (percent-encoding allowed)."})  # fmt: skip
    status = success_status(handler)
    ok: dict[str, Any] = {"description": "Success."}
    if status != 204:
        schema = {"$ref": _REF.format(name=response)} if response else {"type": "object"}
        if op.media == "text/event-stream":  # each event: `event:` name, `data:` JSON text, `id:`
            event = {"type": "object", "properties": {"event": _STR, "data": _STR, "id": _STR}}
            ok["content"] = {op.media: {"schema": event}}
        elif op.media != "application/json":
            ok["content"] = {op.media: {"schema": {"type": "string"}}}
        elif path.endswith("/export"):
            ok["content"] = {"application/json": {"schema": {}}, "text/csv": {"schema": {"type": "string"}}}
        else:
            ok["content"] = {"application/json": {"schema": schema}}
    operation: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": op.summary,
        "description": "Who may call: " + _ACCESS_TEXT[op.access],
        "tags": [_tag(path)],
        "parameters": params,
        "responses": {str(status): ok, "default": {"$ref": "#/components/responses/Error"}},
    }
    if body is not None or reads_body(handler):
        schema = {"$ref": _REF.format(name=body)} if body else {"type": "object"}
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    operation["security"] = [{}] if op.access == "public" else [{"bearer": []}, {}]
    return operation


def _tag(path: str) -> str:
    first = path.strip("/").split("/", 1)[0]
    return first if first and first not in ("health", "live", "ready") else "meta"
