"""Collections API: who may define them, validation, schema changes in one transaction, deletion."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.db import fetch_all, fetch_value
from snackbase.ids import uuid7
from tests.factories import User, make_account, make_superadmin, make_user

API = "/api/v1"
# Every test runs on SQLite and on PostgreSQL (tests/conftest.py, `backend`).
BACKENDS = ("sqlite", "postgresql")
POSTS = {
    "name": "posts",
    "fields": [{"name": "title", "type": "text", "required": True}, {"name": "views", "type": "number"}],
}


@pytest.fixture
def sa(client: TestClient) -> User:
    return make_superadmin(client)


def conn(client: TestClient) -> Any:
    return client.app.state.db.conn  # type: ignore[attr-defined]


def audit_count(client: TestClient) -> int:
    return int(fetch_value(conn(client), "SELECT count(*) FROM audit_log"))


# The table as the engine's catalog describes it (SQLite's sqlite_master/PRAGMAs, PostgreSQL's catalogs).
def on_postgres(client: TestClient) -> bool:
    return getattr(client.app.state, "backend", "sqlite") == "postgresql"


def table_columns(client: TestClient, table: str) -> list[str]:
    if on_postgres(client):
        sql = (
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? "
            "ORDER BY ordinal_position"
        )
        return [r["column_name"] for r in fetch_all(conn(client), sql, (table,))]
    return [r["name"] for r in fetch_all(conn(client), f"PRAGMA table_info({table})")]


def table_indexes(client: TestClient, table: str) -> list[str]:
    if on_postgres(client):
        return [
            r["indexname"]
            for r in fetch_all(
                conn(client),
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ?",
                (table,),
            )
        ]
    return [r["name"] for r in fetch_all(conn(client), f"PRAGMA index_list({table})")]


def table_schema(client: TestClient, table: str) -> list[dict[str, Any]]:
    if on_postgres(client):
        sql = (
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position"
        )
        return fetch_all(conn(client), sql, (table,)) + [
            {"index": n} for n in sorted(table_indexes(client, table))
        ]
    return fetch_all(conn(client), "SELECT sql FROM sqlite_master WHERE tbl_name = ?", (table,))


def test_create_get_list_delete(client: TestClient, sa: User) -> None:
    created = client.post(f"{API}/collections", headers=sa.headers, json=POSTS)
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "posts" and body["rules"] == dict.fromkeys(
        ("list", "view", "create", "update", "delete")
    )
    assert client.get(f"{API}/collections/posts", headers=sa.headers).json()["id"] == body["id"]
    assert [c["name"] for c in client.get(f"{API}/collections", headers=sa.headers).json()["items"]] == [
        "posts"
    ]
    assert client.delete(f"{API}/collections/posts", headers=sa.headers).status_code == 204
    assert client.get(f"{API}/collections/posts", headers=sa.headers).status_code == 404
    assert table_columns(client, "c_posts") == []


def test_table_has_system_columns_and_indexes(client: TestClient, sa: User) -> None:
    client.post(f"{API}/collections", headers=sa.headers, json=POSTS)
    columns = table_columns(client, "c_posts")
    assert columns[:6] == ["id", "account_id", "created_at", "created_by", "updated_at", "updated_by"]
    indexes = table_indexes(client, "c_posts")
    assert any("created_at" in name for name in indexes)


@pytest.mark.parametrize("who", ["anonymous", "user", "admin"])
def test_only_superadmins_define_collections(client: TestClient, sa: User, who: str) -> None:
    client.post(f"{API}/collections", headers=sa.headers, json=POSTS)
    account = make_account(client)
    headers = {} if who == "anonymous" else make_user(client, account, who).headers
    expected = 401 if who == "anonymous" else 403
    assert client.post(f"{API}/collections", headers=headers, json=POSTS).status_code == expected
    patched = client.patch(f"{API}/collections/posts", headers=headers, json={"rules": {}})
    assert patched.status_code == expected
    assert client.delete(f"{API}/collections/posts", headers=headers).status_code == expected
    read = 200 if who == "admin" else expected  # account admins read definitions, for their record forms
    assert client.get(f"{API}/collections", headers=headers).status_code == read
    assert client.get(f"{API}/collections/posts", headers=headers).status_code == read


BAD_BODIES = [
    ("sql in name", {"name": 'posts"; DROP TABLE users; --', "fields": []}, "name"),
    ("uppercase name", {"name": "Posts", "fields": []}, "name"),
    ("reserved name", {"name": "users", "fields": []}, "name"),
    ("reserved field", {"name": "p", "fields": [{"name": "id", "type": "text"}]}, "fields.0.name"),
    ("quote in field", {"name": "p", "fields": [{"name": 'a"b', "type": "text"}]}, "fields.0.name"),
    ("unknown type", {"name": "p", "fields": [{"name": "a", "type": "blob"}]}, "fields.0.type"),
    (
        "select without values",
        {"name": "p", "fields": [{"name": "a", "type": "select"}]},
        "fields.0.options.values",
    ),
    (
        "duplicate fields",
        {"name": "p", "fields": [{"name": "a", "type": "text"}, {"name": "a", "type": "text"}]},
        "fields.1.name",
    ),
    (
        "bad rule",
        {"name": "p", "fields": [{"name": "a", "type": "text"}], "rules": {"list": "a = "}},
        "rules.list",
    ),
    ("rule on unknown field", {"name": "p", "fields": [], "rules": {"view": "nope = 1"}}, "rules.view"),
    ("unknown macro", {"name": "p", "fields": [], "rules": {"view": "@steal()"}}, "rules.view"),
    (
        "reference to missing collection",
        {"name": "p", "fields": [{"name": "r", "type": "reference", "options": {"collection": "ghost"}}]},
        "fields",
    ),
    ("unknown key", {"name": "p", "fields": [], "evil": 1}, "evil"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_definitions_are_refused_and_change_nothing(
    client: TestClient, sa: User, case: str, body: dict, field: str
) -> None:
    before = audit_count(client)
    response = client.post(f"{API}/collections", headers=sa.headers, json=body)
    assert response.status_code == 400, response.text
    assert any(key == field or key.startswith(field + ".") for key in response.json()["fields"]), (
        response.json()
    )
    assert fetch_value(conn(client), "SELECT count(*) FROM collections") == 0
    assert audit_count(client) == before


def test_duplicate_name_is_409(client: TestClient, sa: User) -> None:
    client.post(f"{API}/collections", headers=sa.headers, json=POSTS)
    assert client.post(f"{API}/collections", headers=sa.headers, json=POSTS).status_code == 409


def seed(client: TestClient, sa: User, titles: list[str | None]) -> str:
    account = make_account(client)
    for title in titles:
        conn(client).execute(
            "INSERT INTO c_posts (id, account_id, created_at, updated_at, title) VALUES (?, ?, 'x', 'x', ?)",
            (uuid7(), account, title),
        )
    return account


def test_rename_keeps_data_and_add_drop(client: TestClient, sa: User) -> None:
    client.post(f"{API}/collections", headers=sa.headers, json=POSTS)
    seed(client, sa, ["hello"])
    fields = [
        {"name": "headline", "previous_name": "title", "type": "text", "required": True},
        {"name": "score", "type": "number"},
    ]
    response = client.patch(f"{API}/collections/posts", headers=sa.headers, json={"fields": fields})
    assert response.status_code == 200, response.text
    assert [f["name"] for f in response.json()["fields"]] == ["headline", "score"]
    assert fetch_all(conn(client), "SELECT headline, score FROM c_posts") == [
        {"headline": "hello", "score": None}
    ]


@pytest.mark.parametrize(
    ("titles", "change"),
    [
        (["a", None], {"name": "title", "type": "text", "required": True}),
        (["dup", "dup"], {"name": "title", "type": "text", "unique": True}),
    ],
    ids=["required on nulls", "unique on duplicates"],
)
def test_change_the_data_cannot_satisfy_is_409_and_changes_nothing(
    client: TestClient, sa: User, titles: list, change: dict
) -> None:
    client.post(
        f"{API}/collections",
        headers=sa.headers,
        json={"name": "posts", "fields": [{"name": "title", "type": "text"}]},
    )
    seed(client, sa, titles)
    before_schema = table_schema(client, "c_posts")
    before_audit = audit_count(client)
    response = client.patch(f"{API}/collections/posts", headers=sa.headers, json={"fields": [change]})
    assert response.status_code == 409, response.text
    assert table_schema(client, "c_posts") == before_schema
    assert client.get(f"{API}/collections/posts", headers=sa.headers).json()["fields"][0]["required"] is False
    assert audit_count(client) == before_audit


def test_deleting_a_referenced_collection_is_409(client: TestClient, sa: User) -> None:
    client.post(f"{API}/collections", headers=sa.headers, json=POSTS)
    client.post(
        f"{API}/collections",
        headers=sa.headers,
        json={
            "name": "comments",
            "fields": [{"name": "post", "type": "reference", "options": {"collection": "posts"}}],
        },
    )
    response = client.delete(f"{API}/collections/posts", headers=sa.headers)
    assert response.status_code == 409 and response.json()["code"] == "collection_in_use"


def test_collection_changes_are_audited(client: TestClient, sa: User) -> None:
    client.post(f"{API}/collections", headers=sa.headers, json=POSTS)
    client.patch(f"{API}/collections/posts", headers=sa.headers, json={"rules": {"list": ""}})
    client.delete(f"{API}/collections/posts", headers=sa.headers)
    actions = [r["action"] for r in fetch_all(conn(client), "SELECT action FROM audit_log ORDER BY seq")]
    assert actions == ["collection.create", "collection.update", "collection.delete"]


def test_rules_are_saved_and_merged(client: TestClient, sa: User) -> None:
    client.post(
        f"{API}/collections", headers=sa.headers, json={**POSTS, "rules": {"list": "", "view": "views > 1"}}
    )
    response = client.patch(f"{API}/collections/posts", headers=sa.headers, json={"rules": {"view": None}})
    assert response.json()["rules"]["list"] == "" and response.json()["rules"]["view"] is None


def test_changes_that_rebuild_on_sqlite_keep_the_data_on_both_engines(client: TestClient, sa: User) -> None:
    """What SQLite rebuilds the table for (on PostgreSQL: ALTERs): a swap of two names, a new default,
    required, single -> multiple, a reference's on_delete; the rows keep their values."""
    people = {
        "name": "people",
        "fields": [
            {"name": "a", "type": "text"},
            {"name": "b", "type": "text"},
            {"name": "tag", "type": "select", "options": {"values": ["x", "y"]}},
            {"name": "boss", "type": "reference", "options": {"collection": "people"}},
        ],
        "rules": dict.fromkeys(("list", "view", "create", "update", "delete"), ""),
    }
    assert client.post(f"{API}/collections", headers=sa.headers, json=people).status_code == 201
    headers = {**sa.headers, "x-account-id": make_account(client)}
    boss = client.post(
        f"{API}/records/people", headers=headers, json={"a": "A1", "b": "B1", "tag": "x"}
    ).json()
    client.post(f"{API}/records/people", headers=headers, json={"a": "A2", "b": "B2", "boss": boss["id"]})
    assert client.delete(f"{API}/records/people/{boss['id']}", headers=headers).status_code == 409  # restrict
    fields = [
        {"name": "a", "previous_name": "b", "type": "text", "required": True},
        {"name": "b", "previous_name": "a", "type": "text", "default": "none"},
        {"name": "tag", "type": "select", "options": {"values": ["x", "y"], "multiple": True}},
        {"name": "boss", "type": "reference", "options": {"collection": "people", "on_delete": "cascade"}},
    ]
    changed = client.patch(f"{API}/collections/people", headers=sa.headers, json={"fields": fields})
    assert changed.status_code == 200, changed.text
    rows = client.get(f"{API}/records/people?sort=b", headers=headers).json()["items"]
    assert [(r["a"], r["b"], r["tag"]) for r in rows] == [("B1", "A1", ["x"]), ("B2", "A2", None)]
    assert client.post(f"{API}/records/people", headers=headers, json={"a": "C"}).json()["b"] == "none"
    assert client.delete(f"{API}/records/people/{boss['id']}", headers=headers).status_code == 204  # cascade
    assert [r["a"] for r in client.get(f"{API}/records/people", headers=headers).json()["items"]] == ["C"]
