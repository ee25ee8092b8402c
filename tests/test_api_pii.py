"""PII masking and field access in every read path; no filter oracle on masked fields; write access."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from tests.factories import User, add_to_group, make_account, make_superadmin, make_user

API = "/api/v1"
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
PATIENT_FIELDS = [
    {"name": "name", "type": "text", "pii": True, "mask": "name"},
    {"name": "email", "type": "email", "pii": True, "mask": "email"},
    {"name": "phone", "type": "text", "pii": True, "mask": "phone"},
    {"name": "ssn", "type": "text", "pii": True, "mask": "ssn"},
    {"name": "notes", "type": "text", "pii": True, "mask": "full"},
    {"name": "ward", "type": "text"},
    {"name": "internal", "type": "text"},
]
CLEAR = {
    "name": "Jane Ann Doe",
    "email": "jane@example.com",
    "phone": "+1 (555) 123-4567",
    "ssn": "123-45-6789",
    "notes": "allergic",
    "ward": "B",
    "internal": "secret",
}
MASKED = {
    "name": "J. A. D.",
    "email": "j***@example.com",
    "phone": "******4567",
    "ssn": "***-**-6789",
    "notes": "******",
    "ward": "B",
}


@dataclass
class World:
    client: TestClient
    sa: User
    nurse: User
    doctor: User
    record: dict


@pytest.fixture
def w(client: TestClient) -> World:
    sa = make_superadmin(client)
    access = {
        "list": ["name", "email", "phone", "ssn", "notes", "ward"],
        "view": ["name", "email", "phone", "ssn", "notes", "ward"],
        "create": ["*"],
        "update": ["ward", "notes"],
    }
    body = {"name": "patients", "fields": PATIENT_FIELDS, "rules": PUBLIC, "field_access": access}
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    body = {
        "name": "visits",
        "fields": [{"name": "patient", "type": "reference", "options": {"collection": "patients"}}],
        "rules": PUBLIC,
    }
    assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    account = make_account(client)
    nurse, doctor = make_user(client, account), make_user(client, account)
    add_to_group(client, doctor, "pii_access")
    record = client.post(f"{API}/records/patients", headers=doctor.headers, json=CLEAR).json()
    client.post(f"{API}/records/visits", headers=nurse.headers, json={"patient": record["id"]})
    return World(client, sa, nurse, doctor, record)


def fields_of(record: dict) -> dict:
    return {k: record.get(k) for k in MASKED if k in record} | (
        {"internal": record["internal"]} if "internal" in record else {}
    )


def test_masked_in_get_list_and_expand(w: World) -> None:
    got = w.client.get(f"{API}/records/patients/{w.record['id']}", headers=w.nurse.headers).json()
    assert fields_of(got) == MASKED
    listed = w.client.get(f"{API}/records/patients", headers=w.nurse.headers).json()["items"][0]
    assert fields_of(listed) == MASKED
    visit = w.client.get(
        f"{API}/records/visits", headers=w.nurse.headers, params={"expand": "patient"}
    ).json()
    assert fields_of(visit["items"][0]["expand"]["patient"]) == MASKED


def test_clear_for_pii_access_members_and_superadmins(w: World) -> None:
    expected = {k: CLEAR[k] for k in MASKED}
    got = w.client.get(f"{API}/records/patients/{w.record['id']}", headers=w.doctor.headers).json()
    assert fields_of(got) == expected
    superadmin = w.client.get(f"{API}/records/patients/{w.record['id']}", headers=w.sa.headers).json()
    assert fields_of(superadmin) == {**expected, "internal": "secret"}


def test_joining_pii_access_takes_effect_on_the_next_request(w: World) -> None:
    url = f"{API}/records/patients/{w.record['id']}"
    assert w.client.get(url, headers=w.nurse.headers).json()["ssn"] == "***-**-6789"
    add_to_group(w.client, w.nurse, "pii_access")
    assert w.client.get(url, headers=w.nurse.headers).json()["ssn"] == "123-45-6789"


def test_field_access_hides_fields_from_every_read(w: World) -> None:
    assert (
        "internal"
        not in w.client.get(f"{API}/records/patients/{w.record['id']}", headers=w.doctor.headers).json()
    )
    assert "internal" not in w.record  # the create response is a read too


@pytest.mark.parametrize(
    "query",
    [
        {"filter": "ssn ~ '123'"},
        {"filter": "email = 'jane@example.com'"},
        {"sort": "ssn"},
        {"filter": "internal = 'secret'"},
    ],
)
def test_no_oracle_on_masked_or_hidden_fields(w: World, query: dict) -> None:
    response = w.client.get(f"{API}/records/patients", headers=w.nurse.headers, params=query)
    assert response.status_code == 400 and response.json()["code"] in ("invalid_filter", "invalid_sort")


def test_unmasked_callers_may_filter_on_pii(w: World) -> None:
    response = w.client.get(
        f"{API}/records/patients", headers=w.doctor.headers, params={"filter": "ssn ~ '123'"}
    )
    assert response.json()["total_items"] == 1


def test_writes_naming_forbidden_fields_are_403(w: World) -> None:
    url = f"{API}/records/patients/{w.record['id']}"
    denied = w.client.patch(url, headers=w.nurse.headers, json={"ward": "C", "ssn": "000-00-0000"})
    assert denied.status_code == 403 and denied.json()["code"] == "field_access_denied"
    assert list(denied.json()["fields"]) == ["ssn"]
    assert w.client.get(url, headers=w.doctor.headers).json()["ward"] == "B"
    assert w.client.patch(url, headers=w.nurse.headers, json={"ward": "C"}).status_code == 200


def test_audit_entries_keep_the_mask_kind(w: World) -> None:
    changes = w.client.app.state.db.conn.execute(  # type: ignore[attr-defined]
        "SELECT changes FROM audit_log WHERE record_id = ? AND action = 'record.create'", (w.record["id"],)
    ).fetchone()
    assert '"mask":"ssn"' in changes[0]
