"""`serve --workers N` on this machine's two cores: requests/s and server CPU per request, N = 1 and 2.

Both servers run at once (each seeded alike) and only one is under load at a time: every scenario is
measured `--rounds` times per server, alternating which goes first, and the median round is reported,
so the drift of a shared machine during the run hits both alike (measuring one server, then the other,
gave ratios from 0.66× to 1.38× for the same build within an hour).

The servers may use both cores (`taskset -c 0,1`); so does wrk, which on a 2-core machine competes with
the second worker: the throughput ratio is a floor. The server's CPU per request (all its processes,
from /proc) shows the scaling a machine with a spare core for the load would see.

    .venv/bin/python bench/workers.py [--duration 5] [--rounds 5] [--connections 32]
    .venv/bin/python bench/workers.py --scenario "create (public)" --old OLD_EXE   # + OLD_EXE's 2 workers
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from harness import EXE, Server, wrk
from records import BODY, SUPER_EMAIL, SUPER_PASSWORD, snackbase_scenarios, snackbase_setup

SCENARIOS = ("get by id (public)", "list 20, filter + sort (public)", "create (public)")
Scenario = tuple[str, str, str, dict[str, str]]


def start(workers: int, exe: Path = EXE) -> tuple[Server, dict[str, Scenario]]:
    server = Server(
        [str(exe), "serve", "--port", "{port}", "--data-dir", "{data}", "--workers", str(workers)],
        "/health",
        env={"SNACKBASE_SUPERADMIN_EMAIL": SUPER_EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": SUPER_PASSWORD},
        cores="0,1",
    )
    try:
        return server, {s[0]: s for s in snackbase_scenarios(server, snackbase_setup(server))}
    except BaseException:
        server.stop()
        raise


def one_round(
    server: Server, scenario: Scenario, duration: int, connections: int
) -> tuple[float, float, float]:
    """Requests/s, p99 ms and server CPU ms per request of one round."""
    label, method, url, headers = scenario
    body = json.dumps(BODY) if method == "POST" else None
    if body:
        headers = {**headers, "content-type": "application/json"}
    before = server.cpu_seconds()
    result = wrk(url, scenario=label, server="snackbase", method=method, body=body, headers=headers,
                 duration_s=duration, connections=connections, cores="0,1")  # fmt: skip
    cpu = server.cpu_seconds() - before
    return result.requests_per_s, result.p99_ms, cpu / (result.requests_per_s * duration) * 1000


def median_round(rounds: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The round with the median throughput, its p99 with it; CPU per request is the median of all."""
    ordered = sorted(rounds)
    rate, p99, _ = ordered[len(ordered) // 2]
    return rate, p99, statistics.median(r[2] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: all three")
    parser.add_argument("--old", type=Path, help="another build, measured with 2 workers alongside")
    args = parser.parse_args()
    if not EXE.is_file():
        raise SystemExit("build the executable first: make build")
    kinds = [("1", EXE, 1), ("2", EXE, 2)] + ([("2 old", args.old, 2)] if args.old else [])
    servers = {}
    try:
        for name, exe, workers in kinds:
            servers[name] = start(workers, exe)
        rows = []
        for label in args.scenario or SCENARIOS:
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in kinds}
            for round_ in range(args.rounds):
                for name in sorted(runs, reverse=round_ % 2 == 1):
                    server, scenarios = servers[name]
                    runs[name].append(one_round(server, scenarios[label], args.duration, args.connections))
            for name, measured in runs.items():
                rates = ", ".join(f"{r[0]:,.0f}" for r in measured)
                print(f"{label}, {name} worker(s): {rates} req/s", flush=True)
            rows.append((label, {name: median_round(measured) for name, measured in runs.items()}))
    finally:
        for server, _ in servers.values():
            server.stop()
    print("| scenario | 1 worker req/s | 2 workers req/s | ratio | CPU ms/request (1 → 2) | p99 ms (1 → 2) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, medians in rows:
        (r1, p1, c1), (r2, p2, c2) = medians["1"], medians["2"]
        cpu, p99 = f"{c1:.3f} → {c2:.3f}", f"{p1:.1f} → {p2:.1f}"
        print(f"| {label} | {r1:,.0f} | {r2:,.0f} | {r2 / r1:.2f}× | {cpu} | {p99} |")
        if "2 old" in medians:
            ro, po, co = medians["2 old"]
            print(f"|   {args.old}, 2 workers | | {ro:,.0f} | {ro / r1:.2f}× | {co:.3f} | {po:.1f} |")


if __name__ == "__main__":
    main()
