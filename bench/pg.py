"""One node on SQLite vs one node on PostgreSQL vs two nodes on one PostgreSQL (docs/scaling.md, "What
was measured"): requests/s, p99, and the CPU each request costs — per SnackBase node and in PostgreSQL
— for get by id, a list of 20 with a filter and a sort, and create (with its audit entry).

    .venv/bin/python bench/pg.py [--duration 3] [--connections 16] [--rows 2000] [--configs sqlite,pg1,pg2]

PostgreSQL is a throwaway cluster like the tests' (tests/pg.py: initdb in a temporary directory, a free
port, stopped at the end). Nothing is pinned: on this 2-core machine the nodes, PostgreSQL and wrk
share both cores, so requests/s is what the whole machine does; the CPU columns (user + system seconds
of each process tree, from /proc) are what scales: a node's CPU per request is the cost another machine
would add. The machine is shared: the 1-minute load average before each run is printed beside it.

The servers run from the source tree (`python -m snackbase`), so `--pythonpath DIR` measures another
checkout of the code (e.g. `git archive` of an older commit) with the same script, or the same code
with psycopg's C implementation: `pip install --target /tmp/pgc psycopg-binary==<psycopg's version>`,
then `--pythonpath .:/tmp/pgc`.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import Result, Server, free_port, request, save, tree_cpu_seconds, wrk
from records import BODY, FILTER_SB, SB_FIELDS, SUPER_EMAIL, SUPER_PASSWORD, _qs, _row, _seed, snackbase_admin

CONFIGS = {"sqlite": ("SQLite", 1), "pg1": ("PostgreSQL", 1), "pg2": ("PostgreSQL", 2)}
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")


@dataclass
class Row:
    config: str
    scenario: str
    requests_per_s: float
    p99_ms: float
    errors: int
    node_cpu_ms: float  # per request, per node (each node's CPU / the requests it answered)
    db_cpu_ms: float  # per request, in PostgreSQL's processes (0 on SQLite: it is inside the node)
    load: float  # the 1-minute load average before the run


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def start_nodes(count: int, database_url: str, pythonpath: str | None) -> list[Server]:
    env = {"SNACKBASE_SUPERADMIN_EMAIL": SUPER_EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": SUPER_PASSWORD}
    if database_url:
        env["SNACKBASE_DATABASE_URL"] = database_url
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-m", "snackbase", "serve", "--port", "{port}", "--data-dir", "{data}"]
    nodes: list[Server] = []
    try:
        for _ in range(count):
            nodes.append(Server(command, "/health", env=env, cores="0,1"))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def setup(node: Server, rows: int) -> tuple[str, str]:
    """A registered account with one public collection of `rows` records: (account id, a record id)."""
    api, admin, registered = snackbase_admin(node)
    request(api + "/collections", "POST", {"name": "items", "fields": SB_FIELDS, "rules": PUBLIC}, admin)
    headers = {"authorization": "Bearer " + registered["access_token"]}
    last = _seed(node.port, "/api/v1/records/items", headers, [_row(i) for i in range(rows)], batch=True)
    return registered["account"]["id"], last


def measure(
    config: str, nodes: list[Server], account: str, record: str, duration: int, connections: int,
    postmaster: int | None,
) -> list[Row]:  # fmt: skip
    headers = {"x-account-id": account}
    query = "?" + _qs({"filter": FILTER_SB, "sort": "-created_at", "per_page": "20"})
    scenarios = [
        ("get by id", "GET", f"/api/v1/records/items/{record}", None),
        ("list 20, filter + sort", "GET", "/api/v1/records/items" + query, None),
        ("create (with audit)", "POST", "/api/v1/records/items", json.dumps(BODY)),
    ]
    out = []
    for label, method, path, body in scenarios:
        load = load_average()
        cpu_before = [node.cpu_seconds() for node in nodes]
        db_before = tree_cpu_seconds(postmaster) if postmaster else 0.0
        hdrs = {**headers, "content-type": "application/json"} if body else headers
        per_node = max(1, connections // len(nodes))
        with ThreadPoolExecutor(len(nodes)) as pool:  # one wrk per node, at the same time
            runs = [pool.submit(wrk, node.url + path, scenario=label, server=config, method=method, body=body,
                                headers=hdrs, duration_s=duration, connections=per_node, cores="0,1")
                    for node in nodes]  # fmt: skip
            results: list[Result] = [run.result() for run in runs]
        rps = sum(r.requests_per_s for r in results)
        node_cpu = [node.cpu_seconds() - before for node, before in zip(nodes, cpu_before, strict=True)]
        db_cpu = tree_cpu_seconds(postmaster) - db_before if postmaster else 0.0
        per_request = [
            cpu / max(r.requests_per_s * duration, 1) * 1000 for cpu, r in zip(node_cpu, results, strict=True)
        ]
        out.append(Row(
            config, label, rps, max(r.p99_ms for r in results), sum(r.errors for r in results),
            sum(per_request) / len(per_request), db_cpu / max(rps * duration, 1) * 1000, load,
        ))  # fmt: skip
    return out


def run_config(
    config: str, duration: int, connections: int, rows: int, pythonpath: str | None, cluster: Any
) -> list[Row]:
    engine, count = CONFIGS[config]
    url, postmaster = "", None
    if engine == "PostgreSQL":
        url = cluster.create_database()
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    nodes = start_nodes(count, url, pythonpath)
    try:
        account, record = setup(nodes[0], rows)
        label = f"{count} node{'s' if count > 1 else ''}, {engine}"
        return measure(label, nodes, account, record, duration, connections, postmaster)
    finally:
        for node in nodes:
            node.stop()


def print_rows(rows: list[Row]) -> None:
    print("| setup | scenario | req/s | p99 ms | node CPU ms/req | PostgreSQL CPU ms/req | load | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        db = f"{r.db_cpu_ms:.3f}" if r.db_cpu_ms else "–"
        print(f"| {r.config} | {r.scenario} | {r.requests_per_s:,.0f} | {r.p99_ms:.1f} | {r.node_cpu_ms:.3f} "
              f"| {db} | {r.load:.2f} | {r.errors} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=3, help="seconds per scenario (keep it short)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections, split over the nodes")
    parser.add_argument("--rows", type=int, default=2000, help="seeded records")
    parser.add_argument("--configs", default="sqlite,pg1,pg2", help="any of sqlite, pg1, pg2")
    parser.add_argument("--pythonpath", default=None, help="run the servers from another checkout")
    args = parser.parse_args()
    from tests import pg

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    rows: list[Row] = []
    with pg.running(free_port()) as cluster:
        for config in configs:
            rows += run_config(config, args.duration, args.connections, args.rows, args.pythonpath, cluster)
    print_rows(rows)
    save("pg", {"rows": rows, "duration_s": args.duration, "connections": args.connections})


if __name__ == "__main__":
    main()
