"""The docs stay in sync with the code: every route, setting, field type, field option and error code is
documented, and the docs stand alone (no pointers to files users do not have)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from snackbase.app import api_tables, root_tables
from snackbase.config import env_name, setting_names
from snackbase.errors import _DEFAULTS
from snackbase.field_types import _TYPE_OPTIONS
from snackbase.schema import FIELD_TYPES, Field

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))])


@pytest.mark.parametrize("name", setting_names())
def test_every_setting_is_in_the_readme_or_docs(name: str) -> None:
    assert env_name(name) in docs_text()


def all_paths() -> list[str]:
    paths = [path for table in root_tables() for _, path, _ in table]
    paths += [path for table in api_tables() for _, path, _ in table if path]
    return sorted(set(paths))


@pytest.mark.parametrize("path", all_paths())
def test_every_route_is_documented(path: str) -> None:
    assert f"`{path}`" in docs_text() or f"`{path} " in docs_text(), (
        f"{path} is not in README.md or docs/*.md"
    )


# --- field types and options: read from the tables schema.py validates with ----------------------


def type_section(kind: str) -> str:
    text = (DOCS / "fields.md").read_text(encoding="utf-8")
    start = text.find(f"### `{kind}`\n")
    assert start >= 0, f"docs/fields.md has no section for the field type {kind}"
    end = text.find("\n## ", start + 1)
    following = text.find("\n### ", start + 1)
    end = min(e for e in (end, following, len(text)) if e >= 0)
    return text[start:end]


@pytest.mark.parametrize("kind", FIELD_TYPES)
def test_every_field_type_and_its_options_are_documented(kind: str) -> None:
    section = type_section(kind)
    for option in _TYPE_OPTIONS[kind]:
        assert f"| `{option}` |" in section, f"option {option} of {kind} is not in docs/fields.md"


def test_every_field_key_and_the_common_options_are_documented() -> None:
    text = (DOCS / "fields.md").read_text(encoding="utf-8")
    for key in Field.__struct_fields__:
        assert f"| `{key}` |" in text, f"field key {key} is not in docs/fields.md"
    assert "`options.index: true`" in text


# --- error codes: scanned from the code ------------------------------------------------------------

_API_ERROR = re.compile(r'ApiError\(\s*(\d{3})\s*,\s*(?:code\s*=\s*)?"([a-z_]+)"')
_FIELD_CODE = re.compile(
    r'(?:field_error\(\s*(?:[^,()]+|[a-z_]+\([^()]*\))\s*,\s*|_Invalid\(\s*|"code":\s*)"([a-z_]+)"'
)


def source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "snackbase").rglob("*.py")))


def envelope_codes() -> list[tuple[int, str]]:
    found = {(int(status), code) for status, code in _API_ERROR.findall(source_text())}
    found |= {(status, code) for status, (code, _) in _DEFAULTS.items()}
    return sorted(found)


def field_codes() -> list[str]:
    return sorted(set(_FIELD_CODE.findall(source_text())))


def test_the_scans_find_the_codes_they_should() -> None:
    """Guards the regexes: if they stopped matching, the two tests below would pass vacuously."""
    assert {(400, "invalid_cursor"), (409, "collection_in_use"), (413, "payload_too_large")} <= set(
        envelope_codes()
    )
    assert {"too_long", "not_in_values", "reference_not_found", "invalid_option"} <= set(field_codes())


@pytest.mark.parametrize(("status", "code"), envelope_codes())
def test_every_error_code_is_documented_with_its_status(status: int, code: str) -> None:
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    assert f"| {status} | `{code}` |" in text, f"{status} {code} is not in docs/errors.md"


@pytest.mark.parametrize("code", field_codes())
def test_every_field_code_is_documented(code: str) -> None:
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    section = text[text.find("## Field codes") :]
    assert f"| `{code}` |" in section, f"field code {code} is not in docs/errors.md"


# --- the docs stand alone --------------------------------------------------------------------------

_FOREIGN = re.compile(r"SPEC|DESIGN\.md|\.\./shared|shared/|SPEC section")


@pytest.mark.parametrize("path", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_docs_never_point_at_files_users_do_not_have(path: str) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    assert not _FOREIGN.search(text), f"{path}: {_FOREIGN.search(text)}"


def test_the_filter_examples_in_the_docs_parse() -> None:
    from snackbase.filter import parse

    text = (DOCS / "filters.md").read_text(encoding="utf-8")
    example = text.split("```\n", 2)[1]  # the first fenced block: a complete filter
    parse(example.strip())
    for snippet in ('created_at >= "2026-11-01T00:00:00.000Z"', 'title ~ "50\\\\%"', "expires_at > @now"):
        assert f"`{snippet}`" in text
        parse(snippet)
