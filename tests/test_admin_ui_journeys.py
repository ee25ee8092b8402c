"""The admin console's journeys in a real browser (Debian's chromium via Playwright) against one real
server for the whole module: no data loss in the records form, the public pages email links open,
account admins' records, users/superadmins management, everyday table use, phone width, focus and
errors, token refresh timing, inactivity sign-out, the settings screen and collections import/export.

Each test names the item of the console's checklist it covers (see docs/admin-ui.md). Tests use their
own collections, accounts and users, so they share the server without depending on each other's order.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, SmtpSink, free_port
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

ROOT = Path(__file__).resolve().parent.parent
# Fixed by the environment: the settings screen must show it as such.
FIXED_ENV = {"SNACKBASE_LOGIN_IP_MAX_FAILURES": "500"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    smtp = SmtpSink(free_port())
    smtp.start()
    yield smtp
    smtp.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("journeys") / "data"
    env = {
        "SNACKBASE_SUPERADMIN_EMAIL": ADMIN_EMAIL,
        "SNACKBASE_SUPERADMIN_PASSWORD": ADMIN_PASSWORD,
        **FIXED_ENV,
    }
    proc = ServerProcess([sys.executable, "-m", "snackbase"], data, env)
    yield proc
    proc.stop()


@pytest.fixture
def api(server: ServerProcess) -> Api:
    return Api(server.url).login(ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    tab_ = context.new_page()
    tab_.set_default_timeout(8000)
    errors: list[str] = []
    tab_.on("pageerror", lambda exc: errors.append(str(exc)))
    tab_.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
    yield tab_
    context.close()
    assert not errors, f"errors in the page: {errors}"


def make_admin(api: Api, account: dict[str, Any], email: str, role: str = "admin") -> dict[str, Any]:
    body = {"email": email, "password": USER_PASSWORD, "role": role, "account_id": account["id"]}
    return dict(api.call("POST", "/users", body))


def record_form(page: Any) -> Any:
    return page.get_by_role("dialog")


def requests_to(page: Any, pattern: str) -> list[Any]:
    seen: list[Any] = []
    page.on("request", lambda r: seen.append(r) if re.search(pattern, r.url) else None)
    return seen


# --- 1, 2: no data loss ---------------------------------------------------------------------------


def test_1_masked_pii_is_never_sent_back(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api, "Masked Labs")
    api.call(
        "POST",
        "/collections",
        {
            "name": "lab_notes",
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "notes", "type": "text", "pii": True, "mask": "full"},
                {"name": "ph", "type": "number"},
            ],
            "rules": {"list": "", "view": "", "update": "", "create": ""},
        },
    )
    rec = api.call(
        "POST",
        "/records/lab_notes",
        {"title": "batch 7", "notes": "secret lab note", "ph": 7},
        headers={"x-account-id": account["id"]},
    )
    make_admin(api, account, "boss@masked.example")
    sign_in(page, server.url, "boss@masked.example", USER_PASSWORD, account["slug"])
    nav(page, "lab_notes").click()
    table = page.get_by_test_id("records-table")
    table.get_by_role("row").filter(has_text="batch 7").get_by_role("button", name="Edit").click()
    form = record_form(page)
    expect(form.get_by_label("notes")).to_have_value("******")  # masked for this admin
    form.get_by_text("Masked: you may not see the stored value").wait_for()
    form.get_by_label("ph").fill("8")
    with page.expect_request(lambda r: r.method == "PATCH" and "/records/lab_notes/" in r.url) as sent:
        form.get_by_role("button", name="Save changes").click()
    assert json.loads(sent.value.post_data) == {"ph": 8}  # only the changed field
    table.get_by_role("cell", name="8", exact=True).wait_for()
    stored = api.call("GET", f"/records/lab_notes/{rec['id']}", headers={"x-account-id": account["id"]})
    assert stored["notes"] == "secret lab note" and stored["ph"] == 8


def test_2_number_typos_are_errors_not_nulls(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api, "Typo Labs")
    api.call(
        "POST",
        "/collections",
        {
            "name": "ph_readings",
            "fields": [{"name": "label", "type": "text"}, {"name": "ph", "type": "number"}],
        },
    )
    rec = api.call(
        "POST", "/records/ph_readings", {"label": "tank", "ph": 7.5}, headers={"x-account-id": account["id"]}
    )
    writes = requests_to(page, r"/records/ph_readings")
    sign_in(page, server.url)
    nav(page, "ph_readings").click()
    page.get_by_label("Account", exact=True).select_option(account["id"])
    table = page.get_by_test_id("records-table")
    table.get_by_role("row").filter(has_text="tank").get_by_role("button", name="Edit").click()
    form = record_form(page)
    for typo, message in (("8.3e", "Not a number"), ("8,3", "Use a dot")):
        form.get_by_label("ph").fill(typo)
        form.get_by_role("button", name="Save changes").click()
        expect(form.locator(".field-error")).to_contain_text(message)
        expect(form.get_by_label("ph")).to_be_focused()
        expect(form.get_by_test_id("form-invalid")).to_be_visible()
    assert not [r for r in writes if r.method == "PATCH"]  # nothing was sent
    form.get_by_label("ph").fill("8.3")
    expect(form.locator(".field-error")).to_have_count(0)  # fixed: the error goes at once
    form.get_by_role("button", name="Save changes").click()
    table.get_by_role("cell", name="8.3", exact=True).wait_for()
    # a new record with a typo is refused too (never created without the value)
    page.get_by_role("button", name="New record").click()
    form.get_by_label("label").fill("new tank")
    form.get_by_label("ph").fill("7.2e")
    form.get_by_role("button", name="Create", exact=True).click()
    expect(form.locator(".field-error")).to_contain_text("Not a number")
    assert not [r for r in writes if r.method == "POST"]
    stored = api.call("GET", f"/records/ph_readings/{rec['id']}", headers={"x-account-id": account["id"]})
    assert stored["ph"] == 8.3


# --- 3-6: journeys that used to dead-end ---------------------------------------------------------


def _configure_mail(api: Api, sink: SmtpSink) -> None:
    api.call("PATCH", "/settings", {"smtp_host": "127.0.0.1", "smtp_port": sink.port, "smtp_tls": "none"})


def _link(message: Any) -> str:
    text = message.get_body(("plain",)).get_content()
    found = re.search(r"https?://\S+", text)
    assert found, text
    return found.group(0)


def test_3_invitation_reset_and_verify_links_open_their_pages(
    browser: Any, server: Any, api: Api, sink: SmtpSink
) -> None:
    _configure_mail(api, sink)
    account = seed_account(api, "Invite Labs")
    before = len(sink.messages)
    api.call(
        "POST",
        "/invitations",
        {"email": "new.tech@invite.example", "role": "user", "account_id": account["id"]},
    )
    link = _link(sink.wait(before + 1, timeout=15)[-1])
    assert "/_/#/invitations/accept?token=" in link
    context = browser.new_context(viewport={"width": 390, "height": 844})  # an invitee on a phone
    page = context.new_page()
    page.set_default_timeout(8000)
    page.goto(link)
    page.get_by_text("You are invited to").wait_for()
    expect(page.get_by_label("Email")).to_have_value("new.tech@invite.example")
    page.get_by_label("Password", exact=True).fill(USER_PASSWORD)
    page.get_by_label("Repeat the password").fill("something else entirely")
    page.get_by_role("button", name="Join").click()
    page.get_by_text("Type the same password twice").wait_for()
    page.get_by_label("Repeat the password").fill(USER_PASSWORD)
    shot(page, "accept-invitation")
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_test_id("invite-done")).to_contain_text("is ready")
    Api(server.url).login("new.tech@invite.example", USER_PASSWORD, account["slug"])  # the user exists
    page.goto("about:blank")
    page.goto(link)  # the link is spent
    expect(page.get_by_test_id("invite-error")).to_contain_text("already used")

    # reset password from the email link
    before = len(sink.messages)
    Api(server.url).call(
        "POST",
        "/auth/forgot-password",
        {"email": "new.tech@invite.example", "account_identifier": account["slug"]},
    )
    link = _link(sink.wait(before + 1, timeout=15)[-1])
    page.goto("about:blank")
    page.goto(link)
    page.get_by_label("New password", exact=True).fill("short")
    page.get_by_label("Repeat the new password").fill("short")
    page.get_by_role("button", name="Set the new password").click()
    expect(page.get_by_label("New password", exact=True)).to_be_focused()
    page.locator(".field-error").first.wait_for()
    page.get_by_label("New password", exact=True).fill("Brand-new passphrase 2026")
    page.get_by_label("Repeat the new password").fill("Brand-new passphrase 2026")
    page.get_by_role("button", name="Set the new password").click()
    page.get_by_test_id("reset-done").wait_for()
    user = Api(server.url).login("new.tech@invite.example", "Brand-new passphrase 2026", account["slug"])

    # verify email: a user asks, the link confirms
    make_admin(api, account, "unverified@invite.example", role="user")
    unverified = Api(server.url).login("unverified@invite.example", USER_PASSWORD, account["slug"])
    before = len(sink.messages)
    unverified.call("POST", "/auth/verify-email/request")
    link = _link(sink.wait(before + 1, timeout=15)[-1])
    page.goto("about:blank")
    page.goto(link)
    page.get_by_test_id("verify-done").wait_for()
    assert unverified.call("GET", "/auth/me")["user"]["email_verified"] is True
    assert user.token
    context.close()


def test_3_an_invited_admin_lands_in_the_console(page: Any, server: Any, api: Api, sink: SmtpSink) -> None:
    _configure_mail(api, sink)
    account = seed_account(api, "Admin Invite Labs")
    created = api.call(
        "POST", "/invitations", {"email": "lead@invite.example", "role": "admin", "account_id": account["id"]}
    )
    page.goto(f"{server.url}/_/#/invitations/accept?token={created['token']}")
    page.get_by_label("Password", exact=True).fill(USER_PASSWORD)
    page.get_by_label("Repeat the password").fill(USER_PASSWORD)
    page.get_by_role("button", name="Join").click()
    page.get_by_role("heading", name="Dashboard").wait_for()
    expect(page.locator(".side-footer .who")).to_have_text("lead@invite.example")


def test_4_account_admins_get_the_typed_records_browser(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api, "Typed Labs")
    api.call(
        "POST",
        "/collections",
        {
            "name": "typed_tasks",
            "fields": [
                {"name": "label", "type": "text", "options": {"max_length": 80}},
                {"name": "done", "type": "boolean"},
                {"name": "size", "type": "number"},
            ],
            "rules": {"list": "", "view": "", "create": "", "update": ""},
        },
    )
    make_admin(api, account, "boss@typed.example")
    sign_in(page, server.url, "boss@typed.example", USER_PASSWORD, account["slug"])
    page.get_by_role("heading", name="Dashboard").wait_for()
    nav(page, "All collections").click()
    page.get_by_role("link", name="typed_tasks").first.wait_for()
    assert page.get_by_role("link", name="Schema").count() == 0
    nav(page, "typed_tasks").click()
    tab(page, "API preview").wait_for()  # account admins: records and the API preview only
    assert tab(page, "Schema").count() == 0  # no schema editing
    headers = page.get_by_test_id("records-table").get_by_role("columnheader")
    expect(headers.nth(1)).to_have_text(re.compile("label"))  # fields first after the id, not system columns
    page.get_by_role("button", name="New record").click()
    form = record_form(page)
    expect(form.get_by_label("label")).to_be_focused()  # the dialog focuses its first field
    form.get_by_label("label").fill("typed form")
    form.get_by_label("done").check()
    form.get_by_label("size").fill("3")
    assert form.get_by_label("Record (JSON)").count() == 0
    form.get_by_role("button", name="Create", exact=True).click()
    page.get_by_test_id("records-table").get_by_role("cell", name="typed form").wait_for()
    shot(page, "account-admin-records")


def test_5_saved_fields_offer_no_type_change(page: Any, server: Any, api: Api) -> None:
    api.call("POST", "/collections", {"name": "typed_once", "fields": [{"name": "amount", "type": "number"}]})
    sign_in(page, server.url)
    nav(page, "typed_once").click()
    tab(page, "Schema").click()
    cards = page.get_by_test_id("field-card")
    saved_type = cards.nth(0).get_by_label("Type")
    expect(saved_type).to_be_disabled()
    expect(saved_type.locator("option")).to_have_count(1)
    page.get_by_role("button", name="Add field").click()
    expect(cards.nth(1).get_by_label("Type")).to_be_enabled()
    cards.nth(1).get_by_label("Type").select_option("boolean")
    cards.nth(1).get_by_label("Name").fill("checked")
    page.get_by_role("button", name="Save schema").click()
    page.get_by_text("Schema saved").wait_for()
    assert "converted" not in page.content()


def test_6_unlock_password_reset_and_superadmins(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api, "Lock Labs")
    make_admin(api, account, "locked@lock.example", role="user")
    api.call("PATCH", "/settings", {"login_backoff_after": 1, "login_lockout_after": 1})
    try:
        anon = Api(server.url)
        with pytest.raises(AssertionError, match="401"):
            anon.login("locked@lock.example", "wrong password entirely", account["slug"])
    finally:
        api.call("PATCH", "/settings", {"login_backoff_after": None, "login_lockout_after": None})
    sign_in(page, server.url)
    nav(page, "Users").click()
    row = page.get_by_role("row").filter(has_text="locked@lock.example")
    row.get_by_test_id("locked-badge").wait_for()
    box = row.get_by_role("button", name="Delete").bounding_box()
    assert box and box["x"] + box["width"] <= 1280, box  # row actions stay on screen
    shot(page, "users-locked")
    row.get_by_role("button", name="Unlock").click()
    expect(row.get_by_test_id("locked-badge")).to_have_count(0)
    row.get_by_role("button", name="Set password").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_label("New password")).to_be_focused()
    dialog.get_by_label("New password").fill("Set-by-the-admin 2026")
    dialog.get_by_role("button", name="Set password").click()
    page.get_by_text("New password set for").wait_for()
    Api(server.url).login("locked@lock.example", "Set-by-the-admin 2026", account["slug"])

    nav(page, "Superadmins").click()
    table = page.get_by_test_id("superadmins-table")
    table.get_by_role("cell", name=re.compile(ADMIN_EMAIL)).wait_for()
    page.get_by_role("button", name="New superadmin").click()
    dialog.get_by_label("Email").fill("second.root@example.com")
    dialog.get_by_label("Password").fill("Second-root passphrase 1")
    dialog.get_by_role("button", name="Create superadmin").click()
    table.get_by_role("cell", name="second.root@example.com").wait_for()
    shot(page, "superadmins")
    Api(server.url).login("second.root@example.com", "Second-root passphrase 1")
    table.get_by_role("row").filter(has_text="second.root@example.com").get_by_role(
        "button", name="Remove"
    ).click()
    page.get_by_test_id("confirm-ok").click()
    table.get_by_role("cell", name="second.root@example.com").wait_for(state="detached")


# --- 7-11: everyday use --------------------------------------------------------------------------


def test_7_records_table_labels_width_and_address(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api, "Wide Labs")
    h = {"x-account-id": account["id"]}
    api.call("POST", "/collections", {"name": "suppliers", "fields": [{"name": "company", "type": "text"}]})
    wide = [{"name": f"column_{i}", "type": "text"} for i in range(9)]
    api.call(
        "POST",
        "/collections",
        {
            "name": "orders",
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "supplier", "type": "reference", "options": {"collection": "suppliers"}},
                {"name": "owner", "type": "user"},
                {"name": "description", "type": "text", "options": {"max_length": 5000}},
                *wide,
            ],
        },
    )
    owner = make_admin(api, account, "owner@wide.example", role="user")
    supplier = api.call("POST", "/records/suppliers", {"company": "Snack Supplies Ltd"}, headers=h)
    long = "a fairly long value that makes the column wide " * 2
    for i in range(12):
        api.call(
            "POST",
            "/records/orders",
            {
                "title": f"order {i:02d}",
                "supplier": supplier["id"],
                "owner": owner["id"],
                **{f["name"]: long for f in wide},
            },
            headers=h,
        )
    sign_in(page, server.url)
    nav(page, "orders").click()
    page.get_by_label("Account", exact=True).select_option(account["id"])
    table = page.get_by_test_id("records-table")
    table.get_by_role("cell", name="Snack Supplies Ltd").first.wait_for()  # a label, not the UUID
    table.get_by_role("cell", name="owner@wide.example").first.wait_for()
    edit = table.get_by_role("button", name="Edit").first
    box = edit.bounding_box()
    assert box and box["x"] + box["width"] <= 1280, box  # the row actions stay on screen
    shot(page, "records-labels")
    # filter, sort and page survive a reload
    page.get_by_label("Filter").fill('title ~ "order"')
    page.get_by_role("button", name="Apply").click()
    table.get_by_role("button", name="title").click()
    page.get_by_role("navigation", name="Pages").get_by_label("Per page").select_option("10")
    page.get_by_role("button", name="Next page").click()
    table.get_by_role("cell", name="order 10").wait_for()
    assert "filter=" in page.url and "page=2" in page.url and "sort=title" in page.url
    page.reload()
    table.get_by_role("cell", name="order 10").wait_for()
    expect(page.get_by_label("Filter")).to_have_value('title ~ "order"')
    expect(page.get_by_role("navigation", name="Pages")).to_contain_text("Page 2 of 2")
    # long text gets a text area
    table.get_by_role("button", name="Edit").first.click()
    assert record_form(page).locator("textarea#rec-description").count() == 1
    labels = record_form(page).get_by_test_id("ref-label")  # the form names the referenced rows too
    expect(labels).to_have_text(["Snack Supplies Ltd", "owner@wide.example"])
    page.keyboard.press("Escape")
    # an invalid filter says so, with no stale count
    page.get_by_label("Filter").fill("title ~")
    page.get_by_role("button", name="Apply").click()
    table.get_by_text("The filter is not valid").wait_for()
    expect(page.get_by_role("navigation", name="Pages")).not_to_contain_text("items")


def _page_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def test_8_phone_width_has_no_sideways_scroll(page: Any, server: Any, api: Api) -> None:
    api.call("POST", "/collections", {"name": "phone_rules", "fields": [{"name": "name", "type": "text"}]})
    sign_in(page, server.url)
    page.get_by_role("heading", name="Dashboard").wait_for()
    nav(page, "phone_rules").click()
    tab(page, "API rules").click()
    builtin = page.get_by_text("Built-in macros:")
    card = page.locator("form.card").first
    assert (
        builtin.bounding_box()["x"] + builtin.bounding_box()["width"]
        <= card.bounding_box()["x"] + card.bounding_box()["width"] + 1
    )
    nav(page, "Macros").click()
    page.get_by_role("heading", name="Built-in macros").wait_for()
    macros_card = page.get_by_role("heading", name="Built-in macros").locator(
        "xpath=ancestor::div[contains(@class,'card')][1]"
    )
    assert page.evaluate("(el) => el.scrollWidth <= el.clientWidth + 1", macros_card.element_handle())
    page.set_viewport_size({"width": 390, "height": 844})
    for path in (
        "#/",
        "#/collections/phone_rules/rules",
        "#/collections/phone_rules/schema",
        "#/settings",
        "#/users",
    ):
        page.goto(server.url + "/_/" + path)
        page.locator("main h1").first.wait_for()
        page.wait_for_load_state("networkidle")
        assert _page_width(page) <= 390, (path, _page_width(page))
    page.goto(server.url + "/_/#/collections/phone_rules/schema")
    type_box = page.get_by_test_id("field-card").nth(0).get_by_label("Type")
    assert type_box.bounding_box()["width"] > 100
    shot(page, "phone-schema")


def test_9_focus_errors_and_recovery(page: Any, server: Any, api: Api) -> None:
    account = seed_account(api, "Focus Labs")
    api.call(
        "POST",
        "/collections",
        {
            "name": "focus_items",
            "fields": [
                {"name": "code", "type": "text", "required": True, "options": {"pattern": "^[A-Z]+$"}}
            ],
        },
    )
    sign_in(page, server.url, password="not the password")
    page.get_by_test_id("login-error").wait_for()
    expect(page.get_by_label("Password")).to_be_focused()  # not <body>
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    nav(page, "focus_items").click()
    page.get_by_label("Account", exact=True).select_option(account["id"])
    page.get_by_role("button", name="New record").click()
    form = record_form(page)
    expect(form.get_by_label("code")).to_be_focused()
    form.get_by_label("code").fill("lower")
    form.get_by_role("button", name="Create", exact=True).click()
    error = form.locator(".field-error")
    error.wait_for()
    expect(form.get_by_label("code")).to_be_focused()  # focus on the problem
    form.get_by_label("code").fill("UPPER")
    expect(error).to_have_count(0)  # the error goes as soon as the value changes
    expect(form.locator(".alert.error")).to_have_count(0)  # and so does its summary
    form.get_by_role("button", name="Create", exact=True).click()
    table = page.get_by_test_id("records-table")
    table.get_by_role("cell", name="UPPER").wait_for()
    # Enter in the signature password box signs
    table.get_by_role("button", name="Edit").first.click()
    page.get_by_text("Signatures and history").click()
    page.get_by_label("Your password").fill(ADMIN_PASSWORD)
    page.get_by_label("Your password").press("Enter")
    page.get_by_text("current version").wait_for()
    page.keyboard.press("Escape")
    # the API-down banner goes by itself once the server answers again
    page.route("**/api/v1/**", lambda route: route.abort())
    page.route("**/health", lambda route: route.abort())
    nav(page, "Users").click()
    banner = page.get_by_test_id("api-down")
    banner.wait_for()
    page.unroute("**/api/v1/**")
    page.unroute("**/health")
    banner.wait_for(state="detached", timeout=15_000)
    page.get_by_role("heading", name="Users", exact=True).wait_for()
    page.get_by_role("cell", name=ADMIN_EMAIL, exact=True).first.wait_for()


def test_10_refresh_shortly_before_expiry(page: Any, server: Any, api: Api) -> None:
    api.call("PATCH", "/settings", {"access_token_expire_minutes": 1})
    try:
        refreshes = requests_to(page, r"/auth/refresh$")
        page.clock.install()
        sign_in(page, server.url)
        page.get_by_role("heading", name="Dashboard").wait_for()
        page.clock.run_for(30_000)
        assert len(refreshes) == 0  # not every 5 s
        with page.expect_request(lambda req: req.url.endswith("/auth/refresh"), timeout=15_000):
            page.clock.run_for(25_000)  # 55 s: within the last fifth of the minute
        assert len(refreshes) == 1
        nav(page, "Users").click()
        page.get_by_role("heading", name="Users", exact=True).wait_for()
        page.get_by_role("cell", name=ADMIN_EMAIL, exact=True).first.wait_for()
    finally:
        api.call("PATCH", "/settings", {"access_token_expire_minutes": None})


def test_11_inactivity_signs_out(page: Any, server: Any, api: Api) -> None:
    api.call("PATCH", "/settings", {"session_idle_minutes": 2})
    try:
        page.clock.install()
        sign_in(page, server.url)
        page.get_by_role("heading", name="Dashboard").wait_for()
        page.clock.run_for(60_000)
        page.keyboard.press("Shift")  # activity keeps the session
        page.clock.run_for(90_000)
        assert page.get_by_role("heading", name="Dashboard").count() == 1
        page.clock.run_for(45_000)  # now 2 min 15 s without input
        expect(page.get_by_test_id("idle-signed-out")).to_contain_text("after 2 minutes without activity")
        assert page.evaluate("sessionStorage.getItem('sb.session')") is None
    finally:
        api.call("PATCH", "/settings", {"session_idle_minutes": None})


# --- 12-14: what PocketBase's dashboard has -------------------------------------------------------


def test_12_settings_screen(page: Any, server: Any, api: Api, sink: SmtpSink) -> None:
    sign_in(page, server.url)
    nav(page, "Settings").click()
    form = page.get_by_test_id("settings-form")
    fixed = form.get_by_label("Failed logins per IP per 15 minutes")
    expect(fixed).to_be_disabled()
    form.get_by_text("fixed by SNACKBASE_LOGIN_IP_MAX_FAILURES").wait_for()
    # a typo in a number is refused on the spot
    form.get_by_label("Invitations valid for (hours)").fill("4O")
    form.get_by_role("button", name="Save settings").click()
    expect(form.get_by_label("Invitations valid for (hours)")).to_be_focused()
    form.get_by_label("Invitations valid for (hours)").fill("72")
    form.get_by_label("Self-registration of new accounts").select_option("closed")
    form.get_by_label("SMTP host").fill("127.0.0.1")
    form.get_by_label("SMTP port").fill(str(sink.port))
    form.get_by_label("TLS").select_option("none")
    form.get_by_role("button", name="Save settings").click()
    page.get_by_text("Settings saved and applied").wait_for()
    body = {"account_name": "Late Co", "email": "late@late.example", "password": USER_PASSWORD}
    with pytest.raises(AssertionError, match="403"):
        Api(server.url).call("POST", "/auth/register", body)  # applied without a restart
    before = len(sink.messages)
    form.get_by_label("Send a test email to").fill("ops@example.com")
    form.get_by_role("button", name="Send test email").click()
    expect(page.get_by_test_id("test-email-result")).to_contain_text("Sent to ops@example.com")
    assert sink.wait(before + 1, timeout=15)[-1]["Subject"] == "SnackBase test email"
    shot(page, "settings")
    audit = api.call("GET", "/audit-log?action=settings.update")
    assert any(e["changes"].get("registration", {}).get("new") == "closed" for e in audit["items"])
    api.call("PATCH", "/settings", {"registration": None, "invitation_expire_hours": None})


def test_13_collections_import_with_a_preview(page: Any, server: Any, api: Api, tmp_path: Path) -> None:
    api.call("POST", "/collections", {"name": "transfer_a", "fields": [{"name": "title", "type": "text"}]})
    sign_in(page, server.url)
    nav(page, "Import / export").click()
    with page.expect_download() as got:
        page.get_by_role("button", name="Download collections.json").click()
    exported = json.loads(Path(got.value.path()).read_text())
    mine = next(c for c in exported if c["name"] == "transfer_a")
    mine["fields"].append({"name": "weight", "type": "number"})
    file = tmp_path / "defs.json"
    file.write_text(json.dumps([mine, {"name": "transfer_b", "fields": [{"name": "label", "type": "text"}]}]))
    page.get_by_label("Definitions file (JSON)").set_input_files(str(file))
    preview = page.get_by_test_id("import-preview")
    expect(preview).to_contain_text("add field weight (number)")
    expect(preview).to_contain_text("transfer_b")
    names = [c["name"] for c in api.call("GET", "/collections")["items"]]
    assert "transfer_b" not in names  # the preview changed nothing
    shot(page, "import-preview")
    page.get_by_role("button", name="Import", exact=True).click()
    page.get_by_text("1 created, 1 updated").wait_for()
    nav(page, "transfer_b").wait_for()


def test_14_first_load_stays_under_130_kb_gzipped() -> None:
    dist = ROOT / "admin_ui" / "dist"
    index = (dist / "index.html").read_text()
    assets = re.findall(r'(?:src|href)="/_/(assets/[^"]+\.(?:js|css))"', index)
    assert assets, index
    total = sum(len(gzip.compress((dist / a).read_bytes(), 9)) for a in assets)
    assert total < 130 * 1024, f"{total / 1024:.1f} KB gzipped"
