"""Collections import/export over HTTP (superadmin only), as `snackbase collections export/import`:

- GET /collections/export: every definition as one JSON list (the file the CLI writes);
- POST /collections/import?dry_run=true: what an import of the body (a JSON list of definitions) would
  create, update (field by field) or leave unchanged, changing nothing;
- POST /collections/import: the import itself (one transaction, audited per collection).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from snackbase.auth import require_superadmin
from snackbase.collection_defs import collection_to_json, new_collection, parse_collection_body
from snackbase.collections import Registry, export_definitions, import_definitions
from snackbase.context import change_context
from snackbase.errors import ApiError
from snackbase.web import json_response, read_json

_COMPARED = ("rules", "field_access", "audit")


async def export(request: Request) -> Response:
    await require_superadmin(request)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    return json_response(export_definitions(conn, registry))


async def import_(request: Request) -> Response:
    await require_superadmin(request)
    conn, registry = request.app.state.db.conn, request.app.state.registry
    definitions = await read_json(request)
    dry_run = request.query_params.get("dry_run", "false").lower() in ("1", "true", "yes")
    if dry_run:
        return json_response({"dry_run": True, **preview(conn, registry, definitions)})
    preview(conn, registry, definitions)  # the same checks first: a bad file answers like the dry run
    ctx = await change_context(request)
    report = import_definitions(conn, registry, definitions, ctx)
    return json_response({"dry_run": False, **report})


def preview(conn: Any, registry: Registry, definitions: Any) -> dict[str, Any]:
    """{created, updated, unchanged: [names], changes: {name: [sentences]}} without writing anything.
    Each definition is validated as POST /collections validates it (a 400 names the entry)."""
    if not isinstance(definitions, list):
        raise ApiError(400, "bad_request", "The file must hold a JSON list of collection definitions.")
    registry.refresh(conn)
    out: dict[str, Any] = {"created": [], "updated": [], "unchanged": [], "changes": {}}
    for index, body in enumerate(definitions):
        try:
            parsed = parse_collection_body(body)
        except ApiError as exc:
            label = body.get("name") if isinstance(body, dict) else None
            exc.message = (
                f"Definition {index + 1}{f' ({label})' if isinstance(label, str) else ''}: {exc.message}"
            )
            raise
        existing = registry.by_name.get(parsed["name"])
        if existing is None:
            out["created"].append(parsed["name"])
            out["changes"][parsed["name"]] = [f"new collection with {len(parsed['fields'])} field(s)"]
            continue
        lines = _differences(collection_to_json(existing), _as_json(parsed, existing))
        out["updated" if lines else "unchanged"].append(parsed["name"])
        if lines:
            out["changes"][parsed["name"]] = lines
    return out


def _as_json(parsed: dict[str, Any], existing: Any) -> dict[str, Any]:
    return collection_to_json(new_collection(parsed, id=existing.id, now=existing.created_at))


def _differences(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    now = {f["name"]: f for f in current["fields"]}
    then = {f["name"]: f for f in wanted["fields"]}
    lines = [f"add field {n} ({then[n]['type']})" for n in then if n not in now]
    lines += [f"drop field {n} and its values" for n in now if n not in then]
    lines += [f"change field {n}" for n in then if n in now and then[n] != now[n]]
    lines += [f"change {key.replace('_', ' ')}" for key in _COMPARED if current.get(key) != wanted.get(key)]
    return lines


routes = [
    ("GET", "/collections/export", export),
    ("POST", "/collections/import", import_),
]
