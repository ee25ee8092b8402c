"""record.before_*, record.before_list and collection.* hooks fire from the record pipeline and the
collections routes, and an abort changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.db import fetch_value
from snackbase.hooks import HookAbort
from tests.factories import User, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")


@pytest.fixture
def world(client: TestClient, hook_registry: Any) -> tuple[TestClient, Any, User, User]:
    sa = make_superadmin(client)
    fields = [
        {"name": "title", "type": "text"},
        {"name": "slug", "type": "text"},
        {"name": "locked", "type": "boolean"},
    ]
    client.post(
        f"{API}/collections", headers=sa.headers, json={"name": "posts", "fields": fields, "rules": PUBLIC}
    )
    return client, hook_registry, sa, make_user(client, make_account(client))


def audit_count(client: TestClient) -> int:
    return int(fetch_value(client.app.state.db.conn, "SELECT count(*) FROM audit_log"))  # type: ignore[attr-defined]


def test_before_create_changes_the_data_which_is_then_validated(world: tuple) -> None:
    client, hooks, _, user = world

    @hooks.on("record.before_create", collection="posts")
    def slugify(event: Any) -> None:
        event.data["slug"] = str(event.data.get("title", "")).lower().replace(" ", "-")

    created = client.post(f"{API}/records/posts", headers=user.headers, json={"title": "Hello World"}).json()
    assert created["slug"] == "hello-world"

    @hooks.on("record.before_create", collection="posts", priority=-1)
    def sneaky(event: Any) -> None:
        event.data["views"] = 1  # not a field: the validator still refuses it

    refused = client.post(f"{API}/records/posts", headers=user.headers, json={"title": "x"})
    assert refused.status_code == 400 and refused.json()["fields"]["views"]["code"] == "unknown_field"


@pytest.mark.parametrize("action", ["update", "delete"])
def test_abort_changes_nothing(world: tuple, action: str) -> None:
    client, hooks, _, user = world
    record = client.post(
        f"{API}/records/posts", headers=user.headers, json={"title": "a", "locked": True}
    ).json()
    before = audit_count(client)

    @hooks.on(f"record.before_{action}", collection="posts")
    def guard(event: Any) -> None:
        if event.record and event.record["locked"]:
            raise HookAbort(409, "This post is locked.", {"locked": "Unlock it first."})

    url = f"{API}/records/posts/{record['id']}"
    response = client.request(
        "PATCH" if action == "update" else "DELETE",
        url,
        headers=user.headers,
        json={"title": "b"} if action == "update" else None,
    )
    assert response.status_code == 409 and response.json()["message"] == "This post is locked."
    assert response.json()["fields"]["locked"]["message"] == "Unlock it first."
    assert client.get(url, headers=user.headers).json()["title"] == "a"
    assert audit_count(client) == before


def test_unexpected_error_in_a_before_hook_is_a_bare_500(world: tuple) -> None:
    client, hooks, _, user = world

    @hooks.on("record.before_create")
    def broken(event: Any) -> None:
        raise RuntimeError("secret detail")

    before = audit_count(client)
    response = client.post(f"{API}/records/posts", headers=user.headers, json={"title": "a"})
    assert response.status_code == 500 and "secret detail" not in response.text
    assert audit_count(client) == before


def test_before_list_can_narrow_the_query(world: tuple) -> None:
    client, hooks, _, user = world
    for title in ("keep", "drop"):
        client.post(f"{API}/records/posts", headers=user.headers, json={"title": title})

    @hooks.on("record.before_list", collection="posts")
    def only_keep(event: Any) -> None:
        event.query.filter = "title = 'keep'"

    items = client.get(f"{API}/records/posts", headers=user.headers).json()["items"]
    assert [i["title"] for i in items] == ["keep"]


def test_collection_hooks(world: tuple) -> None:
    client, hooks, sa, _ = world
    seen: list[str] = []

    @hooks.on("collection.before_create")
    def refuse_tmp(event: Any) -> None:
        if event.collection.startswith("tmp_"):
            raise HookAbort(400, "No temporary collections.")

    @hooks.on("collection.after_create")
    @hooks.on("collection.after_delete")
    def remember(event: Any) -> None:
        seen.append(f"{event.name}:{event.collection}")

    refused = client.post(f"{API}/collections", headers=sa.headers, json={"name": "tmp_x", "fields": []})
    assert (
        refused.status_code == 400
        and client.get(f"{API}/collections/tmp_x", headers=sa.headers).status_code == 404
    )
    client.post(f"{API}/collections", headers=sa.headers, json={"name": "notes", "fields": []})
    client.delete(f"{API}/collections/notes", headers=sa.headers)
    assert seen == ["collection.after_create:notes", "collection.after_delete:notes"]


def test_auth_hooks(client: TestClient, hook_registry: Any) -> None:
    seen: list[tuple[str, Any]] = []

    @hooks_on(hook_registry, "auth.before_register")
    def closed_domain(event: Any) -> None:
        if str(event.data.get("email", "")).endswith("@blocked.example"):
            raise HookAbort(403, "This domain may not register.")

    for name in ("auth.after_register", "auth.after_login", "auth.after_refresh", "auth.after_logout"):
        hooks_on(hook_registry, name)(lambda event: seen.append((event.name, event.record)))

    password = "a perfectly long passphrase 7"
    blocked = client.post(
        f"{API}/auth/register", json={"account_name": "B", "email": "x@blocked.example", "password": password}
    )
    assert blocked.status_code == 403
    registered = client.post(
        f"{API}/auth/register",
        json={"account_name": "Hooks Inc", "email": "h@ok.example", "password": password},
    ).json()
    login = client.post(
        f"{API}/auth/login",
        json={
            "email": "h@ok.example",
            "password": password,
            "account_identifier": registered["account"]["slug"],
        },
    ).json()
    refreshed = client.post(f"{API}/auth/refresh", json={"refresh_token": login["refresh_token"]}).json()
    client.post(
        f"{API}/auth/logout",
        headers={"authorization": f"Bearer {refreshed['access_token']}"},
        json={"refresh_token": refreshed["refresh_token"]},
    )
    assert [name for name, _ in seen] == [
        "auth.after_register",
        "auth.after_login",
        "auth.after_refresh",
        "auth.after_logout",
    ]
    assert all(record["email"] == "h@ok.example" and "password_hash" not in record for _, record in seen)


def hooks_on(registry: Any, event: str) -> Any:
    return registry.on(event)
