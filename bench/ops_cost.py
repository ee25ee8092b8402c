"""What rate limits, metrics and the request log cost on the hot path: get by id, A/B interleaved.

    python bench/ops_cost.py [--rounds 7] [--duration 3] [--connections 32]

The servers run at once, each pinned to core 0 (wrk on core 1), the same data in each:
- `off`: no rate limits, metrics off, request log off (SNACKBASE_REQUEST_LOG_DAYS=0);
- `limits`: rate limits on for every class, so high they never refuse (the bucket work is all paid);
- `all`: limits, metrics (SNACKBASE_METRICS_ENABLED) and the request log on — the defaults plus both;
- `metrics`, `log`: one of them alone. `--configs off,log` picks the servers (the first is the base).
Only one server is under load at a time; each round runs the three in a new random order, and the
median round of each is reported with the spread, so the drift of this shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, Server, request, save, wrk

EMAIL, PASSWORD = "bench-admin@example.com", "correct horse battery staple"
COMMAND = [sys.executable, "-m", "snackbase", "serve", "--port", "{port}", "--data-dir", "{data}"]
BASE = {"SNACKBASE_LOG_LEVEL": "WARNING", "SNACKBASE_SUPERADMIN_EMAIL": EMAIL,
        "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT)}  # fmt: skip
HUGE = "100000000/1"
CONFIGS: dict[str, dict[str, str]] = {
    "off": {"SNACKBASE_REQUEST_LOG_DAYS": "0"},
    "limits": {"SNACKBASE_REQUEST_LOG_DAYS": "0", "SNACKBASE_RATE_LIMIT_READS": HUGE,
               "SNACKBASE_RATE_LIMIT_WRITES": HUGE, "SNACKBASE_RATE_LIMIT_AUTH": HUGE},
    "metrics": {"SNACKBASE_REQUEST_LOG_DAYS": "0", "SNACKBASE_METRICS_ENABLED": "true"},
    "log": {},  # the request log alone (on by default)
    "all": {"SNACKBASE_METRICS_ENABLED": "true", "SNACKBASE_RATE_LIMIT_READS": HUGE,
            "SNACKBASE_RATE_LIMIT_WRITES": HUGE, "SNACKBASE_RATE_LIMIT_AUTH": HUGE},
}  # fmt: skip


def prepare(server: Server) -> tuple[str, dict[str, str]]:
    api = server.url + "/api/v1"
    login = request(
        api + "/auth/login", "POST", {"email": EMAIL, "password": PASSWORD, "account_identifier": "system"}
    )
    admin = {"authorization": "Bearer " + login["access_token"]}
    reg = request(
        api + "/auth/register",
        "POST",
        {"account_name": "Bench", "email": "u@example.com", "password": PASSWORD},
    )
    fields = [{"name": "title", "type": "text"}, {"name": "views", "type": "number"}]
    rules = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
    request(api + "/collections", "POST", {"name": "items", "fields": fields, "rules": rules}, admin)
    headers = {"x-account-id": reg["account"]["id"]}
    made = request(api + "/records/items", "POST", {"title": "hot path", "views": 1}, headers)
    return f"{api}/records/items/{made['id']}", headers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--configs", default="off,limits,all", help=f"comma-separated, of {', '.join(CONFIGS)}"
    )
    args = parser.parse_args()
    names = args.configs.split(",")
    servers = {name: Server(COMMAND, "/health", env={**BASE, **CONFIGS[name]}) for name in names}
    try:
        targets = {name: prepare(server) for name, server in servers.items()}
        results: dict[str, list[Any]] = {name: [] for name in servers}
        for round_no in range(args.rounds):
            order = list(servers)
            random.shuffle(order)
            for name in order:
                url, headers = targets[name]
                results[name].append(
                    wrk(
                        url,
                        scenario="get by id",
                        server=name,
                        headers=headers,
                        duration_s=args.duration,
                        connections=args.connections,
                    )
                )
            print(
                f"round {round_no + 1}: "
                + ", ".join(f"{n} {results[n][-1].requests_per_s:,.0f}" for n in order)
            )
    finally:
        for server in servers.values():
            server.stop()
    base = statistics.median(r.requests_per_s for r in results[names[0]])
    summary = {}
    print("| config | median req/s | min–max | vs off | median p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        rps = [r.requests_per_s for r in runs]
        med = statistics.median(rps)
        p99 = statistics.median(r.p99_ms for r in runs)
        summary[name] = {"median_rps": med, "min": min(rps), "max": max(rps), "p99_ms": p99,
                         "vs_off_pct": round((med / base - 1) * 100, 1), "rounds": rps}  # fmt: skip
        spread = f"{min(rps):,.0f}–{max(rps):,.0f}"
        print(f"| {name} | {med:,.0f} | {spread} | {(med / base - 1) * 100:+.1f}% | {p99:.2f} |")
    # Paired: in each round, each config against `off` of the same round.
    for name in names[1:]:
        pairs = zip(results[names[0]], results[name], strict=True)
        ratios = [b.requests_per_s / a.requests_per_s - 1 for a, b in pairs]
        summary[name]["paired_median_pct"] = round(statistics.median(ratios) * 100, 1)
        print(f"paired per round, {name} vs off: median {statistics.median(ratios) * 100:+.1f}% "
              f"(rounds: {', '.join(f'{r * 100:+.1f}%' for r in ratios)})")  # fmt: skip
    save("ops_cost", summary)


if __name__ == "__main__":
    main()
