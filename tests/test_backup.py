"""Backups: archives, verify, restore and its refusals, retention, schedule, the HTTP routes, and the
promise under concurrent writes (every write acknowledged before the backup began is in it, and the
restored copy's audit chains verify)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import pytest
from starlette.testclient import TestClient

from snackbase import backup, cron
from snackbase.app import create_app
from snackbase.db import fetch_all, fetch_value
from tests.conftest import make_settings
from tests.factories import make_account, make_superadmin, make_user

API = "/api/v1"
PUBLIC = {"list": "", "view": "", "create": "", "update": "", "delete": ""}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snackbase", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"SNACKBASE_LOG_LEVEL": "WARNING", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def seeded(tmp_path: Path) -> Path:
    """A data dir with one collection of ten records, a hook file and an uploaded file."""
    data = tmp_path / "data"
    with TestClient(create_app(make_settings(data))) as client:
        sa = make_superadmin(client)
        body = {"name": "notes", "fields": [{"name": "title", "type": "text"}], "rules": PUBLIC}
        assert client.post(f"{API}/collections", headers=sa.headers, json=body).status_code == 201
        user = make_user(client, make_account(client))
        for i in range(10):
            r = client.post(f"{API}/records/notes", headers=user.headers, json={"title": f"n{i}"})
            assert r.status_code == 201
    (data / "hooks").mkdir(exist_ok=True)
    (data / "hooks" / "noop.py").write_text("# no hooks\n")
    (data / "files" / "AB1234").mkdir(parents=True)
    (data / "files" / "AB1234" / "a.txt").write_bytes(b"file body")
    return data


def rewrite_manifest(archive: Path, target: Path, **changes: Any) -> None:
    """Copies an archive with manifest fields changed (checksums of the parts untouched)."""
    with tarfile.open(archive) as src, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            handle = src.extractfile(member)
            assert handle is not None
            raw = handle.read()
            if member.name == backup.MANIFEST:
                raw = json.dumps({**json.loads(raw), **changes}).encode()
                member.size = len(raw)
            dst.addfile(member, io.BytesIO(raw))


def test_cli_create_list_verify_restore(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    made = run_cli("backup", "create", "--data-dir", str(data), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    archive = Path(made.stdout.split(" (")[0])
    assert archive.parent == data / "backups" and backup.NAME_RE.fullmatch(archive.name)
    manifest = backup.read_manifest(archive)
    assert set(manifest["parts"]) == {"snackbase.db", "hooks/noop.py", "files/AB1234/a.txt"}
    assert manifest["schema_version"] >= 6 and manifest["snackbase_version"]
    assert manifest["audit_heads"]  # the chains' ends at the time of the copy
    listed = run_cli("backup", "list", "--data-dir", str(data), cwd=tmp_path)
    assert archive.name in listed.stdout
    checked = run_cli("backup", "verify", str(archive), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "FAIL" not in checked.stdout and "integrity_check" in checked.stdout
    # The backup was audited in the system account's chain of the live database.
    conn = apsw.Connection(str(data / "snackbase.db"))
    entry = fetch_all(conn, "SELECT * FROM audit_log WHERE action = 'backup.create'")
    conn.close()
    assert len(entry) == 1 and entry[0]["account_id"] == "SY0000" and entry[0]["auth_method"] == "cli"

    elsewhere = tmp_path / "restored"
    restored = run_cli("backup", "restore", str(archive), "--data-dir", str(elsewhere), cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert (elsewhere / "files" / "AB1234" / "a.txt").read_bytes() == b"file body"
    assert (elsewhere / "hooks" / "noop.py").is_file()
    conn = apsw.Connection(str(elsewhere / "snackbase.db"))
    assert fetch_value(conn, "SELECT count(*) FROM c_notes") == 10
    assert fetch_value(conn, "SELECT count(*) FROM audit_log WHERE action = 'backup.restore'") == 1
    conn.close()
    assert run_cli("audit", "verify", "--data-dir", str(elsewhere), cwd=tmp_path).returncode == 0


def test_restore_refusals(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    archive = backup.create_backup(
        data / "snackbase.db", data / "hooks", data / "files", tmp_path / "bk"
    ).path
    before = (data / "snackbase.db").read_bytes()
    # An existing data dir is never overwritten without --force.
    refused = run_cli("backup", "restore", str(archive), "--data-dir", str(data), cwd=tmp_path)
    assert refused.returncode == 1 and "already exists; use --force" in refused.stderr
    assert (data / "snackbase.db").read_bytes() == before
    # An archive from a newer SnackBase, or with a newer schema, is refused before anything moves.
    for field, value, words in (
        ("snackbase_version", "99.0.0", "newer than this one"),
        ("schema_version", 999, "newer than this SnackBase understands"),
    ):
        newer = tmp_path / f"newer-{field}.tar"
        rewrite_manifest(archive, newer, **{field: value})
        out = run_cli("backup", "restore", str(newer), "--data-dir", str(data), "--force", cwd=tmp_path)
        assert out.returncode == 1 and words in out.stderr, out.stderr
        assert (data / "snackbase.db").read_bytes() == before
    # A database file newer than its manifest claims is refused too, before anything moves.
    future = tmp_path / "future"
    shutil.copytree(data, future, ignore=shutil.ignore_patterns("backups"))
    conn = apsw.Connection(str(future / "snackbase.db"))
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    made = backup.create_backup(future / "snackbase.db", future / "hooks", future / "files", tmp_path / "fb")
    lying = tmp_path / "lying.tar"
    rewrite_manifest(made.path, lying, schema_version=backup.read_manifest(archive)["schema_version"])
    out = run_cli("backup", "restore", str(lying), "--data-dir", str(data), "--force", cwd=tmp_path)
    assert out.returncode == 1 and "newer than this SnackBase understands" in out.stderr, out.stderr
    assert (data / "snackbase.db").read_bytes() == before and not list(data.glob("pre-restore-*"))
    # A damaged archive does not verify and is not restored.
    damaged = tmp_path / "damaged.tar"
    raw = bytearray(archive.read_bytes())
    offset = raw.find(b"SQLite format 3") + 4096
    raw[offset] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    out = run_cli("backup", "verify", str(damaged), cwd=tmp_path)
    assert out.returncode == 1 and "FAIL  sha256 snackbase.db" in out.stdout
    out = run_cli("backup", "restore", str(damaged), "--data-dir", str(tmp_path / "new"), cwd=tmp_path)
    assert out.returncode == 1 and "does not verify" in out.stderr
    assert not (tmp_path / "new" / "snackbase.db").exists()
    # Not an archive at all: one line, no traceback.
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello")
    out = run_cli("backup", "verify", str(junk), cwd=tmp_path)
    assert (
        out.returncode == 1 and out.stderr.startswith("snackbase: error:") and "Traceback" not in out.stderr
    )
    # With --force the old database is moved aside, not deleted.
    out = run_cli("backup", "restore", str(archive), "--data-dir", str(data), "--force", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    aside = list(data.glob("pre-restore-*/snackbase.db"))
    assert len(aside) == 1 and aside[0].read_bytes() == before


def crafted_archive(target: Path, parts: dict[str, bytes], mode: int = 0o644) -> None:
    """An archive whose manifest lists `parts` (with their true checksums) and which holds them."""
    listed = {
        name: {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)} for name, body in parts.items()
    }
    members = [(backup.MANIFEST, json.dumps({"format": 1, "parts": listed}).encode(), 0o644)]
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, raw, bits in members + [(name, body, mode) for name, body in parts.items()]:
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(raw), bits
            tar.addfile(member, io.BytesIO(raw))


@pytest.mark.parametrize("part", ["../escaped.txt", "hooks/../../escaped.txt", "/tmp/escaped-abs.txt", "."])
def test_extract_refuses_a_part_outside_the_directory(tmp_path: Path, part: str) -> None:
    """The manifest comes from the same archive, so listing a part proves nothing about its path."""
    archive = tmp_path / "crafted.tar"
    crafted_archive(archive, {part: b"not yours"})
    target = tmp_path / "restore" / "into"
    target.mkdir(parents=True)
    with pytest.raises(backup.BackupError, match="outside the restore directory"):
        backup.extract(archive, target)
    assert not (tmp_path / "restore" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped-abs.txt").exists()


def test_extract_writes_parts_with_plain_permissions(tmp_path: Path) -> None:
    """A part's set-id bits or mode in the archive never reach the restored file."""
    archive = tmp_path / "crafted.tar"
    crafted_archive(archive, {"hooks/run.py": b"# hook"}, mode=0o6777)
    manifest = backup.extract(archive, tmp_path / "out")
    restored = tmp_path / "out" / "hooks" / "run.py"
    assert manifest["parts"] == {"hooks/run.py": {"sha256": hashlib.sha256(b"# hook").hexdigest(), "size": 6}}
    assert restored.read_bytes() == b"# hook"
    assert restored.stat().st_mode & 0o7000 == 0


