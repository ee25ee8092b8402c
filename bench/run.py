"""`make bench`: every benchmark suite against the built executable (dist/snackbase).

    python bench/run.py [--suite foundation|records|all] [--duration 10] [--connections 32] [--rounds 3]
                        [--sequential]

Each suite prints a markdown table (requests/s and p99 per scenario) and saves JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import EXE, Result, Server, print_table, save, wrk

SNACKBASE = [str(EXE), "serve", "--port", "{port}", "--data-dir", "{data}"]


def foundation(duration: int, connections: int) -> None:
    subprocess.run(
        [str(EXE), "version"], check=True, capture_output=True
    )  # extract once, as a user's 2nd run
    startups, rss = [], []
    for _ in range(5):
        server = Server(SNACKBASE, "/health")
        startups.append(server.startup_s)
        time.sleep(1.0)
        rss.append(server.rss_mib())
        server.stop()
    server = Server(SNACKBASE, "/health")
    results: list[Result] = []
    try:
        for scenario, path in (("GET /health", "/health"), ("GET /api/v1", "/api/v1")):
            results.append(
                wrk(
                    server.url + path,
                    scenario=scenario,
                    server="snackbase",
                    duration_s=duration,
                    connections=connections,
                )
            )
    finally:
        server.stop()
    size_mb = EXE.stat().st_size / 1_000_000
    print_table(results)
    print(
        f"\nstart until /health answers: median {sorted(startups)[2] * 1000:.0f} ms "
        f"(min {min(startups) * 1000:.0f}, max {max(startups) * 1000:.0f}); idle RSS {max(rss):.1f} MiB; "
        f"file {size_mb:.1f} MB"
    )
    save("foundation", {"results": results, "startup_s": startups, "rss_mib": rss, "size_mb": size_mb})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", default="all", choices=["foundation", "records", "all"])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="records: measurements per scenario and server")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="records: each server alone (SnackBase, PocketBase, SnackBase again), not interleaved rounds",
    )
    args = parser.parse_args()
    if not EXE.is_file():
        raise SystemExit("build the executable first: make build")
    if args.suite in ("foundation", "all"):
        foundation(args.duration, args.connections)
    if args.suite in ("records", "all"):
        import records

        records.run(args.duration, args.connections, args.rounds, args.sequential)


if __name__ == "__main__":
    main()
