"""The hook registry and dispatch (in process): ordering, abort semantics, failures, the record seams,
the records helper, request and mail events, and loading hook files."""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase import queries, records
from snackbase.audit import RequestMeta
from snackbase.db import fetch_all, fetch_value
from snackbase.errors import ApiError
from snackbase.hook_loader import HookLoadError, load_hook_files
from snackbase.hooks import (
    EVENTS,
    RESERVED_PRIORITY,
    AppEvent,
    Event,
    HookAbort,
    HookRegistry,
    RecordEvent,
    hooks,
)
from snackbase.rules import Caller
from tests.factories import User, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}
POSTS = {
    "name": "posts",
    "rules": PUBLIC,
    "fields": [{"name": "title", "type": "text", "required": True}, {"name": "slug", "type": "text"}],
}
# Only superadmins may write notifications: a hook must say bypass_rules=True to create one.
NOTIFICATIONS = {
    "name": "notifications",
    "fields": [{"name": "text", "type": "text"}],
    "rules": {"list": "", "view": "", "create": None, "update": None, "delete": None},
}


def record_event(data: dict[str, Any] | None = None, collection: str = "posts") -> RecordEvent:
    return RecordEvent(collection=collection, data=data if data is not None else {})


# --- registry --------------------------------------------------------------------------------------


def test_priority_orders_higher_first_then_registration_order() -> None:
    registry, calls = HookRegistry(), []
    for label, priority in (("a", 0), ("b", 10), ("c", 0), ("d", -5), ("e", 10)):
        registry.register(
            "record.before_create", lambda e, label=label: calls.append(label), priority=priority
        )
    registry.dispatch_sync("record.before_create", record_event())
    assert calls == ["b", "e", "a", "c", "d"]


def test_collection_narrows_a_hook_to_one_collection() -> None:
    registry, calls = HookRegistry(), []
    registry.on("record.after_create", collection="posts")(lambda e: calls.append(("posts", e.collection)))
    registry.on("record.after_create")(lambda e: calls.append(("any", e.collection)))
    registry.fire("record.after_create", record_event(collection="posts"))
    registry.fire("record.after_create", record_event(collection="tags"))
    assert calls == [("posts", "posts"), ("any", "posts"), ("any", "tags")]


def test_unregister_removes_every_registration_of_the_function() -> None:
    registry, calls = HookRegistry(), []

    def hook(event: Event) -> None:
        calls.append(event.name)

    registry.on("record.before_create")(hook)
    registry.on("record.before_update")(hook)
    assert registry.unregister(hook) == 2
    assert registry.unregister(hook) == 0
    registry.dispatch_sync("record.before_create", record_event())
    assert calls == [] and not registry.has("record.before_update")


def test_has_answers_for_the_registered_hooks_after_every_change() -> None:
    """`has` answers from an index kept by register, unregister and restore; built-ins never count."""
    registry = HookRegistry()
    registry.builtin("record.before_create", "pipeline step", RESERVED_PRIORITY, "described only")
    assert not registry.has("record.before_create") and not registry.has("record.before_create", "posts")

    def narrow(event: Event) -> None: ...

    def wide(event: Event) -> None: ...

    registry.on("record.before_create", collection="posts")(narrow)
    assert registry.has("record.before_create", "posts")
    assert not registry.has("record.before_create", "tags") and not registry.has("record.before_create")
    saved = registry.snapshot()
    registry.on("record.before_create")(wide)
    assert registry.has("record.before_create") and registry.has("record.before_create", "tags")
    registry.unregister(wide)
    assert not registry.has("record.before_create", "tags")
    registry.unregister(narrow)
    assert not registry.has("record.before_create", "posts")
    registry.restore(saved)
    assert registry.has("record.before_create", "posts") and not registry.has("record.before_create")


