"""The admin UI's file fields in a real browser: upload with the picker, the thumbnail and download
link of the stored file, removing it; and a file field defined in the schema editor's options."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from tests.test_admin_ui import Api, api, browser, nav, page, seed_account, server, shot, sign_in, tab  # noqa: F401

pytestmark = pytest.mark.browser


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (160, 90), "teal").save(buffer, "PNG")
    return buffer.getvalue()


def test_upload_preview_download_and_remove(page: Any, server: Any, api: Api) -> None:  # noqa: F811 (fixtures)
    account = seed_account(api)
    fields = [
        {"name": "title", "type": "text"},
        {"name": "photo", "type": "file", "options": {"mime_types": ["image/*"], "thumbs": ["100x100"]}},
    ]
    api.call(
        "POST",
        "/collections",
        {
            "name": "samples",
            "fields": fields,
            "rules": dict.fromkeys(("list", "view", "create", "update", "delete"), ""),
        },
    )
    sign_in(page, server.url)
    nav(page, "samples").click()
    page.get_by_label("Account", exact=True).select_option(account["id"])
    page.get_by_role("button", name="New record").click()
    page.get_by_label("title").fill("with a photo")
    page.locator("input[type=file]").set_input_files(
        {"name": "scan.png", "mimeType": "image/png", "buffer": png_bytes()}
    )
    page.locator(".file-item.new img").wait_for()  # a preview before saving
    page.get_by_role("button", name="Create", exact=True).click()
    page.get_by_role("cell", name="with a photo", exact=True).wait_for()
    (record,) = api.call("GET", "/records/samples", headers={"x-account-id": account["id"]})["items"]
    assert record["photo"]["type"] == "image/png" and record["photo"]["original"] == "scan.png"
    # editing shows the stored file's thumbnail (loaded through a file token) and a download link
    page.get_by_role("cell", name="with a photo", exact=True).click()
    thumb = page.locator(".file-item img.file-thumb")
    thumb.wait_for()
    page.wait_for_function("() => document.querySelector('.file-item img.file-thumb')?.naturalWidth === 100")
    link = page.get_by_role("link", name="scan.png")
    assert "token=" in (link.get_attribute("href") or "") and "download=1" in (
        link.get_attribute("href") or ""
    )
    shot(page, "record-files")
    page.get_by_role("button", name="Remove").click()
    page.get_by_role("button", name="Save changes").click()
    page.get_by_role("dialog").wait_for(state="hidden")
    record = api.call("GET", f"/records/samples/{record['id']}", headers={"x-account-id": account["id"]})
    assert record["photo"] is None


def test_schema_editor_file_options(page: Any, server: Any, api: Api) -> None:  # noqa: F811 (fixtures)
    api.call("POST", "/collections", {"name": "docs", "fields": [{"name": "title", "type": "text"}]})
    sign_in(page, server.url)
    nav(page, "docs").click()
    tab(page, "Schema").click()
    page.get_by_role("button", name="Add field").click()
    page.get_by_label("Name", exact=True).last.fill("scans")
    page.get_by_label("Type", exact=True).last.select_option("file")
    new_field = page.locator(".fc-body").last
    new_field.get_by_label("Max files (1 = one file)").fill("3")
    new_field.get_by_label("Thumb sizes (100x100, 0x300, 200x200f)").fill("100x100\n0x300")
    new_field.get_by_label("Protected (needs a file token)").check()
    page.get_by_role("button", name="Save schema").click()
    page.get_by_text("Schema saved").wait_for()
    scans = [f for f in api.call("GET", "/collections/docs")["fields"] if f["name"] == "scans"]
    assert scans and scans[0]["options"]["max_files"] == 3
    assert scans[0]["options"]["thumbs"] == ["100x100", "0x300"] and scans[0]["options"]["protected"] is True


def test_user_avatar_upload_and_remove(page: Any, server: Any, api: Api) -> None:  # noqa: F811 (fixtures)
    """The Users screen's edit dialog shows the profile's avatar and lets an admin upload and remove it."""
    account = seed_account(api)
    in_account = {"x-account-id": account["id"]}
    avatar = {
        "name": "avatar",
        "type": "file",
        "options": {"mime_types": ["image/png"], "thumbs": ["100x100"]},
    }
    api.call("PUT", "/profiles/schema", {"fields": [avatar], "view_rule": ""}, headers=in_account)
    user = api.call("POST", "/users", {"email": "ann@example.com", "password": "a long enough passphrase 7",
                                       "role": "user", "account_id": account["id"]})  # fmt: skip
    sign_in(page, server.url)
    nav(page, "Users").click()
    page.get_by_role("row").filter(has_text="ann@example.com").get_by_role("button", name="Edit").click()
    box = page.get_by_test_id("profile-avatar")
    box.get_by_text("No avatar").wait_for()
    box.get_by_label("Upload avatar").set_input_files(
        {"name": "ann.png", "mimeType": "image/png", "buffer": png_bytes()}
    )
    page.wait_for_function("() => document.querySelector('img.avatar-thumb')?.naturalWidth === 100")
    stored = api.call("GET", f"/profiles/{user['id']}", headers=in_account)["avatar"]
    assert stored["original"] == "ann.png" and stored["type"] == "image/png"
    shot(page, "user-avatar")
    box.get_by_role("button", name="Remove avatar").click()
    box.get_by_text("No avatar").wait_for()
    assert api.call("GET", f"/profiles/{user['id']}", headers=in_account)["avatar"] is None