def test_extract_reports_a_part_that_cannot_be_written(tmp_path: Path) -> None:
    """A part named under another part (a file, not a directory): a backup error, not a crash."""
    archive = tmp_path / "crafted.tar"
    crafted_archive(archive, {"hooks": b"a file", "hooks/run.py": b"# hook"})
    with pytest.raises(backup.BackupError, match=r"'hooks/run\.py' cannot be written"):
        backup.extract(archive, tmp_path / "out")


def test_verify_detects_an_edited_audit_entry(tmp_path: Path) -> None:
    """Checksums match (the archive was made from an already-tampered database): the chain walk fails."""
    data = seeded(tmp_path)
    conn = apsw.Connection(str(data / "snackbase.db"))
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    triggers = [
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='trigger' AND tbl_name='audit_log'")
    ]
    for name in triggers:
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("UPDATE audit_log SET reason = 'forged' WHERE seq = 2")
    conn.close()
    info = backup.create_backup(data / "snackbase.db", data / "hooks", data / "files", tmp_path / "bk")
    report = backup.verify_backup(info.path)
    assert not report.ok
    failed = [c for c, ok, _ in report.checks if not ok]
    assert failed == ["audit chains"]


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    target = tmp_path / "bk"
    # What an interrupted backup leaves is cleared by the next one and never listed.
    (target / ".staging-abc").mkdir(parents=True)
    (target / "snackbase-20260101T000000-000Z.tar.partial").write_bytes(b"half")
    assert backup.list_backups(target) == []
    names = [
        backup.create_backup(data / "snackbase.db", data / "hooks", data / "files", target).name
        for _ in range(4)
    ]
    assert not list(target.glob(".staging-*")) and not list(target.glob("*.partial"))
    assert backup.prune(target, 2) == names[:2]
    assert sorted(p.name for p in target.glob("*.tar")) == names[2:]
    assert backup.prune(target, 0) == []


