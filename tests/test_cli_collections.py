"""`snackbase collections export / import`: idempotent, ordered by references, one transaction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "snackbase"]

DEFINITIONS = [
    {
        "name": "books",
        "fields": [
            {"name": "title", "type": "text", "required": True},
            {"name": "author", "type": "reference", "options": {"collection": "authors"}},
        ],
        "rules": {"list": "", "view": ""},
    },
    {"name": "authors", "fields": [{"name": "name", "type": "text"}]},
]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_import_is_idempotent_and_export_round_trips(tmp_path: Path) -> None:
    source = tmp_path / "schema.json"
    source.write_text(json.dumps(DEFINITIONS))
    first = run(tmp_path, "collections", "import", str(source))
    assert first.returncode == 0, first.stderr
    assert "created: authors, books" in first.stdout
    second = run(tmp_path, "collections", "import", str(source))
    assert "unchanged: authors, books" in second.stdout and "created: -" in second.stdout
    exported = tmp_path / "out.json"
    assert run(tmp_path, "collections", "export", str(exported)).returncode == 0
    by_name = {d["name"]: d for d in json.loads(exported.read_text())}
    assert (
        by_name["books"]["rules"]["list"] == ""
        and by_name["books"]["fields"][1]["options"]["collection"] == "authors"
    )
    changed = [
        dict(DEFINITIONS[1], fields=[{"name": "name", "type": "text"}, {"name": "born", "type": "date"}])
    ]
    source.write_text(json.dumps(changed))
    assert "updated: authors" in run(tmp_path, "collections", "import", str(source)).stdout


def test_a_bad_definition_imports_nothing(tmp_path: Path) -> None:
    source = tmp_path / "schema.json"
    source.write_text(json.dumps([DEFINITIONS[1], {"name": "Bad Name", "fields": []}]))
    result = run(tmp_path, "collections", "import", str(source))
    assert result.returncode == 1 and result.stderr.startswith("snackbase: error:")
    exported = tmp_path / "out.json"
    run(tmp_path, "collections", "export", str(exported))
    assert json.loads(exported.read_text()) == []


def test_not_json_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "schema.json"
    source.write_text("{nope")
    result = run(tmp_path, "collections", "import", str(source))
    assert (
        result.returncode == 1 and "not valid JSON" in result.stderr and len(result.stderr.splitlines()) == 1
    )
