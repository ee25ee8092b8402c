"""The admin UI in a real browser (Debian's chromium driven by Playwright) against a real server.

Never downloads a browser: chromium comes from the system (`.ci/run` apt-installs it). Without it the
tests are skipped locally and fail under CI=true. Screenshots of the main screens are written to
docs/screenshots/ by `test_tour_and_screenshots` when SNACKBASE_SCREENSHOTS=1 (`make screenshots`), so a
plain test run leaves the working tree as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"


def expect(locator: Any) -> Any:
    """Playwright's retrying assertions (imported late: the module skips cleanly without playwright)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


CHROMIUM = os.environ.get("SNACKBASE_CHROMIUM", "/usr/bin/chromium")
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "Snack-console-2026!"
USER_PASSWORD = "Bench-notebook-ferment-42"
XSS = '<img src=x onerror="window.__xss=1;alert(1)"><script>window.__xss=2</script>'
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


def _require_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("the playwright package is missing (pip install -e '.[test]')")
        pytest.skip("the playwright package is not installed")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        if os.environ.get("CI") == "true":
            pytest.fail(f"chromium is missing at {CHROMIUM} (apt-get install chromium)")
        pytest.skip(f"chromium is not installed at {CHROMIUM}")
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class Api:
    """A tiny JSON client for seeding data the way any API client would."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.token = ""

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + "/api/v1" + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read()[:300]!r}") from None
        return json.loads(raw) if raw else None

    def login(self, email: str, password: str, account: str = "system") -> Api:
        body = self.call(
            "POST", "/auth/login", {"email": email, "password": password, "account_identifier": account}
        )
        self.token = body["access_token"]
        return self


@pytest.fixture
def server(start_server: Callable[..., Any]) -> Any:
    return start_server(
        env={"SNACKBASE_SUPERADMIN_EMAIL": ADMIN_EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": ADMIN_PASSWORD}
    )


@pytest.fixture
def api(server: Any) -> Api:
    return Api(server.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture
def page(browser: Any, server: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(8000)
    dialogs: list[str] = []
    tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.dialogs = dialogs
    tab.js_errors = errors
    yield tab
    if os.environ.get("SNACKBASE_UI_DEBUG"):
        tab.screenshot(path=f"/tmp/sb-ui-{request.node.name}.png")
    context.close()
    assert not dialogs, f"a JavaScript dialog fired: {dialogs}"
    assert not errors, f"uncaught errors in the page: {errors}"


def sign_in(page: Any, url: str, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD,
            account: str = "system") -> None:  # fmt: skip
    page.goto(url + "/_/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Account", exact=True).fill(account)
    page.get_by_role("button", name="Sign in").click()


def nav(page: Any, name: str) -> Any:
    return page.get_by_role("navigation", name="Main navigation").get_by_role("link", name=name, exact=True)


def tab(page: Any, name: str) -> Any:
    return page.get_by_role("navigation", name="Collection sections").get_by_role(
        "link", name=name, exact=True
    )


def shot(page: Any, name: str, scroll_top: bool = True) -> None:
    if os.environ.get("SNACKBASE_SCREENSHOTS", "0") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        if scroll_top:
            page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(150)  # let transitions settle
        page.evaluate("document.querySelector('.toasts')?.style.setProperty('visibility', 'hidden')")
        page.screenshot(path=str(SHOTS / f"{name}.png"))
        page.evaluate("document.querySelector('.toasts')?.style.removeProperty('visibility')")


def seed_account(api: Api, name: str = "Acme Labs") -> dict[str, Any]:
    return api.call("POST", "/accounts", {"name": name})


# --- tests ---------------------------------------------------------------------------------------


def test_wrong_password_shows_an_error_and_the_csp_is_strict(page: Any, server: Any) -> None:
    response = page.goto(server.url + "/_/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp
    shot(page, "sign-in")
    sign_in(page, server.url, password="not the password at all")
    error = page.get_by_test_id("login-error")
    error.wait_for()
    assert "not correct" in error.inner_text()
    assert page.get_by_role("button", name="Sign in").is_visible()


def test_plain_user_is_refused(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api)
    api.call("POST", "/users", {"email": "plain@example.com", "password": USER_PASSWORD, "role": "user",
                                "account_id": account["id"]})  # fmt: skip
    sign_in(page, server.url, "plain@example.com", USER_PASSWORD, account["slug"])
    refused = page.get_by_test_id("login-refused")
    refused.wait_for()
    assert "for administrators" in refused.inner_text()
    assert page.get_by_role("navigation", name="Main navigation").count() == 0


def test_account_admin_sees_their_account(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api)
    other = seed_account(api, "Other Tenant")
    api.call("POST", "/collections", {"name": "tasks", "fields": [{"name": "label", "type": "text"}],
                                      "rules": {"list": "", "create": "", "view": ""}})  # fmt: skip
    for owner, label in ((account, "ours"), (other, "theirs")):
        api.call("POST", "/records/tasks", {"label": label}, headers={"x-account-id": owner["id"]})
    api.call("POST", "/users", {"email": "boss@acme.example", "password": USER_PASSWORD, "role": "admin",
                                "account_id": account["id"]})  # fmt: skip
    sign_in(page, server.url, "boss@acme.example", USER_PASSWORD, account["slug"])
    page.get_by_role("heading", name="Dashboard").wait_for()
    assert nav(page, "Accounts").count() == 0  # superadmin only
    nav(page, "Users").click()
    page.get_by_role("cell", name="boss@acme.example").wait_for()
    nav(page, "tasks").click()  # account admins get the collection list too (no schema editing)
    table = page.get_by_test_id("records-table")
    table.get_by_role("cell", name="ours", exact=True).wait_for()
    assert table.get_by_role("cell", name="theirs", exact=True).count() == 0


def test_xss_in_record_values_renders_as_text(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api)
    api.call("POST", "/collections", {"name": "notes", "fields": [{"name": "body", "type": "text"}]})
    api.call("POST", "/records/notes", {"body": XSS}, headers={"x-account-id": account["id"]})
    sign_in(page, server.url)
    nav(page, "notes").click()
    cell = page.get_by_test_id("records-table").get_by_role("cell", name=XSS, exact=True)
    cell.wait_for()
    assert cell.inner_text() == XSS
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x]").count() == 0


def test_api_down_banner_and_retry(page: Any, server: Any) -> None:
    sign_in(page, server.url)
    page.get_by_role("heading", name="Dashboard").wait_for()
    page.route("**/api/v1/**", lambda route: route.abort())
    page.route("**/health", lambda route: route.abort())
    nav(page, "Users").click()
    banner = page.get_by_test_id("api-down")
    banner.wait_for()
    assert "cannot be reached" in banner.inner_text()
    page.unroute("**/api/v1/**")
    page.unroute("**/health")
    banner.get_by_role("button", name="Retry").click()
    banner.wait_for(state="detached")
    page.get_by_role("cell", name=ADMIN_EMAIL).wait_for()


def test_expired_session_keeps_typed_input(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api)
    api.call("POST", "/collections", {"name": "memos", "fields": [{"name": "title", "type": "text"}],
                                      "rules": {"list": "", "create": ""}})  # fmt: skip
    sign_in(page, server.url)
    nav(page, "memos").click()
    page.get_by_label("Account", exact=True).select_option(account["id"])
    page.get_by_role("button", name="New record").click()
    page.get_by_label("title").fill("typed before the session ended")
    # The server ends every session of this user (as a password change or an admin would).
    token = page.evaluate("JSON.parse(sessionStorage.getItem('sb.session')).access")
    ender = Api(server.url)
    ender.token = token
    ender.call("POST", "/auth/logout-all")
    page.get_by_role("button", name="Create", exact=True).click()
    page.get_by_role("heading", name="Your session has ended").wait_for()
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Your session has ended").wait_for(state="detached")
    assert page.get_by_label("title").input_value() == "typed before the session ended"
    page.get_by_role("button", name="Create", exact=True).click()
    page.get_by_test_id("records-table").get_by_role("cell", name="typed before the session ended").wait_for()


def test_tour_and_screenshots(page: Any, server: Any, api: Api) -> None:
    """Sign in; create a collection with several field types; add, edit and delete records; set a rule
    and test it; see the audit entries; invite a user. Screenshots of each main screen on the way."""
    account = seed_account(api)
    seed_account(api, "Globex Research")
    api.call("POST", "/users", {"email": "ann@acme.example", "password": USER_PASSWORD, "role": "admin",
                                "account_id": account["id"]})  # fmt: skip
    sign_in(page, server.url)
    page.get_by_role("heading", name="Dashboard").wait_for()

    # a collection with several field types, through the schema editor
    nav(page, "New collection").click()
    page.get_by_label("Collection name").fill("samples")
    cards = page.get_by_test_id("field-card")
    cards.nth(0).get_by_label("Name").fill("title")
    cards.nth(0).get_by_label("Required").check()
    cards.nth(0).get_by_label("Max length").fill("120")
    for index, (name, kind) in enumerate([("weight", "number"), ("approved", "boolean"), ("status", "select"),
                                          ("data", "json"), ("contact", "email")], start=1):  # fmt: skip
        page.get_by_role("button", name="Add field").click()
        cards.nth(index).get_by_label("Name").fill(name)
        cards.nth(index).get_by_label("Type").select_option(kind)
    cards.nth(3).get_by_label("Values (one per line)").fill("draft\nreleased")
    cards.nth(5).get_by_label("PII").check()
    cards.nth(5).get_by_label("Mask").select_option("email")
    shot(page, "new-collection")
    page.get_by_role("button", name="Create collection").click()
    page.get_by_role("heading", name="samples").wait_for()

    # an invalid schema edit: the API's error appears next to the field it names
    tab(page, "Schema").click()
    cards.nth(1).get_by_label("Name").wait_for()
    shot(page, "schema-editor")
    cards.nth(1).get_by_label("Name").fill("Bad Name")
    page.get_by_role("button", name="Save schema").click()
    page.get_by_test_id("confirm-ok").click()
    cards.nth(1).locator(".field-error").first.wait_for()
    page.get_by_role("button", name="Discard changes").click()

    # records: create, edit, delete
    tab(page, "Records").click()
    page.get_by_label("Account", exact=True).select_option(account["id"])
    for title, weight in (("First sample", "5"), ("Second sample", "12.5")):
        page.get_by_role("button", name="New record").click()
        page.get_by_label("title").fill(title)
        page.get_by_label("weight").fill(weight)
        page.get_by_label("approved").check()
        page.get_by_label("status").select_option("draft")
        page.get_by_label("data").fill('{"batch": 7}')
        page.get_by_label("contact").fill("lab@acme.example")
        page.get_by_role("button", name="Create", exact=True).click()
        page.get_by_test_id("records-table").get_by_role("cell", name=title).wait_for()
    table = page.get_by_test_id("records-table")
    shot(page, "records")
    table.get_by_role("row").filter(has_text="First sample").get_by_role("button", name="Edit").click()
    page.get_by_label("title").fill("First sample, edited")
    page.get_by_label("Reason for change (optional)").fill("typo")
    shot(page, "record-form")
    page.get_by_role("button", name="Save changes").click()
    table.get_by_role("cell", name="First sample, edited").wait_for()
    first_id = (
        table.get_by_role("row")
        .filter(has_text="First sample, edited")
        .get_by_role("cell")
        .first.inner_text()
    )
    # an electronic signature: a wrong password is refused without ending the session
    table.get_by_role("row").filter(has_text="First sample, edited").get_by_role(
        "button", name="Edit"
    ).click()
    page.get_by_text("Signatures and history").click()
    page.get_by_label("Your password").fill("not my password")
    page.get_by_role("button", name="Sign record").click()
    page.get_by_text("nothing was signed").wait_for()
    page.get_by_label("Your password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign record").click()
    page.get_by_text("current version").wait_for()
    shot(page, "record-signature")
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    page.get_by_role("dialog").wait_for(state="detached")

    page.get_by_label("Filter").fill("weight > 10")
    page.get_by_role("button", name="Apply").click()
    table.get_by_role("cell", name="First sample, edited").wait_for(state="detached")
    page.get_by_label("Filter").fill("weight >")
    page.get_by_role("button", name="Apply").click()
    page.locator(".err-pointer").wait_for()
    page.get_by_label("Filter").fill("")
    page.get_by_role("button", name="Apply").click()
    table.get_by_role("row").filter(has_text="Second sample").get_by_role("button", name="Delete").click()
    page.get_by_test_id("confirm-ok").click()
    table.get_by_role("cell", name="Second sample").wait_for(state="detached")

    # rules: a syntax error shown at its position, then a valid rule saved and tested
    tab(page, "API rules").click()
    page.get_by_role("group", name="list").get_by_label("Expression").check()
    page.get_by_label("list rule expression").fill("weight > 10 && && approved = true")
    page.get_by_role("button", name="Save rules").click()
    page.locator(".err-pointer mark").wait_for()
    page.get_by_label("list rule expression").fill('@has_role("admin") && weight > 1')
    page.get_by_role("button", name="Save rules").click()
    page.get_by_text("Rules saved").wait_for()
    page.get_by_role("button", name="Copy from editor").click()
    page.get_by_label("As user", exact=True).select_option(
        label=f"ann@acme.example · admin · {account['id']}"
    )
    page.get_by_label("Record id (view, update, delete)").fill(first_id)
    page.get_by_role("button", name="Run test").click()
    expect(page.get_by_test_id("rule-test-result")).to_contain_text("Allowed")
    page.get_by_label("Test rule kind").select_option("null")
    page.get_by_role("button", name="Run test").click()
    page.get_by_test_id("rule-test-result").get_by_text("Denied").wait_for()
    page.get_by_role("button", name="Copy from editor").click()
    shot(page, "rules-editor")

    tab(page, "Field access & PII").click()
    page.get_by_role("heading", name="Field access").wait_for()
    shot(page, "field-access")

    # the audit trail shows what was done, with old and new values
    nav(page, "Audit log").click()
    audit = page.get_by_test_id("audit-table")
    audit.get_by_text("record.update").first.wait_for()
    audit.get_by_text("collection.create").first.wait_for()
    page.get_by_role("button", name="Verify chains").click()
    expect(page.get_by_test_id("verify-result")).to_contain_text("intact")
    shot(page, "audit-log")
    audit.get_by_role("row").filter(has_text="record.update").first.click()
    changes = page.get_by_test_id("audit-changes")
    changes.get_by_text("First sample, edited").wait_for()
    shot(page, "audit-entry")
    page.keyboard.press("Escape")

    # invite a user
    nav(page, "Invitations").click()
    page.get_by_role("button", name="Invite a user").click()
    invite = page.get_by_role("dialog", name="Invite a user")
    invite.get_by_label("Account").select_option(account["id"])
    invite.get_by_label("Email").fill("new.scientist@acme.example")
    page.get_by_role("button", name="Send invitation").click()
    page.get_by_test_id("invite-created").wait_for()
    page.get_by_role("button", name="Done").click()
    page.get_by_role("cell", name="new.scientist@acme.example").wait_for()
    shot(page, "invitations")

    # a custom macro, saved and tested
    nav(page, "Macros").click()
    page.get_by_role("button", name="New macro").click()
    page.get_by_label("Name").fill("heavier_than")
    page.get_by_label("SQL", exact=True).fill("SELECT ? > ?")
    page.get_by_label("Description").fill("First argument greater than the second")
    page.get_by_role("button", name="Save macro").click()
    page.get_by_role("button", name="@heavier_than").wait_for()
    page.get_by_label("Arguments (JSON array)").fill("[12, 5]")
    page.get_by_role("button", name="Run test").click()
    page.get_by_test_id("macro-test-result").wait_for()
    shot(page, "macros")

    for link, heading, name in (("Users", "Users", "users"), ("Accounts", "Accounts", "accounts"),
                                ("Server info", "Server info", "server-info"),
                                ("Dashboard", "Dashboard", "dashboard")):  # fmt: skip
        nav(page, link).click()
        page.get_by_role("heading", name=heading, exact=True).wait_for()
        page.wait_for_load_state("networkidle")
        shot(page, name)
    # The dashboard shows "—" until its counts arrive: wait for the text, never read it at once.
    expect(page.get_by_test_id("count-collections")).to_have_text("1")

    # a rename keeps the data, a drop says what happens to it before anything changes
    nav(page, "samples").click()
    tab(page, "Schema").click()
    cards.nth(4).get_by_label("Name").fill("payload")
    cards.nth(3).get_by_role("button", name="Remove").click()
    page.get_by_role("button", name="Save schema").click()
    confirm = page.get_by_role("dialog", name="Apply schema changes to samples?")
    confirm.get_by_text("Drop “status”").wait_for()
    confirm.get_by_text("Rename “data” → “payload”").wait_for()
    shot(page, "schema-change-confirm")
    page.get_by_test_id("confirm-ok").click()
    page.get_by_text("Schema saved").wait_for()
    tab(page, "Records").click()
    page.get_by_test_id("records-table").get_by_role("cell", name='{"batch":7}').wait_for()
    assert page.get_by_role("columnheader", name="status").count() == 0

    # narrow screens: the navigation folds into a menu button
    page.set_viewport_size({"width": 390, "height": 800})
    page.get_by_role("button", name="Menu").click()
    nav(page, "Audit log").click()
    page.get_by_test_id("audit-table").wait_for()
    shot(page, "narrow")


def test_pager_and_row_actions_report_their_outcome(page: Any, server: Any, api: Api) -> None:
    """The shared pager pages through a list; a row action toasts its success and reloads the list,
    or toasts the server's refusal and leaves the list as it was."""
    for i in range(10):
        seed_account(api, f"Tenant {i:02d}")  # with "Roles Holder" and the system account: 12 accounts
    api.call("POST", "/roles", {"name": "auditor"})
    api.call("POST", "/roles", {"name": "reviewer"})
    account = seed_account(api, "Roles Holder")
    api.call("POST", "/users", {"email": "rev@acme.example", "password": USER_PASSWORD, "role": "reviewer",
                                "account_id": account["id"]})  # fmt: skip
    sign_in(page, server.url)
    page.get_by_role("heading", name="Dashboard").wait_for()

    nav(page, "Accounts").click()
    pager = page.get_by_role("navigation", name="Pages")
    expect(pager).to_contain_text("12 items")
    pager.get_by_label("Per page").select_option("10")
    expect(pager).to_contain_text("Page 1 of 2")
    pager.get_by_role("button", name="Next page").click()
    expect(pager).to_contain_text("Page 2 of 2")
    expect(page.locator("table tbody tr")).to_have_count(2)

    nav(page, "Roles").click()
    row = page.get_by_role("row").filter(has_text="auditor")
    row.get_by_role("button", name="Delete").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_role("status")).to_contain_text("Role deleted")
    row.wait_for(state="detached")
    held = page.get_by_role("row").filter(has_text="reviewer")
    held.get_by_role("button", name="Delete").click()  # a user holds it: the server refuses
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_role("status").locator(".toast.error")).to_contain_text("still have this role")
    expect(held).to_have_count(1)
