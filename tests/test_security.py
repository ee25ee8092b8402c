"""The holes of the security review (issue 13), each reproduced end to end against the fixed server.

Every test here failed before its fix; docs/security.md says what each defends against.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.config import Settings
from snackbase.signatures import record_hash
from tests.conftest import TEST_PASSWORD, ServerProcess, create_user, make_settings

API = "/api/v1"
ANYONE = {"list": "", "view": "", "create": "", "update": "", "delete": ""}

MakeUser = Callable[..., dict[str, Any]]


def envelope_of(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error envelope, with the expected status (and code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"status", "code", "message", "fields", "request_id"}
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def new_collection(
    client: TestClient, su: dict[str, Any], name: str, fields: list[Any], **extra: Any
) -> None:
    body = {"name": name, "fields": fields, "rules": ANYONE, **extra}
    response = client.post(f"{API}/collections", json=body, headers=su["headers"])
    assert response.status_code == 201, response.text


# --- 1. custom macros ---------------------------------------------------------------------------


@pytest.fixture
def macro_world(client: TestClient, make_user: MakeUser, superadmin: dict[str, Any]) -> dict[str, Any]:
    """The review's set-up: an account-scoped membership macro, and two tenants."""
    su = superadmin
    new_collection(
        client, su, "members", [{"name": "acct", "type": "text"}, {"name": "project", "type": "text"}]
    )
    new_collection(client, su, "docs", [{"name": "title", "type": "text"}])
    macro = {"name": "is_member", "sql": "SELECT count(*) > 0 FROM c_members WHERE acct = ? AND project = ?"}
    assert client.post(f"{API}/macros", json=macro, headers=su["headers"]).status_code == 201
    alice, mallory = make_user(role="admin"), make_user(role="admin")
    created = client.post(
        f"{API}/records/members",
        json={"acct": alice["account_id"], "project": "proj-A"},
        headers=alice["headers"],
    )
    assert created.status_code == 201, created.text
    client.post(f"{API}/records/docs", json={"title": "mine"}, headers=mallory["headers"])
    return {"su": su, "alice": alice, "mallory": mallory}


def test_custom_macros_are_refused_in_client_filters(client: TestClient, macro_world: dict[str, Any]) -> None:
    """Before: total_items was 1 for a true guess about another tenant and 0 for a false one."""
    alice_id = macro_world["alice"]["account_id"]
    for guess in ("proj-A", "proj-B"):
        response = client.get(
            f"{API}/records/docs",
            params={"filter": f'@is_member("{alice_id}", "{guess}")'},
            headers=macro_world["mallory"]["headers"],
        )
        body = envelope_of(response, 400, "invalid_filter")
        assert "only be used in collection rules" in body["fields"]["filter"]["message"]


def test_builtin_macros_stay_allowed_in_filters(client: TestClient, macro_world: dict[str, Any]) -> None:
    response = client.get(
        f"{API}/records/docs",
        params={"filter": "@owns_record() && @is_authenticated()"},
        headers=macro_world["mallory"]["headers"],
    )
    assert response.status_code == 200, response.text
    assert response.json()["total_items"] == 1


def test_custom_macros_still_work_in_saved_rules(client: TestClient, macro_world: dict[str, Any]) -> None:
    su, alice, mallory = macro_world["su"], macro_world["alice"], macro_world["mallory"]
    rule = '@is_member(@request.auth.account_id, "proj-A")'
    rules = {**ANYONE, "list": rule}
    new_collection(client, su, "plans", [{"name": "title", "type": "text"}], rules=rules)
    for user in (alice, mallory):
        client.post(f"{API}/records/plans", json={"title": "x"}, headers=user["headers"])
    seen = {
        name: client.get(f"{API}/records/plans", headers=user["headers"]).json()["total_items"]
        for name, user in (("alice", alice), ("mallory", mallory))
    }
    assert seen == {"alice": 1, "mallory": 0}


