"""Auth-side changes in the audit trail (SPEC section 8, issue 6 item 1): one entry per change, written in
the change's transaction, with the right action, account, actor and target, and never a secret.

Table-driven: each case sets up what it needs, makes one request and states the one entry it expects;
failed requests (validation, 403, 404, wrong current password…) must leave none. One app for the module
keeps it fast; every case works in accounts of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase import audit, onetime
from snackbase.app import create_app
from snackbase.ids import SYSTEM_ACCOUNT_ID, uuid7
from snackbase.tokens import digest
from tests.conftest import TEST_PASSWORD, create_user, make_settings

NEW_PASSWORD = "Brand new passphrase 77 zebra"
OTHER_PASSWORD = "Another fine passphrase 31 okapi"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(Path(tmp_path_factory.mktemp("audit-auth")) / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def conn_of(client: TestClient) -> Any:
    return client.app.state.db.conn  # type: ignore[attr-defined]


def last_seq(client: TestClient) -> int:
    return int(conn_of(client).execute("SELECT coalesce(max(seq), 0) FROM audit_log").fetchone()[0])


def entries_after(client: TestClient, seq: int) -> list[dict[str, Any]]:
    cursor = conn_of(client).execute(
        f"SELECT {', '.join(audit.COLUMNS)} FROM audit_log WHERE seq > ? ORDER BY seq", (seq,)
    )
    return [dict(zip(audit.COLUMNS, row, strict=True)) for row in cursor]


@dataclass
class World:
    """What one case works with: an admin, a plain user and a target user in a fresh account, and a
    superadmin. `secrets` collects every password and token the case handles."""

    client: TestClient
    admin: dict[str, Any]
    user: dict[str, Any]
    target: dict[str, Any]
    root: dict[str, Any]
    secrets: set[str] = field(default_factory=set)
    vars: dict[str, Any] = field(default_factory=dict)

    def new_user(self, **kwargs: Any) -> dict[str, Any]:
        made = create_user(self.client.app, **kwargs)
        self.secrets.update((made["token"], made["refresh_token"]))
        return made

    def call(self, method: str, path: str, who: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        headers = {**(who["headers"] if who else {}), **kwargs.pop("headers", {})}
        response = self.client.request(method, "/api/v1" + path, headers=headers, **kwargs)
        body = response.json() if response.content else None
        if isinstance(body, dict):
            for key in ("token", "access_token", "refresh_token"):
                if isinstance(body.get(key), str):
                    self.secrets.add(body[key])
        return response


@pytest.fixture
def world(client: TestClient) -> World:
    blank = World(client, {}, {}, {}, {})
    blank.admin = blank.new_user(role="admin")
    account = blank.admin["account_id"]
    blank.user = blank.new_user(role="user", account_id=account)
    blank.target = blank.new_user(role="user", account_id=account)
    blank.root = blank.new_user(role="admin", account_id=SYSTEM_ACCOUNT_ID)
    blank.secrets.add(TEST_PASSWORD)
    return blank


# --- the cases ----------------------------------------------------------------------------------------
# A case: setup(world) (optional), then request(world) -> response, then the expected entry. Expected
# values may be callables of (world, response) for what is only known afterwards.


@dataclass
class Case:
    name: str
    request: Callable[[World], Any]
    status: int
    action: str
    account: Callable[[World, Any], str]
    actor: Callable[[World, Any], tuple[str | None, str]]  # (user_id, method)
    target: Callable[[World, Any], tuple[str, str | None]]  # (collection, record_id)
    changes: set[str] | None = None  # the changed field names (None: no `changes`)
    extra: dict[str, Any] | None = None  # keys that must be in `extra` with these values
    setup: Callable[[World], object] | None = None
    reason: str | None = None


def acc_a(w: World, r: Any) -> str:
    return str(w.admin["account_id"])


def system(w: World, r: Any) -> str:
    return SYSTEM_ACCOUNT_ID


def by(who: str, method: str = "token") -> Callable[[World, Any], tuple[str | None, str]]:
    return lambda w, r: (getattr(w, who)["id"], method)


def anonymous(w: World, r: Any) -> tuple[str | None, str]:
    return None, "anonymous"


def users(who: str) -> Callable[[World, Any], tuple[str, str | None]]:
    return lambda w, r: ("users", getattr(w, who)["id"])


def var_target(collection: str, var: str) -> Callable[[World, Any], tuple[str, str | None]]:
    return lambda w, r: (collection, w.vars[var])


REASON = {"X-Audit-Reason": "Ticket CHG-42"}


def _login(w: World, who: dict[str, Any], password: str = TEST_PASSWORD, ref: str | None = None) -> Any:
    body = {"email": who["email"], "password": password, "account_identifier": ref or who["account_id"]}
    return w.call("POST", "/auth/login", json=body)


def _second_session(w: World) -> None:
    assert _login(w, w.user).status_code == 200
    w.vars["session"] = _newest_session(w, w.user["id"])


def _newest_session(w: World, user_id: str) -> str:
    row = (
        conn_of(w.client)
        .execute(
            "SELECT id FROM sessions WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT 1", (user_id,)
        )
        .fetchone()
    )
    return str(row[0])


def _reset_token(w: World) -> None:
    token = onetime.issue(conn_of(w.client), "reset_password", w.user["id"])
    assert token is not None
    w.vars["token"] = token
    w.secrets.add(token)


def _verify_token(w: World) -> None:
    token = onetime.issue(conn_of(w.client), "verify_email", w.user["id"])
    assert token is not None
    w.vars["token"] = token
    w.secrets.add(token)


def _spent_refresh(w: World) -> None:
    answer = w.call("POST", "/auth/refresh", json={"refresh_token": w.user["refresh_token"]})
    assert answer.status_code == 200


def _lock_target(w: World) -> None:
    with conn_of(w.client) as conn:
        conn.execute(
            "INSERT INTO login_throttle (key, failures, window_start, last_failure_at, locked_at) "
            "VALUES (?, 10, 'x', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')",
            (f"id:{w.target['account_id']}:{w.target['email']}|testclient",),  # (identity, address)
        )


def _group(w: World, name: str = "lab") -> None:
    answer = w.call("POST", "/groups", w.admin, json={"name": name, "description": "Lab staff"})
    assert answer.status_code == 201
    w.vars["group"] = answer.json()["id"]


def _group_with_member(w: World) -> None:
    _group(w)
    answer = w.call("POST", f"/groups/{w.vars['group']}/members/{w.target['id']}", w.admin)
    assert answer.status_code == 204


def _role(w: World) -> None:
    w.vars["role"] = "qa_" + uuid7()[-6:].replace("-", "")
    answer = w.call("POST", "/roles", w.root, json={"name": w.vars["role"], "description": "QA"})
    assert answer.status_code == 201


def _invitation(w: World) -> World:
    answer = w.call("POST", "/invitations", w.admin, json={"email": f"inv-{uuid7()[-8:]}@example.com"})
    assert answer.status_code == 201
    w.vars["invitation"], w.vars["token"] = answer.json()["id"], answer.json()["token"]
    return w


def _account(w: World) -> None:
    answer = w.call("POST", "/accounts", w.root, json={"name": "Spare Co"})
    assert answer.status_code == 201
    w.vars["account"] = answer.json()["id"]


def _response_user(w: World, r: Any) -> tuple[str, str | None]:
    return "users", r.json()["user"]["id"]


CASES = [
    Case(
        "register", lambda w: w.call("POST", "/auth/register", json={
            "account_name": "Newco", "email": f"founder-{uuid7()[-8:]}@newco.example",
            "password": NEW_PASSWORD}),
        201, "auth.register", lambda w, r: r.json()["account"]["id"],
        lambda w, r: (r.json()["user"]["id"], "password"), _response_user,
        {"email", "role", "is_active", "email_verified", "groups"},
    ),
    Case(
        "login", lambda w: _login(w, w.user), 200, "auth.login", acc_a, by("user", "password"),
        lambda w, r: ("sessions", _newest_session(w, w.user["id"])),
    ),
    Case(
        "superadmin login", lambda w: _login(w, w.root, ref="system"), 200, "auth.login", system,
        by("root", "password"), lambda w, r: ("sessions", _newest_session(w, w.root["id"])),
    ),
    Case(
        "login wrong password", lambda w: _login(w, w.user, password="Not the password 123"), 401,
        "auth.login_failed", acc_a, by("user", "password"), users("user"), extra={"reason": "bad_password"},
    ),
    Case(
        "login unknown account", lambda w: _login(w, w.user, ref="ZZ9999"), 401, "auth.login_failed", system,
        anonymous, lambda w, r: ("users", None),
        extra={"reason": "unknown_account", "account_identifier": "ZZ9999"},
    ),
    Case(
        "login unknown email", lambda w: _login(w, {**w.user, "email": "ghost@example.com"}), 401,
        "auth.login_failed", system, anonymous, lambda w, r: ("users", None),
        extra={"reason": "unknown_user", "email": "ghost@example.com"},
    ),
    Case(
        "login deactivated", lambda w: _login(w, w.target), 401, "auth.login_failed", acc_a,
        by("target", "password"), users("target"), extra={"reason": "inactive"},
        setup=lambda w: w.call("PATCH", f"/users/{w.target['id']}", w.admin, json={"is_active": False}),
    ),
    Case(
        "logout", lambda w: w.call("POST", "/auth/logout", w.user,
                                   json={"refresh_token": w.user["refresh_token"]}),
        204, "auth.logout", acc_a, by("user"), lambda w, r: ("sessions", w.user["session_id"]),
        extra={"scope": "session", "sessions_revoked": 1},
    ),
    Case(
        "logout-all", lambda w: w.call("POST", "/auth/logout-all", w.user), 204, "auth.logout", acc_a,
        by("user"), lambda w, r: ("sessions", None), extra={"scope": "all", "sessions_revoked": 2},
        setup=_second_session,
    ),
    Case(
        "revoke a session", lambda w: w.call("DELETE", f"/auth/sessions/{w.vars['session']}", w.user),
        204, "auth.logout", acc_a, by("user"), var_target("sessions", "session"),
        extra={"scope": "revoke", "sessions_revoked": 1}, setup=_second_session,
    ),
    Case(
        "change password", lambda w: w.call("POST", "/auth/change-password", w.user, json={
            "current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD}),
        204, "auth.password_change", acc_a, by("user"), users("user"), {"password_changed_at"},
        extra={"via": "change_password", "sessions_revoked": 1}, setup=_second_session,
    ),
    Case(
        "reset password", lambda w: w.call("POST", "/auth/reset-password", json={
            "token": w.vars["token"], "new_password": OTHER_PASSWORD}),
        204, "auth.password_change", acc_a, by("user"), users("user"),
        {"password_changed_at", "email_verified"}, extra={"via": "reset_password"}, setup=_reset_token,
    ),
    Case(
        "refresh token reuse", lambda w: w.call("POST", "/auth/refresh",
                                                json={"refresh_token": w.user["refresh_token"]}),
        401, "auth.refresh_reuse", acc_a, anonymous, lambda w, r: ("sessions", w.user["session_id"]),
        extra={"revoked_reason": "refresh_token_reuse"}, setup=_spent_refresh,
    ),
    Case(
        "verify email", lambda w: w.call("POST", "/auth/verify-email/confirm",
                                         json={"token": w.vars["token"]}),
        204, "auth.email_verified", acc_a, by("user"), users("user"), {"email_verified"}, setup=_verify_token,
    ),
    Case(
        "create user", lambda w: w.call("POST", "/users", w.admin, headers=REASON, json={
            "email": "new.hire@example.com", "password": NEW_PASSWORD, "role": "user"}),
        201, "user.create", acc_a, by("admin"), lambda w, r: ("users", r.json()["id"]),
        {"email", "role", "is_active", "email_verified", "groups"}, reason="Ticket CHG-42",
    ),
    Case(
        "superadmin creates a user elsewhere", lambda w: w.call("POST", "/users", w.root, json={
            "email": "remote@example.com", "password": NEW_PASSWORD, "account_id": w.admin["account_id"]}),
        201, "user.create", acc_a, by("root"), lambda w, r: ("users", r.json()["id"]),
        {"email", "role", "is_active", "email_verified", "groups"},
    ),
    Case(
        "update user", lambda w: w.call("PATCH", f"/users/{w.target['id']}", w.admin, headers=REASON,
                                        json={"role": "admin", "groups": ["pii_access"]}),
        200, "user.update", acc_a, by("admin"), users("target"), {"role", "groups"}, reason="Ticket CHG-42",
    ),
    Case(
        "deactivate user", lambda w: w.call("PATCH", f"/users/{w.target['id']}", w.admin,
                                            json={"is_active": False}),
        200, "user.update", acc_a, by("admin"), users("target"), {"is_active"}, extra={"sessions_revoked": 1},
    ),
    Case(
        "delete user", lambda w: w.call("DELETE", f"/users/{w.target['id']}", w.admin), 204,
        "user.delete", acc_a, by("admin"), users("target"),
        {"email", "role", "is_active", "email_verified", "groups"},
    ),
    Case(
        "unlock user", lambda w: w.call("POST", f"/users/{w.target['id']}/unlock", w.admin), 204,
        "user.unlock", acc_a, by("admin"), users("target"), {"is_locked"}, setup=_lock_target,
    ),
    Case(
        "create group", lambda w: w.call("POST", "/groups", w.admin, headers=REASON,
                                         json={"name": "qc", "description": "Quality"}),
        201, "group.create", acc_a, by("admin"), lambda w, r: ("groups", r.json()["id"]),
        {"name", "description"}, reason="Ticket CHG-42",
    ),
    Case(
        "update group", lambda w: w.call("PATCH", f"/groups/{w.vars['group']}", w.admin,
                                         json={"name": "lab2"}),
        200, "group.update", acc_a, by("admin"), var_target("groups", "group"), {"name"}, setup=_group,
    ),
    Case(
        "delete group", lambda w: w.call("DELETE", f"/groups/{w.vars['group']}", w.admin), 204,
        "group.delete", acc_a, by("admin"), var_target("groups", "group"), {"name", "description"},
        setup=_group_with_member,
    ),
    Case(
        "add member", lambda w: w.call("POST", f"/groups/{w.vars['group']}/members/{w.target['id']}",
                                       w.admin),
        204, "group.member_add", acc_a, by("admin"), var_target("groups", "group"), {"member"}, setup=_group,
    ),
    Case(
        "remove member", lambda w: w.call(
            "DELETE", f"/groups/{w.vars['group']}/members/{w.target['id']}", w.admin),
        204, "group.member_remove", acc_a, by("admin"), var_target("groups", "group"), {"member"},
        setup=_group_with_member,
    ),
    Case(
        "create role", lambda w: w.call("POST", "/roles", w.root, headers=REASON,
                                        json={"name": "auditor", "description": "Reads"}),
        201, "role.create", system, by("root"), lambda w, r: ("roles", "auditor"),
        {"name", "description", "builtin"}, reason="Ticket CHG-42",
    ),
    Case(
        "delete role", lambda w: w.call("DELETE", f"/roles/{w.vars['role']}", w.root), 204,
        "role.delete", system, by("root"), var_target("roles", "role"), {"name", "description", "builtin"},
        setup=_role,
    ),
    Case(
        "create invitation", lambda w: w.call("POST", "/invitations", w.admin, headers=REASON, json={
            "email": "invitee@example.com", "groups": ["pii_access"]}),
        201, "invitation.create", acc_a, by("admin"), lambda w, r: ("invitations", r.json()["id"]),
        {"email", "role", "groups", "expires_at"}, reason="Ticket CHG-42",
    ),
    Case(
        "resend invitation", lambda w: w.call("POST", f"/invitations/{w.vars['invitation']}/resend",
                                              w.admin),
        200, "invitation.resend", acc_a, by("admin"), var_target("invitations", "invitation"),
        {"expires_at"}, setup=_invitation,
    ),
    Case(
        "delete invitation", lambda w: w.call("DELETE", f"/invitations/{w.vars['invitation']}", w.admin),
        204, "invitation.delete", acc_a, by("admin"), var_target("invitations", "invitation"),
        {"email", "role", "groups", "expires_at"}, extra={"status": "pending"}, setup=_invitation,
    ),
    Case(
        "accept invitation", lambda w: w.call("POST", f"/invitations/{w.vars['token']}/accept",
                                              json={"password": NEW_PASSWORD}),
        201, "invitation.accept", acc_a, lambda w, r: (r.json()["user"]["id"], "token"),
        var_target("invitations", "invitation"), {"accepted_at", "user_id"}, setup=_invitation,
    ),
    Case(
        "create account", lambda w: w.call("POST", "/accounts", w.root, headers=REASON,
                                           json={"name": "Tenant Two"}),
        201, "account.create", lambda w, r: r.json()["id"], by("root"),
        lambda w, r: ("accounts", r.json()["id"]), {"slug", "name"}, reason="Ticket CHG-42",
    ),
    Case(
        "admin renames own account", lambda w: w.call("PATCH", f"/accounts/{w.admin['account_id']}",
                                                      w.admin, json={"name": "Renamed Co"}),
        200, "account.update", acc_a, by("admin"), lambda w, r: ("accounts", w.admin["account_id"]), {"name"},
    ),
    Case(
        "delete account", lambda w: w.call("DELETE", f"/accounts/{w.vars['account']}", w.root), 204,
        "account.delete", lambda w, r: w.vars["account"], by("root"), var_target("accounts", "account"),
        {"slug", "name"}, setup=_account,
    ),
]  # fmt: skip


def secrets_of(w: World) -> set[str]:
    """Every secret the case saw, the stored password hashes, and the digests of every token."""
    found = {s for s in w.secrets if s}
    found.update((NEW_PASSWORD, OTHER_PASSWORD))
    conn = conn_of(w.client)
    found.update(row[0] for row in conn.execute("SELECT password_hash FROM users"))
    found.update(row[0] for row in conn.execute("SELECT token_hash FROM refresh_tokens"))
    found.update(row[0] for row in conn.execute("SELECT token_hash FROM invitations"))
    found.update(row[0] for row in conn.execute("SELECT token_hash FROM one_time_tokens"))
    found.update(digest(s) for s in list(found))
    return found


def assert_no_secrets(w: World, entries: list[dict[str, Any]]) -> None:
    text = json.dumps(entries)
    leaked = [s[:12] + "…" for s in secrets_of(w) if s in text]
    assert not leaked, f"secrets in the audit trail: {leaked}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_auth_change_writes_one_entry(world: World, case: Case) -> None:
    if case.setup:
        case.setup(world)
    before = last_seq(world.client)
    response = case.request(world)
    assert response.status_code == case.status, response.text

    entries = entries_after(world.client, before)
    assert [e["action"] for e in entries] == [case.action]
    entry = entries[0]
    assert entry["account_id"] == case.account(world, response)
    assert (entry["actor_user_id"], entry["auth_method"]) == case.actor(world, response)
    assert (entry["collection"], entry["record_id"]) == case.target(world, response)
    changes = json.loads(entry["changes"]) if entry["changes"] else None
    if case.changes is None:
        assert changes is None
    else:
        assert changes is not None and set(changes) == case.changes
        assert all(set(change) <= {"old", "new"} for change in changes.values())
    extra = json.loads(entry["extra"]) if entry["extra"] else {}
    assert {k: extra.get(k) for k in case.extra or {}} == (case.extra or {})
    assert entry["reason"] == case.reason
    assert entry["request_id"] and entry["ip"] == "testclient"
    assert_no_secrets(world, entries)
    assert audit.verify(conn_of(world.client)).ok


def test_actor_fields_of_a_superadmin_and_of_a_login(world: World) -> None:
    before = last_seq(world.client)
    world.call("POST", "/roles", world.root, json={"name": "viewer_x"})
    _login(world, world.user)
    role_entry, login_entry = entries_after(world.client, before)
    assert (role_entry["actor_email"], role_entry["actor_role"]) == (world.root["email"], "superadmin")
    assert (login_entry["actor_email"], login_entry["actor_role"]) == (world.user["email"], "user")


def test_user_changes_hold_old_and_new_values(world: World) -> None:
    before = last_seq(world.client)
    world.call("PATCH", f"/users/{world.target['id']}", world.admin, json={"role": "admin"})
    (entry,) = entries_after(world.client, before)
    assert json.loads(entry["changes"]) == {"role": {"old": "user", "new": "admin"}}


# --- failed writes leave no entry ------------------------------------------------------------------------

FAILURES = [
    ("register with a weak password", lambda w: w.call("POST", "/auth/register", json={
        "account_name": "Weak", "email": "weak@example.com", "password": "short"}), 400),
    ("create user: invalid email", lambda w: w.call("POST", "/users", w.admin, json={
        "email": "not-an-email", "password": NEW_PASSWORD}), 400),
    ("create user: plain user", lambda w: w.call("POST", "/users", w.user, json={
        "email": "x@example.com", "password": NEW_PASSWORD}), 403),
    ("create user: bad reason", lambda w: w.call("POST", "/users", w.admin, headers={
        "X-Audit-Reason": "line%01break"}, json={"email": "y@example.com", "password": NEW_PASSWORD}), 400),
    ("patch unknown user", lambda w: w.call("PATCH", f"/users/{uuid7()}", w.admin, json={
        "role": "admin"}), 404),
    ("patch user of another account", lambda w: w.call("PATCH", f"/users/{w.root['id']}", w.admin,
                                                       json={"role": "user"}), 404),
    ("demote yourself", lambda w: w.call("PATCH", f"/users/{w.admin['id']}", w.admin, json={
        "role": "user"}), 409),
    ("change password: wrong current", lambda w: w.call("POST", "/auth/change-password", w.user, json={
        "current_password": "Not my password 123", "new_password": NEW_PASSWORD}), 400),
    ("change password: weak new one", lambda w: w.call("POST", "/auth/change-password", w.user, json={
        "current_password": TEST_PASSWORD, "new_password": "short"}), 400),
    ("reset password: bad token", lambda w: w.call("POST", "/auth/reset-password", json={
        "token": "sb_ot_nope", "new_password": NEW_PASSWORD}), 400),
    ("verify email: bad token", lambda w: w.call("POST", "/auth/verify-email/confirm", json={
        "token": "sb_ot_nope"}), 400),
    ("refresh: unknown token", lambda w: w.call("POST", "/auth/refresh", json={
        "refresh_token": "nope"}), 401),
    ("revoke unknown session", lambda w: w.call("DELETE", f"/auth/sessions/{uuid7()}", w.user), 404),
    ("duplicate group", lambda w: w.call("POST", "/groups", w.admin, json={"name": "pii_access"}), 409),
    ("group: plain user", lambda w: w.call("POST", "/groups", w.user, json={"name": "g1"}), 403),
    ("role: account admin", lambda w: w.call("POST", "/roles", w.admin, json={"name": "r1"}), 403),
    ("delete builtin role", lambda w: w.call("DELETE", "/roles/user", w.root), 409),
    ("invite existing user", lambda w: w.call("POST", "/invitations", w.admin, json={
        "email": w.user["email"]}), 409),
    ("accept: weak password", lambda w: _invitation(w).call(
        "POST", f"/invitations/{w.vars['token']}/accept", json={"password": "short"}), 400),
    ("delete another tenant's invitation", lambda w: _invitation(w).call(
        "DELETE", f"/invitations/{w.vars['invitation']}", w.new_user(role="admin")), 404),
    ("account: rename with bad name", lambda w: w.call("PATCH", f"/accounts/{w.admin['account_id']}",
                                                       w.admin, json={"name": "  "}), 400),
    ("account: delete system", lambda w: w.call("DELETE", f"/accounts/{SYSTEM_ACCOUNT_ID}", w.root),
     409),
]  # fmt: skip


@pytest.mark.parametrize(("name", "request_", "status"), FAILURES, ids=[f[0] for f in FAILURES])
def test_failed_writes_leave_no_entry(
    world: World, name: str, request_: Callable[[World], Any], status: int
) -> None:
    # Setup steps inside a case (an invitation to accept) are audited; count from just before the request.
    original_call = world.call
    marks: list[int] = []

    def call(method: str, path: str, who: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        marks.append(last_seq(world.client))
        return original_call(method, path, who, **kwargs)

    world.call = call  # type: ignore[method-assign]
    response = request_(world)
    assert response.status_code == status, response.text
    assert entries_after(world.client, marks[-1]) == []


def test_a_failed_reason_leaves_neither_change_nor_entry(world: World) -> None:
    before = last_seq(world.client)
    response = world.call("DELETE", f"/users/{world.target['id']}", world.admin,
                          headers={"X-Audit-Reason": "x" * 1001})  # fmt: skip
    assert response.status_code == 400 and response.json()["code"] == "invalid_reason"
    assert world.call("GET", f"/users/{world.target['id']}", world.admin).status_code == 200
    assert entries_after(world.client, before) == []


def test_no_op_writes_leave_no_entry(world: World) -> None:
    """A PATCH that changes nothing, adding a member twice, removing a non-member: no change, no entry."""
    _group(world)
    member = f"/groups/{world.vars['group']}/members/{world.target['id']}"
    world.call("POST", member, world.admin)
    before = last_seq(world.client)
    assert world.call("POST", member, world.admin).status_code == 204
    assert (
        world.call("PATCH", f"/users/{world.target['id']}", world.admin, json={"role": "user"}).status_code
        == 200
    )
    assert world.call("PATCH", f"/groups/{world.vars['group']}", world.admin, json={}).status_code == 200
    assert (
        world.call(
            "DELETE", f"/groups/{world.vars['group']}/members/{world.user['id']}", world.admin
        ).status_code
        == 204
    )
    assert entries_after(world.client, before) == []


def test_replaying_a_dead_refresh_token_is_recorded_once(world: World) -> None:
    token = world.user["refresh_token"]
    world.call("POST", "/auth/refresh", json={"refresh_token": token})
    before = last_seq(world.client)
    for _ in range(3):
        assert world.call("POST", "/auth/refresh", json={"refresh_token": token}).status_code == 401
    assert [e["action"] for e in entries_after(world.client, before)] == ["auth.refresh_reuse"]


def test_a_whole_session_of_auth_work_leaks_no_secret_and_verifies(world: World) -> None:
    """Register, log in (ok and failed), change and reset the password, invite and accept: then grep the
    whole trail for every password, token, password hash and token digest involved."""
    before = last_seq(world.client)
    email = f"ann-{uuid7()[-8:]}@acme.example"
    registered = world.call("POST", "/auth/register",
                            json={"account_name": "Acme", "email": email,
                                  "password": NEW_PASSWORD}).json()  # fmt: skip
    account = registered["account"]["id"]
    ann = {
        "email": email,
        "account_id": account,
        "headers": {"authorization": f"Bearer {registered['access_token']}"},
    }
    _login(world, ann, password=NEW_PASSWORD)
    _login(world, ann, password=OTHER_PASSWORD)  # wrong: a failure, recorded without the password
    world.call("POST", "/auth/change-password", ann,
               json={"current_password": NEW_PASSWORD, "new_password": OTHER_PASSWORD})  # fmt: skip
    invited = world.call("POST", "/invitations", ann, json={"email": "bob@acme.example"}).json()
    world.call("POST", f"/invitations/{invited['token']}/accept", json={"password": NEW_PASSWORD})
    world.call("POST", "/auth/refresh", json={"refresh_token": registered["refresh_token"]})
    world.call("POST", "/auth/logout", ann, json={"refresh_token": registered["refresh_token"]})
    entries = entries_after(world.client, before)
    assert [e["action"] for e in entries] == [
        "auth.register", "auth.login", "auth.login_failed", "auth.password_change", "invitation.create",
        "invitation.accept", "auth.logout",
    ]  # fmt: skip
    assert {e["account_id"] for e in entries} == {account}
    assert_no_secrets(world, entries)
    assert audit.verify(conn_of(world.client)).ok


def test_superadmin_cli_creation_and_reset_are_audited(world: World) -> None:
    from snackbase.users import create_superadmin

    app: Any = world.client.app
    before = last_seq(world.client)
    email = f"ops-{uuid7()[-8:]}@example.com"
    user_id, created = create_superadmin(app.state.settings, conn_of(world.client), email, NEW_PASSWORD)
    assert created
    create_superadmin(app.state.settings, conn_of(world.client), email, OTHER_PASSWORD, force=True)
    entries = entries_after(world.client, before)
    assert [(e["action"], e["auth_method"], e["account_id"], e["record_id"]) for e in entries] == [
        ("user.create", "cli", SYSTEM_ACCOUNT_ID, user_id),
        ("auth.password_change", "cli", SYSTEM_ACCOUNT_ID, user_id),
    ]
    assert_no_secrets(world, entries)
