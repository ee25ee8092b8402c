"""/auth endpoints: register, login, refresh, logout, me, sessions, passwords, email verification."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.unit_of_work import unit_of_work
from tests.conftest import TEST_PASSWORD, make_settings

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")
GOOD_PASSWORD = "Plum tree at dawn, 1987!"
TOKEN_KEYS = {
    "account", "user", "access_token", "refresh_token", "token_type", "expires_in", "session_idle_minutes",
}  # fmt: skip


def register(client: TestClient, **overrides: Any) -> Any:
    body = {"account_name": "Acme Labs", "email": "Ann@Acme.example", "password": GOOD_PASSWORD, **overrides}
    return client.post(f"{API}/auth/register", json=body)


def login(client: TestClient, email: str, password: str, account: str) -> Any:
    return client.post(
        f"{API}/auth/login", json={"email": email, "password": password, "account_identifier": account}
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert set(body) == {"status", "code", "message", "fields", "request_id"}
    return body  # type: ignore[no-any-return]


# --- register -------------------------------------------------------------------------------------


def test_register_creates_account_admin_and_tokens(client: TestClient) -> None:
    response = register(client)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == TOKEN_KEYS and body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert re.fullmatch(r"[A-Z]{2}\d{4}", body["account"]["id"]) and not body["account"]["id"].startswith(
        "SY"
    )
    assert body["account"]["slug"] == "acme-labs" and body["account"]["name"] == "Acme Labs"
    user = body["user"]
    assert user["email"] == "ann@acme.example" and user["role"] == "admin" and user["is_superadmin"] is False
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", user["id"])
    assert len(body["refresh_token"]) >= 43
    me = client.get(f"{API}/auth/me", headers=bearer(body["access_token"])).json()
    assert me["user"]["id"] == user["id"] and me["account"]["id"] == body["account"]["id"]


def test_register_slug_suffixing_and_explicit_slug_conflict(client: TestClient) -> None:
    slugs = [register(client, email=f"a{i}@acme.example").json()["account"]["slug"] for i in range(3)]
    assert slugs == ["acme-labs", "acme-labs-2", "acme-labs-3"]
    assert_error(register(client, email="x@acme.example", account_slug="acme-labs"), 409, "slug_taken")
    assert (
        register(client, email="y@acme.example", account_slug="labs-east").json()["account"]["slug"]
        == "labs-east"
    )


def test_every_account_gets_a_pii_access_group(client: TestClient) -> None:
    body = register(client).json()
    groups = client.get(f"{API}/groups", headers=bearer(body["access_token"])).json()["items"]
    assert [g["name"] for g in groups] == ["pii_access"]


@pytest.mark.parametrize(
    ("overrides", "status", "code", "field"),
    [
        ({"password": "short"}, 400, "validation_failed", "password"),
        ({"password": "x" * 129}, 400, "validation_failed", "password"),
        ({"password": "password1234"}, 400, "validation_failed", "password"),
        ({"password": "aaaaaaaaaaaaaaaa"}, 400, "validation_failed", "password"),
        ({"password": "ann-is-great-1987"}, 400, "validation_failed", "password"),
        ({"password": 123456789012}, 400, "validation_failed", "password"),
        ({"email": "not-an-email"}, 400, "validation_failed", "email"),
        ({"email": "ann@acme.example\r\nBcc: x@y.z"}, 400, "validation_failed", "email"),
        ({"email": "a" * 400 + "@x.com"}, 400, "validation_failed", "email"),
        ({"email": "ånn@acme.example"}, 400, "validation_failed", "email"),
        ({"account_name": "   "}, 400, "validation_failed", "account_name"),
        ({"account_name": "x" * 101}, 400, "validation_failed", "account_name"),
        ({"account_name": "bad\u0000name"}, 400, "validation_failed", "account_name"),
        ({"account_slug": "Bad Slug"}, 400, "validation_failed", "account_slug"),
        ({"account_slug": "ab"}, 400, "validation_failed", "account_slug"),
        ({"account_slug": "9lives"}, 400, "validation_failed", "account_slug"),
        ({"account_slug": "system"}, 409, "slug_taken", "account_slug"),
        ({"role": "admin"}, 400, "bad_request", "role"),
    ],
)
def test_register_bad_input_changes_nothing(
    client: TestClient, overrides: dict[str, Any], status: int, code: str, field: str
) -> None:
    body = assert_error(register(client, **overrides), status, code)
    assert field in body["fields"]
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    assert conn.execute("SELECT count(*) FROM accounts").fetchall()[0][0] == 1
    assert conn.execute("SELECT count(*) FROM users").fetchall()[0][0] == 0


def test_register_missing_field(client: TestClient) -> None:
    response = client.post(f"{API}/auth/register", json={"account_name": "A", "email": "a@b.example"})
    assert assert_error(response, 400, "validation_failed")["fields"]["password"]["code"] == "required"


def test_unicode_password_is_nfc_normalized(client: TestClient) -> None:
    composed, decomposed = "Crème brûlée au café 1", "Cre\u0300me bru\u0302le\u0301e au cafe\u0301 1"
    body = register(client, password=composed).json()
    assert login(client, "ann@acme.example", decomposed, body["account"]["id"]).status_code == 200
    emoji = "🍩🍩🍩 donuts for everyone 🍩"
    body = register(client, email="emoji@acme.example", password=emoji).json()
    assert login(client, "emoji@acme.example", emoji, body["account"]["slug"]).status_code == 200


def test_registration_closed(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "d", registration="closed"))) as closed:
        assert_error(register(closed), 403, "registration_closed")


# --- login ----------------------------------------------------------------------------------------


def test_login_by_id_and_slug_and_email_case(client: TestClient) -> None:
    account = register(client).json()["account"]
    for ref in (account["id"], account["slug"], account["id"].lower()):
        response = login(client, "ANN@acme.example", GOOD_PASSWORD, ref)
        assert response.status_code == 200 and set(response.json()) == TOKEN_KEYS


def test_login_failures_are_indistinguishable(client: TestClient) -> None:
    account = register(client).json()["account"]
    register(client, account_name="Other Co", email="zed@other.example")
    cases = [
        ("ann@acme.example", "Wrong password here!", account["id"]),  # wrong password
        ("nobody@acme.example", GOOD_PASSWORD, account["id"]),  # unknown email
        ("ann@acme.example", GOOD_PASSWORD, "ZZ9999"),  # unknown account
        ("ann@acme.example", GOOD_PASSWORD, "other-co"),  # the email lives in another account
        ("ann@acme.example", GOOD_PASSWORD, "!!"),  # not even an account reference
    ]
    bodies = []
    for email, password, ref in cases:
        body = assert_error(login(client, email, password, ref), 401, "invalid_credentials")
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
    assert all(b == bodies[0] for b in bodies)
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    events = conn.execute(
        "SELECT action, extra FROM audit_log WHERE action LIKE 'auth.login%' ORDER BY seq"
    ).fetchall()
    assert [e[0] for e in events] == ["auth.login_failed"] * 5
    assert json.loads(events[0][1])["reason"] == "bad_password"


def test_successful_login_is_recorded(client: TestClient) -> None:
    account = register(client).json()["account"]
    login(client, "ann@acme.example", GOOD_PASSWORD, account["slug"])
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    rows = conn.execute(
        "SELECT action, actor_email FROM audit_log WHERE action LIKE 'auth.login%'"
    ).fetchall()
    assert rows == [("auth.login", "ann@acme.example")]


def test_superadmin_logs_in_with_system_or_sy0000(client: TestClient, superadmin: dict[str, Any]) -> None:
    for ref in ("system", "SY0000"):
        body = login(client, superadmin["email"], TEST_PASSWORD, ref).json()
        assert body["user"]["is_superadmin"] is True and body["account"]["id"] == "SY0000"


def test_deactivated_user_cannot_log_in(client: TestClient, make_user: Callable[..., dict[str, Any]]) -> None:
    user = make_user()
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    with unit_of_work(conn):
        conn.execute("UPDATE users SET is_active = 0 WHERE id = ?", (user["id"],))
    assert_error(login(client, user["email"], TEST_PASSWORD, user["account_id"]), 401, "invalid_credentials")
    assert_error(client.get(f"{API}/auth/me", headers=user["headers"]), 401, "unauthorized")


def test_require_verified_email(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "d", require_verified_email=True))) as strict:
        account = register(strict).json()["account"]
        assert_error(
            login(strict, "ann@acme.example", GOOD_PASSWORD, account["id"]), 403, "email_not_verified"
        )
        assert_error(
            login(strict, "ann@acme.example", "Wrong password here!", account["id"]),
            401,
            "invalid_credentials",
        )


def test_throttle_per_identity_then_lockout_and_admin_unlock(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", login_backoff_after=3, login_lockout_after=4)
    with TestClient(create_app(settings)) as c:
        body = register(c).json()
        ref = body["account"]["id"]
        for _ in range(3):
            assert_error(
                login(c, "ann@acme.example", "Wrong password here!", ref), 401, "invalid_credentials"
            )
        limited = login(c, "ann@acme.example", GOOD_PASSWORD, ref)
        assert_error(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 30
        # The backoff applies to unknown identities the same way (no enumeration).
        for _ in range(3):
            login(c, "ghost@acme.example", "Wrong password here!", ref)
        assert_error(login(c, "ghost@acme.example", GOOD_PASSWORD, ref), 429, "rate_limited")
        conn = c.app.state.db.conn  # type: ignore[attr-defined]
        with unit_of_work(conn):  # the backoff has passed; one more failure reaches the lockout
            conn.execute("UPDATE login_throttle SET last_failure_at = '2000-01-01T00:00:00.000Z'")
        assert_error(login(c, "ann@acme.example", "Wrong password here!", ref), 401, "invalid_credentials")
        assert_error(login(c, "ann@acme.example", GOOD_PASSWORD, ref), 403, "account_locked")
        user = c.get(f"{API}/users/{body['user']['id']}", headers=bearer(body["access_token"])).json()
        assert user["is_locked"] is True
        assert (
            c.post(
                f"{API}/users/{body['user']['id']}/unlock", headers=bearer(body["access_token"])
            ).status_code
            == 204
        )
        assert login(c, "ann@acme.example", GOOD_PASSWORD, ref).status_code == 200


def test_throttle_per_ip(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "d", login_ip_max_failures=4))) as c:
        ref = register(c).json()["account"]["id"]
        for i in range(4):
            login(c, f"u{i}@acme.example", "Wrong password here!", ref)
        response = login(c, "ann@acme.example", GOOD_PASSWORD, ref)
        assert_error(response, 429, "rate_limited")
        assert 800 <= int(response.headers["retry-after"]) <= 900


def test_rehash_on_login_when_parameters_change(
    client: TestClient, make_user: Callable[..., dict[str, Any]]
) -> None:
    from snackbase.passwords import Argon2Params, hasher

    old = hasher(Argon2Params(memory_kib=512, time_cost=1, parallelism=1)).hash(TEST_PASSWORD)
    user = make_user(password_hash=old)
    assert login(client, user["email"], TEST_PASSWORD, user["account_id"]).status_code == 200
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    stored = conn.execute("SELECT password_hash FROM users WHERE id = ?", (user["id"],)).fetchall()[0][0]
    assert stored != old and "m=1024,t=1,p=1" in stored
    assert login(client, user["email"], TEST_PASSWORD, user["account_id"]).status_code == 200


# --- refresh, logout, sessions --------------------------------------------------------------------


def test_refresh_rotates_and_reuse_revokes_the_session(client: TestClient) -> None:
    first = register(client).json()
    second = client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    pair = second.json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in", "session_idle_minutes"}
    assert pair["refresh_token"] != first["refresh_token"]
    assert client.get(f"{API}/auth/me", headers=bearer(pair["access_token"])).status_code == 200
    # The old token again: reuse. The whole session ends, including the newest tokens.
    assert_error(
        client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]}),
        401,
        "unauthorized",
    )
    assert_error(
        client.post(f"{API}/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401, "unauthorized"
    )
    assert_error(client.get(f"{API}/auth/me", headers=bearer(pair["access_token"])), 401, "unauthorized")
    assert_error(client.get(f"{API}/auth/me", headers=bearer(first["access_token"])), 401, "unauthorized")


@pytest.mark.parametrize("token", ["", "sbr_nope", "x" * 513, 5, None])
def test_refresh_bad_tokens(client: TestClient, token: Any) -> None:
    response = client.post(f"{API}/auth/refresh", json={"refresh_token": token})
    assert response.status_code in (400, 401)


def test_expired_refresh_token(client: TestClient) -> None:
    first = register(client).json()
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    with unit_of_work(conn):
        conn.execute("UPDATE refresh_tokens SET expires_at = '2000-01-01T00:00:00.000Z'")
    assert_error(
        client.post(f"{API}/auth/refresh", json={"refresh_token": first["refresh_token"]}),
        401,
        "unauthorized",
    )


def test_logout_ends_this_session_only(client: TestClient) -> None:
    a = register(client).json()
    b = login(client, "ann@acme.example", GOOD_PASSWORD, a["account"]["id"]).json()
    response = client.post(
        f"{API}/auth/logout", headers=bearer(a["access_token"]), json={"refresh_token": a["refresh_token"]}
    )
    assert response.status_code == 204
    assert_error(client.get(f"{API}/auth/me", headers=bearer(a["access_token"])), 401, "unauthorized")
    assert_error(
        client.post(f"{API}/auth/refresh", json={"refresh_token": a["refresh_token"]}), 401, "unauthorized"
    )
    assert client.get(f"{API}/auth/me", headers=bearer(b["access_token"])).status_code == 200


def test_logout_all(client: TestClient) -> None:
    a = register(client).json()
    b = login(client, "ann@acme.example", GOOD_PASSWORD, a["account"]["id"]).json()
    assert client.post(f"{API}/auth/logout-all", headers=bearer(b["access_token"])).status_code == 204
    for tokens in (a, b):
        assert_error(
            client.get(f"{API}/auth/me", headers=bearer(tokens["access_token"])), 401, "unauthorized"
        )


def test_sessions_list_and_revoke(client: TestClient) -> None:
    a = register(client).json()
    b = client.post(
        f"{API}/auth/login",
        headers={"user-agent": "phone"},
        json={
            "email": "ann@acme.example",
            "password": GOOD_PASSWORD,
            "account_identifier": a["account"]["id"],
        },
    ).json()
    items = client.get(f"{API}/auth/sessions", headers=bearer(a["access_token"])).json()["items"]
    assert len(items) == 2 and sum(i["current"] for i in items) == 1
    assert set(items[0]) == {"id", "created_at", "last_used_at", "ip", "user_agent", "current"}
    other = next(i for i in items if not i["current"])
    assert other["user_agent"] == "phone"
    assert (
        client.delete(f"{API}/auth/sessions/{other['id']}", headers=bearer(a["access_token"])).status_code
        == 204
    )
    assert_error(client.get(f"{API}/auth/me", headers=bearer(b["access_token"])), 401, "unauthorized")
    assert_error(
        client.delete(f"{API}/auth/sessions/{other['id']}", headers=bearer(a["access_token"])),
        404,
        "not_found",
    )


def test_cannot_revoke_another_users_session(
    client: TestClient, make_user: Callable[..., dict[str, Any]]
) -> None:
    mine, theirs = make_user(), make_user()
    assert_error(
        client.delete(f"{API}/auth/sessions/{theirs['session_id']}", headers=mine["headers"]),
        404,
        "not_found",
    )
    assert client.get(f"{API}/auth/me", headers=theirs["headers"]).status_code == 200


# --- change, forgot and reset password; email verification ----------------------------------------


def test_change_password_revokes_other_sessions(client: TestClient) -> None:
    a = register(client).json()
    b = login(client, "ann@acme.example", GOOD_PASSWORD, a["account"]["id"]).json()
    new = "A completely new passphrase"
    bad = client.post(
        f"{API}/auth/change-password",
        headers=bearer(a["access_token"]),
        json={"current_password": "Wrong password here!", "new_password": new},
    )
    assert (
        assert_error(bad, 400, "validation_failed")["fields"]["current_password"]["code"]
        == "invalid_password"
    )
    weak = client.post(
        f"{API}/auth/change-password",
        headers=bearer(a["access_token"]),
        json={"current_password": GOOD_PASSWORD, "new_password": "qwerty123456"},
    )
    assert (
        assert_error(weak, 400, "validation_failed")["fields"]["new_password"]["code"]
        == "password_too_common"
    )
    ok = client.post(
        f"{API}/auth/change-password",
        headers=bearer(a["access_token"]),
        json={"current_password": GOOD_PASSWORD, "new_password": new},
    )
    assert ok.status_code == 204
    assert client.get(f"{API}/auth/me", headers=bearer(a["access_token"])).status_code == 200
    assert_error(client.get(f"{API}/auth/me", headers=bearer(b["access_token"])), 401, "unauthorized")
    assert login(client, "ann@acme.example", new, a["account"]["id"]).status_code == 200
    assert_error(
        login(client, "ann@acme.example", GOOD_PASSWORD, a["account"]["id"]), 401, "invalid_credentials"
    )


def _link_token(message: Any) -> str:
    text = message.get_body(("plain",)).get_content()
    match = re.search(r"token=(sbt_[A-Za-z0-9_-]+)", text)
    assert match, text
    return match.group(1)


def test_forgot_and_reset_password_over_real_smtp(mail_client: TestClient, smtp_sink: Any) -> None:
    c = mail_client
    a = register(c).json()
    ref = a["account"]["slug"]
    unknown = c.post(
        f"{API}/auth/forgot-password", json={"email": "nobody@acme.example", "account_identifier": ref}
    )
    known = c.post(
        f"{API}/auth/forgot-password", json={"email": "ann@acme.example", "account_identifier": ref}
    )
    assert unknown.status_code == known.status_code == 202 and unknown.json() == known.json()
    message = smtp_sink.wait(1)[0]
    assert message["To"] == "ann@acme.example" and "Reset" in message["Subject"]
    assert message.get_body(("html",)) is not None and "https://sb.example.com/_/#/reset-password" in str(
        message
    )
    token = _link_token(message)
    weak = c.post(f"{API}/auth/reset-password", json={"token": token, "new_password": "short"})
    assert_error(weak, 400, "validation_failed")
    new = "Fresh passphrase, seventh try"
    assert c.post(f"{API}/auth/reset-password", json={"token": token, "new_password": new}).status_code == 204
    assert_error(c.get(f"{API}/auth/me", headers=bearer(a["access_token"])), 401, "unauthorized")
    assert_error(
        c.post(f"{API}/auth/reset-password", json={"token": token, "new_password": new + "!"}),
        400,
        "invalid_token",
    )
    assert login(c, "ann@acme.example", new, ref).status_code == 200
    assert len(smtp_sink.messages) == 1


def test_reset_token_expires(mail_client: TestClient, smtp_sink: Any) -> None:
    a = register(mail_client).json()
    mail_client.post(
        f"{API}/auth/forgot-password",
        json={"email": "ann@acme.example", "account_identifier": a["account"]["id"]},
    )
    token = _link_token(smtp_sink.wait(1)[0])
    conn = mail_client.app.state.db.conn  # type: ignore[attr-defined]
    with unit_of_work(conn):
        conn.execute("UPDATE one_time_tokens SET expires_at = '2000-01-01T00:00:00.000Z'")
    response = mail_client.post(
        f"{API}/auth/reset-password", json={"token": token, "new_password": GOOD_PASSWORD}
    )
    assert_error(response, 400, "invalid_token")


def test_verify_email_flow(mail_client: TestClient, smtp_sink: Any) -> None:
    a = register(mail_client).json()
    assert a["user"]["email_verified"] is False
    response = mail_client.post(f"{API}/auth/verify-email/request", headers=bearer(a["access_token"]))
    assert response.status_code == 202
    token = _link_token(smtp_sink.wait(1)[0])
    assert_error(
        mail_client.post(f"{API}/auth/verify-email/confirm", json={"token": token + "x"}),
        400,
        "invalid_token",
    )
    assert mail_client.post(f"{API}/auth/verify-email/confirm", json={"token": token}).status_code == 204
    me = mail_client.get(f"{API}/auth/me", headers=bearer(a["access_token"])).json()
    assert me["user"]["email_verified"] is True
    assert_error(
        mail_client.post(f"{API}/auth/verify-email/confirm", json={"token": token}), 400, "invalid_token"
    )


# --- who may call what ----------------------------------------------------------------------------

USER_ONLY = [
    ("POST", "/auth/logout", {"refresh_token": "x"}),
    ("POST", "/auth/logout-all", None),
    ("GET", "/auth/me", None),
    ("GET", "/auth/sessions", None),
    ("DELETE", "/auth/sessions/0190", None),
    ("POST", "/auth/change-password", {"current_password": "a", "new_password": "b"}),
    ("POST", "/auth/verify-email/request", None),
]


@pytest.mark.parametrize(("method", "path", "body"), USER_ONLY, ids=[f"{m} {p}" for m, p, _ in USER_ONLY])
def test_user_endpoints_refuse_anonymous(client: TestClient, method: str, path: str, body: Any) -> None:
    response = client.request(method, API + path, json=body)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