def test_macro_calls_per_rule_are_bounded(client: TestClient, macro_world: dict[str, Any]) -> None:
    calls = " || ".join(['@is_member(@request.auth.account_id, "p")'] * 9)
    body = {"name": "slow", "fields": [{"name": "t", "type": "text"}], "rules": {**ANYONE, "list": calls}}
    response = client.post(f"{API}/collections", json=body, headers=macro_world["su"]["headers"])
    assert "too many macro calls" in envelope_of(response, 400)["fields"]["rules.list"]["message"]


def test_huge_integer_macro_arguments_fail_closed(client: TestClient, macro_world: dict[str, Any]) -> None:
    su = macro_world["su"]
    assert client.post(
        f"{API}/macros", json={"name": "positive", "sql": "SELECT ? > 0"}, headers=su["headers"]
    )
    response = client.post(f"{API}/macros/positive/test", json={"args": [10**30]}, headers=su["headers"])
    assert envelope_of(response, 400)["fields"]["args"]["code"] == "out_of_range"
    rules = {**ANYONE, "create": "@positive(@request.data.meta)"}
    new_collection(client, su, "gated", [{"name": "meta", "type": "json"}], rules=rules)
    alice = macro_world["alice"]
    assert client.post(f"{API}/records/gated", json={"meta": 5}, headers=alice["headers"]).status_code == 201
    refused = client.post(f"{API}/records/gated", content=b'{"meta": 1' + b"0" * 30 + b"}",
                          headers={**alice["headers"], "content-type": "application/json"})  # fmt: skip
    envelope_of(refused, 403, "forbidden")
    assert client.get(f"{API}/records/gated", headers=alice["headers"]).json()["total_items"] == 1


# --- 2. `~` cannot freeze the server ------------------------------------------------------------

BIG = "a" * 900_000  # the worst text for a naive substring search of "aaa…ab"


def test_long_like_patterns_are_refused(client: TestClient, superadmin: dict[str, Any]) -> None:
    new_collection(client, superadmin, "pages", [{"name": "body", "type": "text"}])
    for pattern in ("a" * 3400, "%a" * 20):
        response = client.get(
            f"{API}/records/pages", params={"filter": f'body ~ "{pattern}"'}, headers=superadmin["headers"]
        )
        assert "'~' pattern" in envelope_of(response, 400, "invalid_filter")["message"]


def test_health_answers_while_a_heavy_like_runs(start_server: Callable[..., ServerProcess]) -> None:
    """Before: one `~` over large texts held the event loop for seconds (one LIKE is one VM step, which
    the statement budget cannot interrupt); /health waited behind it."""
    server = start_server(env={"SNACKBASE_SUPERADMIN_EMAIL": "root@example.com",
                               "SNACKBASE_SUPERADMIN_PASSWORD": TEST_PASSWORD})  # fmt: skip
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        login = {"email": "root@example.com", "password": TEST_PASSWORD, "account_identifier": "system"}
        token = http.post(f"{API}/auth/login", json=login).json()["access_token"]
        headers = {"authorization": f"Bearer {token}", "x-account-id": "SY0000"}
        body = {"name": "pages", "fields": [{"name": "body", "type": "text"}], "rules": ANYONE}
        assert http.post(f"{API}/collections", json=body, headers=headers).status_code == 201
        for _ in range(6):
            assert http.post(f"{API}/records/pages", json={"body": BIG}, headers=headers).status_code == 201
        needle = "a" * 255 + "b"  # the longest pattern allowed, matching at no position
        done: dict[str, float] = {}

        def heavy_list() -> None:
            started = time.perf_counter()
            response = http.get(
                f"{API}/records/pages", params={"filter": f'body ~ "{needle}"'}, headers=headers
            )
            assert response.status_code == 200 and response.json()["total_items"] == 0
            done["list_s"] = time.perf_counter() - started

        worker = threading.Thread(target=heavy_list)
        worker.start()
        health = []
        while worker.is_alive() or not health:
            started = time.perf_counter()
            assert http.get("/health").status_code == 200
            health.append(time.perf_counter() - started)
        worker.join()
    assert max(health) < 0.5, health
    assert done["list_s"] < 2.0, done


