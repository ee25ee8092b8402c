"""Auth internals: the access token checks, Argon2 parameters, the password policy, logs free of secrets."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from snackbase.auth import ANONYMOUS, Auth
from snackbase.passwords import PRODUCTION_PARAMS, hash_password, params_for, policy_errors, verify_password
from snackbase.tokens import mint_access_token
from tests.conftest import TEST_PASSWORD, make_settings

API = "/api/v1"


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims_of(user: dict[str, Any], **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": user["id"],
        "account_id": user["account_id"],
        "role": user["role"],
        "sid": user["session_id"],
        "iat": now,
        "exp": now + 600,
        "iss": "snackbase",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def forged_tokens(user: dict[str, Any], secret: str) -> dict[str, str]:
    good = claims_of(user)
    return {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(good)}.",
        "wrong secret": jwt.encode(good, "another-secret-that-is-long-enough-for-hs256!", algorithm="HS256"),
        "HS512": jwt.encode(good, secret, algorithm="HS512"),
        "expired": jwt.encode(
            claims_of(user, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
            secret,
            algorithm="HS256",
        ),
        "wrong issuer": jwt.encode(claims_of(user, iss="evil"), secret, algorithm="HS256"),
        "no sid": jwt.encode(claims_of(user, sid=None), secret, algorithm="HS256"),
        "no exp": jwt.encode(claims_of(user, exp=None), secret, algorithm="HS256"),
        "unknown session": jwt.encode(claims_of(user, sid="0190-nope"), secret, algorithm="HS256"),
        "other account": jwt.encode(claims_of(user, account_id="SY0000"), secret, algorithm="HS256"),
        "sub is a number": jwt.encode(claims_of(user, sub=5), secret, algorithm="HS256"),
        "tampered payload": jwt.encode(good, secret, algorithm="HS256").split(".")[0]
        + "."
        + b64(claims_of(user, role="superadmin"))
        + "."
        + jwt.encode(good, secret).split(".")[2],
        "garbage": "not-a-jwt",
    }


def test_forged_and_broken_tokens_are_401(client: TestClient, make_user: Any) -> None:
    user = make_user()
    secret = client.app.state.settings.secret_key  # type: ignore[attr-defined]
    for name, token in forged_tokens(user, secret).items():
        response = client.get(f"{API}/auth/me", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        assert response.json()["code"] == "unauthorized"
    assert client.get(f"{API}/auth/me", headers=user["headers"]).status_code == 200


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc", "Bearer a b"])
def test_malformed_authorization_header_is_401_not_anonymous(client: TestClient, header: str) -> None:
    response = client.get(f"{API}", headers={"authorization": header})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_anonymous_names_an_account(client: TestClient, make_user: Any) -> None:
    user = make_user()
    assert client.get(f"{API}", headers={"x-account-id": user["account_id"]}).status_code == 200
    assert client.get(f"{API}", headers={"x-account-id": "system"}).status_code == 200
    assert client.get(f"{API}", headers={"x-account-id": "ZZ0001"}).status_code == 404
    assert client.get(f"{API}", headers={"x-account-id": "bad id!"}).status_code == 400


def test_auth_on_the_request(client: TestClient, make_user: Any) -> None:
    from starlette.routing import Route

    from snackbase.auth import get_auth
    from snackbase.web import json_response

    async def whoami(request: Any) -> Any:
        auth = await get_auth(request)
        assert request.state.auth is auth
        return json_response(
            {
                "user": auth.user_id,
                "account": auth.account_id,
                "super": auth.is_superadmin,
                "method": auth.method,
                "role": auth.role,
            }
        )

    client.app.router.routes.append(Route(f"{API}/probe/whoami", whoami))  # type: ignore[attr-defined]
    user = make_user(role="admin")
    assert client.get(f"{API}/probe/whoami", headers=user["headers"]).json() == {
        "user": user["id"],
        "account": user["account_id"],
        "super": False,
        "method": "token",
        "role": "admin",
    }
    anon = client.get(f"{API}/probe/whoami", headers={"x-account-id": user["account_id"]}).json()
    assert anon == {
        "user": None,
        "account": user["account_id"],
        "super": False,
        "method": "anonymous",
        "role": None,
    }
    assert (
        not ANONYMOUS.is_authenticated and Auth("u", "a", "e", "user", "s", False, "token").is_authenticated
    )


def test_token_claims(client: TestClient, make_user: Any) -> None:
    user = make_user()
    claims = jwt.decode(user["token"], options={"verify_signature": False})
    assert set(claims) == {"sub", "account_id", "role", "sid", "iat", "exp", "iss"}
    assert claims["exp"] - claims["iat"] == 3600 and claims["iss"] == "snackbase"
    assert jwt.get_unverified_header(user["token"])["alg"] == "HS256"


def test_short_lived_token_expires(client: TestClient, make_user: Any) -> None:
    user = make_user()
    settings = client.app.state.settings  # type: ignore[attr-defined]
    token = mint_access_token(
        settings,
        user_id=user["id"],
        account_id=user["account_id"],
        role="user",
        session_id=user["session_id"],
        ttl_s=-60,
    )
    assert client.get(f"{API}/auth/me", headers={"authorization": f"Bearer {token}"}).status_code == 401


def test_production_and_development_use_owasp_argon2_params() -> None:
    assert params_for("production") == params_for("development") == PRODUCTION_PARAMS
    assert (PRODUCTION_PARAMS.memory_kib, PRODUCTION_PARAMS.time_cost, PRODUCTION_PARAMS.parallelism) == (
        19456,
        2,
        1,
    )
    encoded = asyncio.run(hash_password(PRODUCTION_PARAMS, "Some long passphrase 1"))
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert asyncio.run(verify_password(PRODUCTION_PARAMS, encoded, "Some long passphrase 1")) == (True, False)


def test_unknown_user_verification_takes_similar_time() -> None:
    params = PRODUCTION_PARAMS
    real = asyncio.run(hash_password(params, TEST_PASSWORD))

    def timed(stored: str | None) -> float:
        started = time.perf_counter()
        asyncio.run(verify_password(params, stored, "wrong guess here"))
        return time.perf_counter() - started

    timed(None)  # builds the dummy hash once
    known, unknown = min(timed(real) for _ in range(3)), min(timed(None) for _ in range(3))
    assert 0.5 < unknown / known < 2.0


@pytest.mark.parametrize(
    ("password", "email", "code"),
    [
        ("a" * 11, "x@example.com", "password_too_short"),
        ("a" * 129, "x@example.com", "password_too_long"),
        ("Password123!", "x@example.com", "password_too_common"),
        ("QWERTYUIOP123", "x@example.com", "password_too_common"),
        ("abcabcabcabcabc", "x@example.com", "password_too_common"),
        ("my name is Jonathan!", "jonathan@example.com", "password_contains_email"),
        ("e\u0301" * 11, "x@example.com", "password_too_short"),  # 22 code points, 11 after NFC
        (None, "x@example.com", None),
    ],
)
def test_policy(password: str | None, email: str, code: str | None) -> None:
    errors = policy_errors(password or "Quiet river stones 12 \u00e9\u4e2d\U0001f600", email, 12)
    assert (errors["password"]["code"] if errors else None) == code


def test_no_secret_reaches_a_response_or_log_line(
    tmp_path: Path, smtp_sink: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Runs every secret-bearing flow, then looks for each secret in every log line and later response."""
    from snackbase.app import create_app
    from snackbase.logs import JsonFormatter

    settings = make_settings(
        tmp_path / "d", smtp_host="127.0.0.1", smtp_port=smtp_sink.port, smtp_tls="none", log_level="DEBUG"
    )
    secrets: list[str] = []
    responses: list[str] = []
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings)) as c:
        password = "Saffron kite over hills 5"
        reg = c.post(
            f"{API}/auth/register",
            json={"account_name": "Leak Co", "email": "l@leak.example", "password": password},
        ).json()
        headers = {"authorization": f"Bearer {reg['access_token']}"}
        secrets += [password, reg["refresh_token"], reg["access_token"]]
        bad = c.post(
            f"{API}/auth/login",
            json={
                "email": "l@leak.example",
                "password": "Wrong but long pw 1",
                "account_identifier": "leak-co",
            },
        )
        secrets.append("Wrong but long pw 1")
        responses.append(bad.text)
        refreshed = c.post(f"{API}/auth/refresh", json={"refresh_token": reg["refresh_token"]}).json()
        secrets += [refreshed["refresh_token"]]
        inv = c.post(f"{API}/invitations", json={"email": "n@leak.example"}, headers=headers).json()
        secrets.append(inv["token"])
        responses.append(c.get(f"{API}/invitations", headers=headers).text)
        responses.append(
            c.post(
                f"{API}/auth/forgot-password",
                json={"email": "l@leak.example", "account_identifier": "leak-co"},
            ).text
        )
        responses.append(c.get(f"{API}/auth/me", headers=headers).text)
        responses.append(c.get(f"{API}/users", headers=headers).text)
        smtp_sink.wait(2)
        conn = c.app.state.db.conn  # type: ignore[attr-defined]
        secrets += [row[0] for row in conn.execute("SELECT password_hash FROM users")]
        secrets += [row[0] for row in conn.execute("SELECT token_hash FROM refresh_tokens")]
        secrets += [row[0] for row in conn.execute("SELECT token_hash FROM one_time_tokens")]
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any('"path":"/api/v1/auth/login"' in line for line in lines)
    for secret in secrets:
        for text in lines + responses:
            assert secret not in text
    assert all("$argon2" not in text for text in lines + responses)


def test_email_without_smtp_in_production_logs_no_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from snackbase import mail

    settings = make_settings(tmp_path / "d", environment="production", secret_key="k" * 40)
    message = mail.render(
        "reset_password",
        to="a@b.example",
        account="Acme",
        link="https://x/#t=sbt_SECRET",
        valid="30 minutes",
        sender="s@b.example",
    )
    with caplog.at_level(logging.INFO):
        mail.send(settings, "reset_password", message)
    assert "sbt_SECRET" not in caplog.text and "not sent" in caplog.text
    dev = make_settings(tmp_path / "e")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        mail.send(dev, "reset_password", message)
    assert "sbt_SECRET" in caplog.text  # development: the link is the point


def test_mail_templates_escape_html() -> None:
    from snackbase import mail

    message = mail.render(
        "invitation",
        to="a@b.example",
        account="<script>x</script>",
        link="https://x/?a=1&b=2",
        valid="48 hours",
        sender="s@b.example",
    )
    html_part = message.get_body(("html",)).get_content()
    assert "<script>" not in html_part and "&lt;script&gt;" in html_part and "a=1&amp;b=2" in html_part
    assert "<script>x</script>" in message.get_body(("plain",)).get_content()
