"""/invitations: permissions, the emailed token (real SMTP), accept once, expiry, resend."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.unit_of_work import unit_of_work

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
ROLES = ["anonymous", "user", "admin", "other_admin", "superadmin"]
PASSWORD = "Meadow lark singing loud 3"

MATRIX = [
    ("POST", "/invitations", {"email": "new@example.com"}, [401, 403, 201, 201, 201]),
    (
        "POST",
        "/invitations",
        {"email": "new@example.com", "account_id": "{account}"},
        [401, 403, 201, 404, 201],
    ),
    ("GET", "/invitations", None, [401, 403, 200, 200, 200]),
    ("DELETE", "/invitations/{invitation}", None, [401, 403, 204, 404, 204]),
    ("POST", "/invitations/{invitation}/resend", None, [401, 403, 200, 404, 200]),
    ("GET", "/invitations/{token}", None, [200, 200, 200, 200, 200]),
]
CASES = [(m, p, b, role, statuses[i]) for m, p, b, statuses in MATRIX for i, role in enumerate(ROLES)]


def invite(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(
        f"{API}/invitations", json={"email": "invitee@example.com", **body}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "path", "body", "role", "status"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES]
)
def test_permissions(
    client: TestClient, actors: dict[str, Any], method: str, path: str, body: Any, role: str, status: int
) -> None:
    invitation = invite(client, actors["admin"]["headers"])
    names = {
        "invitation": invitation["id"],
        "token": invitation["token"],
        "account": actors["admin"]["account_id"],
    }
    body = {k: v.format(**names) for k, v in body.items()} if body else None
    response = client.request(method, API + path.format(**names), json=body, headers=actors[role]["headers"])
    assert response.status_code == status, response.text


def test_invite_email_accept_and_reuse(mail_client: TestClient, smtp_sink: Any) -> None:
    c = mail_client
    owner = c.post(
        f"{API}/auth/register",
        json={"account_name": "Acme", "email": "boss@acme.example", "password": PASSWORD},
    ).json()
    headers = {"authorization": f"Bearer {owner['access_token']}"}
    c.post(f"{API}/groups", json={"name": "editors"}, headers=headers)
    created = invite(c, headers, groups=["editors", "pii_access"])
    assert created["status"] == "pending" and created["role"] == "user"
    stored = c.app.state.db.conn.execute("SELECT token_hash FROM invitations").fetchall()[0][0]  # type: ignore[attr-defined]
    assert created["token"] not in stored and len(stored) == 64
    message = smtp_sink.wait(1)[0]
    assert message["To"] == "invitee@example.com" and "Acme" in message["Subject"]
    token = re.search(r"token=(sbt_[A-Za-z0-9_-]+)", message.get_body(("plain",)).get_content()).group(1)
    assert token == created["token"]
    listed = c.get(f"{API}/invitations", headers=headers).json()["items"]
    assert "token" not in listed[0]
    shown = c.get(f"{API}/invitations/{token}").json()
    assert shown["email"] == "invitee@example.com" and shown["account"]["name"] == "Acme"
    weak = c.post(f"{API}/invitations/{token}/accept", json={"password": "short"})
    assert weak.status_code == 400
    accepted = c.post(f"{API}/invitations/{token}/accept", json={"password": PASSWORD})
    assert accepted.status_code == 201
    body = accepted.json()
    assert body["user"]["groups"] == ["editors", "pii_access"] and body["user"]["email_verified"] is True
    assert (
        c.get(f"{API}/auth/me", headers={"authorization": f"Bearer {body['access_token']}"}).status_code
        == 200
    )
    again = c.post(f"{API}/invitations/{token}/accept", json={"password": PASSWORD})
    assert again.status_code == 410 and again.json()["code"] == "invitation_expired"
    assert c.get(f"{API}/invitations/{token}").status_code == 410
    conn = c.app.state.db.conn  # type: ignore[attr-defined]
    assert conn.execute("SELECT count(*) FROM users").fetchall()[0][0] == 2


def test_expired_and_unknown_tokens(client: TestClient, actors: dict[str, Any]) -> None:
    invitation = invite(client, actors["admin"]["headers"])
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    with unit_of_work(conn):
        conn.execute("UPDATE invitations SET expires_at = '2000-01-01T00:00:00.000Z'")
    response = client.post(f"{API}/invitations/{invitation['token']}/accept", json={"password": PASSWORD})
    assert response.status_code == 410 and response.json()["code"] == "invitation_expired"
    assert client.get(f"{API}/invitations/sbt_unknown").status_code == 404
    assert (
        client.post(f"{API}/invitations/{'x' * 600}/accept", json={"password": PASSWORD}).status_code == 404
    )


def test_resend_replaces_the_token(client: TestClient, actors: dict[str, Any]) -> None:
    headers = actors["admin"]["headers"]
    first = invite(client, headers)
    second = client.post(f"{API}/invitations/{first['id']}/resend", headers=headers).json()
    assert second["token"] != first["token"]
    assert client.get(f"{API}/invitations/{first['token']}").status_code == 404
    assert (
        client.post(f"{API}/invitations/{second['token']}/accept", json={"password": PASSWORD}).status_code
        == 201
    )
    assert client.post(f"{API}/invitations/{first['id']}/resend", headers=headers).status_code == 410


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"email": "bad"}, 400),
        ({"email": "x@example.com", "role": "wizard"}, 400),
        ({"email": "x@example.com", "groups": ["missing"]}, 400),
        ({"email": "x@example.com", "token": "t"}, 400),
        ({}, 400),
    ],
)
def test_bad_input(client: TestClient, actors: dict[str, Any], body: dict[str, Any], status: int) -> None:
    response = client.post(f"{API}/invitations", json=body, headers=actors["admin"]["headers"])
    assert response.status_code == status
    assert client.app.state.db.conn.execute("SELECT count(*) FROM invitations").fetchall()[0][0] == 0  # type: ignore[attr-defined]


def test_existing_member_cannot_be_invited(client: TestClient, actors: dict[str, Any]) -> None:
    response = client.post(
        f"{API}/invitations", json={"email": actors["target"]["email"]}, headers=actors["admin"]["headers"]
    )
    assert response.status_code == 409
