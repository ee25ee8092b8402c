"""User profile fields: per-account definitions, the users view rule, field access and masks, expand
of `user` fields, tenancy, audit."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.factories import User, add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}
SCHEMA = {
    "fields": [
        {"name": "display_name", "type": "text", "options": {"max_length": 80}},
        {"name": "title", "type": "text"},
        {"name": "phone", "type": "text", "pii": True, "mask": "phone"},
        {"name": "salary", "type": "number"},
        {"name": "on_call", "type": "boolean"},
        {"name": "prefs", "type": "json"},
    ],
    "view_rule": '@is_authenticated() && title != "ghost"',
    "field_access": {"view": ["display_name", "title", "phone", "on_call", "prefs"]},
}


def setup(client: TestClient) -> tuple[User, User, User, User, User]:
    acme, globex = make_account(client, "Acme"), make_account(client, "Globex")
    sa = make_superadmin(client)
    admin, ann, bob = make_user(client, acme, "admin"), make_user(client, acme), make_user(client, acme)
    other = make_user(client, globex, "admin")
    r = client.put(f"{API}/profiles/schema", headers=admin.headers, json=SCHEMA)
    assert r.status_code == 200, r.text
    body = {
        "name": "projects",
        "rules": PUBLIC,
        "fields": [
            {"name": "name", "type": "text"},
            {"name": "lead", "type": "user", "options": {"on_delete": "set_null"}},
        ],
    }
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    return admin, ann, bob, other, sa


def test_profiles_follow_the_view_rule_field_access_and_masks(client: TestClient) -> None:
    admin, ann, bob, other, _ = setup(client)
    r = client.patch(
        f"{API}/profiles/{ann.id}",
        headers=ann.headers,
        json={
            "display_name": "Ann Lee",
            "title": "PI",
            "phone": "+1 555 123 4567",
            "salary": 9,
            "on_call": True,
            "prefs": {"theme": "dark"},
        },
    )
    assert r.status_code == 200, r.text
    seen = client.get(f"{API}/profiles/{ann.id}", headers=bob.headers).json()
    assert seen == {
        "id": ann.id,
        "display_name": "Ann Lee",
        "title": "PI",
        "phone": "******4567",
        "on_call": True,
        "prefs": {"theme": "dark"},
    }  # fmt: skip  (salary: no view access)
    add_to_group(client, bob, "pii_access")
    assert client.get(f"{API}/profiles/{ann.id}", headers=bob.headers).json()["phone"] == "+1 555 123 4567"
    # The rule: a "ghost" profile is hidden from other users, not from the user itself or admins.
    assert (
        client.patch(f"{API}/profiles/{ann.id}", headers=ann.headers, json={"title": "ghost"}).status_code
        == 200
    )
    assert client.get(f"{API}/profiles/{ann.id}", headers=bob.headers).status_code == 404
    assert client.get(f"{API}/profiles/{ann.id}", headers=ann.headers).status_code == 200
    assert client.get(f"{API}/profiles/{ann.id}", headers=admin.headers).status_code == 200
    # Another account never sees it, nor changes it.
    assert client.get(f"{API}/profiles/{ann.id}", headers=other.headers).status_code == 404
    assert (
        client.patch(f"{API}/profiles/{ann.id}", headers=other.headers, json={"title": "x"}).status_code
        == 404
    )
    # Only the user or an admin writes; values are validated.
    assert (
        client.patch(f"{API}/profiles/{ann.id}", headers=bob.headers, json={"title": "x"}).status_code == 403
    )
    r = client.patch(f"{API}/profiles/{ann.id}", headers=ann.headers, json={"display_name": "x" * 81})
    assert r.status_code == 400 and "display_name" in r.json()["fields"]
    r = client.patch(f"{API}/profiles/{ann.id}", headers=ann.headers, json={"nope": 1})
    assert r.status_code == 400


def test_user_fields_expand_to_what_the_caller_may_see(client: TestClient) -> None:
    _, ann, bob, _, _ = setup(client)
    client.patch(
        f"{API}/profiles/{ann.id}", headers=ann.headers, json={"display_name": "Ann Lee", "salary": 5}
    )
    p = client.post(
        f"{API}/records/projects", headers=bob.headers, json={"name": "Alpha", "lead": ann.id}
    ).json()
    r = client.get(f"{API}/records/projects/{p['id']}", headers=bob.headers, params={"expand": "lead"})
    assert r.status_code == 200, r.text
    assert r.json()["expand"]["lead"] == {
        "id": ann.id,
        "display_name": "Ann Lee",
        "title": None,
        "phone": None,
        "on_call": None,
        "prefs": None,
    }
    r = client.get(f"{API}/records/projects", headers=bob.headers, params={"expand": "lead"})
    assert r.json()["items"][0]["expand"]["lead"]["display_name"] == "Ann Lee"
    client.patch(f"{API}/profiles/{ann.id}", headers=ann.headers, json={"title": "ghost"})
    r = client.get(f"{API}/records/projects/{p['id']}", headers=bob.headers, params={"expand": "lead"})
    assert "expand" not in r.json()  # the rule hides the profile: nothing is expanded
    r = client.get(f"{API}/records/projects", headers=bob.headers, params={"expand": "lead.x"})
    assert r.status_code == 400


def test_null_rule_shows_only_oneself_and_schema_is_validated_and_audited(client: TestClient) -> None:
    admin, ann, bob, other, _ = setup(client)
    r = client.put(f"{API}/profiles/schema", headers=admin.headers, json={**SCHEMA, "view_rule": None})
    assert r.status_code == 200
    client.patch(f"{API}/profiles/{ann.id}", headers=ann.headers, json={"display_name": "Ann"})
    assert client.get(f"{API}/profiles/{ann.id}", headers=bob.headers).status_code == 404
    assert client.get(f"{API}/profiles/{ann.id}", headers=ann.headers).json()["display_name"] == "Ann"
    for bad in (
        {"fields": [{"name": "boss", "type": "reference", "options": {"collection": "nope"}}]},
        {"fields": [{"name": "boss", "type": "user", "options": {"on_delete": "cascade"}}]},
        {"fields": [{"name": "id", "type": "text"}]},
        {"view_rule": "nope = 1"},
        {"extra": 1},
    ):
        r = client.put(f"{API}/profiles/schema", headers=admin.headers, json=bad)
        assert r.status_code == 400, (bad, r.text)
    assert client.put(f"{API}/profiles/schema", headers=ann.headers, json=SCHEMA).status_code == 403
    # Each account has its own definition.
    assert client.get(f"{API}/profiles/schema", headers=other.headers).json()["fields"] == []
    assert len(client.get(f"{API}/profiles/schema", headers=bob.headers).json()["fields"]) == 6
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    actions = [
        a
        for (a,) in conn.execute(
            "SELECT action FROM audit_log WHERE action IN ('profile_schema.update', 'user.profile_update')"
        )
    ]
    assert actions.count("profile_schema.update") == 2 and actions.count("user.profile_update") == 1
    phone = conn.execute("SELECT changes FROM audit_log WHERE action = 'user.profile_update'").fetchone()[0]
    assert "display_name" in phone


def test_filter_and_sort_through_user_fields(client: TestClient) -> None:
    admin, ann, bob, other, _ = setup(client)
    client.patch(f"{API}/profiles/{ann.id}", headers=ann.headers, json={"display_name": "Ann", "salary": 5})
    client.patch(
        f"{API}/profiles/{bob.id}", headers=bob.headers, json={"display_name": "Bob", "phone": "5551234"}
    )
    for name, lead in (("A", ann.id), ("B", bob.id)):
        body = {"name": name, "lead": lead}
        assert client.post(f"{API}/records/projects", headers=bob.headers, json=body).status_code == 201
    client.post(f"{API}/records/projects", headers=other.headers, json={"name": "G", "lead": other.id})

    def names(who: User, **params: str) -> list[str]:
        r = client.get(f"{API}/records/projects", headers=who.headers, params=params)
        assert r.status_code == 200, r.text
        return [i["name"] for i in r.json()["items"]]

    assert names(bob, filter='lead.display_name = "Ann"') == ["A"]
    assert names(bob, sort="-lead.display_name") == ["B", "A"]
    assert names(other, filter=f'lead.id = "{ann.id}"') == []  # never another account's users
    assert names(other, filter=f'lead.id = "{other.id}"') == ["G"]
    for text in ("lead.salary > 1", 'lead.phone = "5551234"', "lead.nope = 1"):
        r = client.get(f"{API}/records/projects", headers=bob.headers, params={"filter": text})
        assert r.status_code == 400, text
    # A profile the rule hides is a missing one.
    client.patch(f"{API}/profiles/{ann.id}", headers=ann.headers, json={"title": "ghost"})
    assert names(bob, filter='lead.display_name = "Ann"') == []
    assert names(admin, filter='lead.display_name = "Ann"') == ["A"]


def test_profile_references_expand_restrict_and_set_null(client: TestClient) -> None:
    """Profile `reference` and `user` fields: same account only, expand, `restrict` refuses the delete
    of what they name, `set_null` clears it with an audit entry naming the cause."""
    admin, ann, bob, other, sa = setup(client)
    body = {"name": "labs", "rules": {**PUBLIC, "view": 'name != "secret"'},
            "fields": [{"name": "name", "type": "text"}]}  # fmt: skip
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    schema = {
        "fields": [
            {"name": "lab", "type": "reference", "options": {"collection": "labs"}},
            {"name": "buddy", "type": "user", "options": {"on_delete": "set_null"}},
        ],
        "view_rule": "",
    }
    assert client.put(f"{API}/profiles/schema", headers=admin.headers, json=schema).status_code == 200
    lab = client.post(f"{API}/records/labs", headers=ann.headers, json={"name": "Lab A"}).json()["id"]
    secret = client.post(f"{API}/records/labs", headers=ann.headers, json={"name": "secret"}).json()["id"]
    theirs = client.post(f"{API}/records/labs", headers=other.headers, json={"name": "G"}).json()["id"]
    for bad in ({"lab": theirs}, {"buddy": other.id}, {"lab": "nope"}):
        r = client.patch(f"{API}/profiles/{ann.id}", headers=ann.headers, json=bad)
        assert r.status_code == 400 and r.json()["fields"][next(iter(bad))]["code"] == "reference_not_found"
    p = f"{API}/profiles/{ann.id}"
    assert client.patch(p, headers=ann.headers, json={"lab": lab, "buddy": bob.id}).status_code == 200
    got = client.get(f"{p}?expand=lab,buddy", headers=bob.headers).json()
    assert got["expand"]["lab"]["name"] == "Lab A" and got["expand"]["buddy"]["id"] == bob.id
    listed = client.get(f"{API}/profiles?expand=lab&filter=lab != null", headers=bob.headers).json()
    assert [i["expand"]["lab"]["id"] for i in listed["items"]] == [lab]
    client.patch(p, headers=ann.headers, json={"lab": secret})
    assert "expand" not in client.get(f"{p}?expand=lab", headers=bob.headers).json()  # the labs view rule
    r = client.delete(f"{API}/records/labs/{secret}", headers=ann.headers)
    assert r.status_code == 409 and r.json()["code"] == "record_in_use" and "users.lab" in r.json()["fields"]
    assert client.delete(f"{API}/records/labs/{lab}", headers=ann.headers).status_code == 204  # not named
    assert client.delete(f"{API}/users/{bob.id}", headers=admin.headers).status_code == 204
    assert client.get(p, headers=ann.headers).json()["buddy"] is None
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    extra = conn.execute(
        "SELECT extra FROM audit_log WHERE action = 'user.profile_update' ORDER BY seq DESC LIMIT 1"
    ).fetchone()[0]
    assert bob.id in extra and "set_null" in extra
