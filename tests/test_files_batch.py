"""Batches with uploads: `POST /records/{collection}/batch` as multipart/form-data, one `@jsonPayload`
part holding the batch whose file fields reference file parts by name (`{"@part": "p1"}`). One unit of
work for the whole batch: any failed operation leaves no record, no stored or staged file and no audit
entry. Real SQLite files and local disk, through the in-process app."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from snackbase.config import Settings
from snackbase.db import fetch_value
from snackbase.uploads import MAX_BATCH_FILES
from tests.test_files import API, World, make_world, png

BATCH = f"{API}/records/notes/batch"
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def w(settings: Settings) -> Iterator[World]:
    yield from make_world(replace(settings, files_batch_max_bytes=250_000))


def send(w: World, batch: dict[str, Any], parts: list[tuple[str, tuple[str, bytes, str]]]) -> Any:
    """The batch as the `@jsonPayload` part, then the file parts (httpx sends data before files)."""
    return w.client.post(BATCH, headers=w.user.headers, data={"@jsonPayload": json.dumps(batch)}, files=parts)


def ref(name: str) -> dict[str, str]:
    return {"@part": name}


def records_count(w: World) -> int:
    return int(fetch_value(w.conn, "SELECT count(*) FROM c_notes"))


def assert_nothing_written(w: World, audit_before: int, records_before: int = 0) -> None:
    assert w.stored() == [] and w.staging() == []
    assert w.audit_count() == audit_before and records_count(w) == records_before


def test_creates_and_updates_with_files_in_one_batch(w: World) -> None:
    image = png()
    batch = {
        "create": [
            {"title": "A", "photo": ref("p1"), "docs": [ref("d1"), ref("d2")]},
            {"title": "B", "docs+": ref("d3")},
        ]
    }
    parts = [
        ("p1", ("scan.png", image, "image/png")),
        ("d1", ("a.txt", b"alpha", "text/plain")),
        ("d2", ("b.csv", b"x,y\n1,2\n", "text/csv")),
        ("d3", ("c.md", b"# notes", "text/markdown")),
    ]
    response = send(w, batch, parts)
    assert response.status_code == 200, response.text
    first, second = response.json()["create"]
    assert first["photo"]["sha256"] == hashlib.sha256(image).hexdigest()
    assert first["photo"]["type"] == "image/png"
    assert [d["original"] for d in first["docs"]] == ["a.txt", "b.csv"]
    assert [d["original"] for d in second["docs"]] == ["c.md"]
    assert len(w.stored()) == 4 and w.staging() == []
    # every file is in its record's audit entry, by name and SHA-256
    changes = fetch_value(w.conn, "SELECT changes FROM audit_log WHERE record_id = ?", (first["id"],))
    assert first["photo"]["sha256"] in changes and first["docs"][1]["name"] in changes
    got = w.client.get(w.url(first, first["photo"]), headers=w.user.headers)
    assert got.status_code == 200 and got.content == image

    # update: append to one list (`docs+`), remove by name (`docs-`); replace, keeping a named file
    kept, dropped = first["docs"]
    batch = {
        "update": [
            {"id": second["id"], "docs+": [ref("n1")]},
            {"id": first["id"], "docs": [kept["name"], ref("n2")], "photo": None},
        ],
    }
    parts = [("n1", ("d.txt", b"delta", "text/plain")), ("n2", ("e.txt", b"echo", "text/plain"))]
    response = send(w, batch, parts)
    assert response.status_code == 200, response.text
    second, first = response.json()["update"]
    assert [d["original"] for d in second["docs"]] == ["c.md", "d.txt"]
    assert [d["original"] for d in first["docs"]] == ["a.txt", "e.txt"] and first["photo"] is None
    names = {p.name for p in w.stored()}
    assert kept["name"] in names and dropped["name"] not in names and len(names) == 4

    batch = {"update": [{"id": second["id"], "docs-": [second["docs"][0]["name"]]}], "delete": [first["id"]]}
    response = w.client.post(BATCH, headers=w.user.headers, json=batch)  # names only: JSON is enough
    assert response.status_code == 200, response.text
    assert [d["original"] for d in response.json()["update"][0]["docs"]] == ["d.txt"]
    assert {p.name for p in w.stored()} == {second["docs"][1]["name"]}


def test_a_failed_third_operation_leaves_no_file(w: World) -> None:
    before = w.audit_count()
    batch = {
        "create": [{"title": "A", "docs": ref("a")}, {"title": "B", "docs": ref("b")}, {"docs": ref("c")}]
    }
    parts = [(n, (f"{n}.txt", n.encode() * 10, "text/plain")) for n in ("a", "b", "c")]
    response = send(w, batch, parts)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "validation_failed" and "create.2.title" in body["fields"]
    assert_nothing_written(w, before)


def test_a_failed_update_after_creates_leaves_no_file(w: World) -> None:
    before = w.audit_count()
    batch = {"create": [{"title": "A", "photo": ref("p")}], "update": [{"id": "missing", "docs": ref("d")}]}
    parts = [("p", ("a.png", png(), "image/png")), ("d", ("d.txt", b"delta", "text/plain"))]
    response = send(w, batch, parts)
    assert response.status_code == 404, response.text
    assert_nothing_written(w, before)


def test_missing_part(w: World) -> None:
    before = w.audit_count()
    batch = {"create": [{"title": "A", "docs": [ref("a"), ref("gone")]}]}
    response = send(w, batch, [("a", ("a.txt", b"alpha", "text/plain"))])
    assert response.status_code == 400
    assert response.json()["fields"] == {
        "create.0.docs": {"code": "missing_part", "message": "The file part 'gone' was not sent."}
    }
    assert_nothing_written(w, before)


def test_part_referenced_twice(w: World) -> None:
    before = w.audit_count()
    batch = {"create": [{"title": "A", "docs": ref("a")}, {"title": "B", "photo": ref("a")}]}
    response = send(w, batch, [("a", ("a.png", png(), "image/png"))])
    assert response.status_code == 400
    assert response.json()["fields"]["create.1.photo"]["code"] == "part_reused"
    assert_nothing_written(w, before)


def test_part_sent_twice_or_not_referenced(w: World) -> None:
    before = w.audit_count()
    batch = {"create": [{"title": "A", "docs": ref("a")}]}
    twice = [("a", ("a.txt", b"alpha", "text/plain")), ("a", ("b.txt", b"beta", "text/plain"))]
    response = send(w, batch, twice)
    assert response.status_code == 400
    assert response.json()["fields"]["create.0.docs"]["code"] == "part_repeated"
    assert_nothing_written(w, before)
    stray = [("a", ("a.txt", b"alpha", "text/plain")), ("zz", ("z.txt", b"zulu", "text/plain"))]
    response = send(w, batch, stray)
    assert response.status_code == 400 and response.json()["fields"]["zz"]["code"] == "unknown_part"
    assert_nothing_written(w, before)


def test_the_json_part_comes_first_and_once(w: World) -> None:
    before = w.audit_count()
    batch = json.dumps({"create": [{"title": "A", "docs": ref("a")}]})
    file_first = w.client.post(
        BATCH,
        headers=w.user.headers,
        files=[("a", ("a.txt", b"alpha", "text/plain")), ("@jsonPayload", (None, batch.encode()))],
    )
    assert file_first.status_code == 400 and "before the file parts" in file_first.json()["message"]
    other_text = w.client.post(BATCH, headers=w.user.headers, files=[("title", (None, b"A"))])
    assert other_text.status_code == 400 and other_text.json()["code"] == "bad_request"
    no_payload = w.client.post(BATCH, headers=w.user.headers, files=[("a", ("a.txt", b"x", "text/plain"))])
    assert no_payload.status_code == 400
    assert_nothing_written(w, before)


def test_a_file_over_its_field_size_is_413_named_by_operation(w: World) -> None:
    before = w.audit_count()
    batch = {"create": [{"title": "A", "docs": ref("a")}, {"title": "B", "docs": ref("big")}]}
    parts = [("a", ("a.txt", b"alpha", "text/plain")), ("big", ("big.txt", b"x" * 100_001, "text/plain"))]
    response = send(w, batch, parts)
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "file_too_large" and set(body["fields"]) == {"create.1.docs"}
    assert_nothing_written(w, before)


def test_the_batch_total_is_limited(w: World) -> None:
    before = w.audit_count()  # the fixture allows 250,000 bytes per batch; each file is within its field
    batch = {"create": [{"title": str(i), "docs": ref(f"f{i}")} for i in range(3)]}
    parts = [(f"f{i}", (f"{i}.txt", b"x" * 90_000, "text/plain")) for i in range(3)]
    response = send(w, batch, parts)
    assert response.status_code == 413 and response.json()["code"] == "batch_too_large"
    assert_nothing_written(w, before)


def test_the_number_of_files_is_limited(w: World) -> None:
    before = w.audit_count()
    count = MAX_BATCH_FILES + 1
    batch = {"create": [{"title": str(i), "docs": [ref(f"f{i}.{j}") for j in range(3)]} for i in range(34)]}
    parts = [(f"f{i}.{j}", (f"{j}.txt", b"x", "text/plain")) for i in range(34) for j in range(3)][:count]
    response = send(w, batch, parts)
    assert response.status_code == 400 and f"at most {MAX_BATCH_FILES} files" in response.json()["message"]
    assert_nothing_written(w, before)


def test_wrong_type_by_content_is_refused(w: World) -> None:
    before = w.audit_count()
    batch = {"create": [{"title": "A", "photo": ref("p")}]}
    lying = [("p", ("photo.png", b"<html><script>alert(1)</script></html>", "image/png"))]
    response = send(w, batch, lying)
    assert response.status_code == 400
    assert response.json()["fields"]["create.0.photo"]["code"] == "invalid_file_type"
    assert_nothing_written(w, before)


def test_a_file_part_for_an_operation_that_is_not_there(w: World) -> None:
    before = w.audit_count()
    batch = {"create": [{"title": "A"}], "delete": [{"id": "x", "docs": ref("a")}]}
    response = send(w, batch, [("a", ("a.txt", b"alpha", "text/plain"))])
    assert response.status_code == 400 and response.json()["fields"]["a"]["code"] == "unknown_part"
    assert_nothing_written(w, before)
