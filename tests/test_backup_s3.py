"""Backups kept in S3-compatible storage (SNACKBASE_BACKUP_STORAGE=s3) against moto's S3 server (the
fixtures of tests/test_files_s3.py): create → list → download → verify → delete → retention, scheduled
backups, a failed upload leaving nothing listed, and the CLI from create to restore."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import pytest
from starlette.testclient import TestClient

from snackbase import backup
from snackbase.app import create_app
from snackbase.backup_store import PREFIX
from snackbase.db import fetch_all, fetch_value
from snackbase.s3 import EMPTY_SHA256, PART_SIZE, S3Client, S3Config, sign
from tests import test_files_s3
from tests.conftest import make_settings
from tests.factories import make_superadmin
from tests.test_backup import run_cli, seeded
from tests.test_files_s3 import BUCKET, keys

# moto's S3 server and a fresh bucket, the fixtures of the file storage tests.
s3_endpoint = test_files_s3.s3_endpoint
bucket = test_files_s3.bucket

API = "/api/v1"


def s3_settings(endpoint: str, bucket_name: str = BUCKET) -> dict[str, Any]:
    return {
        "backup_storage": "s3",
        "s3_endpoint": endpoint,
        "s3_bucket": bucket_name,
        "s3_region": "us-east-1",
        "s3_access_key": "test",
        "s3_secret_key": "test",
    }


def archives(bucket: Any) -> list[str]:
    return [k for k in keys(bucket) if k.startswith(PREFIX)]


def big_file(data: Path) -> None:
    """Makes every archive larger than one upload part, so uploads are multipart."""
    (data / "files" / "CD5678").mkdir(parents=True, exist_ok=True)
    (data / "files" / "CD5678" / "big.bin").write_bytes(os.urandom(PART_SIZE + 3 * 1024 * 1024))


def backup_actions(conn: apsw.Connection) -> list[str]:
    rows = fetch_all(conn, "SELECT action FROM audit_log WHERE collection = 'backups' ORDER BY seq")
    return [r["action"] for r in rows]


def test_http_create_list_download_verify_delete_retention(
    tmp_path: Path,
    s3_endpoint: str,
    bucket: Any,
) -> None:
    settings = make_settings(tmp_path / "data", backup_keep=2, **s3_settings(s3_endpoint))
    big_file(settings.data_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sa = make_superadmin(client)
        made = []
        for _ in range(3):
            r = client.post(f"{API}/backups", headers=sa.headers)
            assert r.status_code == 201, r.text
            made.append(r.json()["name"])
        # Retention by count applied in the bucket; the local backup dir only built them.
        assert archives(bucket) == [PREFIX + n for n in made[1:]]
        assert list(settings.backups_path.glob("*.tar*")) == []
        listed = client.get(f"{API}/backups", headers=sa.headers).json()
        assert [i["name"] for i in listed["items"]] == made[:0:-1]  # newest first
        assert listed["items"][0]["trigger"] == "manual" and listed["items"][0]["parts"] == 2
        assert listed["schedule"]["storage"] == "s3"
        assert listed["schedule"]["dir"] == f"s3://{BUCKET}/{PREFIX}"

        name = made[-1]
        stored = bucket.get_object(Bucket=BUCKET, Key=PREFIX + name)["Body"].read()
        assert len(stored) > PART_SIZE  # it went up as a multipart upload
        got = client.get(f"{API}/backups/{name}", headers=sa.headers)
        assert got.status_code == 200 and got.headers["content-type"] == "application/x-tar"
        assert got.headers["content-length"] == str(len(stored)) and got.content == stored
        (tmp_path / name).write_bytes(got.content)
        assert backup.verify_backup(tmp_path / name).ok
        report = client.post(f"{API}/backups/{name}/verify", headers=sa.headers).json()
        assert report["ok"] is True, report
        assert list(settings.backups_path.glob(".download-*")) == []  # the verify download is gone

        for bad in ("../snackbase.db", "snackbase-20260101T000000-000Z.tar", made[0]):
            r = client.get(f"{API}/backups/{bad}", headers=sa.headers)
            assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert client.delete(f"{API}/backups/{name}", headers=sa.headers).status_code == 204
        assert archives(bucket) == [PREFIX + made[1]]
        assert client.get(f"{API}/backups/{name}", headers=sa.headers).status_code == 404
        conn = client.app.state.db.conn  # type: ignore[attr-defined]
        assert backup_actions(conn) == ["backup.create"] * 3 + ["backup.download", "backup.delete"]
        pruned = [
            json.loads(r["extra"])["pruned"]
            for r in fetch_all(
                conn, "SELECT extra FROM audit_log WHERE action = 'backup.create' ORDER BY seq"
            )
        ]
        assert pruned == [[], [], [made[0]]]


def test_scheduled_backups_go_to_s3(tmp_path: Path, s3_endpoint: str, bucket: Any) -> None:
    settings = make_settings(
        tmp_path / "data", backup_cron="* * * * * *", backup_keep=2, **s3_settings(s3_endpoint)
    )
    with TestClient(create_app(settings)) as client:
        ops = client.app.state.ops  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and ops.backups.outcomes.get("ok", 0) < 3:
            time.sleep(0.1)
    assert ops.backups.outcomes.get("ok", 0) >= 3
    names = [k[len(PREFIX) :] for k in archives(bucket)]
    assert len(names) == 2 and all(backup.NAME_RE.fullmatch(n) for n in names)
    assert list(settings.backups_path.glob("*.tar*")) == []


class FailingFile(io.RawIOBase):
    """A file whose second read fails, as a disk error in the middle of an upload would."""

    def __init__(self, data: bytes) -> None:
        self.data, self.reads = data, 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError("disk read error")
        return self.data[:size]


def test_failed_upload_leaves_no_partial_object(
    tmp_path: Path,
    s3_endpoint: str,
    bucket: Any,
) -> None:
    client = S3Client(S3Config(s3_endpoint, BUCKET, "us-east-1", "test", "test"))
    size = 2 * PART_SIZE + 10
    with pytest.raises(OSError, match="disk read error"):
        client.upload_stream(PREFIX + "x.tar", FailingFile(b"a" * size), size, "application/x-tar")  # type: ignore[arg-type]
    assert archives(bucket) == []
    assert bucket.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []  # aborted

    # Through the API: the bucket refuses the upload → 503, nothing listed, nothing audited.
    settings = make_settings(tmp_path / "data", **s3_settings(s3_endpoint, "no-such-bucket"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        sa = make_superadmin(api)
        r = api.post(f"{API}/backups", headers=sa.headers)
        assert r.status_code == 503 and r.json()["code"] == "backup_storage_failed", r.text
        assert "no-such-bucket" in r.json()["message"]
        assert api.app.state.ops.backups.outcomes == {"failed": 1}  # type: ignore[attr-defined]
        assert backup_actions(api.app.state.db.conn) == []  # type: ignore[attr-defined]
    assert list(settings.backups_path.glob("*.tar*")) == []
    assert archives(bucket) == []


def test_cli_create_list_verify_restore_from_s3(
    tmp_path: Path,
    s3_endpoint: str,
    bucket: Any,
) -> None:
    data = seeded(tmp_path)
    env = "".join(f"SNACKBASE_{k.upper()}={v}\n" for k, v in s3_settings(s3_endpoint).items())
    (tmp_path / ".env").write_text(env)
    made = run_cli("backup", "create", "--data-dir", str(data), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    location = made.stdout.split(" (")[0]
    name = location.rsplit("/", 1)[1]
    assert location == f"s3://{BUCKET}/{PREFIX}{name}" and archives(bucket) == [PREFIX + name]
    assert list((data / "backups").glob("*.tar*")) == []
    listed = run_cli("backup", "list", "--data-dir", str(data), cwd=tmp_path)
    assert listed.returncode == 0 and name in listed.stdout and "cli" in listed.stdout
    checked = run_cli("backup", "verify", name, "--data-dir", str(data), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "FAIL" not in checked.stdout and "audit chains" in checked.stdout
    missing = run_cli("backup", "verify", "snackbase-20260101T000000-000Z.tar", cwd=tmp_path)
    assert missing.returncode == 1 and "no archive" in missing.stderr

    elsewhere = tmp_path / "restored"
    restored = run_cli("backup", "restore", name, "--data-dir", str(elsewhere), cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert (elsewhere / "files" / "AB1234" / "a.txt").read_bytes() == b"file body"
    assert list((elsewhere / "backups").glob(".download-*")) == []
    conn = apsw.Connection(str(elsewhere / "snackbase.db"))
    assert fetch_value(conn, "SELECT count(*) FROM c_notes") == 10
    assert backup_actions(conn)[-1] == "backup.restore"
    conn.close()
    assert run_cli("audit", "verify", "--data-dir", str(elsewhere), cwd=tmp_path).returncode == 0
    again = run_cli("backup", "restore", name, "--data-dir", str(elsewhere), cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr


def test_query_signature_matches_the_aws_example() -> None:
    """AWS's documented example of a signed GET Bucket (List Objects) with a query string: the
    listing and the multipart calls sign their query as S3 expects (moto does not check signatures)."""
    config = S3Config(
        "https://s3.amazonaws.com",
        "examplebucket",
        "us-east-1",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        path_style=False,
    )
    headers = sign(
        config, "GET", "examplebucket.s3.amazonaws.com", "/", {}, EMPTY_SHA256,
        datetime(2013, 5, 24, tzinfo=UTC), S3Client.canonical_query({"prefix": "J", "max-keys": "2"}),
    )  # fmt: skip
    assert headers["authorization"].endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )
