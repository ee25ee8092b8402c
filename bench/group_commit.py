"""Would group commit pay? The SQL of a create (record row, audit entry, chain head) with one COMMIT
per create against one COMMIT per group of creates, each create in its own SAVEPOINT as a grouped
unit of work would need. CPU per create (time.process_time), best of rounds, on one core.

    taskset -c 0 .venv/bin/python bench/group_commit.py [creates-per-round] [rounds]
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import apsw

SCHEMA = """
CREATE TABLE r (id TEXT PRIMARY KEY, account_id TEXT, created_at TEXT, title TEXT, views INT) STRICT;
CREATE INDEX r_recent ON r (account_id, created_at, id);
CREATE TABLE a (seq INTEGER PRIMARY KEY, account_id TEXT, account_seq INT, changes TEXT, hash TEXT) STRICT;
CREATE INDEX a_account ON a (account_id, account_seq);
CREATE TABLE h (account_id TEXT PRIMARY KEY, seq INT, hash TEXT) STRICT;
INSERT INTO h VALUES ('A', 0, '');
"""


def connect(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA page_size=2048")  # as snackbase.db.connect
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(SCHEMA)
    return conn


def create(conn: apsw.Connection) -> None:
    conn.execute(
        "INSERT INTO r VALUES (?, 'A', '2026-12-01T00:00:00.000Z', 'hello', 42)", (str(uuid.uuid4()),)
    )
    seq = conn.execute("SELECT seq FROM h WHERE account_id = 'A'").fetchone()[0]  # type: ignore[index]
    conn.execute(
        "INSERT INTO a (account_id, account_seq, changes, hash) VALUES ('A', ?, '{}', ?)", (seq + 1, "h" * 64)
    )
    conn.execute("UPDATE h SET seq = ?, hash = ? WHERE account_id = 'A'", (seq + 1, "h" * 64))


def cpu_per_create(conn: apsw.Connection, group: int, count: int) -> float:
    started = time.process_time()
    for _ in range(count // group):
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(group):
            if group > 1:
                conn.execute("SAVEPOINT one")
            create(conn)
            if group > 1:
                conn.execute("RELEASE one")
        conn.execute("COMMIT")
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(Path(tmp) / "bench.db")
        best: dict[int, float] = {}
        for _ in range(rounds):
            for group in (1, 4, 16):
                best[group] = min(best.get(group, 1e9), cpu_per_create(conn, group, count))
        for group, us in best.items():
            print(f"group of {group:2}: {us:5.1f} µs CPU per create (SQL only)")


if __name__ == "__main__":
    main()
