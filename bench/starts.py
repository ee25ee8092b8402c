"""Start time and idle memory of SnackBase executables, alternating, a new data directory each start.

    .venv/bin/python bench/starts.py OLD_EXE dist/snackbase [--starts 9]

Each executable is run once first (`version`), so that every measured start is a later one, as a
user's are: the first start of a file unpacks it. Then the executables start in turn, each with a
new data directory, pinned to core 0, the way `bench/run.py --suite foundation` starts one: the time
from launching the process until `/health` answers, and its resident memory one second later. On a
shared machine one executable measured alone can drift by 20% between minutes; alternating their
starts puts the same drift on both.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

from harness import Server, existing_files, save

SETTLE_S = 1.0  # as the foundation suite: idle memory one second after the first answer


def measure(executables: list[Path], starts: int) -> dict[str, dict[str, list[float]]]:
    for exe in executables:
        subprocess.run([str(exe), "version"], check=True, capture_output=True)  # unpack once
    runs: dict[str, dict[str, list[float]]] = {str(e): {"start_ms": [], "rss_mib": []} for e in executables}
    for _ in range(starts):
        for exe in executables:
            server = Server([str(exe), "serve", "--port", "{port}", "--data-dir", "{data}"], "/health")
            time.sleep(SETTLE_S)
            runs[str(exe)]["start_ms"].append(server.startup_s * 1000)
            runs[str(exe)]["rss_mib"].append(server.rss_mib())
            server.stop()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("executables", type=Path, nargs="+")
    parser.add_argument("--starts", type=int, default=9)
    args = parser.parse_args()
    runs = measure(existing_files(parser, args.executables), args.starts)
    print("| executable | start median ms | min | max | idle RSS median MiB | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for exe, run in runs.items():
        start, rss = run["start_ms"], run["rss_mib"]
        print(
            f"| {exe} | {statistics.median(start):.0f} | {min(start):.0f} | {max(start):.0f} "
            f"| {statistics.median(rss):.1f} | {max(rss):.1f} |"
        )
    save("starts", {"starts": args.starts, "results": runs})


if __name__ == "__main__":
    main()
