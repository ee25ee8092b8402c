"""Settings: one table of every setting, read from flags, `SNACKBASE_*` environment variables and `.env`.

Precedence, highest first: command-line flags, the process environment, the `.env` file in the working
directory, the defaults below. This module imports nothing of ours so every other module may use it.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "SNACKBASE_"
# Not a setting: the path of the write baton's FIFO, which `serve --workers N` hands its workers
# (snackbase.write_baton). Named here so the write path can look for it without importing that module.
WRITE_BATON_ENV = "SNACKBASE_WRITE_BATON"
SECRET_FILE = ".secret_key"
# Values that look like a key but are copied from an example; refused in production.
_PLACEHOLDER_KEYS = {
    "",
    "change-me",
    "changeme",
    "secret",
    "your-secret-key",
    "snackbase",
    "dev",
    "development",
}
_MIN_PRODUCTION_KEY_LENGTH = 32


class ConfigError(Exception):
    """A setting that cannot be used; the CLI prints it as one line and exits non-zero."""


def _meta(doc: str, secret: bool = False, choices: tuple[str, ...] = ()) -> Any:
    return field(metadata={"doc": doc, "secret": secret, "choices": choices})


# No generated repr, which would print the secrets, and no generated equality, which nothing uses: each
# generated method of these 64 fields is compiled at every start (the two were ~3 ms of it here).
@dataclass(frozen=True, repr=False, eq=False)
class Settings:
    environment: str = _meta(
        "development, production or testing", choices=("development", "production", "testing")
    )
    debug: bool = _meta("more detail in logs (never in responses)")
    api_prefix: str = _meta("prefix of the REST API")
    host: str = _meta("listen address")
    port: int = _meta("listen port")
    workers: int = _meta("number of server processes")
    event_loop: str = _meta(
        "uvloop (faster, the default) or asyncio",
        choices=("uvloop", "asyncio"),
    )
    data_dir: str = _meta("database, files, hooks, generated secret")
    database_url: str = _meta(
        "postgresql://user:password@host:port/dbname runs on PostgreSQL instead of SQLite "
        "(see docs/scaling.md for what runs there today); empty = SQLite in the data dir",
        secret=True,
    )
    secret_key: str = _meta("JWT signing key (generated and kept in the data dir when unset)", secret=True)
    access_token_expire_minutes: int = _meta("access token lifetime in minutes")
    refresh_token_expire_days: int = _meta("refresh token lifetime in days")
    session_idle_minutes: int = _meta(
        "sign out a session unused for this many minutes (refresh refused; the console signs out); 0 = off"
    )
    cors_origins: str = _meta("comma-separated allowed CORS origins")
    log_level: str = _meta("DEBUG, INFO, WARNING or ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _meta("json or console", choices=("json", "console"))
    max_json_bytes: int = _meta("request body limit for JSON, in bytes")
    statement_timeout_ms: int = _meta("longest time one SQL statement may run before it is interrupted")
    loop_budget_ms: int = _meta(
        "longest time one request's SQL may hold the event loop: a slower read moves to a reader thread, "
        "a write's rule checks past it answer 503 (0 = no limit)"
    )
    db_readers: int = _meta(
        "reader threads (each with its own connection) for reads that outgrow the loop; on PostgreSQL, "
        "for every read"
    )
    registration: str = _meta(
        "open, or closed (then only superadmins create accounts)", choices=("open", "closed")
    )
    password_min_length: int = _meta("shortest accepted password, 12 to 128 characters")
    require_verified_email: bool = _meta("refuse login (403 email_not_verified) until the email is verified")
    invitation_expire_hours: int = _meta("how long an invitation can be accepted, in hours")
    login_backoff_after: int = _meta("failed logins in a row before 429 with backoff")
    login_lockout_after: int = _meta("failed logins in a row before a lockout")
    login_ip_max_failures: int = _meta("failed logins per client IP per 15 minutes before 429")
    smtp_host: str = _meta("SMTP server; empty = emails are written to the log")
    smtp_port: int = _meta("SMTP port")
    smtp_user: str = _meta("SMTP user name (empty = no authentication)")
    smtp_password: str = _meta("SMTP password", secret=True)
    smtp_tls: str = _meta("starttls, ssl or none", choices=("starttls", "ssl", "none"))
    mail_from: str = _meta("sender address of emails")
    public_url: str = _meta("base URL used in email links (default http://host:port)")
    superadmin_email: str = _meta("create this superadmin at start when it does not exist")
    superadmin_password: str = _meta("password of SNACKBASE_SUPERADMIN_EMAIL", secret=True)
    hooks_dir: str = _meta("directory of hook files (*.py) loaded at start (default <data-dir>/hooks)")
    backup_dir: str = _meta("where backup archives are written (default <data-dir>/backups)")
    backup_cron: str = _meta("cron schedule of automatic backups, UTC (empty = none)")
    backup_keep: int = _meta("archives kept in the backup dir; older ones are deleted (0 = keep all)")
    backup_storage: str = _meta("where backup archives are kept: local (the backup dir) or s3 (backups/)",
                                choices=("local", "s3"))  # fmt: skip
    metrics_enabled: bool = _meta("serve GET /metrics in the Prometheus text format")
    metrics_token: str = _meta("bearer token GET /metrics requires (empty = none)", secret=True)
    rate_limit_reads: str = _meta("reads allowed per caller, as COUNT/SECONDS (empty = no limit)")
    rate_limit_writes: str = _meta("writes allowed per caller, as COUNT/SECONDS (empty = no limit)")
    rate_limit_auth: str = _meta("auth requests allowed per caller, as COUNT/SECONDS (empty = no limit)")
    rate_limit_uploads: str = _meta("uploads allowed per caller, as COUNT/SECONDS (empty = no limit)")
    trusted_proxies: str = _meta("comma-separated proxy addresses/networks whose X-Forwarded-For is used")
    request_log_days: int = _meta("days of request logs kept in <data-dir>/requests.db (0 = none)")
    files_storage: str = _meta("where uploaded files are stored: local (<data-dir>/files) or s3",
                               choices=("local", "s3"))  # fmt: skip
    files_quota_bytes: int = _meta("stored file bytes allowed per account; 0 = no quota")
    files_batch_max_bytes: int = _meta("total bytes of the files one multipart batch may upload")
    s3_endpoint: str = _meta("S3-compatible endpoint URL, e.g. https://s3.eu-central-1.amazonaws.com")
    s3_bucket: str = _meta("S3 bucket holding the files (files/ prefix) and S3 backups (backups/)")
    s3_region: str = _meta("S3 region used in request signatures")
    s3_access_key: str = _meta("S3 access key id")
    s3_secret_key: str = _meta("S3 secret access key", secret=True)
    s3_force_path_style: bool = _meta("address the bucket as endpoint/bucket (true) or bucket.endpoint")
    realtime_max_topics: int = _meta("topics one realtime client may subscribe to")
    realtime_max_connections_per_user: int = _meta("realtime connections one user may hold (per process)")
    realtime_max_connections_per_address: int = _meta(
        "realtime connections one IP address may hold (per process)"
    )
    realtime_send_queue: int = _meta(
        "messages queued for a realtime client before it is disconnected as slow"
    )
    realtime_heartbeat_seconds: int = _meta("seconds between heartbeats to each realtime client")

    # The defaults live here rather than on the fields so `_meta` stays readable above.
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "environment": "development",
            "debug": False,
            "api_prefix": "/api/v1",
            "host": "127.0.0.1",
            "port": 8000,
            "workers": 1,
            "event_loop": "uvloop",
            "data_dir": "./sb_data",
            "database_url": "",
            "secret_key": "",
            "access_token_expire_minutes": 60,
            "refresh_token_expire_days": 7,
            "session_idle_minutes": 15,
            "cors_origins": "",
            "log_level": "INFO",
            "log_format": "json",
            "max_json_bytes": 1_048_576,
            "statement_timeout_ms": 5_000,
            "loop_budget_ms": 50,
            "db_readers": 2,
            "registration": "open",
            "password_min_length": 12,
            "require_verified_email": False,
            "invitation_expire_hours": 48,
            "login_backoff_after": 5,
            "login_lockout_after": 10,
            "login_ip_max_failures": 50,
            "smtp_host": "",
            "smtp_port": 587,
            "smtp_user": "",
            "smtp_password": "",
            "smtp_tls": "starttls",
            "mail_from": "SnackBase <no-reply@localhost>",
            "public_url": "",
            "superadmin_email": "",
            "superadmin_password": "",
            "hooks_dir": "",
            "backup_dir": "",
            "backup_cron": "",
            "backup_keep": 7,
            "backup_storage": "local",
            "metrics_enabled": False,
            "metrics_token": "",
            "rate_limit_reads": "",
            "rate_limit_writes": "",
            "rate_limit_auth": "",
            "rate_limit_uploads": "",
            "trusted_proxies": "",
            "request_log_days": 7,
            "files_storage": "local",
            "files_quota_bytes": 0,
            "files_batch_max_bytes": 104_857_600,
            "s3_endpoint": "",
            "s3_bucket": "",
            "s3_region": "us-east-1",
            "s3_access_key": "",
            "s3_secret_key": "",
            "s3_force_path_style": True,
            "realtime_max_topics": 50,
            "realtime_max_connections_per_user": 20,
            "realtime_max_connections_per_address": 1_000,
            "realtime_send_queue": 500,
            "realtime_heartbeat_seconds": 25,
        }

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_path / "snackbase.db"

    @property
    def hooks_path(self) -> Path:
        return Path(self.hooks_dir) if self.hooks_dir else self.data_path / "hooks"

    @property
    def backups_path(self) -> Path:
        return Path(self.backup_dir) if self.backup_dir else self.data_path / "backups"

    @property
    def files_path(self) -> Path:
        return self.data_path / "files"

    @property
    def request_log_path(self) -> Path:
        return self.data_path / "requests.db"

    @property
    def base_url(self) -> str:
        """Where links in emails point: SNACKBASE_PUBLIC_URL, else the listen address."""
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def redacted(self) -> dict[str, Any]:
        """Every setting with secrets replaced, for `snackbase info` and logs."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "********" if f.metadata["secret"] and value else value
        return out


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def parse_env_file(path: Path) -> dict[str, str]:
    """Reads KEY=VALUE lines; blank lines and # comments are skipped; a malformed line is a ConfigError."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line)
        if not match:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw.strip()[:40]!r}")
        values[match.group(1)] = _unquote(match.group(2), path, number)
    return values


def _unquote(value: str, path: Path, number: int) -> str:
    if value[:1] in ("'", '"'):
        if len(value) < 2 or value[-1] != value[0]:
            raise ConfigError(f"{path}:{number}: unterminated quoted value")
        return value[1:-1]
    return value.split(" #", 1)[0].strip()


def _convert(name: str, raw: Any, kind: type | str) -> Any:
    kind_name = kind if isinstance(kind, str) else kind.__name__
    if kind_name == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{env_name(name)} must be true or false, got {raw!r}")
    if kind_name == "int":
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{env_name(name)} must be a whole number, got {raw!r}") from None
    return str(raw)


def load_settings(overrides: dict[str, Any] | None = None, env_file: Path | None = None) -> Settings:
    """Builds Settings from defaults, .env, the environment and `overrides` (flags; None values ignored)."""
    env_file = env_file if env_file is not None else Path(".env")
    file_values = parse_env_file(env_file) if env_file.is_file() else {}
    values = Settings.defaults()
    for f in fields(Settings):
        key = env_name(f.name)
        if key in os.environ:
            values[f.name] = _convert(f.name, os.environ[key], f.type)
        elif key in file_values:
            values[f.name] = _convert(f.name, file_values[key], f.type)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _convert(name, value, Settings.__dataclass_fields__[name].type)
    settings = Settings(**values)
    _check_choices(settings)
    _check_ranges(settings)
    return settings


def _check_choices(settings: Settings) -> None:
    for f in fields(settings):
        choices = f.metadata["choices"]
        if choices and getattr(settings, f.name) not in choices:
            raise ConfigError(f"{env_name(f.name)} must be one of {', '.join(choices)}")


def _check_ranges(settings: Settings) -> None:
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, got {settings.port}")
    if settings.session_idle_minutes < 0:
        raise ConfigError("SNACKBASE_SESSION_IDLE_MINUTES must be 0 (off) or more")
    if settings.database_url and not re.match(r"postgres(ql)?://", settings.database_url, re.IGNORECASE):
        raise ConfigError("SNACKBASE_DATABASE_URL must be empty (SQLite) or a postgresql:// URL")
    if settings.workers < 1:
        raise ConfigError("workers must be at least 1")
    if min(settings.realtime_max_topics, settings.realtime_max_connections_per_user,
           settings.realtime_max_connections_per_address, settings.realtime_send_queue,
           settings.realtime_heartbeat_seconds) < 1:  # fmt: skip
        raise ConfigError("the SNACKBASE_REALTIME_* limits must be at least 1")
    if settings.loop_budget_ms < 0 or not 1 <= settings.db_readers <= 64:
        raise ConfigError("SNACKBASE_LOOP_BUDGET_MS must be 0 or more, SNACKBASE_DB_READERS from 1 to 64")
    if settings.max_json_bytes < 1024:
        raise ConfigError("SNACKBASE_MAX_JSON_BYTES must be at least 1024")
    if not settings.api_prefix.startswith("/") or settings.api_prefix.endswith("/"):
        raise ConfigError("SNACKBASE_API_PREFIX must start with '/' and not end with '/'")
    if not 12 <= settings.password_min_length <= 128:
        raise ConfigError("SNACKBASE_PASSWORD_MIN_LENGTH must be between 12 and 128")
    for name in ("rate_limit_reads", "rate_limit_writes", "rate_limit_auth", "rate_limit_uploads"):
        value = getattr(settings, name)
        if value and not re.fullmatch(r"[1-9][0-9]*/[1-9][0-9]*", value.strip()):
            raise ConfigError(f"{env_name(name)} must be COUNT/SECONDS such as 600/60, got {value!r}")
    if settings.backup_keep < 0 or settings.request_log_days < 0:
        raise ConfigError("SNACKBASE_BACKUP_KEEP and SNACKBASE_REQUEST_LOG_DAYS must not be negative")
    if not 1 <= settings.login_backoff_after <= settings.login_lockout_after:
        raise ConfigError(
            "SNACKBASE_LOGIN_BACKOFF_AFTER must be at least 1 and at most SNACKBASE_LOGIN_LOCKOUT_AFTER"
        )
    if settings.files_quota_bytes < 0:
        raise ConfigError("SNACKBASE_FILES_QUOTA_BYTES must be 0 (no quota) or more")
    if settings.files_batch_max_bytes < 1:
        raise ConfigError("SNACKBASE_FILES_BATCH_MAX_BYTES must be at least 1")
    if settings.files_storage == "s3" and not (settings.s3_endpoint and settings.s3_bucket):
        raise ConfigError("SNACKBASE_FILES_STORAGE=s3 needs SNACKBASE_S3_ENDPOINT and SNACKBASE_S3_BUCKET")
    if settings.backup_storage == "s3" and not (settings.s3_endpoint and settings.s3_bucket):
        raise ConfigError("SNACKBASE_BACKUP_STORAGE=s3 needs SNACKBASE_S3_ENDPOINT and SNACKBASE_S3_BUCKET")


def ensure_data_dir(settings: Settings) -> None:
    """Creates the data dir and checks that it is writable; a one-line ConfigError otherwise."""
    path = settings.data_path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data dir {path}: {exc.strerror}") from None
    if not path.is_dir() or not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"data dir {path} is not a readable and writable directory")


def with_secret_key(settings: Settings) -> Settings:
    """Returns settings with a usable secret key: given, or generated once and kept in the data dir.

    In production a missing or placeholder key refuses to start: a key generated on one machine and
    silently regenerated on another would log every user out and break multi-node deployments.
    """
    key = settings.secret_key
    if settings.environment == "production":
        if key.strip().lower() in _PLACEHOLDER_KEYS or len(key) < _MIN_PRODUCTION_KEY_LENGTH:
            raise ConfigError(
                "SNACKBASE_SECRET_KEY must be set to a random value of at least "
                f"{_MIN_PRODUCTION_KEY_LENGTH} characters in production (e.g. `python3 -c "
                "'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return settings
    if key:
        return settings
    return replace(settings, secret_key=_stored_secret(settings.data_path / SECRET_FILE))


def _stored_secret(path: Path) -> str:
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    key = secrets.token_urlsafe(48)
    # O_EXCL + mode 0600: the key is never world-readable, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key
