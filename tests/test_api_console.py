"""Server side of the admin console's screens: runtime settings (/settings), collections import/export
over HTTP (with a dry run), an admin's password reset for a user, and the inactivity limit on refresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.config import Settings
from tests.conftest import TEST_PASSWORD, make_settings

NEW_PASSWORD = "Another long passphrase 77"
BACKENDS = ("sqlite", "postgresql")


def audit_actions(client: TestClient, token: str, action: str) -> list[dict[str, Any]]:
    res = client.get(
        "/api/v1/audit-log", params={"action": action}, headers={"authorization": f"Bearer {token}"}
    )
    assert res.status_code == 200, res.text
    return list(res.json()["items"])


# --- /settings -----------------------------------------------------------------------------------


def test_settings_change_applies_at_once_and_is_audited(
    client: TestClient, superadmin: dict[str, Any]
) -> None:
    h = superadmin["headers"]
    listing = client.get("/api/v1/settings", headers=h).json()["items"]
    by_name = {row["name"]: row for row in listing}
    assert by_name["registration"]["value"] == "open" and not by_name["registration"]["fixed"]
    assert by_name["smtp_password"]["secret"] and by_name["smtp_password"]["value"] == ""
    body = {"account_name": "Newco", "email": "a@newco.example", "password": TEST_PASSWORD}
    res = client.patch(
        "/api/v1/settings", json={"registration": "closed", "smtp_password": "s3cret"}, headers=h
    )
    assert res.status_code == 200, res.text
    assert client.post("/api/v1/auth/register", json=body).status_code == 403  # no restart needed
    entry = audit_actions(client, superadmin["token"], "settings.update")[0]
    assert entry["changes"]["registration"] == {"old": "open", "new": "closed"}
    assert entry["changes"]["smtp_password"]["new"] == "********"  # never the secret itself
    assert "s3cret" not in res.text
    # null resets to the default
    client.patch("/api/v1/settings", json={"registration": None}, headers=h)
    assert client.app.state.settings.registration == "open"


def test_settings_refuse_bad_values_without_writing(client: TestClient, superadmin: dict[str, Any]) -> None:
    h = superadmin["headers"]
    before = len(audit_actions(client, superadmin["token"], "settings.update"))
    for body, field in (
        ({"registration": "maybe"}, "registration"),
        ({"password_min_length": 3}, "password_min_length"),
        ({"access_token_expire_minutes": "ten"}, "access_token_expire_minutes"),
        ({"secret_key": "x"}, "secret_key"),
        ({"login_backoff_after": 50}, "login_backoff_after"),
    ):
        res = client.patch("/api/v1/settings", json=body, headers=h)
        assert res.status_code == 400, res.text
        assert field in res.json()["fields"], res.json()
    assert len(audit_actions(client, superadmin["token"], "settings.update")) == before
    assert client.app.state.settings.registration == "open"


def test_settings_are_superadmin_only(client: TestClient, make_user: Callable[..., Any]) -> None:
    admin = make_user(role="admin")
    assert client.get("/api/v1/settings", headers=admin["headers"]).status_code == 403
    assert (
        client.patch(
            "/api/v1/settings", json={"registration": "closed"}, headers=admin["headers"]
        ).status_code
        == 403
    )


def test_environment_fixes_a_setting(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNACKBASE_REGISTRATION", "closed")
    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        from tests.conftest import create_user

        root = create_user(client.app, role="admin", account_id="SY0000", email="root@example.com")
        rows = {r["name"]: r for r in client.get("/api/v1/settings", headers=root["headers"]).json()["items"]}
        assert rows["registration"]["fixed"] and rows["registration"]["value"] == "closed"
        res = client.patch("/api/v1/settings", json={"registration": "open"}, headers=root["headers"])
        assert (
            res.status_code == 400 and res.json()["fields"]["registration"]["code"] == "fixed_by_environment"
        )


def test_stored_settings_survive_a_restart_and_reach_cors(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        from tests.conftest import create_user

        root = create_user(client.app, role="admin", account_id="SY0000", email="root@example.com")
        client.patch(
            "/api/v1/settings", json={"cors_origins": "https://app.example"}, headers=root["headers"]
        )
        res = client.get("/health", headers={"origin": "https://app.example"})
        assert res.headers.get("access-control-allow-origin") == "https://app.example"
    with TestClient(create_app(settings)) as client:
        assert client.app.state.settings.cors_origins == "https://app.example"


def test_test_email_reaches_the_smtp_server(
    client: TestClient, superadmin: dict[str, Any], smtp_sink: Any
) -> None:
    h = superadmin["headers"]
    res = client.post("/api/v1/settings/test-email", json={"to": "ops@example.com"}, headers=h)
    assert res.status_code == 409  # no SMTP host yet
    client.patch("/api/v1/settings", json={"smtp_host": "127.0.0.1", "smtp_port": smtp_sink.port,
                                           "smtp_tls": "none"}, headers=h)  # fmt: skip
    res = client.post("/api/v1/settings/test-email", json={"to": "ops@example.com"}, headers=h)
    assert res.status_code == 200, res.text
    assert smtp_sink.wait(1)[0]["To"] == "ops@example.com"


# --- import / export ------------------------------------------------------------------------------


def test_import_dry_run_previews_and_changes_nothing(client: TestClient, superadmin: dict[str, Any]) -> None:
    h = superadmin["headers"]
    client.post(
        "/api/v1/collections",
        json={"name": "posts", "fields": [{"name": "title", "type": "text"}]},
        headers=h,
    )
    exported = client.get("/api/v1/collections/export", headers=h).json()
    assert [c["name"] for c in exported] == ["posts"]
    exported[0]["fields"].append({"name": "views", "type": "number"})
    definitions = [*exported, {"name": "tags", "fields": [{"name": "label", "type": "text"}]}]
    res = client.post("/api/v1/collections/import?dry_run=true", json=definitions, headers=h)
    assert res.status_code == 200, res.text
    preview = res.json()
    assert preview["created"] == ["tags"] and preview["updated"] == ["posts"]
    assert "add field views (number)" in preview["changes"]["posts"]
    names = [c["name"] for c in client.get("/api/v1/collections", headers=h).json()["items"]]
    assert names == ["posts"]  # nothing written
    res = client.post("/api/v1/collections/import", json=definitions, headers=h)
    assert res.status_code == 200 and res.json()["created"] == ["tags"]
    again = client.post("/api/v1/collections/import?dry_run=true", json=definitions, headers=h).json()
    assert sorted(again["unchanged"]) == ["posts", "tags"]


def test_import_refuses_a_bad_file(
    client: TestClient, superadmin: dict[str, Any], make_user: Callable[..., Any]
) -> None:
    h = superadmin["headers"]
    res = client.post("/api/v1/collections/import?dry_run=true", json={"name": "x"}, headers=h)
    assert res.status_code == 400
    res = client.post("/api/v1/collections/import", json=[{"name": "bad name!", "fields": []}], headers=h)
    assert res.status_code == 400 and "Definition 1" in res.json()["message"]
    assert client.get("/api/v1/collections", headers=h).json()["items"] == []
    admin = make_user(role="admin")
    assert client.get("/api/v1/collections/export", headers=admin["headers"]).status_code == 403


# --- admin password reset -------------------------------------------------------------------------


def test_admin_sets_a_users_password(client: TestClient, make_user: Callable[..., Any]) -> None:
    admin = make_user(role="admin")
    user = make_user(account_id=admin["account_id"], email="ann@example.com")
    other = make_user(email="zed@example.com")
    path = f"/api/v1/users/{user['id']}/password"
    res = client.post(path, json={"password": "short"}, headers=admin["headers"])
    assert res.status_code == 400 and "password" in res.json()["fields"]
    res = client.post(path, json={"password": NEW_PASSWORD}, headers=admin["headers"])
    assert res.status_code == 204, res.text
    # the user's sessions ended; the new password works
    assert client.get("/api/v1/auth/me", headers=user["headers"]).status_code == 401
    login = {"email": "ann@example.com", "password": NEW_PASSWORD, "account_identifier": admin["account_id"]}
    assert client.post("/api/v1/auth/login", json=login).status_code == 200
    entry = audit_actions(client, admin["token"], "auth.password_change")[0]
    assert entry["extra"]["via"] == "admin" and NEW_PASSWORD not in str(entry)
    # another tenant's user is not found; oneself is refused
    assert client.post(f"/api/v1/users/{other['id']}/password", json={"password": NEW_PASSWORD},
                       headers=admin["headers"]).status_code == 404  # fmt: skip
    assert client.post(f"/api/v1/users/{admin['id']}/password", json={"password": NEW_PASSWORD},
                       headers=admin["headers"]).status_code == 409  # fmt: skip


# --- inactivity -----------------------------------------------------------------------------------


def _age_session(client: TestClient, session_id: str, minutes: int) -> None:
    from snackbase.auth import later_iso
    from snackbase.unit_of_work import unit_of_work

    conn = client.app.state.db.conn
    with unit_of_work(conn):
        conn.execute(
            "UPDATE sessions SET last_used_at = ? WHERE id = ?", (later_iso(-minutes * 60), session_id)
        )


def test_refresh_token_of_an_idle_session_cannot_be_spent(
    client: TestClient, make_user: Callable[..., Any]
) -> None:
    user = make_user()
    _age_session(client, user["session_id"], 14)
    res = client.post("/api/v1/auth/refresh", json={"refresh_token": user["refresh_token"]})
    assert res.status_code == 200 and res.json()["session_idle_minutes"] == 15
    fresh = res.json()["refresh_token"]
    _age_session(client, user["session_id"], 16)
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": fresh}).status_code == 401


def test_idle_limit_zero_is_off_and_a_setting(tmp_path: Any) -> None:
    settings = make_settings(tmp_path / "data", session_idle_minutes=0)
    with TestClient(create_app(settings)) as client:
        from tests.conftest import create_user

        user = create_user(client.app)
        _age_session(client, user["session_id"], 600)
        res = client.post("/api/v1/auth/refresh", json={"refresh_token": user["refresh_token"]})
        assert res.status_code == 200


def test_a_change_reaches_every_worker_process(start_server: Callable[..., Any]) -> None:
    """With two server processes, the one that did not take the PATCH applies it within seconds, and
    settings the console may change are not shown as fixed by the environment in the workers."""
    import json
    import time
    import urllib.error
    import urllib.request

    server = start_server(env={"SNACKBASE_WORKERS": "2", "SNACKBASE_SUPERADMIN_EMAIL": "root@example.com",
                               "SNACKBASE_SUPERADMIN_PASSWORD": TEST_PASSWORD})  # fmt: skip

    def call(method: str, path: str, body: Any, token: str = "") -> tuple[int, Any]:
        request = urllib.request.Request(
            server.url + "/api/v1" + path, json.dumps(body).encode(), method=method
        )
        request.add_header("content-type", "application/json")
        if token:
            request.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    login = {"email": "root@example.com", "password": TEST_PASSWORD, "account_identifier": "system"}
    token = call("POST", "/auth/login", login)[1]["access_token"]
    status, listing = call("PATCH", "/settings", {"registration": "closed"}, token)
    assert status == 200 and not any(row["fixed"] for row in listing["items"])
    time.sleep(2.5)  # RECHECK_S: every process has looked again
    for i in range(6):  # the kernel spreads new connections over both processes
        body = {"account_name": f"Co {i}", "email": f"a{i}@co.example", "password": TEST_PASSWORD}
        assert call("POST", "/auth/register", body)[0] == 403


def test_invitation_tokens_never_reach_the_access_log(start_server: Callable[..., Any]) -> None:
    """The accept page calls GET /invitations/{token}: the access line shows `[token]` instead."""
    import urllib.error
    import urllib.request

    server = start_server(env={"SNACKBASE_LOG_LEVEL": "INFO"})
    token = "sbt_" + "Q" * 43
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{server.url}/api/v1/invitations/{token}", timeout=5)
    _, stderr = server.stop()
    assert "/api/v1/invitations/[token]" in stderr and token not in stderr
