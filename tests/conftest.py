"""Fixtures: an in-process app on a temporary data dir, and a real server process on a free port."""

from __future__ import annotations

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


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values = {"data_dir": str(data_dir), "environment": "testing", "log_level": "WARNING"}
    values.update(overrides)
    # A path that never exists: the developer's own .env must not leak into tests.
    return load_settings(values, env_file=data_dir / "no-such.env")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
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

    def __init__(self, command: list[str], data_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        full_env = {**os.environ, "SNACKBASE_ENVIRONMENT": "testing", "SNACKBASE_LOG_LEVEL": "WARNING",
                    **(env or {})}
        args = [*command, "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(args, env=full_env, cwd=cwd or data_dir.parent,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early: {self.proc.stderr.read() if self.proc.stderr else ''}")
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
