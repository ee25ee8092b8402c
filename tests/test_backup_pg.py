"""Backups on PostgreSQL (snackbase/backup_pg.py): an archive made through the API from a live
database, verified on its own, restored into an empty schema (same records, files, search index,
signatures-free audit chain that verifies, sequences that carry on), and the refusals: a non-empty
target, a SQLite archive, an archive whose audit trail was edited."""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from snackbase import audit, backup, backup_pg
from snackbase.app import create_app
from snackbase.backends.postgres import PgConnection
from snackbase.backup import BackupError
from snackbase.config import Settings
from snackbase.db import fetch_all, fetch_value
from tests import test_files_s3
from tests.conftest import make_settings
from tests.factories import make_account, make_superadmin, make_user
from tests.test_backup import run_cli
from tests.test_backup_s3 import PREFIX, archives, s3_settings

# moto's S3 server and a fresh bucket, the fixtures of the file storage tests.
s3_endpoint = test_files_s3.s3_endpoint
bucket = test_files_s3.bucket

API = "/api/v1"
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}


def seed(client: TestClient) -> dict[str, Any]:
    """Two collections (one referencing the other, one with a file and a searchable field), records in
    two accounts, an update and a delete: audit entries in three chains."""
    sa = make_superadmin(client)
    for body in (
        {"name": "batches", "rules": PUBLIC, "fields": [{"name": "code", "type": "text"}]},
        {
            "name": "notes",
            "rules": PUBLIC,
            "fields": [
                {"name": "title", "type": "text", "options": {"searchable": True}},
                {"name": "amount", "type": "number"},
                {"name": "batch", "type": "reference", "options": {"collection": "batches"}},
                {"name": "doc", "type": "file"},
            ],
        },
    ):
        assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
    user = make_user(client, make_account(client, "Acme"))
    other = make_user(client, make_account(client, "Globex"))
    batch = client.post(f"{API}/records/batches", headers=user.headers, json={"code": "B\t1\\x"}).json()
    note = client.post(
        f"{API}/records/notes",
        headers=user.headers,
        data={"title": "Phosphate buffer\nsolution", "amount": "2.5", "batch": batch["id"]},
        files={"doc": ("d.txt", b"the document", "text/plain")},
    )
    assert note.status_code == 201, note.text
    for i in range(5):
        r = client.post(f"{API}/records/notes", headers=other.headers, json={"title": f"n{i}", "amount": i})
        assert r.status_code == 201
    gone = client.post(f"{API}/records/notes", headers=other.headers, json={"title": "gone"}).json()
    assert client.delete(f"{API}/records/notes/{gone['id']}", headers=other.headers).status_code == 204
    assert client.patch(f"{API}/records/notes/{note.json()['id']}", headers=user.headers,
                        json={"amount": 3}).status_code == 200  # fmt: skip
    return {"sa": sa, "user": user, "other": other, "note": note.json()}


def snapshot(conn: Any) -> dict[str, Any]:
    return {
        "notes": fetch_all(conn, "SELECT * FROM c_notes ORDER BY id"),
        "batches": fetch_all(conn, "SELECT * FROM c_batches ORDER BY id"),
        "audit": fetch_all(conn, "SELECT * FROM audit_log ORDER BY seq"),
        "heads": fetch_all(conn, "SELECT * FROM audit_heads ORDER BY account_id"),
        "users": fetch_all(conn, "SELECT * FROM users ORDER BY id"),
        "usage": fetch_all(conn, "SELECT * FROM file_usage ORDER BY account_id"),
    }


