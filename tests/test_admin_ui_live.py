"""The records browser updates live: a record created elsewhere appears without a reload (Playwright)."""

from __future__ import annotations

from typing import Any

from tests.test_admin_ui import Api, api, browser, nav, page, seed_account, server, sign_in  # noqa: F401


def test_records_browser_updates_live(page: Any, server: Any, api: Api) -> None:  # noqa: F811
    account = seed_account(api)
    api.call("POST", "/collections", {"name": "notes", "fields": [{"name": "body", "type": "text"}]})
    sign_in(page, server.url)
    nav(page, "notes").click()
    indicator = page.get_by_test_id("live-indicator")
    indicator.get_by_text("Live").wait_for()
    api.call("POST", "/records/notes", {"body": "arrived live"}, headers={"x-account-id": account["id"]})
    page.get_by_test_id("records-table").get_by_role("cell", name="arrived live", exact=True).wait_for()
