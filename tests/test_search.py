"""Full-text search: searchable text fields in an FTS5 index kept in the record's transaction;
@search() filters, sort=@rank, rules, tenancy, masks, schema changes."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from tests.factories import add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}


class S:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.sa = make_superadmin(client).headers
        self.define({"name": "batches", "rules": PUBLIC, "fields": [{"name": "code", "type": "text"}]})
        self.define(
            {
                "name": "notes",
                "rules": {**PUBLIC, "list": 'status != "draft"'},
                "fields": [
                    {"name": "title", "type": "text", "options": {"searchable": True}},
                    {"name": "body", "type": "text", "options": {"searchable": True}},
                    {"name": "status", "type": "text"},
                    {"name": "patient", "type": "text", "pii": True, "options": {"searchable": True}},
                    {
                        "name": "batch",
                        "type": "reference",
                        "options": {"collection": "batches", "on_delete": "cascade"},
                    },
                ],
            }
        )
        acme, globex = make_account(client), make_account(client)
        self.user_obj = make_user(client, acme)
        self.user, self.other = self.user_obj.headers, make_user(client, globex).headers

    def define(self, body: dict) -> None:
        assert self.client.post(f"{API}/collections", headers=self.sa, json=body).status_code == 201

    def create(self, headers: dict, collection: str, body: dict) -> dict[str, Any]:
        r = self.client.post(f"{API}/records/{collection}", headers=headers, json=body)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def search(self, headers: dict, text: str, **params: str) -> list[str]:
        r = self.client.get(
            f"{API}/records/notes", headers=headers, params={"filter": f'@search("{text}")', **params}
        )
        assert r.status_code == 200, r.text
        return [i["title"] for i in r.json()["items"]]


def test_search_ranks_and_stays_in_the_tenant_and_rule(client: TestClient) -> None:
    s = S(client)
    s.create(s.user, "notes", {"title": "Buffer solution", "body": "phosphate buffer solution, buffer"})
    s.create(s.user, "notes", {"title": "Prep", "body": "make the buffer and a solution"})
    s.create(s.user, "notes", {"title": "Other", "body": "nothing here"})
    s.create(s.user, "notes", {"title": "Draft", "body": "buffer solution", "status": "draft"})
    s.create(s.other, "notes", {"title": "Globex", "body": "buffer solution"})
    assert s.search(s.user, "buffer solution", sort="@rank") == ["Buffer solution", "Prep"]
    assert s.search(s.user, "buffer solution", sort="-@rank") == ["Prep", "Buffer solution"]
    assert s.search(s.other, "buffer solution") == ["Globex"]
    assert s.search(s.user, "buf*", sort="title") == ["Buffer solution", "Prep"]
    assert s.search(s.user, "Bufféř", sort="title") == ["Buffer solution", "Prep"]  # diacritics fold
    # Combined with other terms, and hostile FTS syntax is only words.
    assert s.search(s.user, 'buffer OR \\"x', sort="title") == []
    r = client.get(
        f"{API}/records/notes",
        headers=s.user,
        params={"filter": '@search("buffer") && title != "Prep"', "after": "", "sort": "@rank"},
    )
    assert r.status_code == 200 and [i["title"] for i in r.json()["items"]] == ["Buffer solution"]
    r = client.get(f"{API}/records/notes", headers=s.user, params={"sort": "@rank"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_sort"


def test_index_follows_updates_deletes_cascades_and_rollbacks(client: TestClient, backend: str) -> None:
    s = S(client)
    batch = s.create(s.user, "batches", {"code": "B1"})
    note = s.create(s.user, "notes", {"title": "Alpha", "body": "centrifuge", "batch": batch["id"]})
    assert s.search(s.user, "centrifuge") == ["Alpha"]
    client.patch(f"{API}/records/notes/{note['id']}", headers=s.user, json={"body": "pipette"})
    assert s.search(s.user, "centrifuge") == [] and s.search(s.user, "pipette") == ["Alpha"]
    # A failed batch rolls back its index changes with it.
    r = client.post(
        f"{API}/records/notes/batch",
        headers=s.user,
        json={"create": [{"title": "Beta", "body": "pipette"}, {"title": 5}]},
    )
    assert r.status_code == 400 and s.search(s.user, "pipette") == ["Alpha"]
    # Deleting the batch cascades to the note, and out of the index.
    assert client.delete(f"{API}/records/batches/{batch['id']}", headers=s.user).status_code == 204
    assert s.search(s.user, "pipette") == []
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    if backend == "sqlite":  # PostgreSQL's index is on the table itself: no rows of its own
        assert conn.execute('SELECT count(*) FROM "c_notes:fts"').fetchone()[0] == 0


def test_masked_and_unsearchable_fields(client: TestClient) -> None:
    s = S(client)
    s.create(s.user, "notes", {"title": "Visit", "body": "x", "patient": "Jane Roe"})
    assert s.search(s.user, "Roe") == []  # PII the caller sees masked is not searched
    add_to_group(client, s.user_obj, "pii_access")
    assert s.search(s.user, "Roe") == ["Visit"]
    r = client.get(f"{API}/records/batches", headers=s.user, params={"filter": '@search("x")'})
    assert r.status_code == 400 and "searchable" in r.json()["message"]
    r = client.get(f"{API}/records/notes", headers=s.user, params={"filter": "@search(1, 2)"})
    assert r.status_code == 400


def test_schema_changes_rebuild_the_index(client: TestClient, backend: str) -> None:
    s = S(client)
    s.create(s.user, "batches", {"code": "quartz"})
    assert (
        client.get(
            f"{API}/records/batches", headers=s.user, params={"filter": '@search("quartz")'}
        ).status_code
        == 400
    )
    body = {
        "fields": [
            {"name": "code", "type": "text", "options": {"searchable": True}},
            {"name": "extra", "type": "number"},
        ]
    }
    assert client.patch(f"{API}/collections/batches", headers=s.sa, json=body).status_code == 200
    r = client.get(f"{API}/records/batches", headers=s.user, params={"filter": '@search("quartz")'})
    assert [i["code"] for i in r.json()["items"]] == ["quartz"]
    s.create(s.user, "batches", {"code": "quartz two"})
    r = client.get(f"{API}/records/batches", headers=s.user, params={"filter": '@search("two")'})
    assert [i["code"] for i in r.json()["items"]] == ["quartz two"]
    assert client.delete(f"{API}/records/batches", headers=s.sa).status_code in (404, 405)
    assert client.delete(f"{API}/collections/batches", headers=s.sa).status_code == 409  # notes.batch
    assert client.delete(f"{API}/collections/notes", headers=s.sa).status_code == 204
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    catalog = (
        "sqlite_master"
        if backend == "sqlite"
        else "(SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() UNION ALL "
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()) AS c"
    )
    left = conn.execute(f"SELECT name FROM {catalog} WHERE name LIKE 'c_notes%'").fetchall()
    assert left == []


def test_a_table_rebuild_keeps_the_index_and_its_triggers(client: TestClient, backend: str) -> None:
    s = S(client)
    s.create(s.user, "notes", {"title": "Kept", "body": "chromatography"})
    fields = client.get(f"{API}/collections/notes", headers=s.sa).json()["fields"]
    for f in fields:
        if f["name"] == "title":
            f["required"] = True  # NOT NULL: SQLite cannot ALTER it, the table is rebuilt
    r = client.patch(f"{API}/collections/notes", headers=s.sa, json={"fields": fields})
    assert r.status_code == 200, r.text
    assert s.search(s.user, "chromatography") == ["Kept"]
    s.create(s.user, "notes", {"title": "New", "body": "chromatography column"})
    assert s.search(s.user, "column") == ["New"]
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    if backend == "sqlite":
        triggers = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'c_notes'"
        )
        assert triggers.fetchone()[0] == 3
    else:  # one GIN index, no triggers
        found = conn.execute(
            "SELECT indexdef FROM pg_indexes "
            "WHERE indexname = 'c_notes:fts' AND schemaname = current_schema()"
        ).fetchall()
        assert len(found) == 1 and "USING gin" in found[0][0]


def test_cursor_pages_by_rank_give_every_match_once(client: TestClient) -> None:
    """Keyset paging over `sort=@rank`: the rank value goes into the cursor and back as a parameter
    (a float on SQLite, PostgreSQL's real ts_rank widened to double): pages of one match the full list."""
    s = S(client)
    for i in range(5):
        s.create(s.user, "notes", {"title": f"t{i}", "body": "buffer " * (i % 3 + 1) + "solution"})
    s.create(s.user, "notes", {"title": "miss", "body": "nothing"})
    whole = s.search(s.user, "buffer", sort="@rank")
    assert len(whole) == 5
    seen: list[str] = []
    params = {"filter": '@search("buffer")', "sort": "@rank", "per_page": "1", "after": ""}
    while True:
        page = client.get(f"{API}/records/notes", headers=s.user, params=params).json()
        seen += [i["title"] for i in page["items"]]
        if not page.get("next_cursor"):
            break
        params["after"] = page["next_cursor"]
    assert seen == whole
