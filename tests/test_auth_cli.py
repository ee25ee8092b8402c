"""`snackbase superadmin create` and SNACKBASE_SUPERADMIN_EMAIL, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PASSWORD = "Granite falcon ledger 88"


def run(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SNACKBASE_ENVIRONMENT": "testing"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snackbase",
            "superadmin",
            "create",
            "--data-dir",
            str(tmp_path / "data"),
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


def test_create_force_and_errors(tmp_path: Path) -> None:
    created = run(tmp_path, "--email", "Root@Example.com", "--password", PASSWORD)
    assert created.returncode == 0 and "created" in created.stdout
    again = run(tmp_path, "--email", "root@example.com", "--password", PASSWORD)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    weak = run(tmp_path, "--email", "other@example.com", "--password", "short")
    assert weak.returncode == 1 and weak.stderr.startswith("snackbase: error: password refused")
    bad = run(tmp_path, "--email", "not-an-email", "--password", PASSWORD)
    assert bad.returncode == 1 and "valid email" in bad.stderr
    prompted = run(tmp_path, "--email", "root@example.com", "--force", stdin="Another granite ledger\n" * 2)
    assert prompted.returncode == 0 and "password reset" in prompted.stdout
    assert "Another granite ledger" not in prompted.stdout + prompted.stderr


def test_superadmin_from_settings_logs_in(start_server: Callable[..., Any]) -> None:
    server = start_server(
        env={"SNACKBASE_SUPERADMIN_EMAIL": "ops@example.com", "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD}
    )
    body = json.dumps(
        {"email": "ops@example.com", "password": PASSWORD, "account_identifier": "SY0000"}
    ).encode()
    request = urllib.request.Request(
        f"{server.url}/api/v1/auth/login", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["user"]["is_superadmin"] is True
