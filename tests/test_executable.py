"""Builds the one-file executable with build.py and runs it from a temporary directory."""

from __future__ import annotations

import os
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


def test_the_machines_site_packages_stay_out(executable: Path, tmp_path: Path) -> None:
    """The launcher runs Python with -S: the executable uses only what it carries, and the .pth files of
    the machine's Python (which may import anything, and cost start time) never run."""
    marker = tmp_path / "pth-ran"
    env = {"PATH": os.environ["PATH"], "PYTHONUSERBASE": str(tmp_path / "userbase")}
    user_site = subprocess.run(
        [system_python(), "-c", "import site; print(site.getusersitepackages())"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(user_site).mkdir(parents=True)
    (Path(user_site) / "probe.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    subprocess.run([system_python(), "-c", "pass"], env=env, check=True)
    assert marker.exists()  # the probe works: a plain python3 runs it
    marker.unlink()
    result = subprocess.run([str(executable), "version"], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == __version__
    assert not marker.exists()


def _python3_that_notes_it_ran(bin_dir: Path, marker: Path) -> dict[str, str]:
    """A `python3` first on PATH that notes it ran, then runs the real one (as pyenv's shim does)."""
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f'#!/bin/sh\ntouch {marker}\nexec {system_python()} "$@"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_runs_the_python_it_was_built_with_without_a_path_lookup(executable: Path, tmp_path: Path) -> None:
    """A `python3` found on PATH may be a version manager's shim (pyenv's took ~90 ms per start)."""
    marker = tmp_path / "path-python-ran"
    env = _python3_that_notes_it_ran(tmp_path / "bin", marker)
    result = subprocess.run([str(executable), "version"], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == __version__
    assert not marker.exists()
    assert (
        executable.read_bytes().split(b"\n")[1].startswith(b"x=" + os.path.realpath(sys.executable).encode())
    )


def test_without_that_python_it_runs_python3_from_path(executable: Path, tmp_path: Path) -> None:
    """Copied to a machine where the build's interpreter is not at the same place."""
    marker = tmp_path / "path-python-ran"
    env = _python3_that_notes_it_ran(tmp_path / "bin", marker)
    built_with = os.path.realpath(sys.executable).encode()
    elsewhere = b"/" + b"x" * (len(built_with) - 1)  # same length: the zip after it stays where it was
    copy = tmp_path / "snackbase"
    copy.write_bytes(executable.read_bytes().replace(b"x=" + built_with, b"x=" + elsewhere, 1))
    copy.chmod(0o755)
    result = subprocess.run([str(copy), "version"], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == __version__
    assert marker.exists()


def _imported(executable: Path, cwd: Path, env: dict[str, str]) -> str:
    """What `executable version` imports (Python's -X importtime lines), after checking its answer."""
    result = subprocess.run(
        [str(executable), "version"],
        cwd=cwd,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == __version__, result.stderr[-2000:]
    return result.stderr


def test_once_unpacked_it_starts_without_shivs_bootstrap(executable: Path, tmp_path: Path) -> None:
    """The first start unpacks with shiv's bootstrap; later ones import the CLI from the unpacked copy
    (the bootstrap's imports were ~60 ms of a start). Any SHIV_* setting but SHIV_ROOT goes to shiv."""
    root = {"SHIV_ROOT": str(tmp_path / "shiv")}
    assert "| _bootstrap" in _imported(executable, tmp_path, root)  # first start: unpacks
    assert list((tmp_path / "shiv").glob(f"{executable.name}_*/site-packages"))
    later = _imported(executable, tmp_path, root)
    assert "| _bootstrap" not in later and "| runpy" not in later and "| snackbase.cli" in later
    assert "| _bootstrap" in _imported(executable, tmp_path, {**root, "SHIV_FORCE_EXTRACT": "1"})


def test_the_current_directory_does_not_shadow_what_it_carries(executable: Path, tmp_path: Path) -> None:
    """`python -c` would put the current directory first on sys.path; the launcher takes it off."""
    (tmp_path / "click.py").write_text("raise SystemExit('the current directory was imported from')\n")
    root = {"SHIV_ROOT": str(tmp_path / "shiv")}
    for _ in range(2):  # the first start (shiv's bootstrap) and a later one (the unpacked copy)
        _imported(executable, tmp_path, root)


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


def test_files_in_the_executable_without_pillow(executable: Path, tmp_path: Path) -> None:
    """The executable stores and serves files; it has no Pillow, so `?thumb=` serves the original
    image with `X-Thumb: unavailable` (docs/files.md)."""
    import json

    email, password = "root@example.com", "Correct horse battery staple 42"
    server = ServerProcess(
        [system_python(), str(executable)],
        tmp_path / "data",
        env={"SNACKBASE_SUPERADMIN_EMAIL": email, "SNACKBASE_SUPERADMIN_PASSWORD": password},
    )

    def call(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            server.url + "/api/v1" + path, data=body or None, method=method, headers=headers
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()

    try:
        login = {"email": email, "password": password, "account_identifier": "system"}
        token = json.loads(
            call("POST", "/auth/login", json.dumps(login).encode(), {"content-type": "application/json"})[2]
        )["access_token"]
        admin = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        body = {
            "name": "pics",
            "fields": [{"name": "img", "type": "file"}],
            "rules": {"view": "", "create": ""},
        }
        call("POST", "/collections", json.dumps(body).encode(), admin)
        signup = {"account_name": "Lab", "email": "lab@example.com", "password": password}
        user = json.loads(
            call("POST", "/auth/register", json.dumps(signup).encode(), {"content-type": "application/json"})[
                2
            ]
        )
        image = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # a PNG signature is enough: no decoder runs
        form = (
            b'--b\r\ncontent-disposition: form-data; name="img"; filename="x.png"\r\n\r\n'
            + image
            + b"\r\n--b--\r\n"
        )
        status, _, raw = call(
            "POST",
            "/records/pics",
            form,
            {
                "authorization": f"Bearer {user['access_token']}",
                "content-type": "multipart/form-data; boundary=b",
            },
        )
        record = json.loads(raw)
        assert status == 201 and record["img"]["type"] == "image/png"
        status, headers, data = call(
            "GET", f"/files/pics/{record['id']}/{record['img']['name']}?thumb=100x100", b"", {}
        )
        assert (
            status == 200
            and data == image
            and {k.lower(): v for k, v in headers.items()}["x-thumb"] == "unavailable"
        )
    finally:
        server.stop()
