"""`serve --workers N` on this machine's two cores: requests/s and server CPU per request, N = 1 and 2.

The server may use both cores (`taskset -c 0,1`); so does wrk, which on a 2-core machine competes with
the second worker: the throughput ratio is a floor. The server's CPU per request (all its processes,
from /proc) shows the scaling a machine with a spare core for the load would see.

    .venv/bin/python bench/workers.py [--duration 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import json

from harness import EXE, Server, wrk
from records import BODY, SUPER_EMAIL, SUPER_PASSWORD, snackbase_scenarios, snackbase_setup

SCENARIOS = ("get by id (public)", "list 20, filter + sort (public)", "create (public)")


def measure(workers: int, duration: int, connections: int) -> dict[str, tuple[float, float, float]]:
    """Per scenario: requests/s, p99 ms, server CPU ms per request."""
    server = Server(
        [str(EXE), "serve", "--port", "{port}", "--data-dir", "{data}", "--workers", str(workers)],
        "/health",
        env={"SNACKBASE_SUPERADMIN_EMAIL": SUPER_EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": SUPER_PASSWORD},
        cores="0,1",
    )
    try:
        scenarios = {s[0]: s for s in snackbase_scenarios(server, snackbase_setup(server))}
        out = {}
        for label in SCENARIOS:
            _, method, url, headers = scenarios[label]
            body = json.dumps(BODY) if method == "POST" else None
            if body:
                headers = {**headers, "content-type": "application/json"}
            before = server.cpu_seconds()
            result = wrk(url, scenario=label, server=f"{workers} worker(s)", method=method, body=body,
                         headers=headers, duration_s=duration, connections=connections,
                         cores="0,1")  # fmt: skip
            cpu = server.cpu_seconds() - before
            out[label] = (
                result.requests_per_s,
                result.p99_ms,
                cpu / (result.requests_per_s * duration) * 1000,
            )
        return out
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not EXE.is_file():
        raise SystemExit("build the executable first: make build")
    one, two = (measure(n, args.duration, args.connections) for n in (1, 2))
    print("| scenario | 1 worker req/s | 2 workers req/s | ratio | CPU ms/request (1 → 2) | p99 ms (1 → 2) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in SCENARIOS:
        (r1, p1, c1), (r2, p2, c2) = one[label], two[label]
        cpu, p99 = f"{c1:.3f} → {c2:.3f}", f"{p1:.1f} → {p2:.1f}"
        print(f"| {label} | {r1:,.0f} | {r2:,.0f} | {r2 / r1:.2f}× | {cpu} | {p99} |")


if __name__ == "__main__":
    main()
