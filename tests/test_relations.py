"""Filters and sorts through references, back-relations, multi-references (snackbase.relations):
rules and tenancy on every joined table, field access and masks refused, expand, on-delete."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.unit_of_work import unit_of_work
from tests.factories import User, add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}


@dataclass
class W:
    client: TestClient
    sa: User
    user: User
    admin: User
    other: User

    def define(self, name: str, fields: list[dict], rules: dict | None = None, **extra: Any) -> None:
        body = {"name": name, "fields": fields, "rules": PUBLIC if rules is None else rules, **extra}
        r = self.client.post(f"{API}/collections", headers=self.sa.headers, json=body)
        assert r.status_code == 201, r.text

    def create(self, who: User, collection: str, body: dict) -> dict:
        r = self.client.post(f"{API}/records/{collection}", headers=who.headers, json=body)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def list(self, who: User, collection: str, **params: str) -> Any:
        return self.client.get(f"{API}/records/{collection}", headers=who.headers, params=params)

    def titles(self, who: User, collection: str, **params: str) -> list[str]:
        r = self.list(who, collection, **params)
        assert r.status_code == 200, r.text
        return [i["title"] for i in r.json()["items"]]


@pytest.fixture
def w(client: TestClient) -> W:
    acme, globex = make_account(client, "Acme"), make_account(client, "Globex")
    world = W(
        client,
        make_superadmin(client),
        make_user(client, acme),
        make_user(client, acme, "admin"),
        make_user(client, globex),
    )
    world.define("orgs", [{"name": "name", "type": "text"}])
    world.define(
        "projects",
        [
            {"name": "name", "type": "text"},
            {"name": "status", "type": "text"},
            {"name": "lead", "type": "text", "pii": True, "mask": "name"},
            {"name": "budget", "type": "number"},
            {"name": "org", "type": "reference", "options": {"collection": "orgs"}},
        ],
        # Plain users view only projects that are not "secret"; account admins view all.
        {**PUBLIC, "view": 'status != "secret" || @has_role("admin")'},
        field_access={"view": ["name", "status", "lead", "org"]},
    )
    world.define("tags", [{"name": "name", "type": "text"}])
    world.define(
        "experiments",
        [
            {"name": "title", "type": "text"},
            {"name": "status", "type": "text"},
            {
                "name": "project",
                "type": "reference",
                "options": {"collection": "projects", "on_delete": "cascade"},
            },
            {
                "name": "tags",
                "type": "reference",
                "options": {"collection": "tags", "max_select": 5, "on_delete": "cascade"},
            },
        ],
    )
    return world


def seed(w: W) -> dict[str, dict]:
    o = w.create(w.user, "orgs", {"name": "Lab A"})
    p1 = w.create(
        w.user, "projects", {"name": "Alpha", "status": "active", "lead": "Ann Lee", "org": o["id"]}
    )
    p2 = w.create(w.user, "projects", {"name": "Beta", "status": "done", "lead": "Bob Ray"})
    p3 = w.create(w.user, "projects", {"name": "Gamma", "status": "secret", "lead": "Cy Dee"})
    t1, t2 = w.create(w.user, "tags", {"name": "ph"}), w.create(w.user, "tags", {"name": "buffer"})
    w.create(w.user, "experiments", {"title": "e1", "status": "ok", "project": p1["id"], "tags": [t1["id"]]})
    w.create(
        w.user,
        "experiments",
        {"title": "e2", "status": "failed", "project": p1["id"], "tags": [t1["id"], t2["id"]]},
    )
    w.create(w.user, "experiments", {"title": "e3", "status": "ok", "project": p2["id"]})
    w.create(w.user, "experiments", {"title": "e4", "status": "failed", "project": p3["id"]})
    # Another tenant, with the same names and statuses: it must never match.
    gp = w.create(w.other, "projects", {"name": "Alpha", "status": "active"})
    gt = w.create(w.other, "tags", {"name": "ph"})
    w.create(
        w.other, "experiments", {"title": "g1", "status": "failed", "project": gp["id"], "tags": [gt["id"]]}
    )
    return {"p1": p1, "p2": p2, "p3": p3, "t1": t1, "t2": t2, "org": o, "gp": gp}


# --- 1. filter and sort through references -------------------------------------------------------


def test_filter_through_a_reference(w: W) -> None:
    seed(w)
    assert w.titles(w.user, "experiments", filter='project.status = "active"', sort="title") == ["e1", "e2"]
    assert w.titles(w.other, "experiments", filter='project.status = "active"') == ["g1"]
    # Two levels: experiments → projects → orgs.
    assert w.titles(w.user, "experiments", filter='project.org.name = "Lab A"', sort="title") == ["e1", "e2"]
    # A project the caller may not view is a missing one: its fields are null.
    assert w.titles(w.user, "experiments", filter='project.name = "Gamma"') == []
    assert w.titles(w.user, "experiments", filter="project.name = null", sort="title") == ["e4"]
    assert w.titles(w.admin, "experiments", filter='project.name = "Gamma"') == ["e4"]


def test_sort_through_a_reference_with_offset_and_cursor_pages(w: W) -> None:
    seed(w)
    assert w.titles(w.admin, "experiments", sort="-project.name,title") == ["e4", "e3", "e1", "e2"]
    seen, after = [], ""
    while after is not None:
        r = w.list(w.admin, "experiments", sort="project.name,title", per_page="1", after=after)
        assert r.status_code == 200, r.text
        seen += [i["title"] for i in r.json()["items"]]
        assert all("_sort0" not in i for i in r.json()["items"])
        after = r.json()["next_cursor"]
    assert seen == ["e1", "e2", "e3", "e4"]
    r = w.list(w.admin, "experiments", sort="project.name", skip_total="0")
    assert r.json()["total_items"] == 4


def test_hidden_and_masked_fields_of_referenced_collections_are_refused(w: W) -> None:
    seed(w)
    for text in ("project.budget > 1", 'project.lead = "Ann Lee"', "project.nope = 1", "project.name.x = 1"):
        r = w.list(w.user, "experiments", filter=text)
        assert r.status_code == 400 and r.json()["code"] == "invalid_filter", (text, r.text)
    r = w.list(w.user, "experiments", sort="project.lead")
    assert r.status_code == 400 and r.json()["code"] == "invalid_sort"
    # A caller who reads PII in clear may filter on it.
    add_to_group(w.client, w.user, "pii_access")
    assert w.titles(w.user, "experiments", filter='project.lead = "Ann Lee"', sort="title") == ["e1", "e2"]


def test_reference_paths_are_limited_and_not_in_rules(w: W) -> None:
    r = w.list(w.user, "experiments", filter="project.org.a.b.c = 1")
    assert r.status_code == 400 and "relations" in r.json()["message"]
    body = {"rules": {**PUBLIC, "list": 'project.status = "active"'}}
    r = w.client.patch(f"{API}/collections/experiments", headers=w.sa.headers, json=body)
    assert r.status_code == 400


def test_locked_view_rule_of_the_target_refuses_the_path(w: W) -> None:
    seed(w)
    r = w.client.patch(
        f"{API}/collections/orgs", headers=w.sa.headers, json={"rules": {**PUBLIC, "view": None}}
    )
    assert r.status_code == 200, r.text
    r = w.list(w.user, "experiments", filter='project.org.name = "Lab A"')
    assert r.status_code == 400 and "may not view" in r.json()["message"]
    assert w.titles(w.sa, "experiments", filter='project.org.name = "Lab A"', sort="title") == ["e1", "e2"]


# --- 3. back-relations -------------------------------------------------------------------------


def test_back_relation_filter_with_any_of_operators(w: W) -> None:
    seed(w)
    titles = [
        i["name"]
        for i in w.list(
            w.admin, "projects", filter='experiments_via_project.status ?= "failed"', sort="name"
        ).json()["items"]
    ]
    assert titles == ["Alpha", "Gamma"]  # never Globex's Alpha
    r = w.list(w.other, "projects", filter='experiments_via_project.status ?= "failed"')
    assert [i["name"] for i in r.json()["items"]] == ["Alpha"]
    r = w.list(w.admin, "projects", filter='experiments_via_project.title ?~ "e3"')
    assert [i["name"] for i in r.json()["items"]] == ["Beta"]
    r = w.list(w.admin, "projects", filter='experiments_via_project.status ?!= "ok"', sort="name")
    assert [i["name"] for i in r.json()["items"]] == ["Alpha", "Gamma"]
    # A plain operator on a multi-valued path is refused with a hint.
    r = w.list(w.admin, "projects", filter='experiments_via_project.status = "failed"')
    assert r.status_code == 400 and "?=" in r.json()["message"]


def test_back_relation_respects_the_source_view_rule(w: W) -> None:
    seed(w)
    body = {"rules": {**PUBLIC, "view": 'status != "failed"'}}
    assert (
        w.client.patch(f"{API}/collections/experiments", headers=w.sa.headers, json=body).status_code == 200
    )
    r = w.list(w.admin, "projects", filter='experiments_via_project.status ?= "failed"')
    assert r.json()["items"] == []
    r = w.client.get(
        f"{API}/records/projects",
        headers=w.admin.headers,
        params={"expand": "experiments_via_project", "sort": "name"},
    )
    alpha = r.json()["items"][0]
    assert [e["title"] for e in alpha["expand"]["experiments_via_project"]] == ["e1"]


def test_back_relation_expand_is_tenant_scoped_and_limited(w: W) -> None:
    from snackbase import presenter

    s = seed(w)
    r = w.client.get(
        f"{API}/records/projects/{s['p1']['id']}",
        headers=w.user.headers,
        params={"expand": "experiments_via_project.tags"},
    )
    assert r.status_code == 200, r.text
    exps = r.json()["expand"]["experiments_via_project"]
    assert [e["title"] for e in exps] == ["e1", "e2"]
    assert [t["name"] for t in exps[1]["expand"]["tags"]] == ["ph", "buffer"]
    # Globex's project: only Globex's experiment.
    r = w.client.get(
        f"{API}/records/projects/{s['gp']['id']}",
        headers=w.other.headers,
        params={"expand": "experiments_via_project"},
    )
    assert [e["title"] for e in r.json()["expand"]["experiments_via_project"]] == ["g1"]
    old = presenter.MAX_BACK_EXPAND
    presenter.MAX_BACK_EXPAND = 1
    try:
        r = w.client.get(
            f"{API}/records/projects/{s['p1']['id']}",
            headers=w.user.headers,
            params={"expand": "experiments_via_project"},
        )
        assert [e["title"] for e in r.json()["expand"]["experiments_via_project"]] == ["e1"]
    finally:
        presenter.MAX_BACK_EXPAND = old
    r = w.client.get(f"{API}/records/projects", headers=w.user.headers, params={"expand": "nope_via_project"})
    assert r.status_code == 400


# --- 4. multi-references -----------------------------------------------------------------------


def test_multi_reference_validation_and_tenancy(w: W) -> None:
    s = seed(w)
    r = w.client.post(
        f"{API}/records/experiments",
        headers=w.user.headers,
        json={"title": "x", "tags": [s["t1"]["id"], "nope"]},
    )
    assert r.status_code == 400 and r.json()["fields"]["tags"]["code"] == "reference_not_found"
    globex_tag = w.list(w.other, "tags").json()["items"][0]["id"]
    r = w.client.post(
        f"{API}/records/experiments", headers=w.user.headers, json={"title": "x", "tags": [globex_tag]}
    )
    assert r.status_code == 400  # another account's record cannot be referenced
    r = w.client.post(
        f"{API}/records/experiments",
        headers=w.user.headers,
        json={"title": "x", "tags": [s["t1"]["id"]] * 2 + ["a", "b", "c", "d", "e"]},
    )
    assert r.status_code == 400 and r.json()["fields"]["tags"]["code"] == "too_many"
    made = w.create(
        w.user, "experiments", {"title": "x", "tags": [s["t2"]["id"], s["t1"]["id"], s["t2"]["id"]]}
    )
    assert made["tags"] == [s["t2"]["id"], s["t1"]["id"]]


def test_multi_reference_filters_and_expand(w: W) -> None:
    s = seed(w)
    assert w.titles(w.user, "experiments", filter=f'tags ?= "{s["t2"]["id"]}"') == ["e2"]
    assert w.titles(w.user, "experiments", filter='tags.name ?= "ph"', sort="title") == ["e1", "e2"]
    assert w.titles(w.other, "experiments", filter='tags.name ?= "ph"') == ["g1"]
    r = w.list(w.user, "experiments", filter='tags.name = "ph"')
    assert r.status_code == 400
    r = w.client.get(
        f"{API}/records/experiments",
        headers=w.user.headers,
        params={"expand": "tags", "filter": 'title = "e2"'},
    )
    assert [t["name"] for t in r.json()["items"][0]["expand"]["tags"]] == ["ph", "buffer"]
    # Back-relation through a multi-reference.
    r = w.client.get(
        f"{API}/records/tags/{s['t1']['id']}",
        headers=w.user.headers,
        params={"expand": "experiments_via_tags"},
    )
    assert sorted(e["title"] for e in r.json()["expand"]["experiments_via_tags"]) == ["e1", "e2"]
    r = w.list(w.user, "tags", filter='experiments_via_tags.status ?= "failed"')
    assert sorted(i["name"] for i in r.json()["items"]) == ["buffer", "ph"]


def test_deleting_a_referenced_record_removes_it_from_lists_with_audit(w: W) -> None:
    s = seed(w)
    r = w.client.delete(f"{API}/records/tags/{s['t1']['id']}", headers=w.user.headers)
    assert r.status_code == 204, r.text
    items = {i["title"]: i["tags"] for i in w.list(w.user, "experiments").json()["items"]}
    assert items["e1"] == [] and items["e2"] == [s["t2"]["id"]]
    conn = w.client.app.state.db.conn  # type: ignore[attr-defined]
    rows = conn.execute(
        "SELECT changes, extra FROM audit_log WHERE action = 'record.update' AND collection = 'experiments'"
    ).fetchall()
    assert len(rows) == 2 and all('"on_delete":"cascade"' in extra for _, extra in rows)


def test_restrict_refuses_deleting_a_record_in_a_list(w: W) -> None:
    w.define("labels", [{"name": "name", "type": "text"}])
    w.define(
        "items",
        [
            {"name": "title", "type": "text"},
            {"name": "labels", "type": "reference", "options": {"collection": "labels", "max_select": 3}},
        ],
    )
    label = w.create(w.user, "labels", {"name": "l"})
    w.create(w.user, "items", {"title": "i", "labels": [label["id"]]})
    r = w.client.delete(f"{API}/records/labels/{label['id']}", headers=w.user.headers)
    assert r.status_code == 409 and r.json()["code"] == "record_in_use"
    body = {
        "fields": [
            {"name": "title", "type": "text"},
            {"name": "labels", "type": "reference", "options": {"collection": "labels", "max_select": 1}},
        ]
    }
    r = w.client.patch(f"{API}/collections/items", headers=w.sa.headers, json=body)
    assert r.status_code == 400


def test_any_of_on_a_multi_reference_in_a_rule(w: W) -> None:
    s = seed(w)
    body = {
        "rules": {**PUBLIC, "list": f'tags ?= "{s["t2"]["id"]}"', "update": f'tags ?!= "{s["t2"]["id"]}"'}
    }
    r = w.client.patch(f"{API}/collections/experiments", headers=w.sa.headers, json=body)
    assert r.status_code == 200, r.text
    assert w.titles(w.user, "experiments") == ["e2"]
    # The create/update rules see the new values (a one-row CTE): e1 holds t1 only, so it may change.
    e1 = w.list(w.sa, "experiments", filter='title = "e1"').json()["items"][0]
    r = w.client.patch(f"{API}/records/experiments/{e1['id']}", headers=w.user.headers, json={"status": "x"})
    assert r.status_code == 200, r.text


# --- the compiler's any-of hook (pure) ---------------------------------------------------------


class _Pure:
    """A resolver with one multi-valued name `many` over `json_each(t.m)` and one plain field `a`."""

    def field(self, name: str, position: int) -> str:
        return {"a": '"t"."a"'}[name]

    def many(self, name: str, position: int) -> tuple[str, str, list[object]] | None:
        return (
            ("EXISTS (SELECT 1 FROM json_each(t.m) AS v WHERE v.key >= ?", "v.value", [0])
            if name == "many"
            else None
        )

    def request_auth(self, name: str) -> object:
        from snackbase.filter import MISSING

        return MISSING

    def request_data(self, name: str) -> object:
        return self.request_auth(name)

    def macro(self, name: str, args: list[object], position: int) -> tuple[str, list[object]]:
        raise AssertionError

    def now(self) -> str:
        return "2026-01-01T00:00:00.000Z"


def test_any_of_operators_compile_to_exists_with_bound_values() -> None:
    from snackbase.db import connect
    from snackbase.filter import compile_filter

    conn = connect(":memory:")  # with the sb_budget() function that `~` compiles to
    conn.execute("CREATE TABLE t (a, m)")
    conn.execute("INSERT INTO t VALUES (1, '[1, 5]'), (2, '[7]'), (3, '[]')")

    def rows(text: str) -> list[int]:
        sql, params = compile_filter(text, _Pure())  # type: ignore[arg-type]
        return [r[0] for r in conn.execute(f"SELECT a FROM t WHERE {sql} ORDER BY a", params)]

    assert rows("many ?= 5") == [1]
    assert rows("many ?> 4") == [1, 2]
    assert rows("many ?!= 7") == [1]
    assert rows("!(many ?= 7)") == [1, 3]
    assert rows("many ?< 2 || a = 3") == [1, 3]
    assert rows("many ?~ '7'") == [2]
    assert rows("many ?= @request.auth.id") == []  # a missing value is false
    assert rows("a ?>= 2") == [2, 3]  # single-valued: the plain operator
    sql, params = compile_filter("many ?= 'x'", _Pure())  # type: ignore[arg-type]
    assert "'x'" not in sql and params == [0, "x"]


def test_a_forged_cross_account_reference_is_never_followed(w: W) -> None:
    """Defence in depth: even a reference written past the API (straight into the table) to another
    account's record is not followed by a join, a back-relation, a multi-reference or an expand."""
    s = seed(w)
    conn = w.client.app.state.db.conn  # type: ignore[attr-defined]
    globex_tag = w.list(w.other, "tags").json()["items"][0]["id"]
    with unit_of_work(conn):
        conn.execute("UPDATE c_experiments SET project = ?, tags = ? WHERE title = 'e3'",
                     (s["gp"]["id"], json.dumps([globex_tag])))  # fmt: skip
    assert w.titles(w.admin, "experiments", filter="project.name = null") == ["e3"]
    assert w.titles(w.admin, "experiments", filter='tags.name ?= "ph"', sort="title") == ["e1", "e2"]
    r = w.list(w.other, "projects", filter='experiments_via_project.title ?= "e3"')
    assert r.json()["items"] == []
    r = w.client.get(f"{API}/records/projects/{s['gp']['id']}", headers=w.other.headers,
                     params={"expand": "experiments_via_project"})  # fmt: skip
    assert [e["title"] for e in r.json()["expand"]["experiments_via_project"]] == ["g1"]
    r = w.list(w.admin, "experiments", filter='title = "e3"', expand="project,tags")
    assert "expand" not in r.json()["items"][0]


def test_if_none_match_with_expand_answers_the_record(w: W) -> None:
    """Expanded records have versions of their own: a GET with expand is never 304."""
    s = seed(w)
    url = f"{API}/records/projects/{s['p1']['id']}"
    tag = w.client.get(url, headers=w.user.headers).headers["etag"]
    r = w.client.get(url, headers={**w.user.headers, "if-none-match": tag}, params={"expand": "org"})
    assert r.status_code == 200 and r.json()["expand"]["org"]["name"] == "Lab A" and r.headers["etag"] == tag
    assert w.client.get(url, headers={**w.user.headers, "if-none-match": tag}).status_code == 304
