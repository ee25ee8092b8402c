"""GET /metrics (parsed with prometheus_client's text parser), rate limits per route class, the
trusted-proxy client address, and the request log (separate file, API filters, per-minute, retention)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apsw
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from snackbase.app import create_app
from snackbase.config import Settings
from snackbase.db import fetch_value
from snackbase.ratelimit import RateLimiter
from snackbase.requestlog import RequestLog
from snackbase.times import format_ts
from tests.conftest import make_settings
from tests.factories import make_account, make_superadmin, make_user

API = "/api/v1"
BACKENDS = ("sqlite", "postgresql")  # the tests taking the `settings` fixture run on both
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str, **labels: str) -> float | None:
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def test_metrics_off_by_default(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 404


def test_metrics_parsed_by_prometheus_parser(settings: Settings, backend: str) -> None:
    settings = replace(settings, metrics_enabled=True, metrics_token="s3cret-scrape")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sa = make_superadmin(client)
        body = {"name": "notes", "fields": [{"name": "title", "type": "text"}], "rules": PUBLIC}
        assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
        user = make_user(client, make_account(client))
        made = client.post(f"{API}/records/notes", headers=user.headers, json={"title": "a"}).json()
        for _ in range(3):
            assert client.get(f"{API}/records/notes/{made['id']}", headers=user.headers).status_code == 200
        assert client.get(f"{API}/records/notes/nope", headers=user.headers).status_code == 404
        login = {
            "email": "nobody@example.com",
            "password": "wrong password 123",
            "account_identifier": "system",
        }
        assert client.post(f"{API}/auth/login", json=login).status_code == 401
        assert client.post(f"{API}/backups", headers=sa.headers).status_code == 201
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        response = client.get("/metrics", headers={"authorization": "Bearer s3cret-scrape"})
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/plain; version=0.0.4"
    )
    fams = families(response.text)
    route = "/api/v1/records/{collection}/{id}"
    assert (
        sample(
            fams,
            "snackbase_http_requests",
            "snackbase_http_requests_total",
            method="GET",
            route=route,
            status="200",
        )
        == 3
    )
    assert (
        sample(
            fams,
            "snackbase_http_requests",
            "snackbase_http_requests_total",
            method="GET",
            route=route,
            status="404",
        )
        == 1
    )
    assert fams["snackbase_http_request_duration_seconds"].type == "histogram"
    count = sample(
        fams,
        "snackbase_http_request_duration_seconds",
        "snackbase_http_request_duration_seconds_count",
        method="GET",
        route=route,
    )
    inf = sample(
        fams,
        "snackbase_http_request_duration_seconds",
        "snackbase_http_request_duration_seconds_bucket",
        method="GET",
        route=route,
        le="+Inf",
    )
    assert count == inf == 4
    assert sample(fams, "snackbase_login_failures", "snackbase_login_failures_total") == 1
    assert sample(fams, "snackbase_backups", "snackbase_backups", outcome="ok") == 1
    assert (sample(fams, "snackbase_backup_last_size_bytes", "snackbase_backup_last_size_bytes") or 0) > 0
    assert "snackbase_db_errors" in fams and "snackbase_rate_limited" in fams
    if backend == "sqlite":  # SQLite's own mechanics: PostgreSQL has no WAL file or checkpoints of ours
        assert (sample(fams, "snackbase_wal_bytes", "snackbase_wal_bytes") or 0) > 0
        assert "snackbase_checkpoints" in fams
    else:
        assert "snackbase_wal_bytes" not in fams and "snackbase_checkpoints" not in fams


def limited_client(tmp_path: Path, **limits: Any) -> TestClient:
    return TestClient(create_app(make_settings(tmp_path / "data", metrics_enabled=True, **limits)),
                      raise_server_exceptions=False)  # fmt: skip


def test_rate_limits_per_class(tmp_path: Path) -> None:
    with limited_client(
        tmp_path, rate_limit_reads="3/60", rate_limit_writes="2/60", rate_limit_auth="1/60"
    ) as client:
        # Anonymous callers: per address. Each class has its own budget.
        for _ in range(3):
            assert client.get(f"{API}/collections").status_code != 429
        limited = client.get(f"{API}/collections")
        assert limited.status_code == 429
        body = limited.json()
        assert body["code"] == "rate_limited" and set(body) == {
            "status",
            "code",
            "message",
            "fields",
            "request_id",
        }
        assert 1 <= int(limited.headers["retry-after"]) <= 20
        login = {"email": "a@example.com", "password": "wrong password 123", "account_identifier": "system"}
        assert client.post(f"{API}/auth/login", json=login).status_code == 401  # the auth budget is separate
        assert client.post(f"{API}/auth/login", json=login).status_code == 429
        # The probes are never limited.
        assert all(client.get("/health").status_code == 200 for _ in range(5))
        # Signed-in callers: per user, not per address (same test client address).
        sa = make_superadmin(client)
        other = make_superadmin(client)
        for who in (sa, other):
            assert client.get(f"{API}/accounts", headers=who.headers).status_code == 200
        assert client.post(f"{API}/accounts", headers=sa.headers, json={"name": "One"}).status_code == 201
        assert client.post(f"{API}/accounts", headers=sa.headers, json={"name": "Two"}).status_code == 201
        third = client.post(f"{API}/accounts", headers=sa.headers, json={"name": "Three"})
        assert third.status_code == 429
        assert client.post(f"{API}/accounts", headers=other.headers, json={"name": "Four"}).status_code == 201
        conn = client.app.state.db.conn  # type: ignore[attr-defined]
        assert (
            fetch_value(conn, "SELECT count(*) FROM accounts WHERE name = 'Three'") == 0
        )  # refused, nothing written
        metrics = client.get("/metrics").text
    fams = families(metrics)
    assert sample(fams, "snackbase_rate_limited", "snackbase_rate_limited_total", **{"class": "reads"}) == 1
    assert sample(fams, "snackbase_rate_limited", "snackbase_rate_limited_total", **{"class": "writes"}) == 1
    assert sample(fams, "snackbase_rate_limited", "snackbase_rate_limited_total", **{"class": "auth"}) == 1


def test_upload_class_and_refill() -> None:
    now = [0.0]
    limiter = RateLimiter({"uploads": (2.0, 1.0)}, clock=lambda: now[0])
    assert limiter.take("uploads", "ip:a") == 0 and limiter.take("uploads", "ip:a") == 0
    assert limiter.take("uploads", "ip:a") == pytest.approx(1.0)
    assert limiter.take("uploads", "ip:b") == 0  # another caller, its own bucket
    assert limiter.take("reads", "ip:a") == 0  # no limit for this class
    now[0] = 1.0
    assert limiter.take("uploads", "ip:a") == 0


def test_multipart_posts_are_uploads(tmp_path: Path) -> None:
    with limited_client(tmp_path, rate_limit_uploads="1/60") as client:
        files = {"file": ("a.txt", b"x")}
        assert client.post(f"{API}/collections", files=files).status_code != 429
        assert client.post(f"{API}/collections", files=files).status_code == 429
        assert client.post(f"{API}/collections", json={}).status_code != 429  # a JSON write is a write


def test_bad_rate_limit_setting_is_refused(tmp_path: Path) -> None:
    from snackbase.config import ConfigError

    with pytest.raises(ConfigError, match="SNACKBASE_RATE_LIMIT_READS"):
        make_settings(tmp_path, rate_limit_reads="lots")


def test_forwarded_for_only_from_trusted_proxies(tmp_path: Path) -> None:
    # TestClient's peer is "testclient", never a trusted address: X-Forwarded-For is ignored.
    with limited_client(tmp_path, rate_limit_reads="1/60") as client:
        assert client.get(f"{API}/collections", headers={"x-forwarded-for": "1.1.1.1"}).status_code != 429
        assert client.get(f"{API}/collections", headers={"x-forwarded-for": "2.2.2.2"}).status_code == 429


def test_forwarded_for_from_a_trusted_proxy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", rate_limit_reads="1/60", trusted_proxies="10.0.0.0/8")
    app = create_app(settings)
    with TestClient(app, client=("10.1.2.3", 5000), raise_server_exceptions=False) as client:
        # Each forwarded client has its own budget; the proxy's own entries are skipped.
        assert (
            client.get(f"{API}/collections", headers={"x-forwarded-for": "1.1.1.1, 10.0.0.9"}).status_code
            != 429
        )
        assert client.get(f"{API}/collections", headers={"x-forwarded-for": "2.2.2.2"}).status_code != 429
        assert client.get(f"{API}/collections", headers={"x-forwarded-for": "1.1.1.1"}).status_code == 429
        sa = make_superadmin(client)
        client.get(f"{API}/health", headers={"x-forwarded-for": "9.9.9.9"})
        rows = client.get(
            f"{API}/logs/requests", headers={**sa.headers, "x-forwarded-for": "3.3.3.3"}
        ).json()["items"]
    assert {r["ip"] for r in rows} >= {"1.1.1.1", "2.2.2.2"}


def test_request_log_api_filters_and_per_minute(settings: Settings, backend: str) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sa = make_superadmin(client)
        admin = make_user(client, make_account(client), "admin")
        for _ in range(3):
            client.get(f"{API}/collections", headers=sa.headers)
        client.get(f"{API}/records/ghosts/x", headers={"x-request-id": "find-me-123"})
        assert client.get(f"{API}/logs/requests", headers=admin.headers).status_code == 403
        listed = client.get(
            f"{API}/logs/requests", headers=sa.headers, params={"route": "/api/v1/collections"}
        ).json()
        assert len(listed["items"]) == 3
        row = listed["items"][0]
        assert row["method"] == "GET" and row["status"] == 200 and row["user_id"] == sa.id
        assert row["account_id"] == "SY0000" and row["request_id"] and row["duration_ms"] >= 0
        found = client.get(
            f"{API}/logs/requests", headers=sa.headers, params={"request_id": "find-me-123"}
        ).json()
        assert [r["status"] for r in found["items"]] == [404]
        errors = client.get(f"{API}/logs/requests", headers=sa.headers, params={"status": "4xx"}).json()[
            "items"
        ]
        assert errors and all(400 <= r["status"] < 500 for r in errors)
        paged = client.get(f"{API}/logs/requests", headers=sa.headers, params={"per_page": 2}).json()
        assert len(paged["items"]) == 2 and paged["next_cursor"]
        more = client.get(
            f"{API}/logs/requests", headers=sa.headers, params={"per_page": 2, "after": paged["next_cursor"]}
        ).json()
        assert more["items"][0]["id"] < paged["items"][-1]["id"]
        chart = client.get(f"{API}/logs/requests/per-minute", headers=sa.headers).json()
        assert sum(i["requests"] for i in chart["items"]) >= 6 and chart["items"][-1]["minute"].endswith(
            ":00Z"
        )
        for bad in ({"status": "abc"}, {"since": "yesterday"}, {"after": "x"}, {"after": "²"}):
            r = client.get(f"{API}/logs/requests", headers=sa.headers, params=bad)
            code = "invalid_cursor" if "after" in bad else "bad_request"  # the cursor rules of every list
            assert r.status_code == 400 and r.json()["code"] == code
        week = {"since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"}
        assert (
            client.get(f"{API}/logs/requests/per-minute", headers=sa.headers, params=week).status_code == 400
        )
    # The log lives in its own file (on PostgreSQL too: each node's own); the main database has no
    # request rows.
    assert settings.request_log_path.is_file()
    if backend == "postgresql":
        assert not settings.db_path.exists()
        return
    main = apsw.Connection(str(settings.db_path))
    assert fetch_value(main, "SELECT count(*) FROM sqlite_schema WHERE name = 'requests'") == 0
    main.close()


def test_request_log_retention(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        log = RequestLog(tmp_path / "requests.db", days=2)
        now = datetime.now(UTC)
        for age_days in (0, 1, 3, 10):
            log.add(
                (
                    format_ts(now - timedelta(days=age_days)),
                    "GET",
                    "/x",
                    200,
                    1.0,
                    None,
                    None,
                    "1.2.3.4",
                    None,
                )
            )
        await log.flush()
        deleted = await log.prune(now)
        left = await log.on_thread(lambda conn: int(fetch_value(conn, "SELECT count(*) FROM requests")))
        await log.close()
        return deleted, left

    assert asyncio.run(scenario()) == (2, 2)


def test_request_log_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", request_log_days=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sa = make_superadmin(client)
        response = client.get(f"{API}/logs/requests", headers=sa.headers)
        assert response.status_code == 404 and response.json()["code"] == "request_log_off"
        assert client.app.state.ops.observing is False  # type: ignore[attr-defined]
    assert not settings.request_log_path.exists()


def test_request_log_flushes_in_batches_off_the_request(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for _ in range(20):
            client.get("/health")
        ops = client.app.state.ops  # type: ignore[attr-defined]
        assert (
            ops.request_log.written == 0 and len(ops.request_log.buffer) == 20
        )  # nothing written per request
        deadline = time.monotonic() + 5
        while ops.request_log.written < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ops.request_log.written == 20


def test_forwarded_address_reaches_audit_and_login_throttling(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", trusted_proxies="10.0.0.1")
    with TestClient(create_app(settings), client=("10.0.0.1", 5000), raise_server_exceptions=False) as client:
        login = {"email": "x@example.com", "password": "wrong password 123", "account_identifier": "system"}
        response = client.post(f"{API}/auth/login", json=login, headers={"x-forwarded-for": "5.6.7.8"})
        assert response.status_code == 401
        conn = client.app.state.db.conn  # type: ignore[attr-defined]
        ip = fetch_value(conn, "SELECT ip FROM audit_log WHERE action = 'auth.login_failed'")
        throttled = fetch_value(conn, "SELECT count(*) FROM login_throttle WHERE key = 'ip:5.6.7.8'")
    assert ip == "5.6.7.8" and throttled == 1
