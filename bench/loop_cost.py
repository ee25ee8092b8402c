"""CPU per request of the hot path, in process (no network, no HTTP parser): get by id, a plain list and
a create, through the whole ASGI app. For comparing two source trees, e.g. before and after a change:

    python bench/loop_cost.py --tree /path/to/old/checkout --tree . [--rounds 7] [--requests 3000]

Each round starts one process per tree, in a new random order, and each process measures
`time.process_time()` over `--requests` requests of each kind after a warm-up; the median round per
tree is reported with the spread. CPU time rather than wall time, because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import asyncio, json, sys, time, tempfile
from pathlib import Path
from snackbase.app import create_app
from snackbase.config import load_settings

EMAIL, PASSWORD = "bench@example.com", "correct horse battery staple 42"

async def call(app, method, path, body=None, headers=()):
    sent = []
    payload = json.dumps(body).encode() if body is not None else b""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
             "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(payload)).encode()), *headers]}
    async def receive():
        return {"type": "http.request", "body": payload, "more_body": False}
    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, (json.loads(body) if body else None)

async def main(requests):
    data = Path(tempfile.mkdtemp()) / "data"
    settings = load_settings({"data_dir": str(data), "environment": "testing", "log_level": "WARNING",
                              "superadmin_email": EMAIL, "superadmin_password": PASSWORD,
                              "request_log_days": 0}, env_file=data / "none.env")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        status, login = await call(app, "POST", "/api/v1/auth/login",
                                   {"email": EMAIL, "password": PASSWORD, "account_identifier": "system"})
        auth = [(b"authorization", f"Bearer {login['access_token']}".encode()), (b"x-account-id", b"SY0000")]
        rules = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
        fields = [{"name": "title", "type": "text"}, {"name": "views", "type": "number"}]
        definition = {"name": "posts", "fields": fields, "rules": rules}
        await call(app, "POST", "/api/v1/collections", definition, auth)
        ids = []
        for i in range(1000):
            seed = {"title": f"post {i}", "views": i}
            status, rec = await call(app, "POST", "/api/v1/records/posts", seed, auth)
            assert status == 201, rec
            ids.append(rec["id"])
        out = {}
        kinds = {
            "get": lambda i: ("GET", f"/api/v1/records/posts/{ids[i % len(ids)]}", None),
            "list": lambda i: ("GET", "/api/v1/records/posts?per_page=30", None),
            "create": lambda i: ("POST", "/api/v1/records/posts", {"title": f"new {i}", "views": i}),
        }
        for name, make in kinds.items():
            for i in range(200):  # warm-up
                await call(app, *make(i)[:2], make(i)[2], auth)
            started = time.process_time()
            for i in range(requests):
                method, path, body = make(i)
                status, _ = await call(app, method, path, body, auth)
                assert status in (200, 201), status
            out[name] = (time.process_time() - started) / requests * 1e6
        print(json.dumps(out))

asyncio.run(main(int(sys.argv[1])))
"""


def run(tree: Path, requests: int) -> dict[str, float]:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(requests)], env=env, capture_output=True, text=True, check=True,
        cwd=tempfile.gettempdir(),
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", action="append", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree]
    results: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in random.sample(trees, len(trees)):
            results[tree].append(run(tree, args.requests))
    print("| tree | get µs CPU | list µs CPU | create µs CPU |\n|---|---|---|---|")
    for tree, rounds in results.items():
        cells = []
        for kind in ("get", "list", "create"):
            values = sorted(r[kind] for r in rounds)
            cells.append(f"{statistics.median(values):.1f} ({values[0]:.1f}-{values[-1]:.1f})")
        print(f"| {tree} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
