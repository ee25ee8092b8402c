"""The two timing holes of the security review (issue 13), measured against a real server.

    .venv/bin/python bench/security_probe.py [--source DIR] [--rows 6] [--samples 100]

`--source` runs the server from another checkout's source tree (a directory holding `snackbase/`),
so the same probe measures a version before the fixes. It reports:

* `~` over large texts: `--rows` records with a 900 KB text field, then one list filtered with the
  longest allowed pattern that matches nowhere (`a`×255 + `b` over `a`×900,000, the worst case of a
  naive substring search) and with the review's 3,400-character pattern: the list's time and the
  slowest `/health` answered meanwhile.
* `POST /auth/forgot-password` for an existing and an unknown email: the response time's median and
  range over `--samples` calls each, alternating.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2

API = "/api/v1"
PASSWORD = "Correct horse battery staple 42"
ANYONE = {"list": "", "view": "", "create": "", "update": "", "delete": ""}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(source: Path, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "SNACKBASE_ENVIRONMENT": "testing",
        "SNACKBASE_LOG_LEVEL": "WARNING",
        "SNACKBASE_SUPERADMIN_EMAIL": "root@example.com",
        "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD,
    }
    # The server on core 0 and this client on core 1 (like bench/run.py): the work a server does after
    # a response must not delay the client's reading of it through a shared core.
    command = ["taskset", "-c", "0", sys.executable, "-m", "snackbase", "serve", "--port", str(port),
               "--data-dir", str(data_dir)]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, cwd=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx2.HTTPError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("server did not start")


def like_probe(http: httpx2.Client, headers: dict[str, str], rows: int) -> None:
    body = {"name": "pages", "fields": [{"name": "body", "type": "text"}], "rules": ANYONE}
    http.post(f"{API}/collections", json=body, headers=headers).raise_for_status()
    for _ in range(rows):
        http.post(f"{API}/records/pages", json={"body": "a" * 900_000}, headers=headers).raise_for_status()
    for label, pattern in (("256-char pattern", "a" * 255 + "b"), ("3,400-char pattern", "a" * 3399 + "b")):
        result: dict[str, object] = {}

        def heavy(pattern: str = pattern, result: dict[str, object] = result) -> None:
            started = time.perf_counter()
            answer = http.get(
                f"{API}/records/pages", params={"filter": f'body ~ "{pattern}"'}, headers=headers
            )
            result["status"], result["s"] = answer.status_code, time.perf_counter() - started

        worker = threading.Thread(target=heavy)
        worker.start()
        slowest = 0.0
        while worker.is_alive():
            started = time.perf_counter()
            http.get("/health")
            slowest = max(slowest, time.perf_counter() - started)
        worker.join()
        print(f"~ {label} over {rows} x 900 KB: {result['status']} in {result['s']:.3f} s; "
              f"slowest /health meanwhile {slowest * 1000:.1f} ms")  # fmt: skip


def forgot_probe(http: httpx2.Client, headers: dict[str, str], samples: int) -> None:
    """Each existing email is asked for once: a second request within a minute issues no new token."""
    account = http.post(f"{API}/accounts", json={"name": "Probe"}, headers=headers).json()["id"]
    emails = [f"user{i}@example.com" for i in range(samples)]
    for email in emails:
        user = {"email": email, "password": PASSWORD, "account_id": account}
        http.post(f"{API}/users", json=user, headers=headers).raise_for_status()
    times: dict[str, list[float]] = {"existing": [], "unknown": []}
    for i, existing in enumerate(emails):
        for kind, email in (("existing", existing), ("unknown", f"nobody{i}@example.com")):
            started = time.perf_counter()
            answer = http.post(
                f"{API}/auth/forgot-password", json={"email": email, "account_identifier": account}
            )
            times[kind].append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 202
            time.sleep(0.01)  # the work after an existing email's response is not timed with the next one
    for kind, values in times.items():
        print(f"forgot-password {kind}: median {statistics.median(values):.2f} ms, "
              f"range {min(values):.2f}-{max(values):.2f} ms over {samples}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(args.source.resolve(), Path(tmp) / "data", port)
        try:
            with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                login = {"email": "root@example.com", "password": PASSWORD, "account_identifier": "system"}
                token = http.post(f"{API}/auth/login", json=login).json()["access_token"]
                headers = {"authorization": f"Bearer {token}", "x-account-id": "SY0000"}
                like_probe(http, headers, args.rows)
                forgot_probe(http, headers, args.samples)
        finally:
            proc.terminate()
            proc.wait(timeout=15)


if __name__ == "__main__":
    main()
