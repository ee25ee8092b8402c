"""Test data made directly in the app's database: accounts, users with live sessions, their tokens.

Tokens are minted with the app's own secret (DESIGN.md convention 8), so tests need no password round
trip; the sessions are real rows, so revocation and tenancy behave exactly as in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.testclient import TestClient

from snackbase.accounts import create_account
from snackbase.ids import SYSTEM_ACCOUNT_ID, uuid7
from snackbase.sessions import create_session
from snackbase.tokens import mint_access_token
from snackbase.unit_of_work import unit_of_work
from snackbase.users import insert_user


@dataclass
class User:
    id: str
    account_id: str
    email: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


def make_account(client: TestClient, name: str = "Acme") -> str:
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    with unit_of_work(conn):
        return str(create_account(conn, name)["id"])


def make_user(client: TestClient, account_id: str, role: str = "user", email: str | None = None) -> User:
    app: Any = client.app
    conn, settings = app.state.db.conn, app.state.settings
    email = email or f"u{uuid7()[-8:]}@example.com"
    with unit_of_work(conn):
        user_id = insert_user(conn, account_id, email, "not-a-usable-hash", role)["id"]
        session_id, _ = create_session(conn, settings, user_id, "127.0.0.1", "pytest")
    token = mint_access_token(
        settings, user_id=user_id, account_id=account_id, role=role, session_id=session_id
    )
    return User(user_id, account_id, email, role, token)


def make_superadmin(client: TestClient) -> User:
    return make_user(client, SYSTEM_ACCOUNT_ID, "admin")


def add_to_group(client: TestClient, user: User, group: str) -> None:
    """Puts the user in the named group of its account, creating the group when needed."""
    conn = client.app.state.db.conn  # type: ignore[attr-defined]
    with unit_of_work(conn):
        row = conn.execute(
            "SELECT id FROM groups WHERE account_id = ? AND name = ?", (user.account_id, group)
        ).fetchone()
        if row is None:
            row = (uuid7(),)
            conn.execute(
                "INSERT INTO groups (id, account_id, name, created_at, updated_at) "
                "VALUES (?, ?, ?, 'x', 'x')",
                (row[0], user.account_id, group),
            )
        conn.execute(
            "INSERT INTO group_members (group_id, user_id, created_at) VALUES (?, ?, 'x')", (row[0], user.id)
        )
