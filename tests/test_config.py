"""Settings: precedence, .env parsing, the generated secret key, production refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from snackbase.config import ConfigError, ensure_data_dir, load_settings, parse_env_file, with_secret_key
from tests.conftest import make_settings


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(env_file=tmp_path / "none")
    assert (settings.host, settings.port, settings.api_prefix) == ("127.0.0.1", 8000, "/api/v1")
    assert settings.max_json_bytes == 1_048_576 and settings.access_token_expire_minutes == 60


def test_precedence_flags_over_env_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SNACKBASE_PORT=7000\nSNACKBASE_HOST=0.0.0.0\nSNACKBASE_LOG_LEVEL=DEBUG\n")
    monkeypatch.setenv("SNACKBASE_PORT", "7100")
    monkeypatch.setenv("SNACKBASE_HOST", "127.0.0.2")
    settings = load_settings({"port": 7200, "host": None}, env_file=env_file)
    assert (settings.port, settings.host, settings.log_level) == (7200, "127.0.0.2", "DEBUG")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1", {"A": "1"}),
        ("# comment\n\nexport B = two words # trailing", {"B": "two words"}),
        ('C="quoted # not comment"', {"C": "quoted # not comment"}),
        ("D='single'", {"D": "single"}),
        ("E=", {"E": ""}),
    ],
)
def test_env_file_parsing(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    path = tmp_path / ".env"
    path.write_text(text)
    assert parse_env_file(path) == expected


@pytest.mark.parametrize("line", ["JUST_A_WORD", "1BAD=x", 'Q="unterminated', "=value"])
def test_corrupt_env_line_names_the_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / ".env"
    path.write_text(f"OK=1\n{line}\n")
    with pytest.raises(ConfigError, match=r"\.env:2:"):
        parse_env_file(path)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SNACKBASE_PORT", "eighty", "whole number"),
        ("SNACKBASE_DEBUG", "maybe", "true or false"),
        ("SNACKBASE_ENVIRONMENT", "staging", "must be one of"),
        ("SNACKBASE_PORT", "70000", "between"),
        ("SNACKBASE_API_PREFIX", "api/", "must start with"),
    ],
)
def test_bad_values_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings(env_file=tmp_path / "none")


def test_secret_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d")
    ensure_data_dir(settings)
    first = with_secret_key(settings).secret_key
    assert len(first) >= 48 and with_secret_key(settings).secret_key == first
    mode = stat.S_IMODE((tmp_path / "d" / ".secret_key").stat().st_mode)
    assert mode == 0o600


@pytest.mark.parametrize("key", ["", "change-me", "short-key"])
def test_production_refuses_missing_or_placeholder_key(tmp_path: Path, key: str) -> None:
    settings = make_settings(tmp_path, environment="production", secret_key=key)
    with pytest.raises(ConfigError, match="SNACKBASE_SECRET_KEY"):
        with_secret_key(settings)


def test_production_accepts_a_real_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, environment="production", secret_key="k" * 40)
    assert with_secret_key(settings).secret_key == "k" * 40


def test_redacted_hides_secrets(tmp_path: Path) -> None:
    redacted = make_settings(tmp_path, secret_key="super-secret-value").redacted()
    assert redacted["secret_key"] == "********" and "super-secret-value" not in str(redacted)


def test_repr_shows_no_secret(tmp_path: Path) -> None:
    settings = load_settings(
        {"data_dir": str(tmp_path), "secret_key": "k" * 40, "smtp_password": "hunter2-smtp"},
        env_file=tmp_path / ".env",
    )
    assert settings.secret_key == "k" * 40 and settings.smtp_password == "hunter2-smtp"
    assert "k" * 40 not in repr(settings) and "hunter2-smtp" not in repr(settings)
