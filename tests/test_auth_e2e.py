"""The whole flow against a real server process: register → invite (real SMTP) → accept → login → refresh
→ logout."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

PASSWORD = "Orchard ladder in april 4"


def call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + "/api/v1" + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_register_invite_accept_login_refresh_logout(
    start_server: Callable[..., Any], smtp_sink: Any
) -> None:
    server = start_server(
        env={
            "SNACKBASE_SMTP_HOST": "127.0.0.1",
            "SNACKBASE_SMTP_PORT": str(smtp_sink.port),
            "SNACKBASE_SMTP_TLS": "none",
            "SNACKBASE_PUBLIC_URL": "https://app.example",
        }
    )
    base = server.url
    status, owner = call(
        base,
        "POST",
        "/auth/register",
        {"account_name": "Flow Inc", "email": "owner@flow.example", "password": PASSWORD},
    )
    assert status == 201
    status, invitation = call(
        base, "POST", "/invitations", {"email": "new@flow.example"}, owner["access_token"]
    )
    assert status == 201
    mail = smtp_sink.wait(1)[0]
    token = re.search(r"token=(sbt_[A-Za-z0-9_-]+)", mail.get_body(("plain",)).get_content()).group(1)
    assert token == invitation["token"] and "https://app.example/_/#/invitations/accept" in str(mail)
    status, shown = call(base, "GET", f"/invitations/{token}")
    assert status == 200 and shown["account"]["name"] == "Flow Inc"
    status, accepted = call(base, "POST", f"/invitations/{token}/accept", {"password": PASSWORD})
    assert status == 201 and accepted["user"]["role"] == "user"
    assert call(base, "POST", f"/invitations/{token}/accept", {"password": PASSWORD})[0] == 410
    status, session = call(
        base,
        "POST",
        "/auth/login",
        {"email": "new@flow.example", "password": PASSWORD, "account_identifier": "flow-inc"},
    )
    assert status == 200
    status, pair = call(base, "POST", "/auth/refresh", {"refresh_token": session["refresh_token"]})
    assert status == 200 and pair["refresh_token"] != session["refresh_token"]
    status, me = call(base, "GET", "/auth/me", token=pair["access_token"])
    assert status == 200 and me["user"]["email"] == "new@flow.example"
    status, _ = call(
        base, "POST", "/auth/logout", {"refresh_token": pair["refresh_token"]}, pair["access_token"]
    )
    assert status == 204
    assert call(base, "GET", "/auth/me", token=pair["access_token"])[0] == 401
    assert call(base, "POST", "/auth/refresh", {"refresh_token": pair["refresh_token"]})[0] == 401
    code, err = server.stop()
    assert code in (0, -15) and "Traceback" not in err  # uvicorn re-raises SIGTERM after shutting down
    assert PASSWORD not in err and token not in err and session["refresh_token"] not in err
