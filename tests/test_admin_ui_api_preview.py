"""The admin console's API preview of a collection (Collections → API preview) in a real browser
(Debian's chromium via Playwright) against one real server: the curl and SDK text of each operation
uses the collection's real fields with example values of their types, and shows its rules and field
access — for superadmins and for account admins."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.test_admin_ui import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    CHROMIUM,
    CHROMIUM_ARGS,
    USER_PASSWORD,
    Api,
    _require_browser,
    expect,
    nav,
    seed_account,
    shot,
    sign_in,
    tab,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("api_preview") / "data"
    env = {"SNACKBASE_SUPERADMIN_EMAIL": ADMIN_EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": ADMIN_PASSWORD}
    proc = ServerProcess([sys.executable, "-m", "snackbase"], data, env)
    yield proc
    proc.stop()


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab_ = context.new_page()
    tab_.set_default_timeout(8000)
    errors: list[str] = []
    tab_.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab_
    context.close()
    assert not errors, f"errors in the page: {errors}"


@pytest.fixture(scope="module")
def lab(server: ServerProcess) -> dict[str, Any]:
    """A collection with every field type, rules of each kind and narrowed field access."""
    api = Api(server.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)
    api.call("POST", "/collections", {"name": "pv_projects", "fields": [{"name": "name", "type": "text"}]})
    fields = [
        {"name": "title", "type": "text", "required": True, "options": {"max_length": 80}},
        {"name": "ph", "type": "number", "options": {"min": 0, "max": 14}},
        {"name": "runs", "type": "number", "options": {"integer_only": True, "min": 100}},
        {"name": "passed", "type": "boolean"},
        {"name": "contact", "type": "email"},
        {"name": "site", "type": "url"},
        {"name": "run_on", "type": "date"},
        {"name": "ran_at", "type": "datetime"},
        {"name": "status", "type": "select", "options": {"values": ["draft", "approved"]}},
        {"name": "meta", "type": "json"},
        {"name": "project", "type": "reference", "options": {"collection": "pv_projects"}},
        {"name": "owner", "type": "user"},
        {"name": "report", "type": "file"},
    ]
    rules = {
        "list": "",
        "view": "@is_authenticated()",
        "create": None,
        "update": 'status = "draft"',
        "delete": None,
    }
    access = {"list": ["*"], "view": ["*"], "create": ["*"], "update": ["title", "status"]}
    body = {"name": "pv_lab", "fields": fields, "rules": rules, "field_access": access}
    api.call("POST", "/collections", body)
    account = seed_account(api, "Preview Labs")
    user = {
        "email": "boss@preview.example",
        "password": USER_PASSWORD,
        "role": "admin",
        "account_id": account["id"],
    }
    api.call("POST", "/users", user)
    return account


def open_preview(page: Any) -> Any:
    nav(page, "pv_lab").click()
    tab(page, "API preview").click()
    return page.get_by_test_id("api-preview")


def choose(preview: Any, operation: str) -> None:
    preview.get_by_role("group", name="Operation").get_by_role("button", name=operation, exact=True).click()


def test_the_preview_shows_real_fields_typed_examples_and_rules(page: Any, server: Any, lab: Any) -> None:
    sign_in(page, server.url)
    preview = open_preview(page)
    call, rules = preview.get_by_test_id("api-call"), preview.get_by_test_id("api-rules")

    # list: filter on a real field, sort, paging, expand of the reference; the "" rule
    expect(call).to_contain_text("--data-urlencode 'filter=title ~ \"Example\"'")
    expect(call).to_contain_text("--data-urlencode 'expand=project'")
    expect(call).to_contain_text("per_page=30")
    expect(rules).to_contain_text("list rule: anyone")
    expect(preview.get_by_test_id("api-response")).to_contain_text('"total_items": 1')
    shot(page, "api-preview")

    # create: a JSON body with a value of each field's type; files as multipart; the null rule
    choose(preview, "Create")
    for part in ('"title":"Example title"', '"ph":4.5', '"runs":100', '"passed":true',
                 '"contact":"ada@example.com"', '"site":"https://example.com/page"', '"run_on":"2026-12-01"',
                 '"ran_at":"2026-12-01T09:30:00.000Z"', '"status":"draft"', '"meta":{"key":"value"',
                 "-F 'report=@./report.pdf'", "-X POST"):  # fmt: skip
        expect(call).to_contain_text(part)
    expect(call).not_to_contain_text('"report":')  # a file is never in the JSON body
    expect(rules).to_contain_text("create rule: superadmins only")
    expect(rules).to_contain_text("You: allowed (superadmins bypass rules)")
    expect(preview.get_by_test_id("api-response")).to_contain_text('"sha256"')  # a file's metadata
    preview.get_by_role("group", name="Form").get_by_role("button", name="JavaScript SDK").click()
    expect(call).to_contain_text('const pv_lab = sb.collection("pv_lab")')
    expect(call).to_contain_text("await pv_lab.create({")
    expect(call).to_contain_text('"ph": 4.5')
    expect(call).to_contain_text("new FormData()")

    # update: the expression rule and the narrowed field access; the body only has allowed fields
    choose(preview, "Update")
    expect(rules).to_contain_text('update rule: expression status = "draft"')
    expect(preview.get_by_test_id("api-access")).to_contain_text("Field access (update): title, status")
    expect(call).to_contain_text("await pv_lab.update(")
    expect(call).not_to_contain_text('"ph"')

    # batch names all three write rules; realtime the view rule and the WebSocket auth message
    choose(preview, "Batch")
    expect(rules).to_contain_text("delete rule: superadmins only")
    expect(call).to_contain_text("await pv_lab.batch({")
    choose(preview, "Realtime")
    expect(rules).to_contain_text("view rule: expression @is_authenticated()")
    expect(call).to_contain_text('ws.send(JSON.stringify({ type: "auth", token }))')
    preview.get_by_role("group", name="Form").get_by_role("button", name="curl").click()
    expect(call).to_contain_text("/api/v1/realtime/subscriptions")
    expect(call).to_contain_text('"topics":["pv_lab"')


def test_account_admins_see_the_preview_with_what_the_rules_mean_for_them(
    page: Any, server: Any, lab: Any
) -> None:
    sign_in(page, server.url, "boss@preview.example", USER_PASSWORD, lab["slug"])
    preview = open_preview(page)
    assert tab(page, "Schema").count() == 0  # still no schema editing
    choose(preview, "Delete")
    expect(preview.get_by_test_id("api-rules")).to_contain_text("You: refused (403)")
    expect(preview.get_by_test_id("api-call")).to_contain_text("-X DELETE")
    expect(preview.get_by_test_id("api-response")).to_have_text("204 No Content")
