"""Two SnackBase executables side by side: the records scenarios, alternating rounds, medians.

Answers "is this build slower than that one?" on one machine in one hour, where a ratio to
PocketBase cannot: that ratio moves with the machine (on a slower machine Python loses more than Go
does) and with PocketBase's own run-to-run spread. Both servers run at once, pinned to core 0 with
wrk on core 1, each seeded with the records suite's 10,000 rows; every scenario is measured
`--rounds` times per build, alternating which build goes first, and the median round is reported.

    git worktree add /tmp/before <commit>
    (cd /tmp/before && /path/to/main/.venv/bin/python build.py)
    PATH=.venv/bin:$PATH .venv/bin/python bench/builds.py /tmp/before/dist/snackbase dist/snackbase

The older build must accept the suite's setup requests (superadmin from the environment, the
collections and user it creates); any build since the records suite was written does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import records
from harness import Result, Server, existing_files, print_table, save

Scenario = tuple[str, str, str, dict[str, str]]
MAIN_SCENARIOS = 6  # get, list and create, public and with a token (the 10k rule-cost rows are left out)


def compare(before: Path, after: Path, duration: int, rounds: int) -> list[Result]:
    servers: dict[str, tuple[Server, list[Scenario]]] = {}
    try:
        for name, exe in (("before", before), ("after", after)):
            servers[name] = records.start_snackbase(exe)
        results: list[Result] = []
        for label in [s[0] for s in servers["after"][1][:MAIN_SCENARIOS]]:
            runs: dict[str, list[Result]] = {"before": [], "after": []}
            for round_ in range(rounds):
                for name in sorted(runs, reverse=round_ % 2 == 0):
                    scenario = next(s for s in servers[name][1] if s[0] == label)
                    runs[name].append(records.measure(name, scenario, duration, 32))
            for name, measured in runs.items():
                rates = ", ".join(f"{r.requests_per_s:,.0f}" for r in measured)
                print(f"{label}, {name}: {rates} req/s", flush=True)
                results.append(records.median_round(measured))
        return results
    finally:
        for server, _ in servers.values():
            server.stop()


def print_ratios(results: list[Result]) -> None:
    before = {r.scenario: r for r in results if r.server == "before"}
    print("\n| scenario | before req/s | after req/s | after / before |")
    print("|---|---:|---:|---:|")
    for r in results:
        if r.server == "after":
            old = before[r.scenario]
            ratio = r.requests_per_s / old.requests_per_s
            print(f"| {r.scenario} | {old.requests_per_s:,.0f} | {r.requests_per_s:,.0f} | {ratio:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the older executable")
    parser.add_argument("after", type=Path, help="the newer executable")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    before, after = existing_files(parser, [args.before, args.after])
    results = compare(before, after, args.duration, args.rounds)
    print_table(results)
    print_ratios(results)
    save("builds", {"before": str(args.before), "after": str(args.after), "results": results})


if __name__ == "__main__":
    main()
