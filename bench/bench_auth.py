"""Auth benchmarks against a running server: password login/s, token refresh/s, GET /auth/me req/s.

    taskset -c 0 .venv/bin/python -m snackbase serve --data-dir /tmp/sb-bench &   # one core, development env
    taskset -c 1 .venv/bin/python bench/bench_auth.py http://127.0.0.1:8000 [--seconds 10]

Login and /auth/me use wrk when it is installed (else an asyncio loop over httpx2); refresh always uses
the asyncio loop, because each refresh must present the token the previous one returned (a shared token
would trip reuse detection). Development and production both hash with the OWASP Argon2id parameters,
so login/s is the real cost; it is bounded by the two hashing threads by design.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx2

PASSWORD = "Benchmark passphrase, long enough 1"
LOGIN_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
"""


def post(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        base + "/api/v1" + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def register(base: str) -> dict[str, Any]:
    name = f"bench-{secrets.token_hex(4)}"
    return post(
        base, "/auth/register", {"account_name": name, "email": f"{name}@bench.example", "password": PASSWORD}
    )


def wrk(url: str, seconds: int, connections: int, args: list[str]) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *args, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        print(f"  warning: {non_2xx.group(1)} non-2xx responses")
    return float(match.group(1)) if match else 0.0


async def loop_rps(seconds: int, workers: int, step: Any) -> float:
    """Runs `step(client, state)` in `workers` concurrent loops for `seconds`; returns completed steps/s."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(client: httpx2.AsyncClient, state: dict[str, Any]) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await step(client, state)
            done += 1

    async with httpx2.AsyncClient(timeout=30) as client:
        states = [{"index": i} for i in range(workers)]
        started = time.monotonic()
        await asyncio.gather(*(worker(client, state) for state in states))
        return done / (time.monotonic() - started)


def bench_login(base: str, account: dict[str, Any], seconds: int) -> float:
    body = {
        "email": account["user"]["email"],
        "password": PASSWORD,
        "account_identifier": account["account"]["id"],
    }
    url = base + "/api/v1/auth/login"
    if shutil.which("wrk"):
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(LOGIN_LUA % json.dumps(body))
        try:
            return wrk(url, seconds, 8, ["-s", script.name])
        finally:
            Path(script.name).unlink()

    async def step(client: httpx2.AsyncClient, state: dict[str, Any]) -> None:
        (await client.post(url, json=body)).raise_for_status()

    return asyncio.run(loop_rps(seconds, 8, step))


def bench_refresh(base: str, seconds: int, workers: int = 16) -> float:
    sessions = [register(base)["refresh_token"] for _ in range(workers)]
    url = base + "/api/v1/auth/refresh"

    async def step(client: httpx2.AsyncClient, state: dict[str, Any]) -> None:
        token = state.setdefault("token", sessions[state["index"]])
        response = await client.post(url, json={"refresh_token": token})
        response.raise_for_status()
        state["token"] = response.json()["refresh_token"]

    return asyncio.run(loop_rps(seconds, workers, step))


def bench_me(base: str, account: dict[str, Any], seconds: int) -> float:
    url = base + "/api/v1/auth/me"
    header = f"Authorization: Bearer {account['access_token']}"
    if shutil.which("wrk"):
        return wrk(url, seconds, 50, ["-H", header])

    async def step(client: httpx2.AsyncClient, state: dict[str, Any]) -> None:
        response = await client.get(url, headers={"authorization": f"Bearer {account['access_token']}"})
        response.raise_for_status()

    return asyncio.run(loop_rps(seconds, 50, step))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    base = args.base_url.rstrip("/")
    account = register(base)
    results = {
        "password login/s": bench_login(base, account, args.seconds),
        "token refresh/s": bench_refresh(base, args.seconds),
        "GET /auth/me req/s": bench_me(base, account, args.seconds),
    }
    for name, value in results.items():
        print(f"{name:>22}: {value:,.0f}")


if __name__ == "__main__":
    main()