@pytest.fixture
def made(tmp_path: Path, pg_url: str) -> dict[str, Any]:
    """A seeded PostgreSQL deployment and an archive of it made through POST /backups."""
    settings = make_settings(tmp_path / "data", database_url=pg_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        world = seed(client)
        answer = client.post(f"{API}/backups", headers=world["sa"].headers)
        assert answer.status_code == 201, answer.text
        listed = client.get(f"{API}/backups", headers=world["sa"].headers).json()
        assert [i["name"] for i in listed["items"]] == [answer.json()["name"]]
        verified = client.post(f"{API}/backups/{answer.json()['name']}/verify", headers=world["sa"].headers)
        assert verified.status_code == 200 and verified.json()["ok"] is True, verified.text
        before = snapshot(client.app.state.db.conn)  # type: ignore[attr-defined]
    return {
        "settings": settings,
        "archive": settings.backups_path / answer.json()["name"],
        "before": before,
        **world,
    }


def test_backup_and_restore_into_an_empty_schema(
    made: dict[str, Any], pg_cluster: Any, tmp_path: Path
) -> None:
    archive = made["archive"]
    manifest = backup.read_manifest(archive)
    assert manifest["backend"] == "postgresql" and manifest["tables"]["c_notes"]["rows"] == 6
    assert any(p.startswith("files/") for p in manifest["parts"])
    # The backup.create entry is in the live chain after the archive was made, not in the archive.
    assert len(manifest["audit_heads"]) == len(made["before"]["heads"])

    target_url = pg_cluster.create_database()
    restored_dir = tmp_path / "restored"
    got = backup_pg.restore_backup(archive, target_url, restored_dir, restored_dir / "hooks")
    assert got["created_at"] == manifest["created_at"]
    conn = PgConnection(target_url)
    try:
        after = snapshot(conn)
        assert after["notes"] == made["before"]["notes"] and after["batches"] == made["before"]["batches"]
        assert after["users"] == made["before"]["users"] and after["usage"] == made["before"]["usage"]
        # the archive was made before the backup.create entry: the restored chains end where it began
        assert after["audit"] == made["before"]["audit"][: len(after["audit"])]
        result = audit.verify(conn)  # type: ignore[arg-type]
        assert result.ok and result.entries_checked == len(after["audit"])
    finally:
        conn.close()

    # The restored deployment serves: the file, the search index, new writes carrying on the chain.
    settings = replace(
        make_settings(restored_dir, database_url=target_url), secret_key=made["settings"].secret_key
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        user = make_user(client, made["user"].account_id)
        note = made["note"]
        got_file = client.get(f"{API}/files/notes/{note['id']}/{note['doc']['name']}", headers=user.headers)
        assert got_file.status_code == 200 and got_file.content == b"the document"
        found = client.get(
            f"{API}/records/notes", headers=user.headers, params={"filter": '@search("buffer")'}
        )
        assert [r["id"] for r in found.json()["items"]] == [note["id"]]
        assert found.json()["items"][0]["title"] == "Phosphate buffer\nsolution"
        created = client.post(f"{API}/records/notes", headers=user.headers, json={"title": "after"})
        assert created.status_code == 201, created.text
        conn = client.app.state.db.conn  # type: ignore[attr-defined]
        assert audit.verify(conn).ok
        seqs = [r["seq"] for r in fetch_all(conn, "SELECT seq FROM audit_log ORDER BY seq")]
        # the sequence goes on from the archive's last entry (a reset one would collide with it)
        assert len(seqs) > len(after["audit"]) and seqs[len(after["audit"])] == after["audit"][-1]["seq"] + 1


def test_restore_refuses_a_non_empty_target_and_a_sqlite_archive(
    made: dict[str, Any], tmp_path: Path
) -> None:
    url = made["settings"].database_url
    with pytest.raises(BackupError, match="not empty"):
        backup_pg.restore_backup(made["archive"], url, tmp_path / "r", tmp_path / "r" / "hooks")
    conn = PgConnection(url)  # untouched
    try:
        assert fetch_value(conn, "SELECT count(*) FROM c_notes") == 6
    finally:
        conn.close()
    sqlite_data = tmp_path / "sqlite"
    with TestClient(create_app(make_settings(sqlite_data))):
        pass
    info = backup.create_backup(sqlite_data / "snackbase.db", sqlite_data / "hooks", sqlite_data / "files",
                                tmp_path / "sqlite-backups")  # fmt: skip
    with pytest.raises(BackupError, match="SQLite backup"):
        backup_pg.restore_backup(info.path, url, tmp_path / "r", tmp_path / "r" / "hooks")
    assert backup_pg.verify_archive(info.path).ok  # either backend's archive verifies through one call


def test_verify_detects_an_edited_audit_entry(made: dict[str, Any], pg_cluster: Any, tmp_path: Path) -> None:
    """An audit row changed in the archive, with the manifest's checksum updated to match: the
    re-walked chain is what catches it, and restore refuses the archive."""
    edited = tmp_path / "edited.tar"
    part = f"{backup_pg.PART_PREFIX}audit_log.copy"
    with tarfile.open(made["archive"]) as src:
        members = [(m, src.extractfile(m).read()) for m in src]  # type: ignore[union-attr]
    raw = dict((m.name, data) for m, data in members)[part]
    changed = raw.replace(b"record.update", b"record.create", 1)
    assert changed != raw
    import hashlib

    with tarfile.open(edited, "w", format=tarfile.PAX_FORMAT) as dst:
        for member, data in members:
            if member.name == backup.MANIFEST:
                manifest = json.loads(data)
                manifest["parts"][part]["sha256"] = hashlib.sha256(changed).hexdigest()
                data = json.dumps(manifest).encode()
            elif member.name == part:
                data = changed
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    report = backup_pg.verify_archive(edited)
    failed = [c for c, ok, _ in report.checks if not ok]
    assert not report.ok and failed == ["audit chains"]
    with pytest.raises(BackupError, match="does not verify"):
        backup_pg.restore_backup(edited, pg_cluster.create_database(), tmp_path / "r", tmp_path / "r" / "h")


def test_scheduled_backups_with_retention_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """A real schedule (every second) with SNACKBASE_BACKUP_KEEP=2 on one PostgreSQL node; each
    archive is audited in the system chain."""
    settings = make_settings(tmp_path / "data", database_url=pg_url, backup_cron="* * * * * *", backup_keep=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ops = client.app.state.ops  # type: ignore[attr-defined]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and ops.backups.outcomes.get("ok", 0) < 3:
            time.sleep(0.1)
        listed = client.get(f"{API}/backups", headers=make_superadmin(client).headers).json()
        conn = client.app.state.db.conn  # type: ignore[attr-defined]
        rows = fetch_all(conn, "SELECT auth_method FROM audit_log WHERE action = 'backup.create'")
    assert ops.backups.outcomes.get("ok", 0) >= 3 and not ops.backups.outcomes.get("failed")
    assert len(listed["items"]) == 2 and all(i["trigger"] == "scheduled" for i in listed["items"])
    assert len(rows) >= 3 and {r["auth_method"] for r in rows} == {"system"}


def test_cli_backup_create_and_restore_with_a_database_url(made: dict[str, Any], pg_cluster: Any,
                                                           tmp_path: Path) -> None:  # fmt: skip
    settings: Settings = made["settings"]
    made_cli = run_cli("backup", "create", "--data-dir", str(settings.data_path), "--database-url",
                       settings.database_url, cwd=tmp_path)  # fmt: skip
    assert made_cli.returncode == 0, made_cli.stderr
    archive = Path(made_cli.stdout.split(" (")[0])
    assert backup.read_manifest(archive)["backend"] == "postgresql"
    verified = run_cli("backup", "verify", str(archive), "--data-dir", str(settings.data_path), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    target = pg_cluster.create_database()
    restored = run_cli("backup", "restore", str(archive), "--data-dir", str(tmp_path / "r"), "--database-url",
                       target, cwd=tmp_path)  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    conn = PgConnection(target)
    try:
        assert fetch_value(conn, "SELECT count(*) FROM c_notes") == 6
        assert audit.verify(conn).ok  # type: ignore[arg-type]
        last = fetch_all(conn, "SELECT action FROM audit_log ORDER BY seq DESC LIMIT 1")
        assert last[0]["action"] == "backup.restore"
    finally:
        conn.close()
    again = run_cli("backup", "restore", str(archive), "--data-dir", str(tmp_path / "r"), "--database-url",
                    target, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 1 and "not empty" in again.stderr
    forced = run_cli("backup", "restore", str(archive), "--data-dir", str(tmp_path / "r"), "--database-url",
                     target, "--force", cwd=tmp_path)  # fmt: skip
    assert forced.returncode == 1 and "--force does not apply" in forced.stderr


def test_backups_to_s3_on_postgresql(tmp_path: Path, pg_url: str, s3_endpoint: str, bucket: Any,
                                     pg_cluster: Any) -> None:  # fmt: skip
    """SNACKBASE_BACKUP_STORAGE=s3: the dump goes to the bucket as on SQLite (no local copy left),
    verifies from there, and restores from the bucket by name into an empty schema."""
    settings = make_settings(tmp_path / "data", database_url=pg_url, **s3_settings(s3_endpoint))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        world = seed(client)
        made = client.post(f"{API}/backups", headers=world["sa"].headers)
        assert made.status_code == 201, made.text
        name = made.json()["name"]
        assert archives(bucket) == [PREFIX + name]
        assert not list(settings.backups_path.glob("*.tar"))
        verified = client.post(f"{API}/backups/{name}/verify", headers=world["sa"].headers).json()
        assert verified["ok"] is True, verified
    target = pg_cluster.create_database()
    restored = run_cli_env(  # the archive by its name in the bucket; the S3 settings as variables
        ["backup", "restore", name, "--data-dir", str(tmp_path / "data"), "--database-url", target],
        tmp_path,
        {f"SNACKBASE_{k.upper()}": str(v) for k, v in s3_settings(s3_endpoint).items()},
    )
    assert restored.returncode == 0, restored.stderr
    conn = PgConnection(target)
    try:
        assert fetch_value(conn, "SELECT count(*) FROM c_notes") == 6 and audit.verify(conn).ok  # type: ignore[arg-type]
    finally:
        conn.close()


def run_cli_env(args: list[str], cwd: Path, env: dict[str, str]) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "snackbase", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
        env={"SNACKBASE_LOG_LEVEL": "WARNING", "PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip
