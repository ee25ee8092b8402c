"""The one read path: a record's history and signatures go through the same presenter as get and list
— field access, PII masks (also for fields marked PII later), and the editors' details for account
admins only; hashes that would be an oracle for masked values are withheld."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.passwords import hasher, params_for
from tests.factories import User, add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
PASSWORD = "a long enough signing passphrase"
FIELDS = [
    {"name": "ward", "type": "text"},
    {"name": "secret", "type": "text"},
    {"name": "ssn", "type": "text", "pii": True, "mask": "ssn"},
    {"name": "notes", "type": "text"},
]


@pytest.fixture
def world(client: TestClient) -> tuple[TestClient, User, User, User, dict[str, Any]]:
    sa = make_superadmin(client)
    access = {"list": ["ward", "ssn", "notes"], "view": ["ward", "ssn", "notes"]}
    body = {"name": "visits", "fields": FIELDS, "rules": PUBLIC, "field_access": access}
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    account = make_account(client)
    user, admin = make_user(client, account), make_user(client, account, "admin")
    first = {"ward": "A", "secret": "s1", "ssn": "123-45-6789", "notes": "n1"}
    record = client.post(f"{API}/records/visits", headers=user.headers, json=first).json()
    client.patch(f"{API}/records/visits/{record['id']}", headers=user.headers,
                 json={"secret": "s2", "ssn": "987-65-4321", "ward": "B"})  # fmt: skip
    return client, sa, user, admin, record


def history(client: TestClient, record_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get(f"{API}/records/visits/{record_id}/history", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("who", ["user", "anonymous"])
def test_history_obeys_field_access_and_masks_and_hides_the_editor(world: tuple, who: str) -> None:
    client, _, user, _, record = world
    headers = user.headers if who == "user" else {"x-account-id": user.account_id}
    items = history(client, record["id"], headers)
    assert [i["action"] for i in items] == ["record.create", "record.update"]
    for item in items:
        assert "secret" not in item["changes"]
        assert item["actor"] == {"user_id": user.id, "role": "user", "method": "token"}
        assert not {"ip", "user_agent", "request_id", "hash", "prev_hash"} & set(item)
    assert items[1]["changes"]["ssn"]["old"] == "***-**-6789"
    assert items[1]["changes"]["ssn"]["new"] == "***-**-4321"
    assert items[1]["changes"]["ward"] == {"old": "A", "new": "B"}


def test_account_admins_see_the_editor_but_no_hash_of_a_masked_entry(world: tuple) -> None:
    client, _, user, admin, record = world
    items = history(client, record["id"], admin.headers)
    assert items[1]["actor"]["email"] == user.email and "ip" in items[1]
    assert items[1]["hash"] is None and items[1]["changes"]["ssn"]["new"] == "***-**-4321"
    add_to_group(client, admin, "pii_access")
    clear = history(client, record["id"], admin.headers)
    assert clear[1]["changes"]["ssn"]["new"] == "987-65-4321" and len(clear[1]["hash"]) == 64


def test_a_field_marked_pii_later_is_masked_in_its_history(world: tuple) -> None:
    client, sa, user, _, record = world
    fields = [dict(f, pii=True, mask="full") if f["name"] == "notes" else f for f in FIELDS]
    assert client.patch(f"{API}/collections/visits", headers=sa.headers,
                        json={"fields": fields}).status_code == 200  # fmt: skip
    created = history(client, record["id"], user.headers)[0]
    assert created["changes"]["notes"]["new"] == "******"


def test_signature_hashes_and_history_extras_need_the_whole_record(world: tuple) -> None:
    client, _, user, admin, record = world
    conn: Any = client.app.state.db.conn  # type: ignore[attr-defined]
    conn.execute("UPDATE users SET password_hash = ? WHERE id = ?",
                 (hasher(params_for("testing")).hash(PASSWORD), user.id))  # fmt: skip
    url = f"{API}/records/visits/{record['id']}"
    signed = client.post(f"{url}/sign", headers=user.headers, json={"password": PASSWORD, "meaning": "ok"})
    assert signed.status_code == 201 and signed.json()["record_hash"] is None
    listed = client.get(f"{url}/signatures", headers=admin.headers).json()["items"]
    assert listed[0]["record_hash"] is None and listed[0]["changed_since_signing"] is False
    sign_entry = history(client, record["id"], user.headers)[-1]
    assert sign_entry["action"] == "record.sign" and sign_entry["extra"] == {
        "meaning": "ok", "signature_id": signed.json()["id"]}  # fmt: skip
    admin_entry = history(client, record["id"], admin.headers)[-1]
    assert "record_hash" not in admin_entry["extra"]
