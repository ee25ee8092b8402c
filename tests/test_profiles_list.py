"""GET /profiles: the account's users' profiles the caller may see — the view rule, field access and
masks on filters and sorts, paging by offset and cursor, tenancy."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.factories import add_to_group, make_user
from tests.test_profiles import API, SCHEMA, setup

BACKENDS = ("sqlite", "postgresql")


def fill(client: TestClient) -> tuple:
    admin, ann, bob, other, sa = setup(client)
    carl = make_user(client, ann.account_id)
    assert client.put(f"{API}/profiles/schema", headers=other.headers, json=SCHEMA).status_code == 200
    values = [
        (ann, {"display_name": "Ann", "title": "PI", "phone": "+1 555 123 4567", "salary": 9}),
        (bob, {"display_name": "Bob", "title": "tech", "salary": 5}),
        (carl, {"display_name": "Carl", "title": "ghost", "salary": 7}),
        (other, {"display_name": "Otto", "title": "PI"}),
    ]
    for user, body in values:
        assert client.patch(f"{API}/profiles/{user.id}", headers=user.headers, json=body).status_code == 200
    return admin, ann, bob, carl, other, sa


def names(client: TestClient, headers: dict, query: str = "") -> list:
    r = client.get(f"{API}/profiles{query}", headers=headers)
    assert r.status_code == 200, r.text
    return [i.get("display_name") for i in r.json()["items"]]


def test_list_follows_the_view_rule_field_access_masks_and_tenancy(client: TestClient) -> None:
    admin, ann, bob, carl, other, _ = fill(client)
    # bob: the rule hides the ghost (carl); salary is not readable; phone masked. The admin's empty
    # profile passes the rule (no title is not "ghost").
    page = client.get(f"{API}/profiles?sort=display_name", headers=bob.headers).json()
    assert [i["display_name"] for i in page["items"]] == [None, "Ann", "Bob"]
    assert (page["total_items"], page["total_pages"]) == (3, 1)
    assert page["items"][1] == {"id": ann.id, "display_name": "Ann", "title": "PI", "phone": "******4567",
                                "on_call": None, "prefs": None}  # fmt: skip
    assert names(client, carl.headers, "?sort=display_name") == [None, "Ann", "Bob", "Carl"]  # itself
    # the admin sees every profile of the account (and the admin's own, without values), never Otto
    assert names(client, admin.headers, "?sort=display_name") == [None, "Ann", "Bob", "Carl"]
    assert names(client, other.headers) == ["Otto"]
    assert ann.id not in str(client.get(f"{API}/profiles", headers=other.headers).json())


def test_filters_and_sorts_on_profile_fields_under_field_access_and_masks(client: TestClient) -> None:
    admin, ann, bob, _, _, sa = fill(client)
    assert names(client, bob.headers, '?filter=title = "PI"') == ["Ann"]
    assert names(client, bob.headers, "?sort=-display_name") == ["Bob", "Ann", None]
    in_acme = {**sa.headers, "X-Account-ID": ann.account_id}  # salary: readable by superadmins only
    assert names(client, in_acme, "?filter=salary > 6&sort=-salary") == ["Ann", "Carl"]
    assert client.get(f"{API}/profiles?sort=salary", headers=admin.headers).status_code == 400
    # salary: bob has no view access; phone: he reads it masked — neither filters nor sorts.
    for query in ("?filter=salary > 6", '?filter=phone ~ "555"', "?sort=salary", "?sort=phone", "?sort=x.y"):
        r = client.get(f"{API}/profiles{query}", headers=bob.headers)
        assert r.status_code == 400 and r.json()["code"] in ("invalid_filter", "invalid_sort"), query
    add_to_group(client, bob, "pii_access")
    assert names(client, bob.headers, '?filter=phone ~ "555"') == ["Ann"]
    # the rule's hidden profile cannot be found by filtering either
    assert names(client, bob.headers, '?filter=title = "ghost"') == []
    # superadmins name the account
    r = client.get(f"{API}/profiles", headers=sa.headers)
    assert r.status_code == 400 and r.json()["code"] == "account_required"
    r = client.get(f"{API}/profiles", headers={**sa.headers, "X-Account-ID": ann.account_id})
    assert len(r.json()["items"]) == 4


def test_paging_by_offset_and_cursor(client: TestClient) -> None:
    admin, *_ = fill(client)
    for _ in range(4):
        make_user(client, admin.account_id)
    page = client.get(f"{API}/profiles?per_page=3&page=2&skip_total=1", headers=admin.headers).json()
    assert len(page["items"]) == 3 and page["total_items"] == -1
    seen, cursor = [], ""
    while cursor is not None:
        page = client.get(f"{API}/profiles", params={"per_page": 3, "after": cursor, "sort": "-title"},
                          headers=admin.headers).json()  # fmt: skip
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 8
    bad = client.get(f"{API}/profiles?after=nonsense", headers=admin.headers)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"
    assert client.get(f"{API}/profiles?per_page=0", headers=admin.headers).status_code == 400
