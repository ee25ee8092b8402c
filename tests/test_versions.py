"""Optimistic concurrency: ETag on record reads and writes, If-Match (412), If-None-Match (304)."""

from __future__ import annotations

from starlette.testclient import TestClient

from snackbase.db import fetch_value
from snackbase.unit_of_work import unit_of_work
from tests.factories import make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}


def setup(client: TestClient) -> tuple[dict, dict, str]:
    sa = make_superadmin(client)
    body = {
        "name": "notes",
        "rules": PUBLIC,
        "fields": [
            {"name": "title", "type": "text"},
            {"name": "ssn", "type": "text", "pii": True, "mask": "ssn"},
        ],
    }
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    acme = make_account(client)
    alice, bob = make_user(client, acme).headers, make_user(client, acme).headers
    r = client.post(f"{API}/records/notes", headers=alice, json={"title": "v1", "ssn": "123-45-6789"})
    assert r.status_code == 201 and r.headers["etag"].startswith('"')
    return alice, bob, r.json()["id"]


def audit_count(client: TestClient) -> int:
    return int(fetch_value(client.app.state.db.conn, "SELECT count(*) FROM audit_log"))  # type: ignore[attr-defined]


def test_get_carries_an_etag_and_if_none_match_answers_304(client: TestClient) -> None:
    alice, bob, rid = setup(client)
    first = client.get(f"{API}/records/notes/{rid}", headers=alice)
    tag = first.headers["etag"]
    assert client.get(f"{API}/records/notes/{rid}", headers=bob).headers["etag"] == tag  # not per caller
    again = client.get(f"{API}/records/notes/{rid}", headers={**alice, "if-none-match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    other = client.get(f"{API}/records/notes/{rid}", headers={**alice, "if-none-match": '"nope"'})
    assert other.status_code == 200
    patched = client.patch(f"{API}/records/notes/{rid}", headers=alice, json={"title": "v2"})
    assert patched.headers["etag"] != tag
    assert (
        client.get(f"{API}/records/notes/{rid}", headers={**alice, "if-none-match": tag}).status_code == 200
    )


def test_stale_if_match_is_412_and_changes_nothing(client: TestClient) -> None:
    alice, bob, rid = setup(client)
    tag = client.get(f"{API}/records/notes/{rid}", headers=alice).headers["etag"]
    # Bob saves first, with the version he read.
    ok = client.patch(f"{API}/records/notes/{rid}", headers={**bob, "if-match": tag}, json={"title": "bob"})
    assert ok.status_code == 200, ok.text
    before = audit_count(client)
    for method in ("PATCH", "PUT"):
        stale = client.request(
            method, f"{API}/records/notes/{rid}", headers={**alice, "if-match": tag}, json={"title": "alice"}
        )
        assert stale.status_code == 412 and stale.json()["code"] == "precondition_failed", stale.text
    gone = client.delete(f"{API}/records/notes/{rid}", headers={**alice, "if-match": tag})
    assert gone.status_code == 412
    assert audit_count(client) == before
    assert client.get(f"{API}/records/notes/{rid}", headers=alice).json()["title"] == "bob"
    # With the current version (or *), the write goes through.
    fresh = client.get(f"{API}/records/notes/{rid}", headers=alice).headers["etag"]
    ok = client.put(f"{API}/records/notes/{rid}", headers={**alice, "if-match": fresh}, json={"title": "a"})
    assert ok.status_code == 200
    ok_tag = ok.headers["etag"]
    assert client.get(f"{API}/records/notes/{rid}", headers=alice).headers["etag"] == ok_tag
    assert client.delete(f"{API}/records/notes/{rid}", headers={**alice, "if-match": "*"}).status_code == 204


def test_two_writes_in_one_millisecond_still_differ(client: TestClient) -> None:
    alice, _, rid = setup(client)
    tags = set()
    for i in range(5):
        r = client.patch(f"{API}/records/notes/{rid}", headers=alice, json={"title": f"t{i}"})
        tags.add(r.headers["etag"])
    assert len(tags) == 5


def test_if_match_is_checked_under_the_write_lock(client: TestClient) -> None:
    """The row another process changed between the read and the write is what If-Match compares to."""
    alice, _, rid = setup(client)
    tag = client.get(f"{API}/records/notes/{rid}", headers=alice).headers["etag"]
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    with unit_of_work(conn):  # another writer, straight into the table
        conn.execute("UPDATE c_notes SET title = 'sneaky' WHERE id = ?", (rid,))
    r = client.patch(f"{API}/records/notes/{rid}", headers={**alice, "if-match": tag}, json={"title": "x"})
    assert r.status_code == 412


def test_if_none_match_holds_for_a_projection(client: TestClient) -> None:
    alice, _, rid = setup(client)
    tag = client.get(f"{API}/records/notes/{rid}", headers=alice).headers["etag"]
    r = client.get(
        f"{API}/records/notes/{rid}", headers={**alice, "if-none-match": tag}, params={"fields": "id"}
    )
    assert r.status_code == 304


def test_list_items_carry_their_version(client: TestClient) -> None:
    """A list item's `@etag` is the ETag a get answers with, so a client can send If-Match after a list."""
    alice, _, rid = setup(client)
    tag = client.get(f"{API}/records/notes/{rid}", headers=alice).headers["etag"]
    for query in ("", "?fields=title,@etag", "?after=", "?sort=-title&skip_total=1"):
        items = client.get(f"{API}/records/notes{query}", headers=alice).json()["items"]
        assert [i["@etag"] for i in items] == [tag], query
    assert client.get(f"{API}/records/notes?fields=title", headers=alice).json()["items"] == [{"title": "v1"}]
    # The list's version works as If-Match: a PATCH with it succeeds, then the old one is stale.
    ok = client.patch(f"{API}/records/notes/{rid}", headers={**alice, "if-match": tag}, json={"title": "v2"})
    assert ok.status_code == 200
    listed = client.get(f"{API}/records/notes", headers=alice).json()["items"][0]["@etag"]
    assert listed == ok.headers["etag"] != tag


def test_batch_operations_take_if_match_and_a_stale_one_fails_the_whole_batch(client: TestClient) -> None:
    alice, bob, rid = setup(client)
    other = client.post(f"{API}/records/notes", headers=alice, json={"title": "other"}).json()["id"]
    items = {i["id"]: i["@etag"] for i in client.get(f"{API}/records/notes", headers=alice).json()["items"]}
    assert client.patch(f"{API}/records/notes/{rid}", headers=bob, json={"title": "bob"}).status_code == 200
    before = audit_count(client)
    stale = {
        "create": [{"title": "new"}],
        "update": [{"id": other, "@if_match": items[other], "title": "x"},
                   {"id": rid, "@if_match": items[rid], "title": "alice"}],
    }  # fmt: skip
    r = client.post(f"{API}/records/notes/batch", headers=alice, json=stale)
    assert r.status_code == 412 and r.json()["code"] == "precondition_failed"
    assert "update.1" in r.json()["fields"]
    assert audit_count(client) == before  # nothing written, not even the create or the first update
    titles = sorted(i["title"] for i in client.get(f"{API}/records/notes", headers=alice).json()["items"])
    assert titles == ["bob", "other"]
    r = client.post(
        f"{API}/records/notes/batch", headers=alice, json={"delete": [{"id": rid, "@if_match": items[rid]}]}
    )
    assert r.status_code == 412 and client.get(f"{API}/records/notes/{rid}", headers=alice).status_code == 200
    # With the current versions the same batch goes through.
    fresh = {i["id"]: i["@etag"] for i in client.get(f"{API}/records/notes", headers=alice).json()["items"]}
    ok = {
        "update": [{"id": other, "@if_match": fresh[other], "title": "x"}],
        "delete": [{"id": rid, "@if_match": fresh[rid]}],
    }
    r = client.post(f"{API}/records/notes/batch", headers=alice, json=ok)
    assert r.status_code == 200 and r.json()["delete"] == [rid] and r.json()["update"][0]["title"] == "x"
    # a batch answers each written record with its new version, as a list does
    answered = r.json()["update"][0]["@etag"]
    assert answered == client.get(f"{API}/records/notes/{other}", headers=alice).headers["etag"]
    bad = client.post(
        f"{API}/records/notes/batch", headers=alice, json={"update": [{"id": other, "@if_match": 5}]}
    )
    assert bad.status_code == 400 and "update.0.@if_match" in bad.json()["fields"]
