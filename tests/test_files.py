"""File fields end to end on local disk: multipart uploads, the download route (Range, ETag, 304,
thumbnails, tokens), the unit of work's file handling (no file left by a failed write, removed files
deleted after COMMIT, the sweeper) and the quota."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from PIL import Image
from starlette.testclient import TestClient

from snackbase import files
from snackbase.app import create_app
from snackbase.config import Settings
from snackbase.db import fetch_all, fetch_value
from snackbase.thumbs import Recent
from snackbase.unit_of_work import unit_of_work
from tests.factories import User, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
OWN = {
    "list": "created_by = @request.auth.id",
    "view": "created_by = @request.auth.id",
    "create": "",
    "update": "created_by = @request.auth.id",
    "delete": "created_by = @request.auth.id",
}
FIELDS = [
    {"name": "title", "type": "text", "required": True},
    {
        "name": "photo",
        "type": "file",
        "options": {
            "max_size": 200_000,
            "mime_types": ["image/png", "image/jpeg"],
            "thumbs": ["50x50", "0x40"],
        },
    },
    {"name": "docs", "type": "file", "options": {"max_files": 3, "max_size": 100_000}},
    {"name": "secret", "type": "file", "options": {"protected": True}},
]


def png(width: int = 120, height: int = 80, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class World:
    client: TestClient
    settings: Settings
    sa: User
    user: User
    user2: User
    other: User

    @property
    def conn(self) -> Any:
        return self.client.app.state.db.conn  # type: ignore[attr-defined]

    def stored(self) -> list[Path]:
        """Every stored file (staging and thumbnail cache excluded)."""
        root = self.settings.files_path
        return sorted(
            p for p in root.rglob("*") if p.is_file() and not p.relative_to(root).parts[0].startswith(".")
        )

    def staging(self) -> list[Path]:
        return list((self.settings.files_path / ".staging").iterdir())

    def upload(
        self,
        who: User,
        data: dict[str, Any] | None = None,
        files_: Any = None,
        status: int = 201,
        record_id: str | None = None,
    ) -> dict[str, Any]:
        url = f"{API}/records/notes" + (f"/{record_id}" if record_id else "")
        method = self.client.patch if record_id else self.client.post
        response = method(url, headers=who.headers, data=data or {}, files=files_)
        assert response.status_code == status, response.text
        return response.json()  # type: ignore[no-any-return]

    def audit_count(self) -> int:
        return int(fetch_value(self.conn, "SELECT count(*) FROM audit_log"))

    def url(self, record: dict[str, Any], meta: dict[str, Any]) -> str:
        return f"{API}/files/notes/{record['id']}/{meta['name']}"


def make_world(settings: Settings) -> Iterator[World]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        account = make_account(client, "Acme")
        w = World(
            client,
            settings,
            make_superadmin(client),
            make_user(client, account),
            make_user(client, account),
            make_user(client, make_account(client, "Globex")),
        )
        body = {"name": "notes", "fields": FIELDS, "rules": OWN}
        response = client.post(f"{API}/collections", headers=w.sa.headers, json=body)
        assert response.status_code == 201, response.text
        yield w


@pytest.fixture
def w(settings: Settings) -> Iterator[World]:
    yield from make_world(settings)


def test_upload_with_fields_then_download(w: World) -> None:
    image = png()
    record = w.upload(w.user, {"title": "Spectrum"}, {"photo": ("scan.PNG", image, "image/png")})
    meta = record["photo"]
    assert record["title"] == "Spectrum"
    assert meta["type"] == "image/png" and meta["size"] == len(image)
    assert meta["sha256"] == hashlib.sha256(image).hexdigest()
    assert (
        meta["name"].startswith("scan_") and meta["name"].endswith(".png") and meta["original"] == "scan.PNG"
    )
    assert len(w.stored()) == 1 and w.stored()[0].read_bytes() == image
    assert w.staging() == []
    got = w.client.get(w.url(record, meta), headers=w.user.headers)
    assert got.status_code == 200 and got.content == image
    assert got.headers["content-type"] == "image/png"
    assert got.headers["etag"] == f'"{meta["sha256"][:40]}"'
    assert got.headers["content-disposition"].startswith("inline")
    assert "sandbox" in got.headers["content-security-policy"]
    assert (
        w.client.get(w.url(record, meta) + "?download=1", headers=w.user.headers)
        .headers["content-disposition"]
        .startswith("attachment")
    )
    # the audit entry lists the file by name, size and SHA-256
    changes = json.loads(
        fetch_value(w.conn, "SELECT changes FROM audit_log WHERE record_id = ?", (record["id"],))
    )
    photo = (
        next(c for c in changes if c["field"] == "photo") if isinstance(changes, list) else changes["photo"]
    )
    assert meta["sha256"] in json.dumps(photo) and meta["name"] in json.dumps(photo)


def test_json_payload_part_and_multiple_files(w: World) -> None:
    record = w.upload(
        w.user,
        {"@jsonPayload": json.dumps({"title": "Batch 7"})},
        [("docs", ("a.txt", b"alpha", "text/plain")), ("docs", ("b.csv", b"x,y\n1,2\n", "text/csv"))],
    )
    assert record["title"] == "Batch 7"
    assert [d["type"] for d in record["docs"]] == ["text/plain", "text/csv"]
    # docs+ appends, docs- removes one by name (deleted after commit), JSON names keep a subset
    first, second = record["docs"]
    record = w.upload(
        w.user, {}, [("docs+", ("c.md", b"# notes", "text/markdown"))], status=200, record_id=record["id"]
    )
    assert [d["original"] for d in record["docs"]] == ["a.txt", "b.csv", "c.md"]
    response = w.client.patch(
        f"{API}/records/notes/{record['id']}", headers=w.user.headers, json={"docs-": first["name"]}
    )
    record = response.json()
    assert [d["original"] for d in record["docs"]] == ["b.csv", "c.md"]
    assert first["name"] not in {p.name for p in w.stored()}
    response = w.client.patch(
        f"{API}/records/notes/{record['id']}", headers=w.user.headers, json={"docs": [second["name"]]}
    )
    assert response.status_code == 200 and [d["name"] for d in response.json()["docs"]] == [second["name"]]
    assert {p.name for p in w.stored()} == {second["name"]}
    # too many files, and a file the record does not hold
    too_many = [("docs+", (f"{i}.txt", b"x", "text/plain")) for i in range(3)]
    w.upload(w.user, {}, too_many, status=400, record_id=record["id"])
    response = w.client.patch(
        f"{API}/records/notes/{record['id']}", headers=w.user.headers, json={"docs": ["nope.txt"]}
    )
    assert response.status_code == 400 and response.json()["fields"]["docs"]["code"] == "unknown_file"
    assert {p.name for p in w.stored()} == {second["name"]} and w.staging() == []


def test_forged_metadata_in_json_is_refused(w: World) -> None:
    fake = {"name": "x.png", "size": 1, "type": "image/png", "sha256": "0" * 64}
    response = w.client.post(
        f"{API}/records/notes", headers=w.user.headers, json={"title": "t", "photo": fake}
    )
    assert response.status_code == 400 and response.json()["fields"]["photo"]["code"] == "invalid_type"


def test_over_size_is_413_and_leaves_nothing(w: World) -> None:
    before = w.audit_count()
    big = png(20, 20) + b"\0" * 250_000
    response = w.client.post(
        f"{API}/records/notes",
        headers=w.user.headers,
        data={"title": "t"},
        files={"photo": ("big.png", big, "image/png")},
    )
    assert response.status_code == 413 and response.json()["code"] == "file_too_large"
    assert w.stored() == [] and w.staging() == [] and w.audit_count() == before
    assert w.client.get(f"{API}/records/notes", headers=w.user.headers).json()["items"] == []


def test_type_is_decided_by_content_not_the_claim(w: World) -> None:
    html = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>"
    for name, claimed in (("evil.png", "image/png"), ("notes.txt", "text/plain")):
        response = w.client.post(
            f"{API}/records/notes",
            headers=w.user.headers,
            data={"title": "t"},
            files={"photo": (name, html, claimed)},
        )
        assert response.status_code == 400, response.text
        assert response.json()["fields"]["photo"]["code"] == "invalid_file_type"
    assert w.stored() == [] and w.staging() == []
    # where any type is allowed, the HTML is stored as text/html and only ever served as an attachment
    record = w.upload(w.user, {"title": "t"}, {"docs": ("pic.png", html, "image/png")})
    meta = record["docs"][0]
    assert meta["type"] == "text/html"
    got = w.client.get(w.url(record, meta), headers=w.user.headers)
    assert got.headers["content-disposition"].startswith("attachment")
    assert got.headers["content-type"].startswith("text/html")
    assert "sandbox" in got.headers["content-security-policy"]
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    meta = w.upload(w.user, {"title": "s"}, {"docs": ("logo.svg", svg, "image/svg+xml")})["docs"][0]
    assert meta["type"] == "image/svg+xml"


def test_path_traversal_names_are_sanitized(w: World) -> None:
    record = w.upload(
        w.user, {"title": "t"}, {"docs": ("../../../etc/pass wd.TXT", b"root:x:0:0", "text/plain")}
    )
    meta = record["docs"][0]
    assert meta["name"].startswith("pass_wd_") and meta["name"].endswith(".txt") and "/" not in meta["name"]
    (stored,) = w.stored()
    assert stored.parent.parent == w.settings.files_path
    for bad in ("..", "..%2F..%2Fsnackbase.db", meta["name"] + "x"):
        assert (
            w.client.get(f"{API}/files/notes/{record['id']}/{bad}", headers=w.user.headers).status_code == 404
        )


def test_failed_create_leaves_no_file(w: World) -> None:
    before = w.audit_count()
    # the title is required: validation fails after the file was streamed and moved into place
    response = w.client.post(
        f"{API}/records/notes", headers=w.user.headers, files={"photo": ("a.png", png(), "image/png")}
    )
    assert response.status_code == 400
    assert w.stored() == [] and w.staging() == [] and w.audit_count() == before
    # the upload's pending row stays (due in an hour): bookkeeping in case the process had died
    assert (
        fetch_value(w.conn, "SELECT count(*) FROM file_trash WHERE due_at > ?", (files.format_ts_in(0),)) == 1
    )


def test_delete_removes_files_after_commit_and_replace_removes_the_old(w: World) -> None:
    record = w.upload(
        w.user,
        {"title": "t"},
        {
            "photo": ("a.png", png(), "image/png"),
            "secret": ("s.bin", b"\x00\x01secret", "application/octet-stream"),
        },
    )
    old = record["photo"]["name"]
    assert len(w.stored()) == 2
    record = w.upload(
        w.user, {}, {"photo": ("b.png", png(color="blue"), "image/png")}, status=200, record_id=record["id"]
    )
    assert old not in {p.name for p in w.stored()} and len(w.stored()) == 2
    w.client.get(w.url(record, record["photo"]) + "?thumb=50x50", headers=w.user.headers)
    assert w.client.delete(f"{API}/records/notes/{record['id']}", headers=w.user.headers).status_code == 204
    assert w.stored() == []
    assert not any(p.is_file() for p in (w.settings.files_path / ".thumbs").rglob("*"))
    assert (
        fetch_all(w.conn, "SELECT * FROM file_trash WHERE due_at <= '9999'") == [] or files.sweep(w.conn) == 0
    )


def test_rolled_back_delete_keeps_the_file(w: World) -> None:
    record = w.upload(w.user, {"title": "t"}, {"photo": ("a.png", png(), "image/png")})
    conn = w.conn
    notes = w.client.app.state.registry.get(conn, "notes")  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError), unit_of_work(conn) as work:
        files.track(conn, work, notes, w.user.account_id, record, None)
        raise RuntimeError("the write fails after the file was removed from the record")
    assert len(w.stored()) == 1
    assert fetch_value(conn, "SELECT count(*) FROM file_trash") == 0


def test_crash_after_commit_is_swept(w: World) -> None:
    """A removed file whose deletion never ran (a crash after COMMIT) is deleted by the sweeper."""
    record = w.upload(w.user, {"title": "t"}, {"photo": ("a.png", png(), "image/png")})
    notes = w.client.app.state.registry.get(w.conn, "notes")  # type: ignore[attr-defined]
    key = files.storage_key(notes, record["photo"]["name"])
    with unit_of_work(w.conn):  # as the unit of work of a delete leaves it, before its after-commit work
        files._to_trash(w.conn, [key], "2000-01-01T00:00:00.000Z")
    assert len(w.stored()) == 1
    assert files.sweep(w.conn) == 1
    assert w.stored() == [] and fetch_value(w.conn, "SELECT count(*) FROM file_trash") == 0
    # and an upload moved into place by a process that died before its record committed
    orphan = w.settings.files_path / notes.id / "orphan_abcdefghij.png"
    orphan.write_bytes(b"x")
    with unit_of_work(w.conn):
        files._to_trash(w.conn, [f"{notes.id}/{orphan.name}"], files.format_ts_in(-1))
    files.sweep(w.conn)
    assert not orphan.exists()


def test_download_needs_view_rights(w: World) -> None:
    record = w.upload(w.user, {"title": "t"}, {"photo": ("a.png", png(), "image/png")})
    url = w.url(record, record["photo"])
    assert w.client.get(url, headers=w.user2.headers).status_code == 404  # same account, view rule says no
    assert w.client.get(url, headers=w.other.headers).status_code == 404  # another account
    assert w.client.get(url).status_code == 404  # anonymous
    assert w.client.get(url, headers=w.sa.headers).status_code == 200
    assert w.client.get(url, headers={"x-account-id": w.other.account_id}).status_code == 404
    # field access: a field the caller may not view hides its files too
    access = {"list": ["title"], "view": ["title"], "create": ["*"], "update": ["*"]}
    response = w.client.patch(f"{API}/collections/notes", headers=w.sa.headers, json={"field_access": access})
    assert response.status_code == 200, response.text
    assert w.client.get(url, headers=w.user.headers).status_code == 404
    assert "photo" not in w.client.get(f"{API}/records/notes/{record['id']}", headers=w.user.headers).json()


def test_protected_files_need_a_fresh_file_token(w: World) -> None:
    record = w.upload(w.user, {"title": "t"}, {"secret": ("s.pdf", b"%PDF-1.4 secret", "application/pdf")})
    url = w.url(record, record["secret"])
    denied = w.client.get(url, headers=w.user.headers)
    assert denied.status_code == 403 and denied.json()["code"] == "file_token_required"
    token = w.client.post(f"{API}/files/token", headers=w.user.headers).json()["token"]
    got = w.client.get(url + f"?token={token}")
    assert got.status_code == 200 and got.content == b"%PDF-1.4 secret"
    # another user's token: the view rule still applies
    token2 = w.client.post(f"{API}/files/token", headers=w.user2.headers).json()["token"]
    assert w.client.get(url + f"?token={token2}").status_code == 404
    # an expired token, a forged one, and an access token used as a file token: 401
    claims = jwt.decode(token, options={"verify_signature": False})
    secret = w.client.app.state.settings.secret_key  # type: ignore[attr-defined]
    expired = jwt.encode(
        {**claims, "iat": int(time.time()) - 600, "exp": int(time.time()) - 300}, secret, algorithm="HS256"
    )
    for bad in (expired, token[:-4] + "AAAA", w.user.token):
        response = w.client.get(url + f"?token={bad}")
        assert response.status_code == 401, bad
    # a file token is not an access token
    assert (
        w.client.get(f"{API}/records/notes", headers={"authorization": f"Bearer {token}"}).status_code == 401
    )
    assert w.client.post(f"{API}/files/token").status_code == 401


def test_range_etag_and_conditional_requests(w: World) -> None:
    content = bytes(range(256)) * 300  # 76,800 bytes
    record = w.upload(w.user, {"title": "t"}, {"docs": ("data.bin", content, "application/octet-stream")})
    url, h = w.url(record, record["docs"][0]), w.user.headers
    full = w.client.get(url, headers=h)
    etag, modified = full.headers["etag"], full.headers["last-modified"]
    assert full.content == content and full.headers["accept-ranges"] == "bytes"
    part = w.client.get(url, headers={**h, "range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(content)}"
    assert w.client.get(url, headers={**h, "range": "bytes=-10"}).content == content[-10:]
    assert w.client.get(url, headers={**h, "range": "bytes=76000-"}).content == content[76000:]
    unsatisfiable = w.client.get(url, headers={**h, "range": "bytes=999999-"})
    assert (
        unsatisfiable.status_code == 416
        and unsatisfiable.headers["content-range"] == f"bytes */{len(content)}"
    )
    assert w.client.get(url, headers={**h, "if-none-match": etag}).status_code == 304
    assert w.client.get(url, headers={**h, "if-modified-since": modified}).status_code == 304
    assert w.client.get(url, headers={**h, "if-none-match": '"other"'}).status_code == 200
    stale = w.client.get(url, headers={**h, "range": "bytes=0-9", "if-range": '"other"'})
    assert stale.status_code == 200 and len(stale.content) == len(content)


def test_thumbnails(w: World) -> None:
    record = w.upload(w.user, {"title": "t"}, {"photo": ("wide.png", png(120, 80), "image/png")})
    url, h = w.url(record, record["photo"]), w.user.headers
    for spec, size in (("50x50", (50, 50)), ("0x40", (60, 40)), ("100x100", (100, 100))):
        response = w.client.get(url + f"?thumb={spec}", headers=h)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == size, spec
        assert response.headers["etag"].endswith(f'-{spec}"')
        assert (
            w.client.get(
                url + f"?thumb={spec}", headers={**h, "if-none-match": response.headers["etag"]}
            ).status_code
            == 304
        )
    cached = list((w.settings.files_path / ".thumbs").rglob("50x50"))
    assert len(cached) == 1
    # served again from memory: the same bytes even once the disk cache is gone
    first = w.client.get(url + "?thumb=50x50", headers=h).content
    cached[0].unlink()
    assert w.client.get(url + "?thumb=50x50", headers=h).content == first
    # a size the field does not list serves the original
    assert w.client.get(url + "?thumb=33x33", headers=h).content == w.stored()[0].read_bytes()


def test_recent_thumbnails_stay_within_their_byte_budget() -> None:
    recent = Recent(budget=6400)  # entries of at most 100 bytes (1/64 of it) are kept
    for i in range(70):
        recent.put(f"k{i}", "50x50", bytes([i]) * 100)
        if i == 0:
            assert recent.get("k0", "50x50") == bytes([0]) * 100
    assert recent.size <= 6400 and recent.get("k0", "50x50") is None  # the oldest went first
    assert recent.get("k69", "50x50") == bytes([69]) * 100 and recent.get("k69", "0x40") is None
    recent.get("k6", "50x50")  # served again: now the most recent
    recent.put("new", "50x50", b"x" * 100)
    assert recent.get("k6", "50x50") is not None and recent.get("k7", "50x50") is None
    recent.put("big", "500x500", b"x" * 101)  # over 1/64 of the budget: stays on disk only
    assert recent.get("big", "500x500") is None
    recent.put("new", "50x50", b"y" * 10)  # replaced: the size follows
    assert recent.get("new", "50x50") == b"y" * 10 and recent.size == sum(
        len(v) for v in recent._items.values()
    )


def test_quota(settings: Settings) -> None:
    for w in make_world(replace(settings, files_quota_bytes=150_000)):
        first = w.upload(
            w.user, {"title": "a"}, {"docs": ("a.bin", b"\x00" * 90_000, "application/octet-stream")}
        )
        response = w.client.post(
            f"{API}/records/notes",
            headers=w.user2.headers,
            data={"title": "b"},
            files={"docs": ("b.bin", b"\x00" * 90_000, "application/octet-stream")},
        )
        assert response.status_code == 413 and response.json()["code"] == "quota_exceeded"
        assert len(w.stored()) == 1 and w.staging() == []
        # another account has its own quota
        w.upload(w.other, {"title": "c"}, {"docs": ("c.bin", b"\x00" * 90_000, "application/octet-stream")})
        assert (
            w.client.delete(f"{API}/records/notes/{first['id']}", headers=w.user.headers).status_code == 204
        )
        assert files.usage(w.conn, w.user.account_id) == 0
        w.upload(w.user2, {"title": "b"}, {"docs": ("b.bin", b"\x00" * 90_000, "application/octet-stream")})


def test_schema_options_are_checked(w: World) -> None:
    bad = {
        "name": "bad",
        "fields": [{"name": "f", "type": "file", "options": {"thumbs": ["big"], "max_files": 0}}],
    }
    response = w.client.post(f"{API}/collections", headers=w.sa.headers, json=bad)
    assert response.status_code == 400
    assert set(response.json()["fields"]) >= {"fields.0.options.thumbs", "fields.0.options.max_files"}


def test_dropping_a_file_field_or_the_collection_deletes_its_files(w: World) -> None:
    record = w.upload(w.user, {"title": "t"}, {"photo": ("a.png", png(), "image/png"),
                                               "docs": ("d.txt", b"doc", "text/plain")})  # fmt: skip
    assert len(w.stored()) == 2
    kept = [f for f in FIELDS if f["name"] != "photo"]
    renamed = [{**f, "name": "papers", "previous_name": "docs"} if f["name"] == "docs" else f for f in kept]
    response = w.client.patch(f"{API}/collections/notes", headers=w.sa.headers, json={"fields": renamed})
    assert response.status_code == 200, response.text
    assert [p.name for p in w.stored()] == [record["docs"][0]["name"]]  # the renamed field keeps its file
    assert files.usage(w.conn, w.user.account_id) == 3
    assert w.client.delete(f"{API}/collections/notes", headers=w.sa.headers).status_code in (200, 204)
    assert w.stored() == [] and files.usage(w.conn, w.user.account_id) == 0


def test_sweep_at_start(settings: Settings) -> None:
    """A removed file whose deletion never ran is gone once the server starts again."""
    for w in make_world(settings):
        record = w.upload(w.user, {"title": "t"}, {"photo": ("a.png", png(), "image/png")})
        notes = w.client.app.state.registry.get(w.conn, "notes")  # type: ignore[attr-defined]
        with unit_of_work(w.conn):
            files._to_trash(
                w.conn, [files.storage_key(notes, record["photo"]["name"])], files.format_ts_in(-1)
            )
        assert len(w.stored()) == 1
    with TestClient(create_app(settings)):
        assert not any(p.is_file() for p in (settings.files_path / notes.id).iterdir())


def test_thumbnail_of_a_huge_or_broken_image_serves_the_original(w: World) -> None:
    broken = png(20, 20)[:60]  # a PNG header, then nothing: the decoder fails
    record = w.upload(w.user, {"title": "t"}, {"photo": ("broken.png", broken, "image/png")})
    got = w.client.get(w.url(record, record["photo"]) + "?thumb=50x50", headers=w.user.headers)
    assert got.status_code == 200 and got.content == broken


def test_deleting_an_account_deletes_its_files(w: World) -> None:
    """The account's records go by foreign-key cascade, their stored files after COMMIT; another
    account's files and usage stay."""
    w.upload(w.user, {"title": "mine"}, {"photo": ("a.png", png(), "image/png")})
    w.upload(w.user2, {"title": "also"}, {"docs": ("d.txt", b"doc", "text/plain")})
    kept = w.upload(w.other, {"title": "theirs"}, {"photo": ("b.png", png(color="blue"), "image/png")})
    assert len(w.stored()) == 3
    response = w.client.delete(f"{API}/accounts/{w.user.account_id}", headers=w.sa.headers)
    assert response.status_code == 204, response.text
    assert [p.name for p in w.stored()] == [kept["photo"]["name"]]
    assert files.usage(w.conn, w.user.account_id) == 0
    assert files.usage(w.conn, w.other.account_id) == kept["photo"]["size"]
    assert fetch_all(w.conn, "SELECT * FROM file_trash") == []
