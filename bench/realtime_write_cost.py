"""What realtime costs a create, in CPU, in-process (`time.process_time`): the one write path
(`records.create_record`: unit of work, audit entry, realtime publish) on a real SQLite file, with
nobody listening (no lease in `realtime_listeners`: no event row) and with a listener in some process
(a current lease: the event row is inserted in the write's transaction). Rounds alternate the two,
so drift on a shared machine hits both alike; medians are printed.

    .venv/bin/python bench/realtime_write_cost.py [--creates 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from starlette.testclient import TestClient  # noqa: E402

from snackbase import records  # noqa: E402
from snackbase.app import create_app  # noqa: E402
from snackbase.audit import RequestMeta  # noqa: E402
from snackbase.realtime_transport import register  # noqa: E402
from snackbase.rules import Caller  # noqa: E402
from snackbase.unit_of_work import unit_of_work  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.factories import make_account, make_superadmin, make_user  # noqa: E402


def per_create_us(app: Any, ctx: records.WriteContext, creates: int) -> float:
    conn, registry = app.state.db.conn, app.state.registry
    collection = registry.get(conn, "notes")
    started = time.process_time()
    for i in range(creates):
        records.create_record(conn, registry, collection, ctx, {"title": f"note {i}", "views": i})
    return (time.process_time() - started) / creates * 1e6


def lease(app: Any, until: float) -> None:
    conn = app.state.db.conn
    with unit_of_work(conn):
        register(conn, "another process", until)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # No lifespan: its background tasks would share the connection from the event loop's thread.
        app: Any = create_app(make_settings(Path(tmp)))
        client = TestClient(app)
        sa = make_superadmin(client)
        user = make_user(client, make_account(client))
        fields = [{"name": "title", "type": "text"}, {"name": "views", "type": "number"}]
        rules = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
        body = {"name": "notes", "fields": fields, "rules": rules}
        assert client.post("/api/v1/collections", headers=sa.headers, json=body).status_code == 201
        caller = Caller(user.id, user.account_id, user.email, user.role, False, frozenset)
        ctx = records.WriteContext(caller, RequestMeta("bench", None, None))
        per_create_us(app, ctx, 500)  # warm up
        results: dict[str, list[float]] = {"nobody listens": [], "a listener (event row written)": []}
        for _ in range(args.rounds):
            lease(app, 0.0)  # every lease ran out
            results["nobody listens"].append(per_create_us(app, ctx, args.creates))
            lease(app, time.time() + 3600)
            results["a listener (event row written)"].append(per_create_us(app, ctx, args.creates))
        load = os.getloadavg()[0]
        for name, values in results.items():
            print(f"{name:34} {statistics.median(values):7.1f} us CPU per create "
                  f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip
        print(f"load average (1 min): {load:.2f}")
        app.state.db.close()


if __name__ == "__main__":
    main()
