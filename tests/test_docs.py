"""The docs stay in sync with the code: every route and every setting is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from snackbase.app import api_tables
from snackbase.config import env_name, setting_names
from snackbase.routes import health

ROOT = Path(__file__).resolve().parent.parent


def docs_text() -> str:
    return "\n".join(
        p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )


@pytest.mark.parametrize("name", setting_names())
def test_every_setting_is_in_the_readme_or_docs(name: str) -> None:
    assert env_name(name) in docs_text()


def all_paths() -> list[str]:
    paths = [path for _, path, _ in health.root_routes]
    paths += [path for table in api_tables() for _, path, _ in table if path]
    return sorted(set(paths))


@pytest.mark.parametrize("path", all_paths())
def test_every_route_is_documented(path: str) -> None:
    assert f"`{path}`" in docs_text() or f"`{path} " in docs_text(), (
        f"{path} is not in README.md or docs/*.md"
    )