def test_a_statement_over_budget_is_a_503_envelope(tmp_path: Path) -> None:
    """Before: the statement budget's interrupt escaped as a bare 500."""
    settings = make_settings(tmp_path / "data", statement_timeout_ms=5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        su = create_user(client.app, account_id="SY0000", role="admin")
        new_collection(client, su, "pages", [{"name": "body", "type": "text"}])
        user = create_user(client.app, role="admin")
        for _ in range(8):
            assert (
                client.post(f"{API}/records/pages", json={"body": BIG}, headers=user["headers"]).status_code
                == 201
            )
        response = client.get(
            f"{API}/records/pages", params={"filter": f'body ~ "{"a" * 255}b"'}, headers=user["headers"]
        )
        envelope_of(response, 503, "statement_timeout")


# --- 3. invitations die with their inviter's authority ------------------------------------------


def invite_admin(client: TestClient, admin: dict[str, Any], role: str = "admin") -> str:
    response = client.post(
        f"{API}/invitations",
        json={"email": f"eve-{role}@example.com", "role": role},
        headers=admin["headers"],
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def accept(client: TestClient, token: str) -> Any:
    return client.post(f"{API}/invitations/{token}/accept", json={"password": TEST_PASSWORD})


@pytest.mark.parametrize(
    ("change", "body"),
    [("delete", None), ("deactivate", {"is_active": False}), ("demote", {"role": "user"})],
)
def test_invitation_dies_with_the_inviters_authority(
    client: TestClient, make_user: MakeUser, superadmin: dict[str, Any], change: str, body: Any
) -> None:
    """Before: an admin invited eve2 as admin, was deleted, and the invitation still made eve2 admin."""
    owner = make_user(role="admin")
    inviter = make_user(role="admin", account_id=owner["account_id"])
    token = invite_admin(client, inviter)
    url = f"{API}/users/{inviter['id']}"
    done = (
        client.delete(url, headers=owner["headers"])
        if body is None
        else client.patch(url, json=body, headers=owner["headers"])
    )
    assert done.status_code in (200, 204), done.text
    envelope_of(client.get(f"{API}/invitations/{token}"), 410, "invitation_expired")
    envelope_of(accept(client, token), 410, "invitation_expired")
    users = client.get(f"{API}/users", headers=owner["headers"]).json()["items"]
    assert "eve-admin@example.com" not in [u["email"] for u in users]


def test_a_demoted_inviters_plain_invitations_stay_valid(client: TestClient, make_user: MakeUser) -> None:
    owner = make_user(role="admin")
    inviter = make_user(role="admin", account_id=owner["account_id"])
    token = invite_admin(client, inviter, role="user")
    client.patch(f"{API}/users/{inviter['id']}", json={"role": "user"}, headers=owner["headers"])
    answer = accept(client, token)
    assert answer.status_code == 201, answer.text
    assert answer.json()["user"]["role"] == "user"


# --- 4. a stranger cannot lock out the owner ------------------------------------------------------


def test_a_stranger_cannot_lock_out_the_owner(client: TestClient, superadmin: dict[str, Any]) -> None:
    """Before: 5 failures from anywhere gave the owner 429, 10 gave 403 account_locked."""
    app: Any = client.app
    stranger = TestClient(app, client=("203.0.113.66", 40000), raise_server_exceptions=False)
    owner = TestClient(app, client=("198.51.100.7", 40000), raise_server_exceptions=False)
    login = {"email": "root@example.com", "account_identifier": "system"}
    answers = [stranger.post(f"{API}/auth/login", json={**login, "password": f"wrong {i} xx"}).status_code
               for i in range(12)]  # fmt: skip
    assert answers[:5] == [401] * 5 and answers[-1] in (403, 429)
    # The stranger's own address is slowed and locked, even with the right password ...
    assert stranger.post(f"{API}/auth/login", json={**login, "password": TEST_PASSWORD}).status_code in (
        403,
        429,
    )
    # ... the owner, from another address, is not.
    ok = owner.post(f"{API}/auth/login", json={**login, "password": TEST_PASSWORD})
    assert ok.status_code == 200, ok.text
    conn = app.state.db.conn
    failed = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'auth.login_failed'").fetchone()[0]
    assert failed == 5  # each failure that reached the password check (then the backoff) is audited


# --- 5. forgot-password does its work after the response --------------------------------------


def test_forgot_password_does_the_same_work_before_answering(client: TestClient, make_user: MakeUser) -> None:
    """Before: the token was issued and the email prepared before the response, so existing emails
    answered measurably slower. Now the response is complete before the user is even looked up."""
    app: Any = client.app
    conn = app.state.db.conn
    user = make_user()
    at_response: list[int] = []

    def tokens() -> int:
        return int(conn.execute("SELECT count(*) FROM one_time_tokens").fetchone()[0])

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        async def watch(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                at_response.append(tokens())
            await send(message)

        await app(scope, receive, watch)

    spying = TestClient(spy, raise_server_exceptions=False)
    for email in (user["email"], "nobody@example.com"):
        body = {"email": email, "account_identifier": user["account_id"]}
        response = spying.post(f"{API}/auth/forgot-password", json=body)
        assert response.status_code == 202
    assert at_response == [0, 1]  # nothing issued when either response finished; the token came after
    assert tokens() == 1


# --- 6. no 500s ---------------------------------------------------------------------------------


def cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


DEEP = b"[" * 10_000 + b"]" * 10_000


def test_every_reported_500_is_a_4xx_envelope(client: TestClient, superadmin: dict[str, Any]) -> None:
    su = superadmin["headers"]
    new_collection(client, superadmin, "notes", [{"name": "title", "type": "text"}])
    assert (
        client.post(f"{API}/macros", json={"name": "m", "sql": "SELECT ? > 0"}, headers=su).status_code == 201
    )
    before = client.app.state.db.conn.total_changes()  # type: ignore[attr-defined]
    json_headers = {**su, "content-type": "application/json"}
    requests: list[tuple[str, str, dict[str, Any], int]] = [
        *[("GET", f"{API}/records/notes?after={cursor(v)}", {}, 400)
          for v in ('["",{"a":1}]', '["",[1,2,3]]', '["",99999999999999999999999999]')],
        ("POST", f"{API}/records/notes", {"content": DEEP}, 400),
        ("POST", f"{API}/records/notes", {"content": b'{"title": ' + DEEP + b"}"}, 400),
        ("POST", f"{API}/records/notes/batch", {"content": DEEP}, 400),
        ("GET", f"{API}/audit-log/²", {}, 404),
        ("GET", f"{API}/audit-log/{'9' * 30}", {}, 404),
        ("GET", f"{API}/audit-log?after={'9' * 30}", {}, 400),
        ("GET", f"{API}/audit-log?from=0001-01-01T00:00:00%2B01:00", {}, 400),
        ("GET", f"{API}/audit-log?to=9999-12-31T23:59:59-01:00", {}, 400),
        ("GET", "/_/%00", {}, 404),
        ("GET", "/_/a%00b.js", {}, 404),
        ("GET", "/_/" + "a" * 5000, {}, 404),
        ("POST", f"{API}/macros/m/test", {"content": b'{"args": [1' + b"0" * 30 + b"]}"}, 400),
    ]  # fmt: skip
    for method, url, extra, status in requests:
        envelope_of(client.request(method, url, headers=json_headers, **extra), status)
    assert client.app.state.db.conn.total_changes() == before  # type: ignore[attr-defined]


def test_a_refused_cors_preflight_answers_in_the_envelope(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", cors_origins="https://app.example.com")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        preflight = {"origin": "https://evil.example.com", "access-control-request-method": "GET"}
        envelope_of(client.options(f"{API}/records/x", headers=preflight), 400, "cors_refused")
        allowed = client.options(
            f"{API}/records/x", headers={**preflight, "origin": "https://app.example.com"}
        )
        assert allowed.status_code == 200


def test_the_http_parsers_own_400_is_in_the_envelope(start_server: Callable[..., ServerProcess]) -> None:
    """Before: uvicorn answered a malformed Content-Length with a plain-text 400 of its own."""
    import socket

    server = start_server()
    for length in (b"abc", b"-1", b"9" * 30):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}"
            )
            raw = b""
            while chunk := sock.recv(4096):
                raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower()
        body = json.loads(payload)
        assert set(body) == {"status", "code", "message", "fields", "request_id"} and body["status"] == 400


# --- 7. HTTP details ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/records/notes", "GET, HEAD, POST"),
        ("POST", "/records/notes/abc", "GET, HEAD, PUT, PATCH, DELETE"),
        ("DELETE", "/collections", "GET, HEAD, POST"),
        ("PUT", "/auth/login", "POST"),
    ],
)
def test_405_names_every_allowed_method(client: TestClient, method: str, path: str, allow: str) -> None:
    response = client.request(method, API + path)
    envelope_of(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


def test_token_responses_are_not_stored(client: TestClient, make_user: MakeUser) -> None:
    registered = client.post(
        f"{API}/auth/register",
        json={"account_name": "Nostore", "email": "ns@example.com", "password": TEST_PASSWORD},
    )
    login = {"email": "ns@example.com", "password": TEST_PASSWORD, "account_identifier": "nostore"}
    logged_in = client.post(f"{API}/auth/login", json=login)
    refreshed = client.post(f"{API}/auth/refresh", json={"refresh_token": logged_in.json()["refresh_token"]})
    headers = {"authorization": f"Bearer {logged_in.json()['access_token']}"}
    invited = client.post(f"{API}/invitations", json={"email": "new@example.com"}, headers=headers)
    accepted = accept(client, invited.json()["token"])
    for response in (registered, logged_in, refreshed, invited, accepted):
        assert response.status_code in (200, 201), response.text
        assert response.headers["cache-control"] == "no-store"


def test_a_password_change_kills_earlier_reset_links(client: TestClient, make_user: MakeUser) -> None:
    from snackbase import onetime

    app: Any = client.app
    user = make_user()
    token = onetime.issue(app.state.db.conn, "reset_password", user["id"])
    assert token is not None
    time.sleep(0.002)  # the change is strictly later than the link
    changed = client.post(
        f"{API}/auth/change-password",
        json={"current_password": TEST_PASSWORD, "new_password": "An entirely new passphrase 7"},
        headers=user["headers"],
    )
    assert changed.status_code == 204, changed.text
    reset = client.post(
        f"{API}/auth/reset-password", json={"token": token, "new_password": "Attacker's pick 1234"}
    )
    envelope_of(reset, 400, "invalid_token")


def test_sign_binds_the_version_stored_after_the_password_check(tmp_path: Path) -> None:
    """Before: the record was read, then the password verified (tens of ms, off the loop): an edit
    landing meanwhile was not what the signature's hash described."""
    from snackbase.passwords import PRODUCTION_PARAMS, hasher

    settings: Settings = make_settings(tmp_path / "data")
    app = create_app(settings)
    slow_hash = hasher(PRODUCTION_PARAMS).hash(TEST_PASSWORD)  # verification takes ~20-40 ms
    su = create_user(app, account_id="SY0000", role="admin")
    signer = create_user(app, role="admin", password_hash=slow_hash)

    async def scenario() -> dict[str, Any]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://sb") as http:
            body = {"name": "batches", "fields": [{"name": "lot", "type": "text"}], "rules": ANYONE}
            assert (
                await http.post(f"{API}/collections", json=body, headers=su["headers"])
            ).status_code == 201
            h = signer["headers"]
            record = (await http.post(f"{API}/records/batches", json={"lot": "v1"}, headers=h)).json()
            url = f"{API}/records/batches/{record['id']}"

            async def edit() -> None:
                await asyncio.sleep(0.005)  # while the password is being verified
                assert (await http.patch(url, json={"lot": "v2"}, headers=h)).status_code == 200

            signed, _ = await asyncio.gather(
                http.post(f"{url}/sign", json={"password": TEST_PASSWORD, "meaning": "approved"}, headers=h),
                edit(),
            )
            assert signed.status_code == 201, signed.text
            stored = (await http.get(url, headers=h)).json()
            listed = (await http.get(f"{url}/signatures", headers=h)).json()["items"]
            return {"signed": signed.json(), "stored": stored, "listed": listed}

    try:
        result = asyncio.run(scenario())
    finally:
        app.state.db.close()
    assert result["stored"]["lot"] == "v2"
    assert result["signed"]["record_hash"] == record_hash(result["stored"])
    assert result["listed"][0]["changed_since_signing"] is False


# --- 8. datetime literals are instants --------------------------------------------------------------


def test_datetime_literals_compare_as_instants(
    client: TestClient, superadmin: dict[str, Any], make_user: MakeUser
) -> None:
    h = make_user(role="admin")["headers"]
    new_collection(
        client, superadmin, "runs", [{"name": "ran_at", "type": "datetime"}, {"name": "on", "type": "date"}]
    )
    stored = client.post(
        f"{API}/records/runs", json={"ran_at": "2026-11-12T09:00:00Z", "on": "2026-11-12"}, headers=h
    )
    assert stored.status_code == 201, stored.text

    def count(text: str) -> int:
        response = client.get(f"{API}/records/runs", params={"filter": text}, headers=h)
        assert response.status_code == 200, response.text
        return int(response.json()["total_items"])

    assert count('ran_at = "2026-11-12T09:00:00Z"') == 1
    assert count('ran_at >= "2026-11-12T10:00:00+02:00"') == 1
    assert count('ran_at = "2026-11-12T11:00:00.000999+02:00"') == 1
    assert count('ran_at > "2026-11-12T09:00:00.001Z"') == 0
    assert count('ran_at IN ("2026-11-12T04:00:00-05:00")') == 1
    assert count('created_at > "2000-01-01"') == 1
    assert count('on = "2026-11-12"') == 1
    for bad in ('ran_at = "yesterday"', 'ran_at > "2026-13-01T00:00:00Z"', 'on = "2026-11-12T00:00:00Z"'):
        response = client.get(f"{API}/records/runs", params={"filter": bad}, headers=h)
        assert "literal" in envelope_of(response, 400, "invalid_filter")["message"]


# --- 9. file fields: real uploads now (tests/test_files.py); an earlier database still loads -------


def test_a_database_with_a_file_field_still_loads(tmp_path: Path) -> None:
    """A collection made by an earlier version, with a file field: it loads and its other fields change."""
    from snackbase.collection_defs import new_collection as build
    from snackbase.collection_defs import parse_collection_body
    from snackbase.collections import _insert_row
    from snackbase.db import execute_many
    from snackbase.ddl import create_table_sql

    settings = make_settings(tmp_path / "data")
    app = create_app(settings)
    conn = app.state.db.conn
    body = {"name": "legacy", "fields": [{"name": "blob", "type": "file"}], "rules": ANYONE}
    old = build(
        parse_collection_body(body), id="01a00000-0000-7000-8000-000000000001", now="2026-01-01T00:00:00.000Z"
    )
    with conn:
        _insert_row(conn, old)
        execute_many(conn, create_table_sql(old))
    app.state.db.close()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        su = create_user(client.app, account_id="SY0000", role="admin")
        assert client.get(f"{API}/collections/legacy", headers=su["headers"]).status_code == 200
        patch = {"fields": [{"name": "blob", "type": "file"}, {"name": "title", "type": "text"}]}
        answer = client.patch(f"{API}/collections/legacy", json=patch, headers=su["headers"])
        assert answer.status_code == 200, answer.text
