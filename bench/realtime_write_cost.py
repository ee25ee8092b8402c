"""What realtime costs a create, in CPU, in-process (`time.process_time`): the one write path
(`records.create_record`: unit of work, audit entry, realtime publish) on a real SQLite file, with
nobody listening (no lease in `realtime_listeners`: no event row) and with a listener in some process
(a current lease: the event row is inserted in the write's transaction), and with 1,000 idle
subscribers of another collection in this process (the event row, and its hand-over from memory to
the broker after COMMIT). Rounds alternate the three, so drift on a shared machine hits all alike;
medians are printed. The creates run on an event loop, which runs the after-commit delivery between
them as a server's would.

    .venv/bin/python bench/realtime_write_cost.py [--creates 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
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
from snackbase.realtime import Client, Topic  # noqa: E402
from snackbase.realtime_access import Viewer  # noqa: E402
from snackbase.realtime_transport import register  # noqa: E402
from snackbase.rules import Caller  # noqa: E402
from snackbase.unit_of_work import unit_of_work  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.factories import make_account, make_superadmin, make_user  # noqa: E402


async def per_create_us(app: Any, ctx: records.WriteContext, creates: int) -> float:
    conn, registry = app.state.db.conn, app.state.registry
    collection = registry.get(conn, "notes")
    # No lifespan, so no background checkpoints: without this the WAL grows through the rounds and
    # every later variant reads through a longer one.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    started = time.process_time()
    for i in range(creates):
        records.create_record(conn, registry, collection, ctx, {"title": f"note {i}", "views": i})
        await asyncio.sleep(0)  # the after-commit delivery runs here
    return (time.process_time() - started) / creates * 1e6


def idle_subscribers(app: Any, account: str, count: int) -> list[Client]:
    """Anonymous clients of `other`, connected and waiting as an idle SSE stream's sender does."""
    broker = app.state.realtime
    loop = asyncio.get_running_loop()
    clients = []
    for i in range(count):
        caller = Caller(None, account, None, None, False, frozenset, method="anonymous")
        client = broker.new_client("sse", Viewer(caller), account, None, f"10.0.{i // 250}.{i % 250}")
        broker.connect(client)
        broker.subscribe(client, [Topic("other")])
        client._waiter = loop.create_future()
        clients.append(client)
    return clients


def lease(app: Any, until: float) -> None:
    conn = app.state.db.conn
    with unit_of_work(conn):
        register(conn, "another process", until)


async def rounds(
    app: Any, ctx: records.WriteContext, account: str, creates: int, count: int
) -> dict[str, list[float]]:
    await per_create_us(app, ctx, 500)  # warm up
    results: dict[str, list[float]] = {"nobody listens": [], "a listener elsewhere (event row)": [],
                                       "1,000 idle subscribers here": []}  # fmt: skip
    for _ in range(count):
        lease(app, 0.0)  # every lease ran out
        results["nobody listens"].append(await per_create_us(app, ctx, creates))
        lease(app, time.time() + 3600)
        results["a listener elsewhere (event row)"].append(await per_create_us(app, ctx, creates))
        clients = idle_subscribers(app, account, 1000)
        results["1,000 idle subscribers here"].append(await per_create_us(app, ctx, creates))
        for client in clients:
            app.state.realtime.disconnect(client)
    app.state.realtime.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        assert (
            client.post("/api/v1/collections", headers=sa.headers, json={**body, "name": "other"}).status_code
            == 201
        )
        results = asyncio.run(rounds(app, ctx, user.account_id, args.creates, args.rounds))
        load = os.getloadavg()[0]
        for name, values in results.items():
            print(f"{name:34} {statistics.median(values):7.1f} us CPU per create "
                  f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip
        print(f"load average (1 min): {load:.2f}")
        app.state.db.close()


if __name__ == "__main__":
    main()
