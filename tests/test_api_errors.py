"""Every failure class leaves through the one error envelope (SPEC section 3)."""

from __future__ import annotations

import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from snackbase.web import json_response, read_json, read_struct

ENVELOPE_KEYS = {"status", "code", "message", "fields", "request_id"}


class Echo(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    count: int = 0


async def echo_struct(request: Request) -> Response:
    body = await read_struct(request, Echo)
    return json_response({"name": body.name, "count": body.count})


async def echo_any(request: Request) -> Response:
    return json_response(await read_json(request))


async def explode(request: Request) -> Response:
    raise RuntimeError("secret internals: /etc/passwd")


@pytest.fixture
def probe(client: TestClient) -> TestClient:
    """The real app plus three probe routes that use the real body helpers."""
    client.app.router.routes.extend(  # type: ignore[attr-defined]
        [
            Route("/probe/struct", echo_struct, methods=["POST"]),
            Route("/probe/any", echo_any, methods=["POST"]),
            Route("/probe/explode", explode, methods=["GET"]),
        ]
    )
    return client


def assert_envelope(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["status"] == status and body["code"] == code
    assert isinstance(body["fields"], dict) and isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


JSON = {"content-type": "application/json"}

CASES = [
    ("unknown route", "GET", "/api/v1/nope", {}, None, 404, "not_found"),
    ("unknown root route", "GET", "/does/not/exist", {}, None, 404, "not_found"),
    ("wrong method", "DELETE", "/health", {}, None, 405, "method_not_allowed"),
    ("malformed json", "POST", "/probe/struct", JSON, b'{"name": ', 400, "bad_request"),
    ("empty body", "POST", "/probe/struct", JSON, b"", 400, "bad_request"),
    ("not json at all", "POST", "/probe/any", JSON, b"\xff\xfe", 400, "bad_request"),
    (
        "wrong content type",
        "POST",
        "/probe/struct",
        {"content-type": "text/plain"},
        b'{"name":"a"}',
        415,
        "unsupported_media_type",
    ),
    ("missing content type", "POST", "/probe/any", {}, b'{"name":"a"}', 415, "unsupported_media_type"),
    ("unknown key", "POST", "/probe/struct", JSON, b'{"name":"a","evil":1}', 400, "bad_request"),
    ("wrong type", "POST", "/probe/struct", JSON, b'{"name":5}', 400, "validation_failed"),
    ("missing field", "POST", "/probe/struct", JSON, b"{}", 400, "validation_failed"),
    (
        "too large",
        "POST",
        "/probe/any",
        JSON,
        b'"' + b"x" * (1_048_576 + 10) + b'"',
        413,
        "payload_too_large",
    ),
    ("unhandled exception", "GET", "/probe/explode", {}, None, 500, "internal_error"),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "headers", "body", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_failure_classes_use_the_envelope(
    probe: TestClient,
    case: str,
    method: str,
    path: str,
    headers: dict,
    body: bytes | None,
    status: int,
    code: str,
) -> None:
    response = probe.request(method, path, headers=headers, content=body)
    assert_envelope(response, status, code)


def test_unknown_key_is_named(probe: TestClient) -> None:
    body = assert_envelope(probe.post("/probe/struct", json={"name": "a", "evil": 1}), 400, "bad_request")
    assert "evil" in body["message"] and body["fields"]["evil"]["code"] == "unknown_field"


def test_wrong_type_names_the_field(probe: TestClient) -> None:
    body = assert_envelope(
        probe.post("/probe/struct", json={"name": "a", "count": "x"}), 400, "validation_failed"
    )
    assert body["fields"]["count"]["code"] == "invalid_type"


def test_500_shows_no_exception_text(probe: TestClient) -> None:
    response = probe.get("/probe/explode")
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert response.json()["message"] == "An internal error occurred."


def test_405_keeps_allow_header(probe: TestClient) -> None:
    response = probe.post("/api/v1")
    assert_envelope(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_declared_length_over_limit_is_refused_before_reading(probe: TestClient) -> None:
    response = probe.post("/probe/any", headers={**JSON, "content-length": "99999999"}, content=b"{}")
    assert_envelope(response, 413, "payload_too_large")


def test_good_body_passes(probe: TestClient) -> None:
    assert probe.post("/probe/struct", json={"name": "a", "count": 2}).json() == {"name": "a", "count": 2}


def test_ready_is_503_when_the_database_is_gone(client: TestClient) -> None:
    client.app.state.db.conn.close()  # type: ignore[attr-defined]
    assert_envelope(client.get("/ready"), 503, "service_unavailable")
