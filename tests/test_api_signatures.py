"""Electronic signatures (21 CFR 11.50/11.200) and record history."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from snackbase.passwords import hasher, params_for
from tests.factories import User, add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
PASSWORD = "a long enough signing passphrase"
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")


@dataclass
class World:
    client: TestClient
    signer: User
    other: User
    stranger: User
    admin: User
    record: dict

    def url(self, suffix: str = "") -> str:
        return f"{API}/records/batches/{self.record['id']}{suffix}"

    def audit_actions(self) -> list[str]:
        rows = self.client.app.state.db.conn.execute(  # type: ignore[attr-defined]
            "SELECT action FROM audit_log WHERE record_id = ? ORDER BY seq", (self.record["id"],)
        )
        return [r[0] for r in rows]


def set_password(client: TestClient, user: User) -> None:
    hashed = hasher(params_for("testing")).hash(PASSWORD)
    client.app.state.db.conn.execute(
        "UPDATE users SET password_hash = ? WHERE id = ?",  # type: ignore[attr-defined]
        (hashed, user.id),
    )


@pytest.fixture
def w(client: TestClient) -> World:
    sa = make_superadmin(client)
    fields = [
        {"name": "lot", "type": "text"},
        {"name": "operator", "type": "text", "pii": True, "mask": "name"},
    ]
    client.post(
        f"{API}/collections", headers=sa.headers, json={"name": "batches", "fields": fields, "rules": PUBLIC}
    )
    account = make_account(client)
    signer, other, admin = (
        make_user(client, account),
        make_user(client, account),
        make_user(client, account, "admin"),
    )
    stranger = make_user(client, make_account(client, "Other"))
    set_password(client, signer)
    record = client.post(
        f"{API}/records/batches", headers=signer.headers, json={"lot": "L-1", "operator": "Ada Lovelace"}
    ).json()
    return World(client, signer, other, stranger, admin, record)


def test_sign_binds_to_the_version_and_shows_later_changes(w: World) -> None:
    signed = w.client.post(
        w.url("/sign"), headers=w.signer.headers, json={"password": PASSWORD, "meaning": "approved"}
    )
    assert signed.status_code == 201, signed.text
    body = signed.json()
    assert body["meaning"] == "approved" and body["signer_name"] == w.signer.email
    # The signer sees `operator` masked: the record's hash would be an oracle for it, so it is withheld.
    assert body["changed_since_signing"] is False and body["record_hash"] is None
    listed = w.client.get(w.url("/signatures"), headers=w.other.headers).json()["items"]
    assert [s["changed_since_signing"] for s in listed] == [False]
    add_to_group(w.client, w.other, "pii_access")
    listed = w.client.get(w.url("/signatures"), headers=w.other.headers).json()["items"]
    assert len(listed[0]["record_hash"]) == 64
    w.client.patch(w.url(), headers=w.other.headers, json={"lot": "L-2"})
    listed = w.client.get(w.url("/signatures"), headers=w.other.headers).json()["items"]
    assert [s["changed_since_signing"] for s in listed] == [True]
    assert w.audit_actions() == ["record.create", "record.sign", "record.update"]


def test_wrong_password_is_401_audited_and_signs_nothing(w: World) -> None:
    response = w.client.post(
        w.url("/sign"), headers=w.signer.headers, json={"password": "wrong", "meaning": "approved"}
    )
    assert response.status_code == 401 and response.json()["code"] == "invalid_credentials"
    assert w.client.get(w.url("/signatures"), headers=w.signer.headers).json()["items"] == []
    assert w.audit_actions() == ["record.create", "record.sign_failed"]


def test_repeated_failures_lock_signing(w: World) -> None:
    for _ in range(5):
        w.client.post(
            w.url("/sign"), headers=w.signer.headers, json={"password": "wrong", "meaning": "approved"}
        )
    locked = w.client.post(
        w.url("/sign"), headers=w.signer.headers, json={"password": PASSWORD, "meaning": "approved"}
    )
    assert locked.status_code == 429 and "retry-after" in locked.headers


@pytest.mark.parametrize(
    "body",
    [
        {"password": PASSWORD},
        {"password": PASSWORD, "meaning": ""},
        {"password": PASSWORD, "meaning": "x" * 201},
        {"password": PASSWORD, "meaning": "ok\u0000"},
        {"password": PASSWORD, "meaning": "ok", "extra": 1},
        {"password": 5, "meaning": "ok"},
    ],
)
def test_bad_bodies_sign_nothing(w: World, body: dict) -> None:
    assert w.client.post(w.url("/sign"), headers=w.signer.headers, json=body).status_code == 400
    assert w.audit_actions() == ["record.create"]


def test_other_tenants_and_anonymous_cannot_sign(w: World) -> None:
    body = {"password": PASSWORD, "meaning": "approved"}
    assert w.client.post(w.url("/sign"), headers=w.stranger.headers, json=body).status_code == 404
    assert (
        w.client.post(w.url("/sign"), headers={"x-account-id": w.signer.account_id}, json=body).status_code
        == 401
    )


def test_history_masks_pii_and_outlives_the_record(w: World) -> None:
    w.client.patch(
        w.url(),
        headers={**w.signer.headers, "x-audit-reason": "correction"},
        json={"operator": "Grace Hopper"},
    )
    history = w.client.get(w.url("/history"), headers=w.other.headers).json()["items"]
    assert [e["action"] for e in history] == ["record.create", "record.update"]
    assert history[1]["reason"] == "correction"
    assert history[1]["changes"]["operator"] == {"old": "A. L.", "new": "G. H.", "mask": "name"}
    add_to_group(w.client, w.other, "pii_access")
    clear = w.client.get(w.url("/history"), headers=w.other.headers).json()["items"]
    assert clear[1]["changes"]["operator"]["new"] == "Grace Hopper"
    assert w.client.get(w.url("/history"), headers=w.stranger.headers).status_code == 404
    w.client.delete(w.url(), headers=w.signer.headers)
    assert w.client.get(w.url("/history"), headers=w.other.headers).status_code == 404
    after = w.client.get(w.url("/history"), headers=w.admin.headers).json()["items"]
    assert [e["action"] for e in after] == ["record.create", "record.update", "record.delete"]