@pytest.mark.parametrize(
    ("event", "kwargs", "message"),
    [
        (
            "record.before_craete",
            {},
            "unknown hook event 'record.before_craete'; valid events: app.bootstrap",
        ),
        ("request.before", {"collection": "posts"}, "is not about a collection"),
        ("record.before_create", {"priority": RESERVED_PRIORITY}, "reserved for the built-ins"),
        ("record.before_create", {"priority": -RESERVED_PRIORITY}, "reserved for the built-ins"),
        ("record.before_create", {"priority": "1"}, "priority must be a whole number"),
    ],
)
def test_bad_registrations_are_refused_with_a_clear_error(
    event: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HookRegistry().on(event, **kwargs)(lambda e: None)


def test_unknown_event_error_names_every_valid_event() -> None:
    with pytest.raises(ValueError) as caught:
        HookRegistry().on("nope")(lambda e: None)
    assert all(name in str(caught.value) for name in EVENTS)


@pytest.mark.parametrize("event", [name for name, spec in EVENTS.items() if spec.sync_only])
def test_async_hooks_are_refused_where_the_seam_is_synchronous(event: str) -> None:
    async def hook(e: Event) -> None:
        pass

    with pytest.raises(ValueError, match="must be plain functions"):
        HookRegistry().on(event)(hook)


def test_every_event_of_the_spec_exists() -> None:
    spec = [
        "app.bootstrap",
        "app.serve",
        "app.terminate",
        "record.before_list",
        "request.before",
        "request.after",
        "mail.before_send",
        "realtime.connect",
        "realtime.disconnect",
    ]
    spec += [f"record.{w}_{op}" for w in ("before", "after") for op in ("create", "update", "delete")]
    spec += [f"collection.{w}_{op}" for w in ("before", "after") for op in ("create", "update", "delete")]
    spec += [
        f"auth.{w}_{op}" for w in ("before", "after") for op in ("login", "register", "refresh", "logout")
    ]
    assert sorted(spec) == sorted(EVENTS)


def test_builtins_are_listed_with_reserved_priorities_and_never_called() -> None:
    builtins = [h for h in hooks.registered() if h.builtin]
    names = {h.name for h in builtins}
    assert {"builtin.account_isolation", "builtin.timestamps", "builtin.created_by", "builtin.audit"} <= names
    assert all(h.priority <= -RESERVED_PRIORITY for h in builtins)
    places = ("records.", "record_changes.", "rules.", "collections.")
    assert all(any(p in h.builtin for p in places) for h in builtins if h.builtin)
    assert not hooks.has("record.before_delete", "posts") or any(
        h.builtin is None for h in hooks.registered("record.before_delete")
    )
    assert hooks.unregister(builtins[0].fn) == 0


# --- dispatch: before-events ---------------------------------------------------------------------


def test_sync_and_async_hooks_change_the_payload_in_order() -> None:
    registry = HookRegistry()

    @registry.on("collection.before_create", priority=1)
    def first(event: Any) -> None:
        event.data["steps"] = ["sync"]

    @registry.on("collection.before_create")
    async def second(event: Any) -> None:
        await asyncio.sleep(0)
        event.data["steps"].append("async")

    from snackbase.hooks import CollectionEvent

    event = asyncio.run(registry.dispatch("collection.before_create", CollectionEvent(collection="posts")))
    assert event.data == {"steps": ["sync", "async"]} and event.name == "collection.before_create"


def test_hook_abort_passes_as_the_envelope_error_and_stops_later_hooks() -> None:
    registry, calls = HookRegistry(), []

    @registry.on("record.before_create", priority=5)
    def refuse(event: Event) -> None:
        raise HookAbort(400, "Titles must not shout.", {"title": "Use lower case."})

    registry.on("record.before_create")(lambda e: calls.append("later"))
    with pytest.raises(HookAbort) as caught:
        registry.dispatch_sync("record.before_create", record_event())
    error = caught.value
    assert isinstance(error, ApiError) and calls == []
    assert (error.status, error.code, error.message) == (400, "validation_failed", "Titles must not shout.")
    assert error.fields == {"title": {"code": "invalid", "message": "Use lower case."}}


@pytest.mark.parametrize(
    ("args", "status", "code"),
    [
        ((403, "No."), 403, "forbidden"),
        ((409, "Taken.", None, "slug_taken"), 409, "slug_taken"),
        ((), 400, "bad_request"),
    ],
)
def test_hook_abort_codes(args: tuple[Any, ...], status: int, code: str) -> None:
    error = HookAbort(*args)
    assert (error.status, error.code) == (status, code)


def test_hook_abort_refuses_a_success_status() -> None:
    with pytest.raises(ValueError, match="400-599"):
        HookAbort(200, "fine")


def test_unexpected_exception_is_a_bare_500_and_logged_with_the_hook_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = HookRegistry()

    @registry.on("record.before_create")
    def broken(event: Event) -> None:
        raise KeyError("secret detail")

    with caplog.at_level(logging.ERROR, logger="snackbase.hooks"), pytest.raises(ApiError) as caught:
        registry.dispatch_sync("record.before_create", record_event())
    assert (caught.value.status, caught.value.code) == (500, "internal_error")
    assert "secret" not in caught.value.message
    [line] = [r for r in caplog.records if r.name == "snackbase.hooks"]
    assert line.hook.endswith("broken") and line.event == "record.before_create" and line.exc_info  # type: ignore[attr-defined]


def test_a_slow_hook_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    registry = HookRegistry()
    registry.slow_seconds = 0.01

    @registry.on("request.before")
    async def slow(event: Event) -> None:
        await asyncio.sleep(0.03)

    with caplog.at_level(logging.WARNING, logger="snackbase.hooks"):
        asyncio.run(registry.dispatch("request.before", Event()))
    [line] = [r for r in caplog.records if r.getMessage() == "hook is slow"]
    assert line.hook.endswith("slow") and line.duration_ms >= 30  # type: ignore[attr-defined]


def test_a_sync_function_returning_a_coroutine_fails_cleanly_in_a_sync_seam() -> None:
    registry = HookRegistry()

    async def body(event: Event) -> None:
        pass

    registry.on("record.before_create")(lambda e: body(e))
    with pytest.raises(ApiError) as caught:
        registry.dispatch_sync("record.before_create", record_event())
    assert caught.value.status == 500


# --- dispatch: after-events ----------------------------------------------------------------------


def test_after_hook_errors_are_logged_and_the_rest_still_run(caplog: pytest.LogCaptureFixture) -> None:
    registry, calls = HookRegistry(), []

    @registry.on("record.after_create", priority=1)
    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    @registry.on("record.after_create")
    def fine(event: Event) -> None:
        calls.append("fine")

    with caplog.at_level(logging.ERROR, logger="snackbase.hooks"):
        registry.fire("record.after_create", record_event())
    assert calls == ["fine"]
    assert next(r.hook for r in caplog.records if r.name == "snackbase.hooks").endswith("broken")  # type: ignore[attr-defined]


def test_async_after_hooks_continue_in_order_in_the_background() -> None:
    registry, calls = HookRegistry(), []
    registry.on("record.after_create", priority=3)(lambda e: calls.append("sync-1"))

    @registry.on("record.after_create", priority=2)
    async def later(event: Event) -> None:
        await asyncio.sleep(0.01)
        calls.append("async")

    registry.on("record.after_create", priority=1)(lambda e: calls.append("sync-2"))

    async def main() -> list[str]:
        registry.fire("record.after_create", record_event())
        seen = list(calls)  # fire() returned: the sync hook ran, the rest is pending
        await registry.drain()
        return seen

    assert asyncio.run(main()) == ["sync-1"]
    assert calls == ["sync-1", "async", "sync-2"]


def test_fire_is_only_for_after_events() -> None:
    with pytest.raises(ValueError, match="use dispatch"):
        HookRegistry().fire("record.before_create", record_event())


# --- the record pipeline in a real app -----------------------------------------------------------


@pytest.fixture
def app_client(client: TestClient, hook_registry: HookRegistry) -> TestClient:
    return client


def setup(client: TestClient) -> tuple[User, User]:
    sa = make_superadmin(client)
    user = make_user(client, make_account(client))
    for body in (POSTS, NOTIFICATIONS):
        assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    return sa, user


def context(user: User) -> records.WriteContext:
    caller = Caller(user.id, user.account_id, user.email, user.role, False, frozenset)
    return records.WriteContext(caller, RequestMeta("rid-1", None, None))


def create_through_seam(client: TestClient, user: User, body: dict[str, Any]) -> dict[str, Any]:
    """What records.create_record does at its before-seam (to be inserted by the pipeline's owner)."""
    app: Any = client.app
    conn, registry = app.state.db.conn, app.state.registry
    collection, ctx = registry.get(conn, "posts"), context(user)
    body = app.state.hooks.record_before("create", collection, ctx, body)
    return records.create_record(conn, registry, collection, ctx, body)


def test_before_create_fills_the_body_and_the_pipeline_validates_it(app_client: TestClient) -> None:
    _, user = setup(app_client)

    @hooks.on("record.before_create", collection="posts")
    def slug(event: RecordEvent) -> None:
        event.data["slug"] = str(event.data.get("title", "")).lower().replace(" ", "-")
        assert event.auth.user_id == user.id and event.request_id == "rid-1" and event.conn is not None

    record = create_through_seam(app_client, user, {"title": "Hello World"})
    assert record["slug"] == "hello-world" and record["created_by"] == user.id


def test_before_create_abort_writes_nothing(app_client: TestClient) -> None:
    _, user = setup(app_client)
    conn = app_client.app.state.db.conn  # type: ignore[attr-defined]
    audit_before = fetch_value(conn, "SELECT count(*) FROM audit_log")

    @hooks.on("record.before_create", collection="posts")
    def no_spam(event: RecordEvent) -> None:
        if "spam" in event.data.get("title", ""):
            raise HookAbort(400, "No spam.", {"title": "Looks like spam."})

    with pytest.raises(HookAbort):
        create_through_seam(app_client, user, {"title": "buy spam"})
    assert fetch_value(conn, "SELECT count(*) FROM c_posts") == 0
    assert fetch_value(conn, "SELECT count(*) FROM audit_log") == audit_before


def stored_row(client: TestClient, record_id: str) -> dict[str, Any]:
    return fetch_all(client.app.state.db.conn, "SELECT * FROM c_posts WHERE id = ?", (record_id,))[0]  # type: ignore[attr-defined]


def test_before_update_sees_the_stored_record_and_changes_the_body(app_client: TestClient) -> None:
    _, user = setup(app_client)
    app: Any = app_client.app
    conn, registry = app.state.db.conn, app.state.registry
    created = create_through_seam(app_client, user, {"title": "Draft"})

    @hooks.on("record.before_update", collection="posts")
    def keep_history(event: RecordEvent) -> None:
        event.data["slug"] = f"was-{event.record['title'].lower()}"

    collection, ctx = registry.get(conn, "posts"), context(user)
    body = app.state.hooks.record_before(
        "update", collection, ctx, {"title": "Final"}, stored_row(app_client, created["id"])
    )
    updated = records.update_record(conn, registry, collection, ctx, created["id"], body)
    assert (updated["title"], updated["slug"]) == ("Final", "was-draft")


def test_before_delete_abort_keeps_the_record(app_client: TestClient) -> None:
    _, user = setup(app_client)
    app: Any = app_client.app
    conn, registry = app.state.db.conn, app.state.registry
    created = create_through_seam(app_client, user, {"title": "Keep me"})

    @hooks.on("record.before_delete", collection="posts")
    def protect(event: RecordEvent) -> None:
        if event.record["title"].startswith("Keep"):
            raise HookAbort(403, "Protected.")

    with pytest.raises(HookAbort):
        app.state.hooks.record_before(
            "delete", registry.get(conn, "posts"), context(user), None, stored_row(app_client, created["id"])
        )
    assert stored_row(app_client, created["id"])["title"] == "Keep me"


def test_before_list_may_narrow_the_query(app_client: TestClient) -> None:
    _, user = setup(app_client)
    app: Any = app_client.app
    conn, registry = app.state.db.conn, app.state.registry
    for title in ("a", "b"):
        create_through_seam(app_client, user, {"title": title})
    hooks.on("record.before_list", collection="posts")(lambda e: setattr(e.query, "filter", 'title = "b"'))
    collection, caller = registry.get(conn, "posts"), context(user).caller
    query = app.state.hooks.record_list(collection, caller, queries.ListQuery())
    assert [r["title"] for r in queries.list_records(conn, registry, collection, caller, query)["items"]] == [
        "b"
    ]


def test_hooks_for_other_collections_cost_nothing_and_see_nothing(app_client: TestClient) -> None:
    _, user = setup(app_client)
    hooks.on("record.before_create", collection="notifications")(lambda e: e.data.update(slug="never"))
    assert create_through_seam(app_client, user, {"title": "x"})["slug"] is None


def test_after_create_runs_after_commit_and_its_errors_do_not_break_the_response(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    _, user = setup(app_client)
    seen: list[tuple[str, Any, int]] = []
    conn = app_client.app.state.db.conn  # type: ignore[attr-defined]

    @hooks.on("record.after_create", collection="posts", priority=1)
    def committed(event: RecordEvent) -> None:
        # After commit: the row is visible and no transaction is open.
        count = fetch_value(conn, "SELECT count(*) FROM c_posts WHERE id = ?", (event.record["id"],))
        seen.append((event.record["title"], conn.in_transaction, count))

    @hooks.on("record.after_create", collection="posts")
    def broken(event: RecordEvent) -> None:
        raise RuntimeError("mail server down")

    with caplog.at_level(logging.ERROR, logger="snackbase.hooks"):
        response = app_client.post(f"{API}/records/posts", headers=user.headers, json={"title": "A"})
    assert response.status_code == 201
    assert seen == [("A", False, 1)]
    assert any(getattr(r, "hook", "").endswith("broken") for r in caplog.records)


def test_after_update_and_after_delete_carry_the_stored_records(app_client: TestClient) -> None:
    _, user = setup(app_client)
    seen: list[tuple[str, Any, Any]] = []
    hooks.on("record.after_update")(lambda e: seen.append((e.name, e.old["title"], e.record["title"])))
    hooks.on("record.after_delete")(lambda e: seen.append((e.name, e.old, e.record["title"])))
    created = app_client.post(f"{API}/records/posts", headers=user.headers, json={"title": "A"}).json()
    url = f"{API}/records/posts/{created['id']}"
    assert app_client.patch(url, headers=user.headers, json={"title": "B"}).status_code == 200
    assert app_client.delete(url, headers=user.headers).status_code == 204
    assert seen == [("record.after_update", "A", "B"), ("record.after_delete", None, "B")]


def test_after_hooks_of_a_batch_run_once_it_committed(app_client: TestClient) -> None:
    _, user = setup(app_client)
    seen: list[str] = []
    hooks.on("record.after_create", collection="posts")(lambda e: seen.append(e.record["title"]))
    body = {"create": [{"title": "a"}, {"title": "b"}, {"title": None}]}
    assert app_client.post(f"{API}/records/posts/batch", headers=user.headers, json=body).status_code == 400
    assert seen == []  # the batch rolled back: nothing committed, no after-hooks
    body = {"create": [{"title": "a"}, {"title": "b"}]}
    assert app_client.post(f"{API}/records/posts/batch", headers=user.headers, json=body).status_code == 200
    assert seen == ["a", "b"]


# --- the records helper ------------------------------------------------------------------------


def test_records_helper_goes_through_the_pipeline_and_bypasses_rules_only_when_asked(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    _, user = setup(app_client)
    conn = app_client.app.state.db.conn  # type: ignore[attr-defined]

    @hooks.on("record.after_create", collection="posts")
    def notify(event: RecordEvent) -> None:
        event.records.create(
            "notifications", {"text": f"new post {event.record['title']}"}, bypass_rules=True
        )
        event.records.create("notifications", {"text": "as the user: refused by the create rule"})

    with caplog.at_level(logging.ERROR, logger="snackbase.hooks"):
        assert (
            app_client.post(f"{API}/records/posts", headers=user.headers, json={"title": "A"}).status_code
            == 201
        )
    rows = fetch_all(conn, "SELECT text, account_id, created_by FROM c_notifications")
    assert rows == [{"text": "new post A", "account_id": user.account_id, "created_by": user.id}]
    assert any(r.getMessage().startswith("after-hook failed") for r in caplog.records)
    entry = fetch_all(
        conn,
        "SELECT auth_method, actor_user_id FROM audit_log "
        "WHERE action = 'record.create' AND collection = 'notifications'",
    )
    assert entry == [{"auth_method": "hook", "actor_user_id": user.id}]


def test_records_helper_writes_fire_hooks_and_reads_follow_rules(app_client: TestClient) -> None:
    _, user = setup(app_client)
    seen: list[str] = []
    hooks.on("record.after_create", collection="notifications")(lambda e: seen.append(e.record["text"]))

    @hooks.on("record.after_create", collection="posts")
    def notify(event: RecordEvent) -> None:
        event.records.create("notifications", {"text": "hi"}, bypass_rules=True)
        listed = event.records.list("notifications", filter='text = "hi"')
        seen.append(f"listed {listed['total_items']}")

    app_client.post(f"{API}/records/posts", headers=user.headers, json={"title": "A"})
    assert seen == ["hi", "listed 1"]


def test_records_helper_refuses_another_account_without_bypass(app_client: TestClient) -> None:
    _, user = setup(app_client)
    app: Any = app_client.app
    event = app.state.hooks.bind(RecordEvent(collection="posts", auth=context(user).caller))
    with pytest.raises(ValueError, match="bypass_rules=True"):
        event.records.create("posts", {"title": "x"}, account_id="ZZ9999")


def test_a_hook_that_writes_what_fires_it_is_stopped(
    app_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    _, user = setup(app_client)
    conn = app_client.app.state.db.conn  # type: ignore[attr-defined]
    hooks.on("record.after_create", collection="posts")(
        lambda e: e.records.create("posts", {"title": "again"})
    )
    with caplog.at_level(logging.ERROR, logger="snackbase.hooks"):
        assert (
            app_client.post(f"{API}/records/posts", headers=user.headers, json={"title": "A"}).status_code
            == 201
        )
    assert 1 < fetch_value(conn, "SELECT count(*) FROM c_posts") <= 10
    assert any("nested" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


# --- collection and auth seams (as the routes call them) ------------------------------------------


def test_collection_seams_carry_the_definition(app_client: TestClient) -> None:
    setup(app_client)
    app: Any = app_client.app
    seen: list[tuple[str, str, Any, Any]] = []

    @hooks.on("collection.before_update", collection="posts")
    def before(event: Any) -> None:
        seen.append((event.name, event.collection, event.data, [f["name"] for f in event.record["fields"]]))

    @hooks.on("collection.before_create")
    def no_temp(event: Any) -> None:
        if event.collection.startswith("tmp_"):
            raise HookAbort(400, "No temporary collections.", {"name": "Pick a lasting name."})

    hooks.on("collection.after_delete")(
        lambda e: seen.append((e.name, e.collection, e.data, e.record["name"]))
    )
    asyncio.run(app.state.hooks.collection_before("update", "posts", {"rules": {}}))
    with pytest.raises(HookAbort):
        asyncio.run(app.state.hooks.collection_before("create", "tmp_x", {"name": "tmp_x"}))
    asyncio.run(
        app.state.hooks.collection_before("create", "kept", {"name": "kept"})
    )  # no definition yet: record None
    app.state.hooks.collection_after("delete", app.state.registry.get(app.state.db.conn, "notifications"))
    assert seen == [
        ("collection.before_update", "posts", {"rules": {}}, ["title", "slug"]),
        ("collection.after_delete", "notifications", {}, "notifications"),
    ]


def test_auth_seams_never_show_secrets(client: TestClient, hook_registry: HookRegistry) -> None:
    import msgspec

    app: Any = client.app

    class LoginBody(msgspec.Struct):
        email: str
        password: str
        account_identifier: str

    seen: list[Any] = []
    hooks.on("auth.before_login")(lambda e: seen.append(e.data))
    hooks.on("auth.after_login")(lambda e: seen.append(e.record))

    @hooks.on("auth.before_register")
    def invite_only(event: Any) -> None:
        if not event.data["email"].endswith("@acme.example"):
            raise HookAbort(403, "Registration is for Acme staff.")

    asyncio.run(app.state.hooks.auth_before("login", LoginBody("a@acme.example", "hunter2hunter2", "acme")))
    app.state.hooks.auth_after(
        "login", {"id": "u1", "email": "a@acme.example", "password_hash": "$argon2id$…"}
    )
    with pytest.raises(HookAbort):
        asyncio.run(app.state.hooks.auth_before("register", {"email": "x@other.example", "password": "p"}))
    assert seen == [
        {"email": "a@acme.example", "account_identifier": "acme"},
        {"id": "u1", "email": "a@acme.example"},
    ]


# --- request, mail and app events ----------------------------------------------------------------


def test_request_before_aborts_in_the_envelope_and_request_after_sees_the_status(
    app_client: TestClient,
) -> None:
    seen: list[tuple[str, int | None]] = []

    @hooks.on("request.before")
    def maintenance(event: Any) -> None:
        if event.path.startswith("/api/v1/records"):
            raise HookAbort(503, "Down for maintenance.")

    hooks.on("request.after")(lambda e: seen.append((e.path, e.status)))
    response = app_client.get(f"{API}/records/posts", headers={"x-request-id": "req-42"})
    assert response.status_code == 503
    assert response.json() == {
        "status": 503,
        "code": "service_unavailable",
        "message": "Down for maintenance.",
        "fields": {},
        "request_id": "req-42",
    }
    assert response.headers["x-request-id"] == "req-42"
    assert app_client.get("/health").status_code == 200
    assert seen == [("/api/v1/records/posts", 503), ("/health", 200)]


def test_request_before_failure_is_a_bare_500(app_client: TestClient) -> None:
    hooks.on("request.before")(lambda e: 1 / 0)
    response = app_client.get("/health")
    assert response.status_code == 500 and response.json()["code"] == "internal_error"
    assert "ZeroDivision" not in response.text


def test_request_events_carry_the_caller(app_client: TestClient) -> None:
    _, user = setup(app_client)
    seen: list[Any] = []
    hooks.on("request.before")(lambda e: seen.append(e.auth.user_id if e.auth else None))
    app_client.get(f"{API}/records/posts", headers=user.headers)
    assert seen == [user.id]


def test_mail_before_send_may_change_or_drop_the_email(settings: Any) -> None:
    from snackbase.mail import allowed_by_hooks

    registry = HookRegistry()
    message = EmailMessage()
    message["To"], message["Subject"] = "a@example.com", "Hi"

    @registry.on("mail.before_send")
    def brand(event: Any) -> None:
        event.message.replace_header("Subject", f"[Acme] {event.message['Subject']}")
        if event.to.endswith("@blocked.example"):
            raise HookAbort(400, "blocked domain")

    assert allowed_by_hooks(settings, "verify_email", message, registry) and message["Subject"] == "[Acme] Hi"
    blocked = EmailMessage()
    blocked["To"], blocked["Subject"] = "x@blocked.example", "Hi"
    assert not allowed_by_hooks(settings, "verify_email", blocked, registry)


def test_app_events_fire_at_start_and_stop(settings: Any, hook_registry: HookRegistry) -> None:
    from snackbase.app import create_app

    seen: list[str] = []
    hooks.on("app.bootstrap")(lambda e: seen.append(f"bootstrap {e.settings.environment}"))

    @hooks.on("app.serve")
    async def serve(event: AppEvent) -> None:
        seen.append("serve")

    hooks.on("app.terminate")(lambda e: seen.append(f"terminate {fetch_value(e.conn, 'SELECT 1')}"))
    with TestClient(create_app(settings)) as test_client:
        test_client.get("/health")
    assert seen == ["bootstrap testing", "serve", "terminate 1"]


def test_bootstrap_abort_refuses_the_start(settings: Any, hook_registry: HookRegistry) -> None:
    from snackbase.app import create_app

    @hooks.on("app.bootstrap")
    def refuse(event: AppEvent) -> None:
        raise HookAbort(500, "license file missing")

    with pytest.raises(HookLoadError, match=r"app\.bootstrap hook refused the start: license file missing"):
        create_app(settings)


# --- hook files ----------------------------------------------------------------------------------


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


HEADER = "from snackbase.hooks import hooks, HookAbort\n"


def test_hook_files_load_in_name_order_and_reload_replaces_them(tmp_path: Path) -> None:
    registry = HookRegistry()
    write(tmp_path, "20-b.py", "")
    write(tmp_path, "10-a.py", "")
    write(tmp_path, "notes.txt", "not python")
    assert [p.name for p in load_hook_files(tmp_path, registry)] == ["10-a.py", "20-b.py"]
    assert load_hook_files(tmp_path / "missing", registry) == []


def test_hook_files_register_on_the_global_registry(tmp_path: Path, hook_registry: HookRegistry) -> None:
    write(tmp_path, "a.py", HEADER + "@hooks.on('record.after_create', priority=5)\ndef one(e): pass\n")
    write(tmp_path, "b-c.py", HEADER + "@hooks.on('record.after_create')\ndef two(e): pass\n")
    load_hook_files(tmp_path)
    names = [h.name for h in hooks.registered("record.after_create")]
    assert names == ["a.py:one", "b-c.py:two"]
    load_hook_files(tmp_path)  # loading again replaces, never doubles
    assert [h.name for h in hooks.registered("record.after_create")] == names
    assert all(h.source and h.source.endswith(".py") for h in hooks.registered("record.after_create"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x = 1\ndef broken(:\n", r"broken\.py, line 2: SyntaxError: "),
        ("x = 1\n\nraise RuntimeError('no config')\n", r"broken\.py, line 3: RuntimeError: no config"),
        (
            HEADER + "\n@hooks.on('record.before_craete')\ndef f(e): pass\n",
            r"broken\.py, line 3: ValueError: unknown hook event 'record\.before_craete'; "
            r"valid events: app\.bootstrap",
        ),
        (
            HEADER + "@hooks.on('record.before_create')\nasync def f(e): pass\n",
            r"line 2: ValueError: record\.before_create",
        ),
        ("import no_such_module_here\n", r"broken\.py, line 1: ModuleNotFoundError: No module named"),
        ("import sys\nsys.exit(3)\n", r"broken\.py, line 2: SystemExit: 3"),
    ],
)
def test_a_broken_hook_file_refuses_to_load_and_removes_the_hooks_loaded_before(
    tmp_path: Path, hook_registry: HookRegistry, text: str, expected: str
) -> None:
    write(tmp_path, "a_good.py", HEADER + "@hooks.on('request.before')\ndef ok(e): pass\n")
    write(tmp_path, "broken.py", text)
    with pytest.raises(HookLoadError, match=expected) as caught:
        load_hook_files(tmp_path)
    assert "\n" not in str(caught.value)
    assert not hooks.has("request.before")  # all or nothing


def test_mail_send_runs_mail_before_send(tmp_path: Path, smtp_sink: Any, hook_registry: HookRegistry) -> None:
    from snackbase import mail
    from tests.conftest import make_settings

    settings = make_settings(
        tmp_path / "data", smtp_host="127.0.0.1", smtp_port=smtp_sink.port, smtp_tls="none"
    )

    @hooks.on("mail.before_send")
    def brand(event: Any) -> None:
        if event.to.endswith("@blocked.example"):
            raise HookAbort(400, "blocked domain")
        event.message.replace_header("Subject", f"[Acme] {event.message['Subject']}")

    def message(to: str) -> EmailMessage:
        built = EmailMessage()
        built["To"], built["From"], built["Subject"] = to, "sb@example.com", "Hi"
        built.set_content("hello")
        return built

    async def main() -> None:
        mail.send(settings, "verify_email", message("x@blocked.example"))
        mail.send(settings, "verify_email", message("a@example.com"))
        await mail.drain()

    asyncio.run(main())
    assert [(m["To"], m["Subject"]) for m in smtp_sink.wait(1)] == [("a@example.com", "[Acme] Hi")]