def test_cron_schedule() -> None:
    c = cron.parse("30 2 * * *")
    start = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    assert c.next_after(start) == datetime(2026, 12, 2, 2, 30, tzinfo=UTC)
    weekly = cron.parse("0 4 * * 0")  # Sundays 04:00
    assert weekly.next_after(start) == datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
    every = cron.parse("*/15 * * * *")
    assert every.next_after(datetime(2026, 12, 1, 3, 7, 12, tzinfo=UTC)) == datetime(
        2026, 12, 1, 3, 15, tzinfo=UTC
    )
    assert cron.parse("*/5 * * * * *").next_after(datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)).second == 5
    for bad in ("", "* * *", "61 * * * *", "*/0 * * * *", "a * * * *"):
        with pytest.raises(cron.CronError):
            cron.parse(bad)


def test_bad_cron_refuses_start(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SNACKBASE_BACKUP_CRON=99 * * * *\n")
    out = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--port", "0", cwd=tmp_path)
    assert out.returncode == 1 and "SNACKBASE_BACKUP_CRON" in out.stderr


def test_scheduled_backups_and_retention(tmp_path: Path) -> None:
    """A real schedule (every second, the optional seconds field) with SNACKBASE_BACKUP_KEEP=2."""
    settings = make_settings(tmp_path / "data", backup_cron="* * * * * *", backup_keep=2)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.app.state.ops.backups.outcomes.get("ok", 0) < 4:  # type: ignore[attr-defined]
            time.sleep(0.1)
        sa = make_superadmin(client)
        listed = client.get(f"{API}/backups", headers=sa.headers).json()
    assert client.app.state.ops.backups.outcomes.get("ok", 0) >= 4  # type: ignore[attr-defined]
    assert len(listed["items"]) == 2
    assert listed["schedule"]["cron"] == "* * * * * *" and listed["schedule"]["keep"] == 2
    assert all(item["trigger"] == "scheduled" for item in listed["items"])
    conn = apsw.Connection(str(settings.db_path))
    rows = fetch_all(conn, "SELECT auth_method, extra FROM audit_log WHERE action = 'backup.create'")
    conn.close()
    assert len(rows) >= 4 and {r["auth_method"] for r in rows} == {"system"}
    assert any(json.loads(r["extra"])["pruned"] for r in rows)


def test_http_routes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sa = make_superadmin(client)
        admin = make_user(client, make_account(client), "admin")
        assert client.post(f"{API}/backups", headers=admin.headers).status_code == 403
        assert client.get(f"{API}/backups").status_code == 401
        made = client.post(f"{API}/backups", headers=sa.headers)
        assert made.status_code == 201, made.text
        name = made.json()["name"]
        assert [i["name"] for i in client.get(f"{API}/backups", headers=sa.headers).json()["items"]] == [name]
        got = client.get(f"{API}/backups/{name}", headers=sa.headers)
        assert got.status_code == 200 and got.headers["content-type"] == "application/x-tar"
        archive = tmp_path / name
        archive.write_bytes(got.content)
        assert backup.verify_backup(archive).ok
        assert client.post(f"{API}/backups/{name}/verify", headers=sa.headers).json()["ok"] is True
        for bad in ("../snackbase.db", "snackbase.db", "snackbase-20260101T000000-000Z.tar"):
            r = client.get(f"{API}/backups/{bad}", headers=sa.headers)
            assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert client.delete(f"{API}/backups/{name}", headers=sa.headers).status_code == 204
        assert client.get(f"{API}/backups", headers=sa.headers).json()["items"] == []
        conn = client.app.state.db.conn  # type: ignore[attr-defined]
        actions = [
            r["action"]
            for r in fetch_all(conn, "SELECT action FROM audit_log WHERE collection = 'backups' ORDER BY seq")
        ]
        assert actions == ["backup.create", "backup.download", "backup.delete"]


def _post(url: str, body: Any, headers: dict[str, str]) -> Any:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json", **headers}
    )
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


