"""Property-based fuzzing of the whole HTTP API, in process (the app as uvicorn would run it).

Every route of every route table is driven with generated path parameters, query parameters, headers
and bodies — malformed JSON, wrong types, deep nesting, huge numbers, odd Unicode, NUL bytes, long
strings — as a superadmin, an account admin, a plain user, an anonymous caller or a forged token.
The properties: never a 5xx; every error is the one envelope; a refused request writes nothing.

`SNACKBASE_FUZZ_EXAMPLES=N` runs N examples per test instead of the default (see docs/security.md
for a long run's numbers); the default keeps `make test` fast.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from snackbase.app import api_tables, create_app
from snackbase.routes import health
from tests.conftest import create_user, make_settings

API = "/api/v1"
EXAMPLES = int(os.environ.get("SNACKBASE_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(
    max_examples=EXAMPLES or 150,
    deadline=None,
    database=None,
    derandomize=not EXAMPLES,  # the default run is the same every time; a long run explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
ENVELOPE_KEYS = {"status", "code", "message", "fields", "request_id"}
# Refusals that are recorded on purpose: failed logins and password checks (throttle counters and
# audit entries), failed signatures (audit), and a spent refresh token presented again (the session
# is revoked as stolen).
COUNTED_REFUSALS = re.compile(r".*/(auth/login|auth/change-password|auth/refresh|sign)$")
# Routes that would end the fuzzing callers' own sessions: driven only with forged tokens.
SESSION_ENDERS = frozenset({"/auth/logout", "/auth/logout-all", "/auth/sessions/{id}"})


class World:
    """One app with a collection, a record and a caller per role, shared by all examples."""

    def __init__(self, data_dir: Path) -> None:
        self.client = TestClient(create_app(make_settings(data_dir)), raise_server_exceptions=False)
        self.client.__enter__()
        app: Any = self.client.app
        self.conn = app.state.db.conn
        self.superadmin = create_user(app, account_id="SY0000", role="admin")
        self.admin = create_user(app, role="admin")
        self.user = create_user(app, role="user", account_id=self.admin["account_id"])
        self.collection, self.record_id = "items", ""
        self.ensure()

    def ensure(self) -> None:
        """Puts back the collection and its record if an example deleted or broke them."""
        su = self.superadmin["headers"]
        if self.client.get(f"{API}/collections/{self.collection}", headers=su).status_code == 404:
            body = {
                "name": self.collection,
                "fields": [
                    {"name": "title", "type": "text"},
                    {"name": "n", "type": "number"},
                    {"name": "ok", "type": "boolean"},
                    {"name": "at", "type": "datetime"},
                    {"name": "meta", "type": "json"},
                    {"name": "kind", "type": "select", "options": {"values": ["a", "b"]}},
                ],
                "rules": {"list": "", "view": "", "create": "", "update": "@owns_record()", "delete": None},
            }
            assert self.client.post(f"{API}/collections", json=body, headers=su).status_code == 201
        found = self.client.get(f"{API}/records/{self.collection}", headers=self.admin["headers"])
        items = found.json().get("items", []) if found.status_code == 200 else []
        if not items:
            made = self.client.post(
                f"{API}/records/{self.collection}",
                json={"title": "seed", "n": 1},
                headers=self.admin["headers"],
            )
            items = [made.json()] if made.status_code == 201 else []
        self.record_id = items[0]["id"] if items else "none"

    def close(self) -> None:
        self.client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("fuzz") / "data")
    yield w
    w.close()


ROUTES = sorted(
    {(method, API + path) for table in api_tables() for method, path, _ in table if method != "WS"}
    | {(method, path) for method, path, _ in health.root_routes}
    | {("GET", "/_/{path}")}
)

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "²",
            "٣",
            "𝟘",
            "\u202e",
            "../../etc/passwd",
            "%00",
            "null",
            "-1",
            "9" * 30,
            "1e309",
            "NaN",
            "true",
            "'; DROP TABLE users; --",
            "é" * 300,
        ]
    ),
    st.text(alphabet="ab%_\\\"'", min_size=200, max_size=5000),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)
KNOWN_KEYS = ["title", "n", "ok", "at", "meta", "kind", "name", "fields", "rules", "email", "password",
              "account_identifier", "account_name", "role", "groups", "is_active", "refresh_token", "token",
              "new_password", "current_password", "meaning", "args", "sql", "rule", "operation", "as_user",
              "create", "update", "delete", "_reason", "id", "account_id", "description", "slug"]  # fmt: skip
json_object = st.dictionaries(st.sampled_from(KNOWN_KEYS) | odd_text, json_value, max_size=6)


def deep(depth: int, kind: str) -> bytes:
    opener, closer = ("[", "]") if kind == "list" else ('{"a":', "}")
    return (opener * depth + "1" + closer * depth).encode()


raw_body = st.one_of(
    st.binary(max_size=200),
    st.builds(deep, st.sampled_from([64, 500, 2_000, 10_000, 100_000]), st.sampled_from(["list", "dict"])),
    st.sampled_from(
        [b"", b"{", b"[1,", b'{"a":1}garbage', b"\xff\xfe", b'"\\ud800"', b"1" * 400, b"{}" * 10]
    ),
)
body = st.one_of(
    json_object.map(lambda v: json.dumps(v).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    raw_body,
)
QUERY_KEYS = ["filter", "sort", "page", "per_page", "after", "fields", "expand", "skip_total", "from", "to",
              "account_id", "account", "format", "action", "collection", "record_id", "user_id"]  # fmt: skip
query_value = st.one_of(
    odd_text,
    st.sampled_from(
        [
            'title ~ "x"',
            "n > 1 && ok = true",
            'at >= "2026-01-01T00:00:00+02:00"',
            "-n,title",
            "@owns_record()",
            "@has_role(1)",
            "title ~ title",
            "meta = 1e999",
            'at = "nope"',
        ]
    ),
    st.integers(-(10**25), 10**25).map(str),
)
query = st.dictionaries(st.sampled_from(QUERY_KEYS) | odd_text, query_value, max_size=4)
CALLERS = ["superadmin", "admin", "user", "anonymous", "forged"]
content_type = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", None])
header_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


def path_value(world: World, name: str) -> st.SearchStrategy[str]:
    real = {"collection": world.collection, "id": world.record_id, "name": "nope", "path": "index.html"}
    return st.one_of(st.just(real.get(name, "x")), odd_text.filter(lambda t: "/" not in t or name == "path"))


def fill(path: str, values: dict[str, str]) -> str:
    from urllib.parse import quote

    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: quote(values[m.group(1)], safe=""), path)


def headers_for(world: World, caller: str, route_path: str, extra: dict[str, str]) -> dict[str, str]:
    if route_path.removeprefix(API) in SESSION_ENDERS and caller != "anonymous":
        caller = "forged"
    headers = dict(extra)
    if caller in ("superadmin", "admin", "user"):
        headers.update(getattr(world, caller)["headers"])
    elif caller == "forged":
        headers["authorization"] = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    return headers


@st.composite
def api_request(draw: st.DrawFn, world: World) -> dict[str, Any]:
    method, route = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    names = re.findall(r"\{(\w+)(?::\w+)?\}", route)
    values = {name: draw(path_value(world, name)) for name in names}
    extra: dict[str, str] = {}
    ctype = draw(content_type)
    if ctype:
        extra["content-type"] = ctype
    for header in ("x-account-id", "x-audit-reason", "x-request-id"):
        if draw(st.booleans()):
            extra[header] = draw(header_value)
    return {
        "method": method,
        "route": route,
        "url": fill(route, values),
        "params": draw(query),
        "content": draw(body) if method in ("POST", "PUT", "PATCH") else None,
        "headers": headers_for(world, draw(st.sampled_from(CALLERS)), route, extra),
    }


def check(world: World, request: dict[str, Any]) -> None:
    before = world.conn.total_changes()
    response = world.client.request(
        request["method"], request["url"], params=request["params"], content=request["content"],
        headers=request["headers"],
    )  # fmt: skip
    status = response.status_code
    assert status < 500, (request["method"], request["url"], response.text[:500])
    if status >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), response.text[:200]
        payload = response.json()
        assert set(payload) == ENVELOPE_KEYS and payload["status"] == status, payload
        if not COUNTED_REFUSALS.fullmatch(request["route"]):
            assert world.conn.total_changes() == before, ("a refused request wrote", request["url"], payload)


@FUZZ
@given(data=st.data())
def test_no_request_breaks_the_api(world: World, data: st.DataObject) -> None:
    check(world, data.draw(api_request(world)))
    world.ensure()


RECORD_ROUTES = [(m, r) for m, r in ROUTES if "/records/" in r]


@FUZZ
@given(data=st.data())
def test_record_endpoints_take_any_body_and_filter(world: World, data: st.DataObject) -> None:
    """The busiest family, with a well-formed caller and path, so the generated values reach the
    record pipeline and the filter compiler rather than stopping at authentication or routing."""
    method, route = data.draw(st.sampled_from(RECORD_ROUTES))
    values = {"collection": world.collection, "id": world.record_id}
    caller = data.draw(st.sampled_from(["superadmin", "admin", "user"]))
    extra = {"content-type": "application/json"}
    if caller == "superadmin":
        extra["x-account-id"] = world.admin["account_id"]
    request = {
        "method": method,
        "route": route,
        "url": fill(route, values),
        "params": data.draw(query),
        "content": data.draw(body) if method in ("POST", "PUT", "PATCH") else None,
        "headers": headers_for(world, caller, route, extra),
    }
    check(world, request)
    world.ensure()
