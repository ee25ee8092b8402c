"""Builds the one-file executable with build.py and runs it from a temporary directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from snackbase import __version__
from tests.conftest import ROOT, ServerProcess

pytestmark = pytest.mark.executable


@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("exe") / "snackbase"
    subprocess.run(
        [sys.executable, str(ROOT / "build.py"), "--output", str(output)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return output


def system_python() -> str:
    """The machine's own python3, outside the project's virtualenv."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and ".venv" not in candidate and Path(candidate).exists():
            return candidate
    pytest.fail("no system python3 found")


def test_one_file_under_15_mb(executable: Path) -> None:
    assert executable.is_file() and executable.stat().st_size < 15_000_000


def test_runs_from_any_directory(executable: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy = elsewhere / "snackbase"
    shutil.copy2(executable, copy)
    result = subprocess.run(
        ["./snackbase", "version"], cwd=elsewhere, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == __version__
    result = subprocess.run(
        [system_python(), str(copy), "version"], cwd="/", capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == __version__


def test_serves_with_system_python(executable: Path, tmp_path: Path) -> None:
    server = ServerProcess([system_python(), str(executable)], tmp_path / "data")
    with urllib.request.urlopen(server.url + "/api/v1") as response:
        assert response.status == 200
    # the OpenAPI document and the docs page's own files are bundled too
    with urllib.request.urlopen(server.url + "/api/v1/openapi.json") as response:
        assert b'"openapi":"3.1.0"' in response.read()
    for path in ("/docs", "/docs/docs.js", "/docs/docs.css"):
        with urllib.request.urlopen(server.url + path) as response:
            assert response.status == 200 and response.read()
    server.stop()
    assert (tmp_path / "data" / "snackbase.db").is_file()
