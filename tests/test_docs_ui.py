"""The interactive API docs at /docs in a real browser (Debian's chromium via Playwright), offline.

Every request the page makes is checked: anything not aimed at the server itself is aborted and fails
the test, as does a Content Security Policy violation or an uncaught error in the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.test_admin_ui import ADMIN_EMAIL, ADMIN_PASSWORD, Api, browser, expect, server  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture
def api(server: Any) -> Api:  # noqa: F811
    return Api(server.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture
def offline_page(browser: Any, server: Any) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(8000)
    foreign: list[str] = []
    problems: list[str] = []

    def only_this_server(route: Any) -> None:
        if urlsplit(route.request.url).netloc != urlsplit(server.url).netloc:
            foreign.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", only_this_server)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None
    )
    yield page
    context.close()
    assert not foreign, f"the docs page reached other hosts: {foreign}"
    assert not problems, f"errors or CSP violations in the page: {problems}"


def test_docs_page_lists_operations_and_tries_one_with_a_pasted_token(
    offline_page: Any,
    server: Any,  # noqa: F811
    api: Api,
) -> None:
    page = offline_page
    api.call("POST", "/collections", {"name": "notes", "fields": [
        {"name": "title", "type": "text", "required": True},
        {"name": "mood", "type": "select", "options": {"values": ["calm", "busy"]}},
    ], "rules": {"list": "", "view": "", "create": "", "update": "", "delete": ""}})  # fmt: skip
    account = api.call("POST", "/accounts", {"name": "Docs Test"})
    response = page.goto(server.url + "/docs")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp

    expect(page.locator("#op-post_auth_login")).to_be_visible()  # anonymous: the document loads

    page.get_by_label("Access token").fill(api.token)
    page.get_by_label("X-Account-ID").fill(account["id"])
    page.get_by_role("button", name="Use").click()
    expect(page.locator("#who")).to_have_text("token in use")
    create = page.locator('[id="op-notes.create"]')
    create.locator("summary").first.click()
    body = create.locator("textarea")
    expect(body).to_have_value('{\n  "title": "",\n  "mood": "calm"\n}')
    body.fill('{"title": "from the docs page", "mood": "busy"}')
    create.get_by_role("button", name="Send").click()
    expect(create.locator(".status")).to_contain_text("201")
    expect(create.locator(".result")).to_contain_text('"title": "from the docs page"')
    stored = api.call("GET", "/records/notes", headers={"x-account-id": account["id"]})
    assert [r["title"] for r in stored["items"]] == ["from the docs page"]

    # an error answers the envelope, shown as is
    get_one = page.locator('[id="op-notes.get"]')
    get_one.locator("summary").first.click()
    get_one.locator("input[name=id]").fill("no-such-id")
    get_one.get_by_role("button", name="Send").click()
    expect(get_one.locator(".status")).to_contain_text("404")
    expect(get_one.locator(".result")).to_contain_text('"code": "not_found"')
