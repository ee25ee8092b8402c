"""The database backend seam: which engine a deployment runs on, decided once at start.

SQLite (apsw, one file in the data dir) is the default and stays exactly as it is: its call sites use
the apsw connection directly, with no layer in between. `SNACKBASE_DATABASE_URL=postgresql://…` (or
`--database-url`) selects PostgreSQL instead: `snackbase.backends.postgres` gives the call sites the
same small connection interface (`conn.execute(sql, params)` → a cursor to iterate or fetch from,
`in_transaction`, errors as the apsw error classes by kind), so `db.fetch_*`, `unit_of_work` and
`errors.database_error` serve both. Where a statement must differ between the two engines, both
variants sit side by side next to the function that runs it (`…_SQLITE` / `…_POSTGRES`).

This module imports nothing heavy: the PostgreSQL driver (psycopg) is imported only when a PostgreSQL
URL is used, so SQLite deployments never load it and start as fast as before. See docs/scaling.md.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from snackbase.config import ConfigError

NOT_PORTED_CODE = "not_on_postgresql"  # docs/errors.md

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_POSTGRES_SCHEMES = ("postgresql", "postgres")


def backend_name(database_url: str) -> str:
    """`sqlite` for an empty URL, `postgresql` for a postgresql:// (or postgres://) URL."""
    if not database_url:
        return SQLITE
    scheme = database_url.split("://", 1)[0].lower() if "://" in database_url else ""
    if scheme in _POSTGRES_SCHEMES:
        return POSTGRESQL
    raise ValueError("SNACKBASE_DATABASE_URL must be empty (SQLite) or a postgresql:// URL")


def is_postgres(database_url: str) -> bool:
    return backend_name(database_url) == POSTGRESQL


def redact_url(database_url: str) -> str:
    """The URL with its password replaced, for `snackbase info` and logs."""
    parts = urlsplit(database_url)
    if parts.password is None:
        return database_url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:********@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def require_driver() -> None:
    """Imports psycopg, or one line saying what is missing: the executable bundles pure-Python psycopg,
    which needs the system's libpq (Debian/Ubuntu: `apt-get install libpq5`)."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "PostgreSQL needs the libpq client library (Debian/Ubuntu: apt-get install libpq5; "
            f"or pip install 'psycopg[binary]'): {exc}"
        ) from None
