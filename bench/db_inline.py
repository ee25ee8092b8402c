"""Measures DESIGN.md convention 3 on this machine: a short SQLite statement run inline on the event
loop versus handed to a thread (asyncio.to_thread, as anyio's pool would), with 32 concurrent tasks.

    python bench/db_inline.py [--rows 10000] [--lookups 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw

from snackbase.db import connect, fetch_one

CONCURRENCY = 32


def seed(path: Path, rows: int) -> list[str]:
    conn = connect(path)
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, title TEXT, views INTEGER)")
    ids = [f"id-{i:08d}" for i in range(rows)]
    with conn:
        for i, record_id in enumerate(ids):
            conn.execute("INSERT INTO t VALUES (?, ?, ?)", (record_id, f"row {i}", i))
    conn.close()
    return ids


async def drive(lookup: Any, ids: list[str], count: int) -> tuple[float, float]:
    """Runs `count` lookups from CONCURRENCY tasks; returns (lookups/s, p99 ms)."""
    latencies: list[float] = []
    per_task = count // CONCURRENCY

    async def worker() -> None:
        for _ in range(per_task):
            started = time.perf_counter()
            await lookup(random.choice(ids))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, statistics.quantiles(latencies, n=100)[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "bench.db"
    ids = seed(path, args.rows)
    conn = connect(path)
    sql = "SELECT * FROM t WHERE id = ?"

    async def inline(record_id: str) -> Any:
        return fetch_one(conn, sql, (record_id,))

    def in_thread_conn() -> apsw.Connection:
        # One connection per worker thread: apsw connections must not cross threads unsafely.
        import threading

        local = in_thread_conn.__dict__.setdefault("local", threading.local())
        if not hasattr(local, "conn"):
            local.conn = connect(path)
        return local.conn  # type: ignore[no-any-return]

    async def threaded(record_id: str) -> Any:
        return await asyncio.to_thread(lambda: fetch_one(in_thread_conn(), sql, (record_id,)))

    for name, lookup in (("inline on the event loop", inline), ("asyncio.to_thread", threaded)):
        rate, p99 = asyncio.run(drive(lookup, ids, args.lookups))
        print(f"| {name} | {rate:,.0f} lookups/s | p99 {p99:.2f} ms |")


if __name__ == "__main__":
    main()
