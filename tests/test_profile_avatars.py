"""Profile files (avatars) and profile references end to end: multipart uploads through the record
upload path, storage in step with the unit of work, the audit trail, downloads under the users view
rule, field access and file tokens, expand of `user` fields, tenancy, and deletes of what profiles
reference."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snackbase import files
from snackbase.config import Settings
from snackbase.db import fetch_all
from tests.conftest import make_settings
from tests.factories import User, make_user
from tests.test_files import World, make_world, png

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
AVATAR = {
    "name": "avatar",
    "type": "file",
    "options": {"max_size": 50_000, "mime_types": ["image/png"], "thumbs": ["40x40"]},
}
SCHEMA: dict[str, Any] = {
    "fields": [{"name": "display_name", "type": "text"}, AVATAR],
    "view_rule": "@is_authenticated()",
}


@pytest.fixture
def w(settings: Settings) -> Iterator[World]:
    yield from make_world(settings)


def admin_of(w: World, schema: dict[str, Any] = SCHEMA) -> User:
    admin = make_user(w.client, w.user.account_id, "admin")
    r = w.client.put(f"{API}/profiles/schema", headers=admin.headers, json=schema)
    assert r.status_code == 200, r.text
    return admin


def upload(w: World, who: User, target: User, image: bytes, status: int = 200, **data: Any) -> dict[str, Any]:
    r = w.client.patch(
        f"{API}/profiles/{target.id}",
        headers=who.headers,
        data=data,
        files={"avatar": ("Me.PNG", image, "image/png")},
    )
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


def profile_entries(w: World) -> list[dict[str, Any]]:
    rows = fetch_all(w.conn, "SELECT * FROM audit_log WHERE action = 'user.profile_update' ORDER BY seq")
    return [{**r, "changes": json.loads(r["changes"])} for r in rows]


def test_avatar_upload_download_replace_and_remove(w: World) -> None:
    admin_of(w)
    image = png(60, 60)
    shown = upload(w, w.user, w.user, image, display_name="Ann")
    meta = shown["avatar"]
    assert shown["display_name"] == "Ann" and meta["type"] == "image/png" and meta["size"] == len(image)
    assert meta["sha256"] == hashlib.sha256(image).hexdigest() and meta["original"] == "Me.PNG"
    assert [p.read_bytes() for p in w.stored()] == [image] and w.staging() == []
    assert files.usage(w.conn, w.user.account_id) == len(image)
    # audited: name, size and SHA-256 of the file, in the profile's own entry
    change = profile_entries(w)[-1]["changes"]["avatar"]
    assert change["old"] is None and change["new"]["sha256"] == meta["sha256"]
    assert (change["new"]["name"], change["new"]["size"]) == (meta["name"], len(image))
    # another user of the account downloads it (the view rule lets signed-in users read profiles)
    url = f"{API}/profiles/{w.user.id}/files/{meta['name']}"
    got = w.client.get(url, headers=w.user2.headers)
    assert got.status_code == 200 and got.content == image and got.headers["content-type"] == "image/png"
    assert (
        w.client.get(url, headers={**w.user2.headers, "if-none-match": got.headers["etag"]}).status_code
        == 304
    )
    thumb = w.client.get(url + "?thumb=40x40", headers=w.user2.headers)
    assert thumb.status_code == 200 and thumb.content != image
    # another account, an anonymous caller (the rule needs a user), a wrong name: 404
    assert w.client.get(url, headers=w.other.headers).status_code == 404
    assert w.client.get(url).status_code == 404
    assert w.client.get(url.replace(meta["name"], "x.png"), headers=w.user2.headers).status_code == 404
    # a new upload replaces the file: the old one is deleted after COMMIT, usage follows
    second = png(30, 30, "blue")
    replaced = upload(w, w.user, w.user, second)["avatar"]
    assert replaced["name"] != meta["name"] and [p.read_bytes() for p in w.stored()] == [second]
    assert w.client.get(url, headers=w.user2.headers).status_code == 404
    assert files.usage(w.conn, w.user.account_id) == len(second)
    # removed with JSON: the file goes, the profile keeps its other values
    r = w.client.patch(f"{API}/profiles/{w.user.id}", headers=w.user.headers, json={"avatar": None})
    assert r.status_code == 200 and r.json()["avatar"] is None and r.json()["display_name"] == "Ann"
    assert w.stored() == [] and files.usage(w.conn, w.user.account_id) == 0


def test_bad_uploads_write_nothing(w: World) -> None:
    admin = admin_of(w)
    upload(w, w.user, w.user, png(20, 20))
    before_files, before_audit = w.stored(), w.audit_count()
    big = png(400, 400, "white") + b"\0" * 60_000
    r = w.client.patch(f"{API}/profiles/{w.user.id}", headers=w.user.headers,
                       files={"avatar": ("big.png", big, "image/png")})  # fmt: skip
    assert r.status_code == 413 and r.json()["code"] == "file_too_large"
    r = w.client.patch(f"{API}/profiles/{w.user.id}", headers=w.user.headers,
                       files={"avatar": ("x.png", b"just some text\n" * 10, "image/png")})  # fmt: skip
    assert r.status_code == 400 and "avatar" in r.json()["fields"]
    # a user may not write another user's profile: refused before anything is stored
    upload(w, w.user2, w.user, png(), status=403)
    # another account's admin cannot even find the user
    upload(w, w.other, w.user, png(), status=404)
    # a field that is not a file field of the profiles
    r = w.client.patch(f"{API}/profiles/{w.user.id}", headers=w.user.headers,
                       files={"display_name": ("a.png", png(), "image/png")})  # fmt: skip
    assert r.status_code == 400
    # field access: a field the user may not update refuses the whole write, and its upload goes again
    admin_of(w, {**SCHEMA, "field_access": {"update": ["display_name"]}})
    upload(w, w.user, w.user, png(10, 10), status=403)
    assert w.stored() == before_files and w.staging() == [] and w.audit_count() == before_audit + 1  # schema
    assert admin is not None


def test_field_access_masks_and_protected_avatars(w: World) -> None:
    admin = admin_of(w)
    meta = upload(w, w.user, w.user, png())["avatar"]
    url = f"{API}/profiles/{w.user.id}/files/{meta['name']}"
    # field access `view` without avatar: user2 sees neither the field nor the file; the admin neither
    admin_of(w, {**SCHEMA, "field_access": {"view": ["display_name"]}})
    assert "avatar" not in w.client.get(f"{API}/profiles/{w.user.id}", headers=w.user2.headers).json()
    assert w.client.get(url, headers=w.user2.headers).status_code == 404
    r = w.client.get(f"{API}/profiles?filter=avatar != null", headers=w.user2.headers)
    assert r.status_code == 400  # a field the caller cannot read cannot be filtered on
    # protected: a file token is needed even with view rights
    protected = {**AVATAR, "options": {**AVATAR["options"], "protected": True}}
    admin_of(w, {**SCHEMA, "fields": [SCHEMA["fields"][0], protected]})
    assert w.client.get(url, headers=w.user2.headers).status_code == 403
    token = w.client.post(f"{API}/files/token", headers=w.user2.headers).json()["token"]
    assert w.client.get(f"{url}?token={token}").status_code == 200
    other_token = w.client.post(f"{API}/files/token", headers=w.other.headers).json()["token"]
    assert w.client.get(f"{url}?token={other_token}").status_code == 404
    # a public view rule ("") lets an <img> without any header load it: scoped to the user's account
    admin_of(w, {**SCHEMA, "view_rule": ""})
    assert w.client.get(url).status_code == 200
    assert w.client.get(url, headers={"X-Account-ID": w.other.account_id}).status_code == 404
    assert admin is not None


def test_expanding_a_user_field_shows_the_avatar_the_caller_may_see(w: World) -> None:
    admin_of(w)
    meta = upload(w, w.user, w.user, png(), display_name="Ann")["avatar"]
    body = {"name": "projects", "rules": {"list": "", "view": "", "create": ""},
            "fields": [{"name": "title", "type": "text"},
                       {"name": "lead", "type": "user", "options": {"on_delete": "set_null"}}]}  # fmt: skip
    assert w.client.post(f"{API}/collections", headers=w.sa.headers, json=body).status_code == 201
    r = w.client.post(
        f"{API}/records/projects", headers=w.user2.headers, json={"title": "P", "lead": w.user.id}
    )
    assert r.status_code == 201, r.text
    got = w.client.get(f"{API}/records/projects/{r.json()['id']}?expand=lead", headers=w.user2.headers).json()
    lead = got["expand"]["lead"]
    assert lead["display_name"] == "Ann" and lead["avatar"]["name"] == meta["name"]
    assert (
        w.client.get(f"{API}/profiles/{w.user.id}/files/{meta['name']}", headers=w.user2.headers).status_code
        == 200
    )
    # a lead from another account cannot be set
    r = w.client.post(
        f"{API}/records/projects", headers=w.user2.headers, json={"title": "Q", "lead": w.other.id}
    )
    assert r.status_code == 400


def test_user_delete_and_schema_change_delete_the_files(w: World) -> None:
    admin = admin_of(w)
    upload(w, w.user, w.user, png(10, 10))
    upload(w, w.user2, w.user2, png(12, 12))
    assert len(w.stored()) == 2
    assert w.client.delete(f"{API}/users/{w.user.id}", headers=admin.headers).status_code == 204
    assert len(w.stored()) == 1 and files.usage(w.conn, w.user2.account_id) == len(png(12, 12))
    # dropping the avatar field deletes every avatar of the account
    admin_of(w, {**SCHEMA, "fields": [SCHEMA["fields"][0]]})
    assert w.stored() == [] and files.usage(w.conn, w.user2.account_id) == 0


def test_profile_references_same_account_expand_and_on_delete(w: World) -> None:
    body = {"name": "labs", "rules": {"list": "", "view": 'name != "secret"', "create": "", "delete": ""},
            "fields": [{"name": "name", "type": "text"}]}  # fmt: skip
    assert w.client.post(f"{API}/collections", headers=w.sa.headers, json=body).status_code == 201
    schema = {
        "fields": [
            {"name": "lab", "type": "reference", "options": {"collection": "labs"}},
            {"name": "buddy", "type": "user", "options": {"on_delete": "set_null"}},
        ],
        "view_rule": "",
    }
    admin = admin_of(w, schema)
    lab = w.client.post(f"{API}/records/labs", headers=w.user.headers, json={"name": "Lab A"}).json()["id"]
    secret = w.client.post(f"{API}/records/labs", headers=w.user.headers, json={"name": "secret"}).json()[
        "id"
    ]
    theirs = w.client.post(f"{API}/records/labs", headers=w.other.headers, json={"name": "G"}).json()["id"]
    # another account's record (or user) is refused, and nothing is written
    before = w.audit_count()
    for bad in ({"lab": theirs}, {"buddy": w.other.id}, {"lab": "nope"}):
        r = w.client.patch(f"{API}/profiles/{w.user.id}", headers=w.user.headers, json=bad)
        assert r.status_code == 400 and r.json()["fields"][next(iter(bad))]["code"] == "reference_not_found"
    assert w.audit_count() == before
    p = f"{API}/profiles/{w.user.id}"
    assert (
        w.client.patch(p, headers=w.user.headers, json={"lab": lab, "buddy": w.user2.id}).status_code == 200
    )
    # expand: the lab under the labs view rule, the buddy's profile under the users view rule
    got = w.client.get(f"{p}?expand=lab,buddy", headers=w.user2.headers).json()
    assert got["expand"]["lab"]["name"] == "Lab A" and got["expand"]["buddy"]["id"] == w.user2.id
    listed = w.client.get(f"{API}/profiles?expand=lab&filter=lab != null", headers=w.user2.headers).json()
    assert [i["expand"]["lab"]["id"] for i in listed["items"]] == [lab]
    w.client.patch(p, headers=w.user.headers, json={"lab": secret})
    assert "expand" not in w.client.get(f"{p}?expand=lab", headers=w.user2.headers).json()  # view rule
    assert w.client.get(f"{p}?expand=nope", headers=w.user2.headers).status_code == 400
    # restrict (the default): the lab a profile names cannot be deleted
    r = w.client.delete(f"{API}/records/labs/{secret}", headers=w.user.headers)
    assert r.status_code == 409 and r.json()["code"] == "record_in_use" and "users.lab" in r.json()["fields"]
    # set_null: deleting the buddy clears it, audited with the cause
    assert w.client.delete(f"{API}/users/{w.user2.id}", headers=admin.headers).status_code == 204
    assert w.client.get(p, headers=w.user.headers).json()["buddy"] is None
    entry = profile_entries(w)[-1]
    assert entry["record_id"] == w.user.id and entry["changes"]["buddy"]["old"] == w.user2.id
    assert json.loads(entry["extra"])["cascade"]["record_id"] == w.user2.id


def test_avatars_count_towards_the_account_quota(tmp_path: Path) -> None:
    for w in make_world(make_settings(tmp_path / "data", files_quota_bytes=30_000)):
        admin_of(w)
        noisy = png(90, 90, "white")  # PNG of one colour: small; pad it to a known size
        first = noisy + b"\0" * (20_000 - len(noisy))
        upload(w, w.user, w.user, first)
        before = (w.stored(), w.audit_count())
        r = w.client.patch(f"{API}/profiles/{w.user2.id}", headers=w.user2.headers,
                           files={"avatar": ("b.png", first, "image/png")})  # fmt: skip
        assert r.status_code == 413 and r.json()["code"] == "quota_exceeded"
        assert (w.stored(), w.audit_count()) == before and w.staging() == []
        # removing an avatar frees its bytes for the next one
        w.client.patch(f"{API}/profiles/{w.user.id}", headers=w.user.headers, json={"avatar": None})
        assert files.usage(w.conn, w.user.account_id) == 0
        upload(w, w.user2, w.user2, first)
        assert files.usage(w.conn, w.user.account_id) == len(first)


def test_deleting_an_account_deletes_its_record_files_and_avatars(w: World) -> None:
    """The records and profiles go by foreign-key cascade; their stored files go after COMMIT, and
    another account's files stay."""
    admin_of(w)
    upload(w, w.user, w.user, png())
    w.upload(w.user, {"title": "mine"}, {"photo": ("a.png", png(), "image/png")})
    kept = w.upload(w.other, {"title": "theirs"}, {"photo": ("b.png", png(color="blue"), "image/png")})
    assert len(w.stored()) == 3
    response = w.client.delete(f"{API}/accounts/{w.user.account_id}", headers=w.sa.headers)
    assert response.status_code == 204, response.text
    assert [p.name for p in w.stored()] == [kept["photo"]["name"]]
    assert files.usage(w.conn, w.user.account_id) == 0
    assert fetch_all(w.conn, "SELECT * FROM file_trash") == []
