"""The admin UI's Backups and Request logs screens in a real browser against a real server."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest

from tests.test_admin_ui import Api, api, browser, expect, nav, page, server, sign_in  # noqa: F401

pytestmark = pytest.mark.browser


def test_backups_screen_create_verify_download_delete(page: Any, server: Any, api: Api) -> None:  # noqa: F811
    sign_in(page, server.url)
    nav(page, "Backups").click()
    expect(page.get_by_role("heading", name="Backups")).to_be_visible()
    expect(page.get_by_test_id("backup-schedule")).to_contain_text("None")
    table = page.get_by_test_id("backups-table")
    expect(table).to_contain_text("No backups yet.")
    page.get_by_test_id("backup-create").click()
    row = table.get_by_role("row").filter(has_text=re.compile(r"snackbase-\d{8}T"))
    expect(row).to_have_count(1)
    name = row.locator("td").first.inner_text().split()[0]
    row.get_by_role("button", name=re.compile("^Verify")).click()
    expect(row.get_by_test_id("backup-verify-result")).to_contain_text("Verified")
    with page.expect_download() as info:
        row.get_by_role("button", name=re.compile("^Download")).click()
    assert info.value.suggested_filename == name
    row.get_by_role("button", name=re.compile("^Delete")).click()
    page.get_by_test_id("confirm-ok").click()
    expect(table).to_contain_text("No backups yet.")
    actions = [e["action"] for e in api.call("GET", "/audit-log?action=backup.*&sort=seq")["items"]]
    assert actions == ["backup.create", "backup.download", "backup.delete"]


def test_logs_screen_chart_list_and_filters(page: Any, server: Any, api: Api) -> None:  # noqa: F811
    for _ in range(5):
        api.call("GET", "/collections")
    with contextlib.suppress(AssertionError):  # the 404 is the point: an error in the log
        api.call("GET", "/records/ghosts/none")
    sign_in(page, server.url)
    nav(page, "Request logs").click()
    expect(page.get_by_role("heading", name="Request logs")).to_be_visible()
    table = page.get_by_test_id("logs-table")
    expect(table.get_by_role("row").filter(has_text="/api/v1/collections").first).to_be_visible()
    expect(page.get_by_test_id("logs-line")).to_have_attribute("d", re.compile(r"^M[\d.]+,[\d.]+"))
    expect(page.get_by_test_id("logs-total")).to_contain_text(
        re.compile(r"[1-9]\d* requests, [1-9]\d* errors")
    )
    page.get_by_label("Status").fill("4xx")
    page.get_by_role("button", name="Apply filters").click()
    expect(table.get_by_role("row").filter(has_text="/api/v1/collections")).to_have_count(0)
    expect(table.get_by_role("row").filter(has_text="404").first).to_be_visible()
