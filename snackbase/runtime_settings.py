"""Settings an administrator changes in the console (GET/PATCH /settings): stored in the database,
applied without a restart, every change audited.

Precedence, highest first: a `SNACKBASE_*` environment variable (or a line of the `.env` file) for that
setting, the value stored here, the default. A value fixed by the environment is shown as such and
cannot be changed here. Only the settings in EDITABLE can be stored: the listen address, the data dir,
the secret key and the like need a restart by nature.

Every server process applies a change: the one that wrote it at once, the others within
RECHECK_S seconds (`current`, called on every request, compares the table's stamp at most that often).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import apsw

from snackbase.config import ConfigError, Settings, _check_choices, _check_ranges, env_name, parse_env_file
from snackbase.db import fetch_all, fetch_one

RECHECK_S = 2.0

# name -> group shown on the Settings screen (in this order).
EDITABLE: dict[str, str] = {
    "smtp_host": "mail",
    "smtp_port": "mail",
    "smtp_user": "mail",
    "smtp_password": "mail",
    "smtp_tls": "mail",
    "mail_from": "mail",
    "registration": "registration",
    "require_verified_email": "registration",
    "invitation_expire_hours": "registration",
    "access_token_expire_minutes": "tokens",
    "refresh_token_expire_days": "tokens",
    "session_idle_minutes": "tokens",
    "cors_origins": "cors",
    "password_min_length": "passwords",
    "login_backoff_after": "lockout",
    "login_lockout_after": "lockout",
    "login_ip_max_failures": "lockout",
}
_FIELDS = {f.name: f for f in fields(Settings)}


def fixed_names(env_file: Path | None = None) -> frozenset[str]:
    """The editable settings set by the environment or the .env file: these win over stored values."""
    env_file = env_file if env_file is not None else Path(".env")
    try:
        file_values = parse_env_file(env_file) if env_file.is_file() else {}
    except ConfigError:
        file_values = {}
    return frozenset(n for n in EDITABLE if env_name(n) in os.environ or env_name(n) in file_values)


def stored(conn: apsw.Connection) -> dict[str, Any]:
    return {row["name"]: json.loads(row["value"]) for row in fetch_all(conn, _STORED, ())}


_STORED = "SELECT name, value FROM runtime_settings"


def stamp(conn: apsw.Connection) -> str:
    """Changes whenever a stored value does (a cheap query other processes poll)."""
    row = fetch_one(conn, _STAMP, ())
    return f"{row['n']}:{row['latest']}" if row else ""


_STAMP = "SELECT count(*) AS n, max(updated_at) AS latest FROM runtime_settings"


def effective(base: Settings, values: dict[str, Any], fixed: frozenset[str]) -> Settings:
    """`base` with the stored values applied, except where the environment fixed them; checked like
    startup settings (a ConfigError names the problem)."""
    changes = {k: v for k, v in values.items() if k in EDITABLE and k not in fixed}
    settings = replace(base, **changes)
    _check_choices(settings)
    _check_ranges(settings)
    return settings


def coerce(name: str, value: Any) -> Any:
    """A value from a request body as the setting's type; ValueError when it is not."""
    kind = _FIELDS[name].type
    kind_name = kind if isinstance(kind, str) else kind.__name__
    if kind_name == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number")
        if value < 0:
            raise ValueError("must be 0 or more")
        return value
    if not isinstance(value, str) or len(value) > 2000 or "\n" in value or "\r" in value:
        raise ValueError("must be one line of text (at most 2000 characters)")
    return value.strip()


def describe(settings: Settings, fixed: frozenset[str]) -> list[dict[str, Any]]:
    """The Settings screen's rows: current value (secrets never shown), default, where it comes from."""
    defaults = Settings.defaults()
    items = []
    for name, group in EDITABLE.items():
        meta = _FIELDS[name].metadata
        value = getattr(settings, name)
        secret = bool(meta["secret"])
        items.append(
            {
                "name": name,
                "group": group,
                "env": env_name(name),
                "doc": meta["doc"],
                "choices": list(meta["choices"]),
                "type": type(defaults[name]).__name__,
                "value": "" if secret else value,
                "is_set": bool(value) if secret else None,
                "secret": secret,
                "default": "" if secret else defaults[name],
                "fixed": name in fixed,
            }
        )
    return items


def apply(app: Any) -> None:
    """Recomputes app.state.settings from the startup settings and the stored values."""
    conn = app.state.db.conn
    app.state.settings = effective(app.state.base_settings, stored(conn), app.state.fixed_settings)
    app.state.settings_stamp = stamp(conn)
    app.state.settings_checked = time.monotonic()


def start(app: Any, base: Settings, env_file: Path | None = None) -> None:
    """At startup: remembers the startup settings and applies the stored values (a stored value that no
    longer validates is ignored rather than refusing to start)."""
    app.state.base_settings = base
    app.state.fixed_settings = fixed_names(env_file)
    try:
        apply(app)
    except ConfigError:
        app.state.settings = base
        app.state.settings_stamp = stamp(app.state.db.conn)
        app.state.settings_checked = time.monotonic()


def current(app: Any) -> Settings:
    """The app's settings as they are now: the stored values are compared (by their stamp) at most every
    RECHECK_S seconds, so a change made by another process applies here within that time. Called by
    RequestMiddleware on every HTTP request."""
    state = app.state
    if time.monotonic() - state.settings_checked > RECHECK_S:
        state.settings_checked = time.monotonic()
        if stamp(state.db.conn) != state.settings_stamp:
            with contextlib.suppress(ConfigError):  # a bad stored value: keep the last good settings
                apply(app)
    settings: Settings = state.settings
    return settings
