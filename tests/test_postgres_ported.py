"""What issue 20's later ports bring to PostgreSQL (a real cluster from tests/pg.py), where the shared
API tests cannot say it: what still refuses with 501 `not_on_postgresql` inside a ported area, and the
PostgreSQL-only parts (the macro fence's role and read-only transaction)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from snackbase.app import create_app
from tests.conftest import make_settings
from tests.factories import make_account, make_user

API = "/api/v1"


@pytest.fixture
def pg_client(tmp_path: Path, pg_url: str) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", database_url=pg_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_profile_file_fields_wait_for_file_storage(pg_client: TestClient) -> None:
    """An avatar (a profile file field) needs file storage, not on PostgreSQL yet: 501, nothing saved."""
    admin = make_user(pg_client, make_account(pg_client), "admin")
    schema = {"fields": [{"name": "nick", "type": "text"}, {"name": "avatar", "type": "file"}]}
    answer = pg_client.put(f"{API}/profiles/schema", headers=admin.headers, json=schema)
    assert answer.status_code == 501 and answer.json()["code"] == "not_on_postgresql"
    assert "avatar" in answer.json()["message"]
    assert pg_client.get(f"{API}/profiles/schema", headers=admin.headers).json()["fields"] == []
    # An upload anyway is refused in the envelope (no file storage on this server), changing nothing.
    schema["fields"] = schema["fields"][:1]
    assert pg_client.put(f"{API}/profiles/schema", headers=admin.headers, json=schema).status_code == 200
    answer = pg_client.patch(
        f"{API}/profiles/{admin.id}",
        headers=admin.headers,
        files={"avatar": ("a.png", b"\x89PNG....", "image/png")},
        data={"nick": "Al"},
    )
    assert answer.status_code == 503 and answer.json()["code"] == "files_unavailable", answer.text
    assert pg_client.get(f"{API}/profiles/{admin.id}", headers=admin.headers).json()["nick"] is None
