"""GET /api/v1/openapi.json: a valid OpenAPI 3.1 document covering every route, with per-collection record
schemas as the caller sees them (field access, PII masks), cached per collections version."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from snackbase import openapi
from snackbase.app import api_tables, root_tables

BACKENDS = ("sqlite", "postgresql")  # on PostgreSQL the document covers the routes ported there

POSTS = {
    "name": "posts",
    "fields": [
        {"name": "title", "type": "text", "required": True, "options": {"max_length": 200}},
        {"name": "status", "type": "select", "options": {"values": ["draft", "published"]}},
        {"name": "tags", "type": "select", "options": {"values": ["a", "b"], "multiple": True}},
        {"name": "views", "type": "number", "options": {"min": 0, "integer_only": True}},
        {"name": "email", "type": "email", "pii": True, "mask": "email"},
        {"name": "secret", "type": "text"},
        {"name": "published_at", "type": "datetime"},
        {"name": "meta", "type": "json"},
    ],
    "rules": {"list": "", "view": "", "create": "@request.auth.id != null", "update": None, "delete": None},
    "field_access": {"list": ["title", "status", "tags", "views", "email"],
                     "view": ["title", "status", "tags", "views", "email"]},
}  # fmt: skip
HIDDEN = {"name": "hidden", "fields": [{"name": "x", "type": "text"}]}  # every rule null: superadmins only


@pytest.fixture
def seeded(client: TestClient, actors: dict[str, Any]) -> dict[str, Any]:
    su = actors["superadmin"]["headers"]
    for body in (POSTS, HIDDEN):
        assert client.post("/api/v1/collections", json=body, headers=su).status_code == 201
    return actors


def document(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json", headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def all_routes(client: TestClient) -> set[tuple[str, str]]:
    """The routes the app mounted (GET /metrics only when metrics are enabled)."""
    root, api = client.app.state.route_tables  # type: ignore[attr-defined]
    routes = {(m, p) for table in root for m, p, _ in table}
    return routes | {(m, "/api/v1" + p) for table in api for m, p, _ in table if m != "WS"}


@pytest.mark.parametrize("who", ["anonymous", "user", "superadmin"])
def test_the_document_is_valid_openapi_3_1(client: TestClient, seeded: dict[str, Any], who: str) -> None:
    doc = document(client, seeded[who]["headers"])
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_route_is_in_the_document_and_every_operation_is_a_route(client: TestClient) -> None:
    doc = document(client)
    documented = {(m.upper(), "" if p == "/" else p) for p, ops in doc["paths"].items() for m in ops}
    expected = all_routes(client)
    assert expected == documented
    # and the annotations table has exactly one entry per route
    tables = {(m, p) for t in [*root_tables(), *api_tables()] for m, p, _ in t if m != "WS"}
    assert set(openapi.OPERATIONS) == tables


def test_request_bodies_come_from_the_handlers_structs(client: TestClient) -> None:
    doc = document(client)
    login = doc["paths"]["/api/v1/auth/login"]["post"]
    ref = login["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert set(schema["required"]) == {"email", "password", "account_identifier"}
    assert schema["properties"]["email"]["maxLength"] == 320
    assert "201" in doc["paths"]["/api/v1/collections"]["post"]["responses"]
    assert "204" in doc["paths"]["/api/v1/collections/{name}"]["delete"]["responses"]
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"status", "code", "message", "fields", "request_id"}


def test_superadmins_see_every_collection_with_every_field(
    client: TestClient, seeded: dict[str, Any]
) -> None:
    doc = document(client, seeded["superadmin"]["headers"])
    schemas = doc["components"]["schemas"]
    assert "/api/v1/records/hidden" in doc["paths"]
    record = schemas["posts.record"]["properties"]
    assert {"id", "account_id", "created_at", "title", "secret", "meta", "expand"} <= set(record)
    create = schemas["posts.create"]
    assert create["required"] == ["title"]
    assert create["properties"]["title"]["maxLength"] == 200
    assert create["properties"]["views"]["anyOf"][0] == {"type": "integer", "minimum": 0}
    assert create["properties"]["status"]["anyOf"][0]["enum"] == ["draft", "published"]
    assert create["properties"]["tags"]["anyOf"][0]["items"]["enum"] == ["a", "b"]
    assert create["properties"]["published_at"]["anyOf"][0]["format"] == "date-time"
    assert record["email"]["anyOf"][0]["format"] == "email"  # superadmins read PII in clear
    created = doc["paths"]["/api/v1/records/posts"]["post"]
    assert created["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("posts.create")


def test_users_see_their_view_of_a_collection(client: TestClient, seeded: dict[str, Any]) -> None:
    doc = document(client, seeded["user"]["headers"])
    assert "/api/v1/records/hidden" not in doc["paths"]
    record = doc["components"]["schemas"]["posts.record"]["properties"]
    assert "secret" not in record and "meta" not in record  # field access of view
    assert record["email"]["anyOf"][0] == {"type": "string"}  # masked: a string, not an email
    anonymous = document(client, seeded["anonymous"]["headers"])
    assert "/api/v1/records/posts" in anonymous["paths"]  # public list rule ""


def test_the_document_is_cached_per_collections_version(client: TestClient, seeded: dict[str, Any]) -> None:
    su = seeded["superadmin"]["headers"]
    first = client.get("/api/v1/openapi.json", headers=su).content
    assert client.get("/api/v1/openapi.json", headers=su).content == first
    cache = client.app.state.openapi_cache  # type: ignore[attr-defined]
    assert len(cache) == 1
    patch = {"fields": [*POSTS["fields"], {"name": "extra", "type": "boolean"}]}  # type: ignore[misc]
    assert client.patch("/api/v1/collections/posts", json=patch, headers=su).status_code == 200
    after = document(client, su)
    assert "extra" in after["components"]["schemas"]["posts.record"]["properties"]


def test_record_schemas_match_what_the_server_answers(client: TestClient, seeded: dict[str, Any]) -> None:
    """A record the server writes validates against the document's schema for it."""
    from jsonschema import Draft202012Validator

    user = seeded["user"]["headers"]
    doc = document(client, user)
    body = {"title": "Hello", "status": "draft", "tags": ["a"], "views": 3, "email": "jo@example.com"}
    created = client.post("/api/v1/records/posts", json=body, headers=user)
    assert created.status_code == 201, created.text
    schema = {**doc["components"]["schemas"]["posts.record"], "components": doc["components"]}
    Draft202012Validator(_inline(schema, doc)).validate(created.json())
    Draft202012Validator(_inline(doc["components"]["schemas"]["posts.create"], doc)).validate(body)


def _inline(schema: Any, doc: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]], doc)
        return {k: _inline(v, doc) for k, v in schema.items() if k != "components"}
    if isinstance(schema, list):
        return [_inline(v, doc) for v in schema]
    return schema


def test_operation_ids_stay_unique_whatever_collections_are_called(
    client: TestClient, seeded: dict[str, Any]
) -> None:
    su = seeded["superadmin"]["headers"]
    for name in ("collection", "by_collection", "records"):
        body = {"name": name, "fields": [{"name": "x", "type": "text"}]}
        response = client.post("/api/v1/collections", json=body, headers=su)
        assert response.status_code in (201, 400), response.text  # 400: a reserved name
    doc = document(client, su)
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert "collection.list" in ids and "posts.create" in ids
    validate(doc)
