"""Instructions per request of built executables, counted by valgrind's callgrind.

A count of instructions does not move with the machine's load or speed, where requests per second
on a shared 2-core machine drift by ±20% within minutes: compare a change by this, and confirm it
with `bench/builds.py`. Each executable serves under callgrind (pinned to core 0); after a warm-up,
`--requests` anonymous gets and then as many anonymous creates go over one keep-alive connection,
one at a time, and only those are counted (`callgrind_control --zero`, then `--dump`, each after a
2 s pause so the request log's once-a-second write of their rows falls inside their window). The
counts include whatever the server does meanwhile on its own (timers: ~0.3 M instructions a second
when idle, a few thousand per request here).

    .venv/bin/python bench/instructions.py /tmp/before/dist/snackbase dist/snackbase
    .venv/bin/python bench/instructions.py OLD NEW --browser-headers   # a browser's dozen headers

Needs Debian's `valgrind`. A run takes about a minute per executable.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness import Server, existing_files, request, save
from records import SUPER_EMAIL as EMAIL
from records import SUPER_PASSWORD as PASSWORD

ACCOUNT = "SY0000"  # the system account: anonymous requests name it with X-Account-ID
RULES = dict.fromkeys(("list", "view", "create", "update", "delete"), "")  # public: anyone may
FIELDS = [{"name": "title", "type": "text"}, {"name": "views", "type": "number"}]
# `--browser-headers`: what a browser's fetch() adds to each request (http.client sends four headers,
# a browser a dozen): the cost of looking headers up grows with their number.
BROWSER_HEADERS = {
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
    "accept": "*/*", "accept-encoding": "gzip, deflate, br", "accept-language": "en-US,en;q=0.9",
    "origin": "http://127.0.0.1:8090", "referer": "http://127.0.0.1:8090/app", "connection": "keep-alive",
    "sec-fetch-site": "same-origin", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty",
}  # fmt: skip
WARMUP = 50
SETTLE_S = 2.0


def count(exe: Path, requests: int, extra_headers: dict[str, str]) -> dict[str, float]:
    """Instructions per anonymous get and per anonymous create."""
    out = Path(tempfile.mkdtemp(prefix="sb-callgrind-"))
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p"]
    server = Server(
        [*valgrind, interpreter(exe), str(exe), "serve", "--port", "{port}", "--data-dir", "{data}"],
        "/health",
        env={"SNACKBASE_SUPERADMIN_EMAIL": EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD},
        startup_timeout=300.0,
    )
    try:
        record_id = _setup(server.url)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        get = _caller(conn, "GET", f"/api/v1/records/posts/{record_id}", None, 200, extra_headers)
        create = _caller(
            conn, "POST", "/api/v1/records/posts", {"title": "new", "views": 2}, 201, extra_headers
        )
        for _ in range(WARMUP):
            get()
            create()
        return {
            "get": _counted(server.proc.pid, out, "get", get, requests),
            "create": _counted(server.proc.pid, out, "create", create, requests),
        }
    finally:
        server.stop()
        shutil.rmtree(out, ignore_errors=True)


def interpreter(exe: Path) -> str:
    """The interpreter the executable runs with, as a real binary path (valgrind does not follow the
    exec of a wrapper script, and the launcher is one): the one its launcher names (`x=PATH;`, see
    build.py) when that exists, else — an older build, or one copied from another machine — the one
    `python3` on PATH finds (pyenv's shims are scripts too, hence asking it for `sys.executable`)."""
    with exe.open("rb") as f:
        named = re.search(rb"\nx=([^;\n]+);", f.read(512))
    if named and Path(named.group(1).decode()).is_file():
        return named.group(1).decode()
    found = subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, check=True
    )
    return found.stdout.strip()


def _setup(url: str) -> str:
    """A public collection with one record; the id of that record."""
    credentials = {"email": EMAIL, "password": PASSWORD, "account_identifier": "system"}
    login = request(f"{url}/api/v1/auth/login", "POST", credentials)
    auth = {"authorization": f"Bearer {login['access_token']}", "x-account-id": ACCOUNT}
    request(f"{url}/api/v1/collections", "POST", {"name": "posts", "fields": FIELDS, "rules": RULES}, auth)
    record = request(f"{url}/api/v1/records/posts", "POST", {"title": "first", "views": 1}, auth)
    return str(record["id"])


def _caller(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: object,
    status: int,
    extra_headers: dict[str, str],
) -> Callable[[], None]:
    payload = json.dumps(body) if body is not None else None
    headers = {**extra_headers, "content-type": "application/json", "x-account-id": ACCOUNT}

    def call() -> None:
        conn.request(method, path, payload, headers)
        response = conn.getresponse()
        response.read()
        if response.status != status:
            raise SystemExit(f"{method} {path} answered {response.status}, not {status}")

    return call


def _counted(pid: int, out: Path, label: str, call: Callable[[], None], requests: int) -> float:
    # The request log writes its rows once a second, from a thread: pausing past that before zeroing
    # and before dumping counts each request's row write with the requests that caused it.
    time.sleep(SETTLE_S)
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    for _ in range(requests):
        call()
    time.sleep(SETTLE_S)
    subprocess.run(["callgrind_control", f"--dump={label}", str(pid)], check=True, capture_output=True)
    for dump in out.glob(f"callgrind.{pid}.*"):
        text = dump.read_text(errors="replace")
        if f"Trigger: dump {label}\n" in text:
            total = re.search(r"^summary: (\d+)", text, re.MULTILINE)
            if total:
                return int(total.group(1)) / requests
    raise SystemExit(f"no callgrind dump for {label} in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("executables", type=Path, nargs="+")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--browser-headers", action="store_true", help="send a browser's dozen headers")
    args = parser.parse_args()
    extra = BROWSER_HEADERS if args.browser_headers else {}
    paths = existing_files(parser, args.executables)
    results = {}
    print("| executable | instructions per anonymous get | per anonymous create |\n|---|---:|---:|")
    for exe, path in zip(args.executables, paths, strict=True):
        counts = results[str(exe)] = count(path, args.requests, extra)
        print(f"| {exe} | {counts['get']:,.0f} | {counts['create']:,.0f} |", flush=True)
    save("instructions", {"requests": args.requests, "browser": args.browser_headers, "results": results})


if __name__ == "__main__":
    main()
