"""How long slow requests hold a real server's event loop: the slowest `/health` while each runs.

    .venv/bin/python bench/loop_probe.py [--source DIR] [--rows 300000]

`--source` runs the server from another source tree (a directory holding `snackbase/`), so the same
probe measures a version before a change. Scenarios, each run while another client polls `/health`:

* `scan`: a list over `--rows` records (inserted straight into the collection's table) with an
  unindexed filter and its COUNT, and the same as an aggregate;
* `like`: `~` with a 64-character wildcard pattern over 30 records of 200 KB text (list + COUNT);
* `macros`: a list whose rule calls a slow macro seven times (each call runs past its own budget);
* `write`: a create whose rule calls the slow macro (after the change: refused with 503).

The server runs on core 0 and this client on core 1; the machine may be shared, so read the numbers
as orders of magnitude.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from security_probe import ANYONE, API, PASSWORD, free_port, start

SLOW = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) "
    "SELECT count(*) > 0 FROM n"
)


def timed_with_health(http: httpx2.Client, method: str, path: str, headers: dict[str, str],
                      body: Any = None) -> tuple[int, float, float, int]:  # fmt: skip
    """(status, seconds, slowest /health meanwhile in seconds, /health answers meanwhile)."""
    result: dict[str, Any] = {}

    def slow() -> None:
        with httpx2.Client(base_url=str(http.base_url), timeout=120) as own:
            started = time.perf_counter()
            answer = own.request(method, path, headers=headers, json=body)
            result["status"], result["s"] = answer.status_code, time.perf_counter() - started

    worker = threading.Thread(target=slow)
    worker.start()
    slowest, count = 0.0, 0
    while worker.is_alive():
        started = time.perf_counter()
        http.get("/health")
        slowest, count = max(slowest, time.perf_counter() - started), count + 1
    worker.join()
    return result["status"], result["s"], slowest, count


def report(label: str, outcome: tuple[int, float, float, int]) -> None:
    status, seconds, slowest, count = outcome
    print(f"| {label} | {status} in {seconds * 1000:.0f} ms | {slowest * 1000:.1f} ms ({count} answers) |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        proc = start(args.source.resolve(), data, port)
        try:
            with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                login = {"email": "root@example.com", "password": PASSWORD, "account_identifier": "system"}
                token = http.post(f"{API}/auth/login", json=login).json()["access_token"]
                h = {"authorization": f"Bearer {token}", "x-account-id": "SY0000"}
                run(http, h, data, args.rows)
        finally:
            proc.terminate()


def run(http: httpx2.Client, h: dict[str, str], data: Path, rows: int) -> None:
    fields = [{"name": "title", "type": "text"}, {"name": "views", "type": "number"}]
    for body in (
        {"name": "big", "fields": fields, "rules": ANYONE},
        {"name": "pages", "fields": [{"name": "body", "type": "text"}], "rules": ANYONE},
    ):
        http.post(f"{API}/collections", json=body, headers=h).raise_for_status()
    seed = http.post(f"{API}/records/big", json={"title": "seed", "views": 1}, headers=h).json()
    conn = apsw.Connection(str(data / "snackbase.db"))
    conn.set_busy_timeout(5000)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO c_big (id, account_id, created_at, created_by, updated_at, updated_by, title, views) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ((f"row-{i:09d}", seed["account_id"], seed["created_at"], None, seed["updated_at"], None,
          f"title {i}", i % 1000) for i in range(rows)),
    )  # fmt: skip
    conn.execute("COMMIT")
    conn.close()
    for _ in range(30):
        http.post(f"{API}/records/pages", json={"body": "a" * 200_000}, headers=h).raise_for_status()
    http.post(f"{API}/macros", json={"name": "slow", "sql": SLOW}, headers=h).raise_for_status()
    rule = " || ".join(["@slow()"] * 7) + " || true = true"
    body = {"name": "gated", "fields": [{"name": "t", "type": "text"}],
            "rules": {**ANYONE, "list": rule, "create": "@slow() || true = true"}}  # fmt: skip
    http.post(f"{API}/collections", json=body, headers=h).raise_for_status()
    # Rules bind account users (a superadmin passes every rule): one of a new account.
    account = http.post(f"{API}/accounts", json={"name": "Probe"}, headers=h).json()["id"]
    user = {"email": "probe@example.com", "password": PASSWORD, "account_id": account, "role": "admin"}
    http.post(f"{API}/users", json=user, headers=h).raise_for_status()
    login = {"email": user["email"], "password": PASSWORD, "account_identifier": account}
    u = {"authorization": f"Bearer {http.post(f'{API}/auth/login', json=login).json()['access_token']}"}
    http.post(f"{API}/records/gated", json={"t": "x"}, headers=h)
    print("| request | answer | slowest /health meanwhile |\n|---|---|---|")
    scan = 'title ~ "9" && views > 500'
    report(f"list, {rows:,} rows, unindexed filter + COUNT",
           timed_with_health(http, "GET", f"{API}/records/big?filter={scan}", h))  # fmt: skip
    grouped = f"{API}/records/big/aggregate?group_by=views&count=*&limit=1000&filter={scan}"
    report(f"aggregate, {rows:,} rows, group by views", timed_with_health(http, "GET", grouped, h))
    pattern = "%25" + "a" * 62 + "b"
    report("list, 30 × 200 KB, `~` 64-character wildcard pattern",
           timed_with_health(http, "GET", f"{API}/records/pages?filter=body~%22{pattern}%22", h))  # fmt: skip
    report("list, rule with 7 calls of a slow macro",
           timed_with_health(http, "GET", f"{API}/records/gated", u))  # fmt: skip
    report("create, rule calling a slow macro",
           timed_with_health(http, "POST", f"{API}/records/gated", u, {"t": "y"}))  # fmt: skip


if __name__ == "__main__":
    main()