def test_backup_under_concurrent_writes_loses_nothing_acknowledged(tmp_path: Path, start_server: Any) -> None:
    """Four writer threads create records against a real server while POST /backups runs. Every create
    acknowledged before the backup request was sent is in the restored copy, and its chains verify."""
    email, password = "ops@example.com", "correct horse battery staple 42"
    server = start_server({"SNACKBASE_SUPERADMIN_EMAIL": email, "SNACKBASE_SUPERADMIN_PASSWORD": password})
    api = server.url + API
    login = _post(
        api + "/auth/login", {"email": email, "password": password, "account_identifier": "system"}, {}
    )
    sa = {"authorization": "Bearer " + login["access_token"]}
    reg = _post(
        api + "/auth/register", {"account_name": "Load", "email": "w@example.com", "password": password}, {}
    )
    user = {"authorization": "Bearer " + reg["access_token"]}
    _post(api + "/collections", {"name": "events", "fields": [{"name": "n", "type": "number"},
          {"name": "pad", "type": "text"}], "rules": PUBLIC}, sa)  # fmt: skip
    # Some bulk first, so the copy takes many steps while writes land between them.
    for _ in range(40):
        _post(api + "/records/events/batch", {"create": [{"n": -1, "pad": "x" * 2000}] * 100}, user)

    acked: list[tuple[float, str]] = []
    stop = threading.Event()

    def writer(k: int) -> None:
        i = 0
        while not stop.is_set():
            created = _post(api + "/records/events", {"n": k * 1_000_000 + i, "pad": "y" * 500}, user)
            acked.append((time.monotonic(), created["id"]))
            i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    began = time.monotonic()
    made = _post(api + "/backups", {}, sa)
    ended = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    before = {rid for at, rid in acked if at < began}
    during = [rid for at, rid in acked if began <= at < ended]
    assert len(before) > 20 and during, (len(before), len(during))  # writes kept flowing during the backup

    archive = server.data_dir / "backups" / made["name"]
    restored = tmp_path / "restored"
    out = run_cli("backup", "restore", str(archive), "--data-dir", str(restored), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    conn = apsw.Connection(str(restored / "snackbase.db"))
    present = {r[0] for r in conn.execute("SELECT id FROM c_events")}
    created_entries = fetch_value(
        conn, "SELECT count(*) FROM audit_log WHERE action = 'record.create' AND collection = 'events'"
    )
    conn.close()
    assert before <= present, f"{len(before - present)} acknowledged writes missing"
    assert created_entries is not None and created_entries >= len(present) - 4000
    verified = run_cli("audit", "verify", "--data-dir", str(restored), cwd=tmp_path)
    assert verified.returncode == 0 and verified.stdout.startswith("ok"), verified.stdout + verified.stderr
