"""`snackbase migrate --from <data-dir> --to postgresql://…` (docs/scaling.md, "Moving from SQLite"):
a SQLite deployment built through the API moves to PostgreSQL, where a server reads the same records,
the same password logs in, the audit chains verify and new writes continue them; a non-empty target
and a source whose chain does not verify are refused, leaving the target as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw
import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.backends.postgres import PgConnection
from tests.conftest import make_settings
from tests.test_cli import assert_one_line_error, run_cli

API = "/api/v1"
ROOT_EMAIL, ROOT_PASSWORD = "root@example.com", "Correct horse battery staple 42"
USER_EMAIL, USER_PASSWORD = "ada@example.com", "Another long passphrase 42"
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")


def _login(client: TestClient, email: str, password: str, account: str) -> dict[str, str]:
    answer = client.post(
        f"{API}/auth/login", json={"email": email, "password": password, "account_identifier": account}
    )
    assert answer.status_code == 200, answer.text
    return {"authorization": f"Bearer {answer.json()['access_token']}"}


def _build_sqlite_deployment(data_dir: Path) -> dict[str, Any]:
    """Accounts, users, collections with references (to another collection, to itself, to users),
    records created, updated, deleted and signed: every kind of row the move copies."""
    settings = make_settings(data_dir, superadmin_email=ROOT_EMAIL, superadmin_password=ROOT_PASSWORD)
    with TestClient(create_app(settings)) as client:
        root = _login(client, ROOT_EMAIL, ROOT_PASSWORD, "system")
        registered = client.post(
            f"{API}/auth/register",
            json={"account_name": "Acme Labs", "email": USER_EMAIL, "password": USER_PASSWORD},
        )
        assert registered.status_code == 201, registered.text
        account = registered.json()["account"]["id"]
        user = _login(client, USER_EMAIL, USER_PASSWORD, account)
        authors = {"name": "authors", "fields": [{"name": "name", "type": "text", "required": True}],
                   "rules": PUBLIC}  # fmt: skip
        books = {
            "name": "books",
            "fields": [
                {"name": "title", "type": "text", "required": True},
                {"name": "pages", "type": "number"},
                {"name": "draft", "type": "boolean"},
                {"name": "author", "type": "reference", "options": {"collection": "authors"}},
                {"name": "sequel", "type": "reference", "options": {"collection": "books"}},
                {"name": "editor", "type": "user"},
            ],
            "rules": PUBLIC,
        }
        for definition in (authors, books):
            answer = client.post(f"{API}/collections", headers=root, json=definition)
            assert answer.status_code == 201, answer.text
        author = client.post(f"{API}/records/authors", headers=user, json={"name": "Ursula"}).json()
        user_id = client.get(f"{API}/auth/me", headers=user).json()["user"]["id"]
        first = client.post(f"{API}/records/books", headers=user, json={
            "title": "A Wizard", "pages": 183.5, "draft": True, "author": author["id"], "editor": user_id,
        }).json()  # fmt: skip
        second = client.post(f"{API}/records/books", headers=user,
                             json={"title": "The Tombs", "author": author["id"]}).json()  # fmt: skip
        # The first book names the second as its sequel: a reference to a row written after it.
        updated = client.patch(f"{API}/records/books/{first['id']}", headers=user,
                               json={"sequel": second["id"], "draft": False})  # fmt: skip
        assert updated.status_code == 200, updated.text
        gone = client.post(f"{API}/records/books", headers=user, json={"title": "Withdrawn"}).json()
        assert client.delete(f"{API}/records/books/{gone['id']}", headers=user).status_code == 204
        signed = client.post(f"{API}/records/books/{first['id']}/sign", headers=user,
                             json={"password": USER_PASSWORD, "meaning": "approved"})  # fmt: skip
        assert signed.status_code in (200, 201), signed.text
        assert client.get(f"{API}/audit-log/verify", headers=root).json()["ok"] is True
        first_read = client.get(f"{API}/records/books/{first['id']}", headers=user).json()
        listed = client.get(f"{API}/records/books?sort=title", headers=user).json()
        history = client.get(f"{API}/records/books/{first['id']}/history", headers=user).json()
    conn = apsw.Connection(str(data_dir / "snackbase.db"))
    max_seq = conn.execute("SELECT max(seq) FROM audit_log").fetchone()[0]
    conn.close()
    return {"account": account, "first": first_read, "list": listed, "history": history, "max_seq": max_seq}


def _relations(url: str) -> int:
    conn = PgConnection(url)
    try:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema()"
        ).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


@pytest.fixture
def deployment(tmp_path: Path, pg_cluster: Any) -> dict[str, Any]:
    return _build_sqlite_deployment(tmp_path / "sqlite_data")


def test_a_sqlite_deployment_moves_to_postgresql(
    tmp_path: Path, pg_url: str, deployment: dict[str, Any]
) -> None:
    moved = run_cli("migrate", "--from", str(tmp_path / "sqlite_data"), "--to", pg_url, cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    assert "ok: copied" in moved.stdout and "accounts' chains verified" in moved.stdout
    assert "audit_log: " in moved.stdout and "c_books: 2 rows" in moved.stdout

    verified = run_cli("audit", "verify", "--database-url", pg_url, cwd=tmp_path)
    assert verified.returncode == 0 and verified.stdout.startswith("ok, "), verified.stderr

    # A server on PostgreSQL with the same data dir: its secret key keeps the ETags (and tokens) valid.
    settings = make_settings(tmp_path / "sqlite_data", database_url=pg_url)
    with TestClient(create_app(settings)) as client:
        user = _login(client, USER_EMAIL, USER_PASSWORD, deployment["account"])  # the same password
        root = _login(client, ROOT_EMAIL, ROOT_PASSWORD, "system")
        first = deployment["first"]
        assert client.get(f"{API}/records/books/{first['id']}", headers=user).json() == first
        assert client.get(f"{API}/records/books?sort=title", headers=user).json() == deployment["list"]
        history = client.get(f"{API}/records/books/{first['id']}/history", headers=user).json()
        assert history == deployment["history"]
        expanded = client.get(f"{API}/records/books/{first['id']}?expand=author,sequel", headers=user).json()
        assert expanded["expand"]["author"]["name"] == "Ursula"
        assert expanded["expand"]["sequel"]["title"] == "The Tombs"
        # New writes continue the chains and the sequence, past what was copied.
        created = client.post(f"{API}/records/books", headers=user, json={"title": "Tehanu"})
        assert created.status_code == 201, created.text
        entry = client.get(f"{API}/audit-log?record_id={created.json()['id']}", headers=root).json()
        assert entry["items"][0]["seq"] > deployment["max_seq"]
        assert client.get(f"{API}/audit-log/verify", headers=root).json()["ok"] is True
        # The foreign keys hold on PostgreSQL: an author with books cannot be deleted (restrict).
        author = first["author"]
        assert client.delete(f"{API}/records/authors/{author}", headers=user).status_code == 409


def test_a_non_empty_target_is_refused_and_left_alone(
    tmp_path: Path, pg_url: str, deployment: dict[str, Any]
) -> None:
    first = run_cli("migrate", "--from", str(tmp_path / "sqlite_data"), "--to", pg_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _relations(pg_url)
    again = run_cli("migrate", "--from", str(tmp_path / "sqlite_data"), "--to", pg_url, cwd=tmp_path)
    assert_one_line_error(again, "the target is not empty")
    assert _relations(pg_url) == before
    verified = run_cli("audit", "verify", "--database-url", pg_url, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr


def test_a_chain_that_does_not_verify_is_refused_and_nothing_is_written(
    tmp_path: Path, pg_url: str, deployment: dict[str, Any]
) -> None:
    # Someone edits an entry behind the triggers' back (dropping them first, as an attacker could).
    conn = apsw.Connection(str(tmp_path / "sqlite_data" / "snackbase.db"))
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                        "AND tbl_name = 'audit_log'")]  # fmt: skip
    for name in names:
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute(
        "UPDATE audit_log SET reason = 'nothing happened' WHERE seq = (SELECT max(seq) FROM audit_log)"
    )
    conn.close()
    moved = run_cli("migrate", "--from", str(tmp_path / "sqlite_data"), "--to", pg_url, cwd=tmp_path)
    assert_one_line_error(moved, "does not verify on arrival")
    assert _relations(pg_url) == 0  # rolled back: the target is as empty as before


def test_bad_arguments_are_one_line(tmp_path: Path, pg_url: str) -> None:
    missing = run_cli("migrate", "--from", str(tmp_path / "nothing"), "--to", pg_url, cwd=tmp_path)
    assert_one_line_error(missing, "no SQLite database")
    not_pg = run_cli("migrate", "--from", str(tmp_path), "--to", "mysql://x@y/z", cwd=tmp_path)
    assert_one_line_error(not_pg, "postgresql://")
    assert _relations(pg_url) == 0


def test_file_and_searchable_fields_move_and_search_works_on_arrival(tmp_path: Path, pg_url: str) -> None:
    """A file field's bookkeeping and a searchable field move; the stored file stays where storage
    keeps it (the same data dir here) and downloads on PostgreSQL; the full-text index is built."""
    settings = make_settings(
        tmp_path / "data", superadmin_email=ROOT_EMAIL, superadmin_password=ROOT_PASSWORD
    )
    docs = {
        "name": "docs",
        "fields": [
            {"name": "title", "type": "text", "options": {"searchable": True}},
            {"name": "scan", "type": "file"},
        ],
        "rules": PUBLIC,
    }
    with TestClient(create_app(settings)) as client:
        root = _login(client, ROOT_EMAIL, ROOT_PASSWORD, "system")
        assert client.post(f"{API}/collections", headers=root, json=docs).status_code == 201
        signup = {"account_name": "Lab", "email": USER_EMAIL, "password": USER_PASSWORD}
        account = client.post(f"{API}/auth/register", json=signup).json()["account"]["id"]
        user = _login(client, USER_EMAIL, USER_PASSWORD, account)
        made = client.post(f"{API}/records/docs", headers=user, data={"title": "buffer solutions"},
                           files={"scan": ("notes.txt", b"pH 7.4 at 25 C\n", "text/plain")})  # fmt: skip
        assert made.status_code == 201, made.text
        record = made.json()
        made = client.post(f"{API}/records/docs", headers=user, json={"title": "titration curves"})
        assert made.status_code == 201, made.text
    moved = run_cli("migrate", "--from", str(tmp_path / "data"), "--to", pg_url, cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    assert "c_docs: 2 rows" in moved.stdout
    with TestClient(create_app(make_settings(tmp_path / "data", database_url=pg_url))) as client:
        user = _login(client, USER_EMAIL, USER_PASSWORD, account)
        found = client.get(f"{API}/records/docs", params={"filter": '@search("buffer")'}, headers=user)
        assert found.status_code == 200, found.text
        assert [r["id"] for r in found.json()["items"]] == [record["id"]]
        name = found.json()["items"][0]["scan"]["name"]
        download = client.get(f"{API}/files/docs/{record['id']}/{name}", headers=user)
        assert download.status_code == 200 and download.content == b"pH 7.4 at 25 C\n"
