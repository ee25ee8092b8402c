"""Health probes, the API root, request ids, security headers and CORS."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from snackbase import __version__
from snackbase.app import create_app
from tests.conftest import make_settings


@pytest.mark.parametrize("path", ["/health", "/live", "/ready"])
def test_probes(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_api_root(client: TestClient) -> None:
    assert client.get("/api/v1").json() == {"name": "SnackBase", "version": __version__, "api_version": "1"}


def test_request_id_is_honoured(client: TestClient) -> None:
    assert (
        client.get("/health", headers={"x-request-id": "abc-123.X:y"}).headers["x-request-id"]
        == "abc-123.X:y"
    )


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "<script>", "a\u00e9"])
def test_unsafe_request_id_is_replaced(client: TestClient, bad: str) -> None:
    request_id = client.get("/health", headers={"x-request-id": bad.encode("utf-8")}).headers["x-request-id"]
    assert request_id != bad and len(request_id) == 24


def test_generated_request_ids_differ(client: TestClient) -> None:
    assert client.get("/health").headers["x-request-id"] != client.get("/health").headers["x-request-id"]


def test_security_headers(client: TestClient) -> None:
    headers = client.get("/api/v1/nope").headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "content-security-policy" not in headers


def test_admin_ui_gets_a_csp(client: TestClient) -> None:
    assert "default-src 'self'" in client.get("/_/").headers["content-security-policy"]


def test_api_prefix_setting(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, api_prefix="/v2"))) as client:
        assert client.get("/v2").status_code == 200
        assert client.get("/api/v1").status_code == 404


def test_cors_from_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_origins="https://app.example, https://b.example")
    with TestClient(create_app(settings)) as client:
        allowed = client.get("/api/v1", headers={"origin": "https://b.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://b.example"
        denied = client.get("/api/v1", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in denied.headers
        preflight = client.options(
            "/api/v1", headers={"origin": "https://app.example", "access-control-request-method": "POST"}
        )
        assert preflight.status_code == 200


def test_no_cors_headers_by_default(client: TestClient) -> None:
    assert (
        "access-control-allow-origin"
        not in client.get("/api/v1", headers={"origin": "https://x.example"}).headers
    )
