"""The server and the command line on PostgreSQL (a real cluster from tests/pg.py): the seam selects
the backend, the probes answer, what is not ported yet answers 501 `not_on_postgresql` (never half-works),
`info` and `audit verify` work, and SQLite deployments never load the PostgreSQL driver."""

from __future__ import annotations

import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase import audit
from snackbase.app import create_app
from snackbase.backends.postgres import PgConnection, latest_version
from snackbase.config import ConfigError
from snackbase.unit_of_work import unit_of_work
from tests.conftest import ServerProcess, fresh_interpreter, make_settings
from tests.test_cli import assert_one_line_error, run_cli


def test_app_on_postgresql_answers_probes_and_unknown_paths(tmp_path: Path, pg_url: str) -> None:
    settings = make_settings(tmp_path / "data", database_url=pg_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.app.state.backend == "postgresql"  # type: ignore[attr-defined]
        for probe in ("/health", "/live", "/ready"):
            assert client.get(probe).json() == {"status": "ok"}
        assert client.get("/api/v1").json()["name"] == "SnackBase"
        assert client.get("/nowhere").json()["code"] == "not_found"
    # The data dir holds no SQLite database: the data lives in PostgreSQL.
    assert not (tmp_path / "data" / "snackbase.db").exists()
    conn = PgConnection(pg_url)
    assert conn.execute("SELECT version FROM snackbase_schema").fetchone() == (latest_version(),)
    conn.close()


def test_the_superadmin_from_settings_logs_in_and_defines_a_collection(tmp_path: Path, pg_url: str) -> None:
    """On PostgreSQL from start to a record, through the API only: the superadmin created at start
    logs in, creates an account and a collection, writes a record; the audit chain verifies."""
    password = "Correct horse battery staple 42"
    settings = make_settings(tmp_path / "data", database_url=pg_url, superadmin_email="root@example.com",
                             superadmin_password=password)  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        login = {"email": "root@example.com", "password": password, "account_identifier": "system"}
        answer = client.post("/api/v1/auth/login", json=login)
        assert answer.status_code == 200, answer.text
        root = {"authorization": f"Bearer {answer.json()['access_token']}"}
        account = client.post("/api/v1/accounts", headers=root, json={"name": "Acme"})
        assert account.status_code == 201, account.text
        notes = {"name": "notes", "fields": [{"name": "title", "type": "text", "required": True}],
                 "rules": dict.fromkeys(("list", "view", "create", "update", "delete"), "")}  # fmt: skip
        assert client.post("/api/v1/collections", headers=root, json=notes).status_code == 201
        headers = {**root, "x-account-id": account.json()["id"]}
        created = client.post("/api/v1/records/notes", headers=headers, json={"title": "first"})
        assert created.status_code == 201, created.text
        listed = client.get("/api/v1/records/notes?filter=title~'FIR'", headers=headers).json()
        assert [r["title"] for r in listed["items"]] == ["first"]
        assert client.get("/api/v1/audit-log/verify", headers=root).json()["ok"] is True


def test_a_bad_database_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        make_settings(tmp_path / "data", database_url="mysql://x@y/z")


def test_serve_on_postgresql_as_a_real_process(tmp_path: Path, pg_url: str) -> None:
    server = ServerProcess(
        [sys.executable, "-m", "snackbase"], tmp_path / "data", {"SNACKBASE_DATABASE_URL": pg_url}
    )
    try:
        with urllib.request.urlopen(server.url + "/ready", timeout=5) as answer:
            assert json.load(answer) == {"status": "ok"}
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.url + "/api/v1/backups", timeout=5)
        assert caught.value.code == 401  # served on PostgreSQL too: for a superadmin's token only
        caught.value.close()
    finally:
        code, err = server.stop()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status reports the signal.
    assert code in (0, -signal.SIGTERM), err
    assert "Traceback" not in err


def test_serve_with_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = "postgresql://nobody:secret@127.0.0.1:1/none"
    result = run_cli(
        "serve", "--port", "0", "--data-dir", str(tmp_path / "d"), "--database-url", url, cwd=tmp_path
    )
    assert_one_line_error(result, "cannot connect to PostgreSQL")
    assert "secret" not in result.stderr


def test_info_shows_the_backend(tmp_path: Path, pg_url: str) -> None:
    sqlite = json.loads(run_cli("info", "--data-dir", str(tmp_path / "d"), cwd=tmp_path).stdout)
    assert sqlite["database"]["backend"] == "sqlite"
    result = run_cli("info", "--database-url", pg_url.replace("postgres@", "postgres:pw@"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["database"]["backend"] == "postgresql" and info["database"]["reachable"] is True
    assert info["database"]["schema_version"] == 0  # nothing has migrated this database yet
    assert ":********@" in info["database"]["url"] and ":pw@" not in result.stdout
    assert info["settings"]["database_url"] == "********"


def test_audit_verify_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    create_app(make_settings(tmp_path / "data", database_url=pg_url)).state.db.close()  # migrates
    conn = PgConnection(pg_url)
    for _ in range(3):
        with unit_of_work(conn):
            audit.append(conn, account_id="SY0000", actor=audit.CLI_ACTOR, action="test")  # type: ignore[arg-type]
    result = run_cli("audit", "verify", "--database-url", pg_url, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok, 3 entries", result.stderr
    conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    conn.execute("UPDATE audit_log SET reason = 'rewritten' WHERE account_seq = 2")
    conn.close()
    result = run_cli("audit", "verify", "--database-url", pg_url, cwd=tmp_path)
    assert_one_line_error(result, "audit chain broken at seq 2 (account SY0000)")


def test_sqlite_never_imports_the_postgresql_driver(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from snackbase.app import create_app\n"
        "from tests.conftest import make_settings\n"
        f"create_app(make_settings(Path({str(tmp_path / 'data')!r})))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_binary')\n"
        "      or m in ('snackbase.backends.postgres', 'snackbase.backends.server')))\n"
    )
    assert fresh_interpreter(code).strip() == "[]"


def test_the_postgresql_app_serves_every_route_of_the_sqlite_app(tmp_path: Path, pg_url: str) -> None:
    """Nothing of the SQLite server is missing on PostgreSQL (backends/server.py `ported_tables`)."""

    def routes(app: Any) -> set[tuple[str, str]]:
        return {
            (method, route.path)
            for route in app.router.routes
            for method in (getattr(route, "methods", None) or {"WS"})
            if method != "HEAD"
        }

    sqlite_app = create_app(make_settings(tmp_path / "sqlite"))
    pg_app = create_app(make_settings(tmp_path / "pg", database_url=pg_url))
    try:
        assert routes(sqlite_app) - routes(pg_app) == set()
    finally:
        pg_app.state.db.close()  # type: ignore[attr-defined]
