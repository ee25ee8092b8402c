"""Fixtures: an in-process app on a temporary data dir, and a real server process on a free port."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def fresh_interpreter(code: str) -> str:
    """Runs `code` in a new Python process from the project root (what it imports starts from
    nothing there, unlike in this test process) and returns what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values = {"data_dir": str(data_dir), "environment": "testing", "log_level": "WARNING"}
    values.update(overrides)
    # A path that never exists: the developer's own .env must not leak into tests.
    return load_settings(values, env_file=data_dir / "no-such.env")


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The database the `settings` (and so `client`) fixture runs on: SQLite, unless the test module
    sets `BACKENDS = ("sqlite", "postgresql")`, which runs each of its tests on both (a test marked
    `sqlite_only` runs on SQLite alone: what it uses is not ported to PostgreSQL yet)."""
    return str(getattr(request, "param", "sqlite"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "backend" in metafunc.fixturenames:
        if metafunc.definition.get_closest_marker("sqlite_only"):
            backends = ("sqlite",)
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def settings(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Settings:
    if backend == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        return make_settings(tmp_path / "data", database_url=cluster.create_database())
    return make_settings(tmp_path / "data")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`snackbase serve` in a child process; stopped with SIGTERM by its own PID."""

    def __init__(
        self, command: list[str], data_dir: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        full_env = {
            **os.environ,
            "SNACKBASE_ENVIRONMENT": "testing",
            "SNACKBASE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        args = [*command, "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(
            args,
            env=full_env,
            cwd=cwd or data_dir.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"server exited early: {stderr}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not become ready")

    def stop(self, timeout: float = 15.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts real server processes (python -m snackbase); all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, command: list[str] | None = None) -> ServerProcess:
        server = ServerProcess(command or [sys.executable, "-m", "snackbase"], tmp_path / "data", env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- auth fixtures: users minted straight into the database, tokens minted with the app's secret -------

TEST_PASSWORD = "Correct horse battery staple 42"


@functools.cache
def test_password_hash() -> str:
    from snackbase.passwords import TESTING_PARAMS, hasher

    return hasher(TESTING_PARAMS).hash(TEST_PASSWORD)


def create_user(
    app: Any,
    role: str = "user",
    account_id: str | None = None,
    email: str | None = None,
    groups: tuple[str, ...] = (),
    password_hash: str | None = None,
) -> dict[str, Any]:
    from snackbase.accounts import create_account
    from snackbase.auth import mint_access_token
    from snackbase.ids import uuid7
    from snackbase.sessions import create_session
    from snackbase.unit_of_work import unit_of_work
    from snackbase.users import group_ids, insert_user, set_groups

    conn, settings = app.state.db.conn, app.state.settings
    email = email or f"user-{uuid7()[-12:]}@example.com"
    with unit_of_work(conn):
        if account_id is None:
            account_id = create_account(conn, f"Company {uuid7()[-8:]}")["id"]
        user = insert_user(conn, account_id, email, password_hash or test_password_hash(), role)
        set_groups(conn, user["id"], group_ids(conn, account_id, list(groups)))
        session_id, refresh = create_session(conn, settings, user["id"], "testclient", "pytest")
    token = mint_access_token(
        settings, user_id=user["id"], account_id=account_id, role=role, session_id=session_id
    )
    return {
        "id": user["id"],
        "account_id": account_id,
        "email": email,
        "password": TEST_PASSWORD,
        "role": role,
        "session_id": session_id,
        "token": token,
        "refresh_token": refresh,
        "headers": {"authorization": f"Bearer {token}"},
    }


class SmtpSink:
    """Collects every email the app sends, parsed, in `messages`."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller

        self.port = port
        self.messages: list[Any] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email
        import email.policy

        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.messages) >= count, f"expected {count} emails, got {len(self.messages)}"
        return self.messages


@pytest.fixture
def make_user(client: TestClient) -> Callable[..., dict[str, Any]]:
    """make_user(role="user", account_id=None, email=None, groups=()) -> {id, account_id, email, password,
    session_id, token, refresh_token, headers}; a new account is created when account_id is None."""
    return lambda **kwargs: create_user(client.app, **kwargs)


@pytest.fixture
def superadmin(make_user: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return make_user(account_id="SY0000", role="admin", email="root@example.com")  # type: ignore[no-any-return]


@pytest.fixture
def superadmin_token(superadmin: dict[str, Any]) -> str:
    return str(superadmin["token"])


@pytest.fixture
def smtp_sink() -> Iterator[Any]:
    """A real SMTP server (aiosmtpd) on a free port; `.messages` holds the received emails."""
    sink = SmtpSink(free_port())
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def mail_client(tmp_path: Path, smtp_sink: Any) -> Iterator[TestClient]:
    """The app with SMTP pointed at `smtp_sink`."""
    settings = make_settings(
        tmp_path / "data",
        smtp_host="127.0.0.1",
        smtp_port=smtp_sink.port,
        smtp_tls="none",
        mail_from="SnackBase <sb@example.com>",
        public_url="https://sb.example.com",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def actors(make_user: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """One caller per role: plain user and admin of account A, admin of account B, a superadmin, and a
    target user in A; `actors[role]["headers"]` ({} for anonymous)."""
    admin = make_user(role="admin")
    account_a = admin["account_id"]
    return {
        "anonymous": {"headers": {}},
        "user": make_user(role="user", account_id=account_a),
        "admin": admin,
        "other_admin": make_user(role="admin"),
        "superadmin": make_user(role="admin", account_id="SY0000"),
        "target": make_user(role="user", account_id=account_a),
    }


@pytest.fixture
def hook_registry() -> Iterator[Any]:
    """The process-wide hook registry; every registration a test makes is undone afterwards."""
    from snackbase.hooks import hooks

    saved, slow = hooks.snapshot(), hooks.slow_seconds
    yield hooks
    hooks.restore(saved)
    hooks.slow_seconds = slow


# --- PostgreSQL: one throwaway cluster per test session (tests/pg.py), a new database per test ---------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    from tests import pg

    if pg.pg_bin() is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql; .ci/run installs it)")
    with pg.running(free_port()) as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """The URL of a new, empty PostgreSQL database on the session's cluster."""
    return str(pg_cluster.create_database())
