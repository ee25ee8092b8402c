"""The command line, run as a real process: serve, shutdown, one-line errors, info, init-db, version."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from snackbase import __version__
from snackbase.migrations import latest_version
from tests.conftest import ServerProcess

CLI = [sys.executable, "-m", "snackbase"]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SNACKBASE_")}
    full_env.update(env or {})
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("snackbase: error:") and needle in lines[0]
    assert "Traceback" not in result.stderr


def test_version(tmp_path: Path) -> None:
    assert run_cli("version", cwd=tmp_path).stdout.strip() == __version__
    assert run_cli("--version", cwd=tmp_path).stdout.strip() == f"snackbase {__version__}"


def test_serve_creates_the_database_and_shuts_down_cleanly(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with urllib.request.urlopen(server.url + "/api/v1") as response:
        assert json.load(response)["name"] == "SnackBase"
    assert (server.data_dir / "snackbase.db").is_file()
    code, stderr = server.stop()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status reports the signal.
    assert code in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
    # The WAL was checkpointed into the main file on shutdown.
    wal = server.data_dir / "snackbase.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_serve_prints_urls_and_logs_json_lines(tmp_path: Path) -> None:
    server = ServerProcess(CLI, tmp_path / "data", env={"SNACKBASE_LOG_LEVEL": "INFO"})
    with urllib.request.urlopen(
        urllib.request.Request(server.url + "/health", headers={"X-Request-ID": "trace-1"})
    ):
        pass
    _, stderr = server.stop()
    assert f"REST API: {server.url}/api/v1" in stderr and f"Admin UI: {server.url}/_/" in stderr
    access = [
        json.loads(line) for line in stderr.splitlines() if line.startswith("{") and '"request"' in line
    ]
    line = next(entry for entry in access if entry.get("request_id") == "trace-1")
    assert line["path"] == "/health" and line["status"] == 200 and line["method"] == "GET"
    assert {"time", "level", "duration_ms"} <= set(line)


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert_one_line_error(result, "already in use")


def test_unknown_flag_is_one_line(tmp_path: Path) -> None:
    result = run_cli("serve", "--bogus", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, "--bogus")


def test_unwritable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_line_error(run_cli("serve", "--data-dir", str(blocker / "sub"), cwd=tmp_path), "data dir")


def test_corrupt_env_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SNACKBASE_PORT=8001\nthis is not an assignment\n")
    assert_one_line_error(run_cli("serve", cwd=tmp_path), ".env:2")


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    conn = apsw.Connection(str(data / "snackbase.db"))
    conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    conn.close()
    before = (data / "snackbase.db").read_bytes()
    assert_one_line_error(run_cli("serve", "--data-dir", str(data), cwd=tmp_path), "newer")
    assert (data / "snackbase.db").read_bytes() == before


def test_not_a_database_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "snackbase.db").write_bytes(b"this is not sqlite" * 100)
    assert_one_line_error(run_cli("serve", "--data-dir", str(data), cwd=tmp_path), "not a SQLite database")


def test_production_without_key_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--data-dir", str(tmp_path / "d"), cwd=tmp_path, env={"SNACKBASE_ENVIRONMENT": "production"}
    )
    assert_one_line_error(result, "SNACKBASE_SECRET_KEY")


def test_info_redacts_secrets_and_reads_env_and_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SNACKBASE_PORT=9123\n")
    result = run_cli("info", cwd=tmp_path, env={"SNACKBASE_SECRET_KEY": "do-not-print-me"})
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["settings"]["port"] == 9123 and info["settings"]["secret_key"] == "********"
    assert "do-not-print-me" not in result.stdout


def test_init_db_refuses_to_wipe_without_force(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    assert run_cli("init-db", "--data-dir", data, cwd=tmp_path).returncode == 0
    conn = apsw.Connection(str(tmp_path / "d" / "snackbase.db"))
    conn.execute("UPDATE accounts SET name = 'Changed' WHERE id = 'SY0000'")
    conn.close()
    assert_one_line_error(run_cli("init-db", "--data-dir", data, cwd=tmp_path), "--force")
    assert run_cli("init-db", "--data-dir", data, "--force", cwd=tmp_path).returncode == 0
    conn = apsw.Connection(str(tmp_path / "d" / "snackbase.db"))
    assert conn.execute("SELECT name FROM accounts WHERE id = 'SY0000'").fetchall() == [("System",)]


def test_shell_has_settings_and_database(tmp_path: Path) -> None:
    code = "print(q('SELECT slug FROM accounts')[0]['slug'], settings.port)\n"
    result = subprocess.run(
        [*CLI, "shell", "--data-dir", str(tmp_path / "d")],
        input=code,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "system 8000" in result.stdout


@pytest.mark.parametrize("workers", ["2"])
def test_several_workers_serve(tmp_path: Path, workers: str) -> None:
    server = ServerProcess([*CLI], tmp_path / "data", env={"SNACKBASE_WORKERS": workers})
    for _ in range(4):
        with urllib.request.urlopen(server.url + "/ready") as response:
            assert response.status == 200
    code, stderr = server.stop()
    assert code in (0, -signal.SIGTERM) and "Traceback" not in stderr, stderr


def test_serve_on_asyncios_loop(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(env={"SNACKBASE_EVENT_LOOP": "asyncio"})
    for _ in range(3):
        with urllib.request.urlopen(server.url + "/api/v1") as response:
            assert json.load(response)["name"] == "SnackBase"


def test_connections_get_tcp_nodelay_on_asyncios_loop_too() -> None:
    """The listening socket names TCP, so asyncio's loop sets TCP_NODELAY on every connection it
    accepts (uvloop always does); without it each small answer waited ~40 ms for a delayed ACK."""
    import asyncio
    import socket

    from snackbase.cli import bind_socket

    async def accepted_nodelay() -> int:
        listener = bind_socket("127.0.0.1", 0)
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        value = await asyncio.wait_for(accepted, 5)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0


def test_an_unknown_event_loop_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        "info", "--data-dir", str(tmp_path / "d"), cwd=tmp_path, env={"SNACKBASE_EVENT_LOOP": "tokio"}
    )
    assert result.returncode != 0
    assert "SNACKBASE_EVENT_LOOP must be one of uvloop, asyncio" in result.stderr
