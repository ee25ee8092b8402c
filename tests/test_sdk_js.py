"""The JavaScript SDK's own tests (sdk/js/test, Node's built-in test runner) against a real server process
that they start with this interpreter. Skips nothing: every SDK test must pass."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "sdk" / "js"


def test_the_js_sdk_passes_its_tests_against_a_real_server() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is missing (apt-get install nodejs)")
        pytest.skip("node is not installed")
    env = {**os.environ, "SNACKBASE_PYTHON": sys.executable}
    result = subprocess.run(
        [node, "--test", "test/"], cwd=SDK, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|cancelled|skipped|todo) (\d+)$", output, re.M)}
    assert counts["pass"] >= 16 and counts["fail"] == counts["cancelled"] == counts["skipped"] == 0, counts


def test_the_sdk_package_has_no_runtime_dependencies() -> None:
    import json

    package = json.loads((SDK / "package.json").read_text(encoding="utf-8"))
    assert package["type"] == "module"
    assert not package.get("dependencies") and not package.get("peerDependencies")
    assert (SDK / package["types"]).is_file()
