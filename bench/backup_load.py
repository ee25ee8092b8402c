"""A backup of a large database taken under a create load: do writes keep flowing, and is the copy whole?

    python bench/backup_load.py [--size-mb 1024] [--duration 5] [--connections 16]

1. Seeds a data dir with one collection of ~SIZE MB (rows of ~1 KB written straight into its table
   with apsw while no server runs: going through the API would take an hour at this size).
2. Starts the server (core 0) and measures creates with wrk (core 1) for DURATION s: p99 and req/s
   without a backup.
3. Starts `POST /api/v1/backups`, and while it runs measures creates again for DURATION s, while a
   marker thread makes creates of its own and notes when each was acknowledged.
4. Restores the archive into a new data dir with `snackbase backup restore`, runs `snackbase audit
   verify` on it, and checks that every marker acknowledged before the backup request was sent is in it.

Needs Debian's wrk. Uses `python -m snackbase` from this checkout (no build needed). Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, free_port, request, save, wrk

EMAIL, PASSWORD = "bench-admin@example.com", "correct horse battery staple"
FIELDS = [{"name": "n", "type": "number"}, {"name": "pad", "type": "text"}]
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
SNACKBASE = [sys.executable, "-m", "snackbase"]
ENV = {"SNACKBASE_LOG_LEVEL": "WARNING", "SNACKBASE_SUPERADMIN_EMAIL": EMAIL,
       "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT)}  # fmt: skip


def start(data: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *SNACKBASE, "serve", "--port", str(port), "--data-dir", str(data)],
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def setup(api: str) -> dict[str, Any]:
    login = request(
        api + "/auth/login", "POST", {"email": EMAIL, "password": PASSWORD, "account_identifier": "system"}
    )
    admin = {"authorization": "Bearer " + login["access_token"]}
    reg = request(
        api + "/auth/register",
        "POST",
        {"account_name": "Bench", "email": "w@example.com", "password": PASSWORD},
    )
    request(api + "/collections", "POST", {"name": "events", "fields": FIELDS, "rules": PUBLIC}, admin)
    return {"admin": admin, "account": reg["account"]["id"], "user_id": reg["user"]["id"]}


def seed(db_path: Path, account: str, user_id: str, size_mb: int) -> int:
    """Rows of ~1 KB straight into the collection's table, in transactions of 20,000."""
    conn = apsw.Connection(str(db_path))
    conn.execute("PRAGMA synchronous=OFF")
    pad = "x" * 1000
    rows, batch = size_mb * 1000, 20_000
    now = "2026-12-01T00:00:00.000Z"
    for start_at in range(0, rows, batch):
        with conn:
            conn.executemany(
                "INSERT INTO c_events (id, account_id, created_at, created_by, updated_at, updated_by, n, "
                "pad) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ((f"seed{i:012d}", account, now, user_id, now, user_id, i, pad)
                 for i in range(start_at, min(rows, start_at + batch))),
            )  # fmt: skip
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    return rows


def marker_writer(api: str, account: str, stop_flag: threading.Event, acked: list[tuple[float, str]]) -> None:
    while not stop_flag.is_set():
        made = request(api + "/records/events", "POST", {"n": -1, "pad": "marker"}, {"x-account-id": account})
        acked.append((time.monotonic(), made["id"]))
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sb-backup-bench-"))
    data, port = work / "data", free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    proc = None
    try:
        proc = start(data, port)
        ids = setup(api)
        stop(proc)
        t0 = time.perf_counter()
        rows = seed(data / "snackbase.db", ids["account"], ids["user_id"], args.size_mb)
        db_mb = (data / "snackbase.db").stat().st_size / 1e6
        print(f"seeded {rows:,} rows, database {db_mb:,.0f} MB in {time.perf_counter() - t0:.0f} s")
        proc = start(data, port)
        headers = {"x-account-id": ids["account"], "content-type": "application/json"}
        body = json.dumps({"n": 1, "pad": "a create under load, about a hundred bytes of text in one field"})
        url = api + "/records/events"
        create = {"method": "POST", "body": body, "headers": headers, "duration_s": args.duration,
                  "connections": args.connections}  # fmt: skip
        baseline = wrk(url, scenario="create, no backup", server="snackbase", **create)  # type: ignore[arg-type]

        acked: list[tuple[float, str]] = []
        stop_flag = threading.Event()
        marker = threading.Thread(target=marker_writer, args=(api, ids["account"], stop_flag, acked))
        marker.start()
        time.sleep(2.0)
        outcome: dict[str, Any] = {}

        def run_backup() -> None:
            began = time.monotonic()
            outcome["began"] = began
            req = urllib.request.Request(
                api + "/backups", b"{}", {"content-type": "application/json", **ids["admin"]}
            )
            with urllib.request.urlopen(req, timeout=900) as response:  # a 1 GB copy takes minutes
                outcome["info"] = json.loads(response.read())
            outcome["seconds"] = time.monotonic() - began

        backup_thread = threading.Thread(target=run_backup)
        backup_thread.start()
        time.sleep(0.5)
        during = wrk(url, scenario="create, during the backup", server="snackbase", **create)  # type: ignore[arg-type]
        still_running = backup_thread.is_alive()
        backup_thread.join()
        stop_flag.set()
        marker.join()
        stop(proc)

        info, began = outcome["info"], outcome["began"]
        archive = data / "backups" / info["name"]
        restored = work / "restored"
        t1 = time.perf_counter()
        subprocess.run([*SNACKBASE, "backup", "restore", str(archive), "--data-dir", str(restored)],
                       check=True, env={**os.environ, **ENV}, capture_output=True)  # fmt: skip
        restore_s = time.perf_counter() - t1
        verify = subprocess.run([*SNACKBASE, "audit", "verify", "--data-dir", str(restored)],
                                env={**os.environ, **ENV}, capture_output=True, text=True)  # fmt: skip
        conn = apsw.Connection(str(restored / "snackbase.db"))
        present = {r[0] for r in conn.execute("SELECT id FROM c_events WHERE n = -1")}
        conn.close()
        before = [rid for at, rid in acked if at < began]
        missing = [rid for rid in before if rid not in present]
        report = {
            "database_mb": round(db_mb),
            "archive_mb": round(info["size"] / 1e6),
            "backup_s": round(outcome["seconds"], 1),
            "backup_still_running_when_wrk_ended": still_running,
            "create_without_backup": {"rps": round(baseline.requests_per_s), "p99_ms": baseline.p99_ms},
            "create_during_backup": {
                "rps": round(during.requests_per_s),
                "p99_ms": during.p99_ms,
                "errors": during.errors,
            },
            "markers_acked_before_backup": len(before),
            "markers_missing_from_restore": len(missing),
            "markers_acked_during_backup": sum(1 for at, _ in acked if at >= began),
            "restore_s": round(restore_s, 1),
            "audit_verify": (verify.stdout or verify.stderr).strip(),
        }
        print(json.dumps(report, indent=2))
        save("backup_load", report)
    finally:
        if proc is not None and proc.poll() is None:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
