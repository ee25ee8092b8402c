"""What the audit trail costs a create (issue 6): the same server with and without its audit entries.

    .venv/bin/python bench/audit_cost.py [--duration 10] [--rounds 3]

Both variants run from the source tree on core 0 with wrk on core 1, like bench/run.py. The variant
without audit replaces `audit.append` (which the record pipeline's `record_changes.record_change`
calls inside the write's unit of work) with a no-op in that process only: it measures what the audit
entry costs, and is never a way to run SnackBase. The rounds alternate the two variants, so drift on
this shared machine hits both alike; the medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import records
from harness import Server

ROOT = Path(__file__).resolve().parent.parent
_SERVE = "import sys; sys.argv[0] = 'snackbase'; {patch}from snackbase.cli import main; main()"
VARIANTS = {
    "with audit": _SERVE.format(patch=""),
    "without audit": _SERVE.format(
        patch="import snackbase.audit as a; a.append = lambda *args, **kwargs: 0; "
    ),
}


def create_rate(code: str, duration: int, connections: int) -> tuple[float, float]:
    server = Server(
        [sys.executable, "-c", code, "serve", "--port", "{port}", "--data-dir", "{data}"],
        "/health",
        env={
            "PYTHONPATH": str(ROOT),
            "SNACKBASE_SUPERADMIN_EMAIL": records.SUPER_EMAIL,
            "SNACKBASE_SUPERADMIN_PASSWORD": records.SUPER_PASSWORD,
        },
    )
    try:
        setup = records.snackbase_setup(server)
        scenario = {s[0]: s for s in records.snackbase_scenarios(server, setup)}["create (public)"]
        result = records.measure("snackbase", scenario, duration, connections)
        return result.requests_per_s, result.p99_ms
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, code in VARIANTS.items():
            rate, p99 = create_rate(code, args.duration, args.connections)
            rates[name].append(rate)
            print(f"{name}: {rate:,.0f} req/s, p99 {p99:.2f} ms", flush=True)
    with_audit, without = (statistics.median(rates[name]) for name in VARIANTS)
    print(f"\nmedian create (public): {without:,.0f} req/s without audit entries, {with_audit:,.0f} with")
    print(f"cost of the audit entry: {(1 - with_audit / without) * 100:.0f}% of create throughput")


if __name__ == "__main__":
    main()
