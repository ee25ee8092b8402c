"""The version counters behind the per-process caches on the hot path, read once per API request.

Two caches serve almost every request: the collection definitions (`collections.Registry`, moved by
every definition change) and the verified sessions (`auth.resolve_auth`, `auth_version`, moved by
triggers on sessions, users and groups). Other processes — `serve --workers N`, the worker thread, the
CLI — change the tables behind them, so each request asks whether the caches still hold. Both
counters are read in one statement when the request first needs one (the auth middleware for a
token, else a route for the collection) and kept in the request's state; the request then uses them
for both caches (one read instead of two, ~3 µs; none for a request that needs neither).

SQLite's cheaper change signal, the `data_version` file control, was measured and is not usable here:
it moves only when this connection next starts a read, so the first request after another process
revoked a session would still be let through.
"""

from __future__ import annotations

from typing import Any

import apsw
import msgspec


class Versions(msgspec.Struct, frozen=True):
    collections: int
    auth: int


def read(conn: apsw.Connection) -> Versions:
    """The counters as this connection sees them now (inside a transaction: as the transaction does)."""
    collections, auth = conn.execute(_READ).fetchone()  # type: ignore[misc]
    return Versions(collections, auth)


_READ = """
    SELECT (SELECT version FROM collections_version WHERE id = 1),
           (SELECT version FROM auth_version WHERE id = 1)
"""


def of_request(state: dict[str, Any], conn: apsw.Connection) -> Versions:
    """The counters as the request first saw them (read on first use)."""
    versions = state.get(STATE_KEY)
    if versions is None:
        versions = state[STATE_KEY] = read(conn)
    return versions


STATE_KEY = "cache_versions"
