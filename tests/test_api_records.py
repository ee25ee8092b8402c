"""Records API: CRUD, validation, tenancy, rules, filter/sort/fields/expand, paging, batch, audit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.db import fetch_value
from tests.factories import User, make_account, make_superadmin, make_user

API = "/api/v1"
# Every test runs on SQLite and on PostgreSQL (tests/conftest.py, `backend`).
BACKENDS = ("sqlite", "postgresql")
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}
FIELDS = [
    {"name": "title", "type": "text", "required": True, "options": {"max_length": 50}},
    {"name": "views", "type": "number"},
    {"name": "done", "type": "boolean"},
    {"name": "email", "type": "email"},
    {"name": "tags", "type": "select", "options": {"values": ["a", "b", "c"], "multiple": True}},
    {"name": "meta", "type": "json"},
    {"name": "when", "type": "datetime"},
    {"name": "code", "type": "text", "unique": True},
]


@dataclass
class World:
    client: TestClient
    sa: User
    account: str
    other_account: str
    admin: User
    user: User
    user2: User
    other: User

    def audit_count(self) -> int:
        return int(fetch_value(self.client.app.state.db.conn, "SELECT count(*) FROM audit_log"))  # type: ignore[attr-defined]

    def define(self, name: str, fields: list[dict], rules: dict | None = None, **extra: Any) -> None:
        body = {"name": name, "fields": fields, "rules": PUBLIC if rules is None else rules, **extra}
        response = self.client.post(f"{API}/collections", headers=self.sa.headers, json=body)
        assert response.status_code == 201, response.text

    def create(self, who: User, collection: str, body: dict, status: int = 201) -> dict:
        response = self.client.post(f"{API}/records/{collection}", headers=who.headers, json=body)
        assert response.status_code == status, response.text
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def w(client: TestClient) -> World:
    account, other_account = make_account(client, "Acme"), make_account(client, "Globex")
    world = World(
        client,
        make_superadmin(client),
        account,
        other_account,
        make_user(client, account, "admin"),
        make_user(client, account),
        make_user(client, account),
        make_user(client, other_account),
    )
    world.define("posts", FIELDS)
    return world


def test_round_trip_keeps_types(w: World) -> None:
    body = {
        "title": "Hello",
        "views": 5,
        "done": True,
        "email": "a@b.co",
        "tags": ["b", "a"],
        "meta": {"k": [1, 2.5]},
        "when": "2026-01-02T03:04:05+01:00",
        "code": "X1",
    }
    record = w.create(w.user, "posts", body)
    assert record["views"] == 5 and isinstance(record["views"], int) and record["done"] is True
    assert record["meta"] == {"k": [1, 2.5]} and sorted(record["tags"]) == ["a", "b"]
    assert record["when"] == "2026-01-02T02:04:05.000Z"
    assert record["account_id"] == w.account and record["created_by"] == w.user.id
    got = w.client.get(f"{API}/records/posts/{record['id']}", headers=w.user.headers).json()
    assert got == record
    patched = w.client.patch(
        f"{API}/records/posts/{record['id']}", headers=w.user.headers, json={"views": 5.5, "done": False}
    ).json()
    assert patched["views"] == 5.5 and patched["done"] is False and patched["title"] == "Hello"
    assert patched["updated_at"] >= record["updated_at"]


def test_put_replaces_the_whole_record(w: World) -> None:
    record = w.create(w.user, "posts", {"title": "A", "views": 3})
    replaced = w.client.put(
        f"{API}/records/posts/{record['id']}", headers=w.user.headers, json={"title": "B"}
    )
    assert (
        replaced.status_code == 200 and replaced.json()["views"] is None and replaced.json()["title"] == "B"
    )


BAD_RECORDS = [
    ({}, "title", "required"),
    ({"title": 5}, "title", "invalid_type"),
    ({"title": "x" * 51}, "title", "too_long"),
    ({"title": "a", "views": "5"}, "views", "invalid_type"),
    ({"title": "a", "views": True}, "views", "invalid_type"),
    ({"title": "a", "done": "yes"}, "done", "invalid_type"),
    ({"title": "a", "email": "not-an-email"}, "email", "invalid_email"),
    ({"title": "a", "tags": ["z"]}, "tags", "not_in_values"),
    ({"title": "a", "when": "yesterday"}, "when", "invalid_datetime"),
    ({"title": "a", "nope": 1}, "nope", "unknown_field"),
    ({"title": "a", "id": "mine"}, "id", "read_only_field"),
    ({"title": "a", "account_id": "XX0000"}, "account_id", "read_only_field"),
    ({"title": "a", "created_by": "someone"}, "created_by", "read_only_field"),
]


@pytest.mark.parametrize(("body", "field", "code"), BAD_RECORDS, ids=[f"{c[1]}-{c[2]}" for c in BAD_RECORDS])
def test_invalid_records_are_refused_and_change_nothing(w: World, body: dict, field: str, code: str) -> None:
    before = w.audit_count()
    response = w.client.post(f"{API}/records/posts", headers=w.user.headers, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["fields"][field]["code"] == code
    assert w.client.get(f"{API}/records/posts", headers=w.user.headers).json()["total_items"] == 0
    assert w.audit_count() == before


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{", 400),
        (b"[1, 2]", 400),
        (b'"text"', 400),
        (b"", 400),
        (b'{"title": "a"' + b" " * 1_100_000 + b"}", 413),
    ],
    ids=["malformed", "array", "string", "empty", "huge"],
)
def test_bad_bodies(w: World, content: bytes, status: int) -> None:
    response = w.client.post(
        f"{API}/records/posts",
        headers={**w.user.headers, "content-type": "application/json"},
        content=content,
    )
    assert response.status_code == status


def test_unknown_collection_is_404(w: World) -> None:
    assert w.client.get(f"{API}/records/ghosts", headers=w.user.headers).status_code == 404


def test_tenants_never_see_each_other(w: World) -> None:
    mine = w.create(w.user, "posts", {"title": "mine"})
    theirs = w.create(w.other, "posts", {"title": "theirs"})
    listed = w.client.get(f"{API}/records/posts", headers=w.user.headers).json()
    assert [r["title"] for r in listed["items"]] == ["mine"] and listed["total_items"] == 1
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = w.client.request(
            method,
            f"{API}/records/posts/{theirs['id']}",
            headers=w.user.headers,
            json={"title": "hijack"} if method in ("PATCH", "PUT") else None,
        )
        assert response.status_code == 404, method
    assert (
        w.client.get(f"{API}/records/posts/{theirs['id']}", headers=w.other.headers).json()["title"]
        == "theirs"
    )
    assert w.client.get(f"{API}/records/posts/{mine['id']}", headers=w.other.headers).status_code == 404


def test_superadmin_sees_all_and_names_the_account_to_write(w: World) -> None:
    w.create(w.user, "posts", {"title": "a"})
    w.create(w.other, "posts", {"title": "b"})
    assert w.client.get(f"{API}/records/posts", headers=w.sa.headers).json()["total_items"] == 2
    scoped = w.client.get(f"{API}/records/posts", headers={**w.sa.headers, "x-account-id": w.other_account})
    assert [r["title"] for r in scoped.json()["items"]] == ["b"]
    refused = w.client.post(f"{API}/records/posts", headers=w.sa.headers, json={"title": "c"})
    assert refused.status_code == 400 and refused.json()["code"] == "account_required"
    created = w.client.post(
        f"{API}/records/posts", headers={**w.sa.headers, "x-account-id": w.account}, json={"title": "c"}
    )
    assert created.status_code == 201 and created.json()["account_id"] == w.account


def test_anonymous_needs_an_account(w: World) -> None:
    assert w.client.get(f"{API}/records/posts").status_code == 401
    w.create(w.user, "posts", {"title": "public"})
    listed = w.client.get(f"{API}/records/posts", headers={"x-account-id": w.account})
    assert listed.status_code == 200 and listed.json()["total_items"] == 1
    assert w.client.get(f"{API}/records/posts", headers={"x-account-id": "ZZ9999"}).status_code == 404


def test_unique_is_per_account(w: World) -> None:
    w.create(w.user, "posts", {"title": "a", "code": "SAME"})
    w.create(w.other, "posts", {"title": "b", "code": "SAME"})
    response = w.client.post(
        f"{API}/records/posts", headers=w.user2.headers, json={"title": "c", "code": "SAME"}
    )
    assert response.status_code == 400 and response.json()["fields"]["code"]["code"] == "not_unique"


# --- rules -------------------------------------------------------------------------------------

OWNER_RULES = {
    "list": "@owns_record()",
    "view": "@owns_record()",
    "create": "@is_authenticated()",
    "update": "@owns_record()",
    "delete": "@owns_record()",
}


def test_null_rules_are_superadmin_only(w: World) -> None:
    w.define("secrets", [{"name": "v", "type": "text"}], rules={})
    assert w.client.get(f"{API}/records/secrets", headers=w.admin.headers).status_code == 403
    assert (
        w.client.post(f"{API}/records/secrets", headers=w.admin.headers, json={"v": "x"}).status_code == 403
    )
    ok = w.client.post(
        f"{API}/records/secrets", headers={**w.sa.headers, "x-account-id": w.account}, json={"v": "x"}
    )
    assert ok.status_code == 201


def test_owner_rules(w: World) -> None:
    w.define("notes", [{"name": "text", "type": "text"}], rules=OWNER_RULES)
    note = w.create(w.user, "notes", {"text": "private"})
    assert w.client.get(f"{API}/records/notes", headers=w.user2.headers).json()["total_items"] == 0
    for method in ("GET", "PATCH", "DELETE"):
        response = w.client.request(
            method,
            f"{API}/records/notes/{note['id']}",
            headers=w.user2.headers,
            json={"text": "x"} if method == "PATCH" else None,
        )
        assert response.status_code == 404
    assert (
        w.client.post(
            f"{API}/records/notes", json={"text": "anon"}, headers={"x-account-id": w.account}
        ).status_code
        == 403
    )
    assert w.client.delete(f"{API}/records/notes/{note['id']}", headers=w.user.headers).status_code == 204


def test_create_rule_sees_the_new_values(w: World) -> None:
    w.define(
        "tickets",
        [{"name": "priority", "type": "number"}],
        rules={**PUBLIC, "create": 'priority <= 3 || @has_role("admin")', "update": "priority <= 3"},
    )
    assert w.create(w.user, "tickets", {"priority": 2})["priority"] == 2
    w.create(w.user, "tickets", {"priority": 9}, status=403)
    assert w.create(w.admin, "tickets", {"priority": 9})["priority"] == 9
    low = w.create(w.user, "tickets", {"priority": 1})
    raised = w.client.patch(
        f"{API}/records/tickets/{low['id']}", headers=w.user.headers, json={"priority": 7}
    )
    assert raised.status_code == 403
    assert w.client.get(f"{API}/records/tickets/{low['id']}", headers=w.user.headers).json()["priority"] == 1


def test_request_auth_in_rules(w: World) -> None:
    w.define("inbox", [{"name": "to", "type": "text"}], rules={**PUBLIC, "list": "to = @request.auth.email"})
    w.create(w.user, "inbox", {"to": w.user.email})
    w.create(w.user, "inbox", {"to": w.user2.email})
    assert w.client.get(f"{API}/records/inbox", headers=w.user2.headers).json()["total_items"] == 1
    assert (
        w.client.get(f"{API}/records/inbox", headers={"x-account-id": w.account}).json()["total_items"] == 0
    )


# --- querying ----------------------------------------------------------------------------------


def seed_posts(w: World, count: int) -> list[dict]:
    body = {"create": [{"title": f"post {i:02d}", "views": i % 7, "done": i % 2 == 0} for i in range(count)]}
    response = w.client.post(f"{API}/records/posts/batch", headers=w.user.headers, json=body)
    assert response.status_code == 200, response.text
    return response.json()["create"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ("views > 4", 8),
        ("views >= 5 && done = true", 4),
        ("title ~ 'post 1'", 10),
        ("done = false || views = 0", 16),
        ("title ~ 'POST 0%'", 10),
        ("views IN (1, 2)", 8),
        ("email IS NULL", 28),
        ("!(views > 0)", 4),
    ],
)
def test_filters(w: World, filter_: str, expected: int) -> None:
    seed_posts(w, 28)
    response = w.client.get(f"{API}/records/posts", headers=w.user.headers, params={"filter": filter_})
    assert response.status_code == 200, response.text
    assert response.json()["total_items"] == expected


@pytest.mark.parametrize(
    ("param", "value", "code"),
    [
        ("filter", "views >", "invalid_filter"),
        ("filter", "password = 'x'", "invalid_filter"),
        ("filter", "title = 'a'; DROP TABLE c_posts", "invalid_filter"),
        ("filter", "x" * 4000, "invalid_filter"),
        ("filter", 'title = "\'" OR 1=1 --', "invalid_filter"),
        ("sort", "-nope", "invalid_sort"),
        ("sort", "title;DROP", "invalid_sort"),
        ("fields", "title,secret", "bad_request"),
        ("expand", "title", "bad_request"),
        ("per_page", "501", "bad_request"),
        ("page", "0", "bad_request"),
        ("after", "garbage", "invalid_cursor"),
    ],
)
def test_bad_query_parameters(w: World, param: str, value: str, code: str) -> None:
    seed_posts(w, 2)
    response = w.client.get(f"{API}/records/posts", headers=w.user.headers, params={param: value})
    assert response.status_code == 400 and response.json()["code"] == code, response.text
    assert fetch_value(w.client.app.state.db.conn, "SELECT count(*) FROM c_posts") == 2  # type: ignore[attr-defined]


def test_sort_fields_and_paging(w: World) -> None:
    seed_posts(w, 12)
    page = w.client.get(
        f"{API}/records/posts",
        headers=w.user.headers,
        params={"sort": "-views,title", "per_page": 5, "page": 2, "fields": "title,views"},
    ).json()
    assert (page["page"], page["per_page"], page["total_items"], page["total_pages"]) == (2, 5, 12, 3)
    assert all(set(item) == {"title", "views"} for item in page["items"])
    everything = w.client.get(
        f"{API}/records/posts", headers=w.user.headers, params={"sort": "-views,title", "per_page": 500}
    ).json()["items"]
    assert [i["title"] for i in page["items"]] == [i["title"] for i in everything[5:10]]
    assert [i["views"] for i in everything] == sorted((i["views"] for i in everything), reverse=True)
    skipped = w.client.get(
        f"{API}/records/posts", headers=w.user.headers, params={"skip_total": "true"}
    ).json()
    assert skipped["total_items"] == -1 and skipped["total_pages"] == -1


@pytest.mark.parametrize("sort", ["", "-views,title", "done,-created_at", "email"])
def test_cursor_paging_visits_every_record_once_while_inserting(w: World, sort: str) -> None:
    seeded = {r["id"] for r in seed_posts(w, 23)}
    seen: list[str] = []
    params = {"after": "", "per_page": 4, "sort": sort}
    while True:
        page = w.client.get(f"{API}/records/posts", headers=w.user.headers, params=params).json()
        seen += [i["id"] for i in page["items"]]
        w.create(w.user, "posts", {"title": "inserted meanwhile", "views": 3})
        if page["next_cursor"] is None:
            break
        params["after"] = page["next_cursor"]
    assert len(seen) == len(set(seen))
    assert seeded <= set(seen)


def test_expand_applies_the_targets_view_rule(w: World) -> None:
    w.define("authors", [{"name": "name", "type": "text"}], rules={**PUBLIC, "view": "name != 'hidden'"})
    w.define(
        "books",
        [
            {"name": "title", "type": "text"},
            {"name": "author", "type": "reference", "options": {"collection": "authors"}},
        ],
    )
    ann = w.create(w.user, "authors", {"name": "Ann"})
    hidden = w.create(w.user, "authors", {"name": "hidden"})
    w.create(w.user, "books", {"title": "one", "author": ann["id"]})
    w.create(w.user, "books", {"title": "two", "author": hidden["id"]})
    items = w.client.get(
        f"{API}/records/books", headers=w.user.headers, params={"expand": "author", "sort": "title"}
    ).json()["items"]
    assert items[0]["expand"]["author"]["name"] == "Ann" and items[0]["author"] == ann["id"]
    assert "expand" not in items[1] and items[1]["author"] == hidden["id"]


def test_references_must_be_in_the_same_account(w: World) -> None:
    w.define("authors", [{"name": "name", "type": "text"}])
    w.define("books", [{"name": "author", "type": "reference", "options": {"collection": "authors"}}])
    foreign = w.create(w.other, "authors", {"name": "Not yours"})
    response = w.client.post(f"{API}/records/books", headers=w.user.headers, json={"author": foreign["id"]})
    assert (
        response.status_code == 400 and response.json()["fields"]["author"]["code"] == "reference_not_found"
    )
    mine = w.create(w.user, "authors", {"name": "Mine"})
    w.create(w.user, "books", {"author": mine["id"]})
    blocked = w.client.delete(f"{API}/records/authors/{mine['id']}", headers=w.user.headers)
    assert blocked.status_code == 409


# --- batch and audit ---------------------------------------------------------------------------


def test_batch_is_all_or_nothing(w: World) -> None:
    before = w.audit_count()
    existing = w.create(w.user, "posts", {"title": "keep"})
    body = {
        "create": [{"title": "ok"}, {"title": "ok2"}, {"views": 1}],
        "update": [{"id": existing["id"], "title": "changed"}],
        "delete": [existing["id"]],
    }
    response = w.client.post(f"{API}/records/posts/batch", headers=w.user.headers, json=body)
    assert response.status_code == 400 and "create.2.title" in response.json()["fields"]
    titles = [
        r["title"] for r in w.client.get(f"{API}/records/posts", headers=w.user.headers).json()["items"]
    ]
    assert titles == ["keep"] and w.audit_count() == before + 1


def test_batch_success_in_request_order(w: World) -> None:
    existing = w.create(w.user, "posts", {"title": "old"})
    body = {
        "create": [{"title": "n1"}, {"title": "n2"}],
        "update": [{"id": existing["id"], "views": 9}],
        "delete": [existing["id"]],
    }
    result = w.client.post(f"{API}/records/posts/batch", headers=w.user.headers, json=body).json()
    assert [r["title"] for r in result["create"]] == ["n1", "n2"]
    assert result["update"][0]["views"] == 9 and result["delete"] == [existing["id"]]


@pytest.mark.parametrize("body", [{"create": [{"title": "x"}] * 101}, {}, {"create": "no"}, {"upsert": []}])
def test_bad_batches(w: World, body: dict) -> None:
    assert w.client.post(f"{API}/records/posts/batch", headers=w.user.headers, json=body).status_code == 400


def test_writes_are_audited_with_reason_and_changes(w: World) -> None:
    record = w.create(w.user, "posts", {"title": "v1"})
    w.client.patch(
        f"{API}/records/posts/{record['id']}",
        headers={**w.user.headers, "x-audit-reason": "typo"},
        json={"title": "v2"},
    )
    w.client.request(
        "DELETE", f"{API}/records/posts/{record['id']}", headers=w.user.headers, json={"_reason": "cleanup"}
    )
    conn = w.client.app.state.db.conn  # type: ignore[attr-defined]
    rows = list(
        conn.execute(
            "SELECT action, reason, changes, actor_user_id FROM audit_log WHERE record_id = ? ORDER BY seq",
            (record["id"],),
        )
    )
    assert [r[0] for r in rows] == ["record.create", "record.update", "record.delete"]
    assert rows[1][1] == "typo" and '"old":"v1"' in rows[1][2] and rows[1][3] == w.user.id


def test_require_reason(w: World) -> None:
    w.define("batches", [{"name": "lot", "type": "text"}], audit={"require_reason": True})
    before = w.audit_count()
    refused = w.client.post(f"{API}/records/batches", headers=w.user.headers, json={"lot": "A1"})
    assert refused.status_code == 400 and refused.json()["code"] == "reason_required"
    assert w.audit_count() == before
    ok = w.client.post(
        f"{API}/records/batches",
        headers={**w.user.headers, "x-audit-reason": "initial%20entry"},
        json={"lot": "A1"},
    )
    assert ok.status_code == 201
    bad = w.client.post(
        f"{API}/records/batches", headers=w.user.headers, json={"lot": "A2", "_reason": "x" * 5000}
    )
    assert bad.status_code == 400


@pytest.mark.sqlite_only  # DELETE /accounts is not ported to PostgreSQL yet
def test_deleted_account_is_forgotten_at_once(w: World) -> None:
    headers = {"x-account-id": w.other_account}
    assert w.client.get(f"{API}/records/posts", headers=headers).status_code == 200  # now remembered
    assert w.client.delete(f"{API}/accounts/{w.other_account}", headers=w.sa.headers).status_code == 204
    assert w.client.get(f"{API}/records/posts", headers=headers).status_code == 404
