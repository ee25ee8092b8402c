"""File benchmarks, SnackBase vs PocketBase, one core of server each (same harness as records.py):
uploads of 100 KB and 5 MB files, downloads of a 5 MB file (whole and a 1 MB Range), thumbnail
requests (cached), and the server's peak RSS growth during one 100 MB upload. Besides requests/s it
reports the server's CPU time per request (user + system of the process, all threads), the per-core
cost, which a shared machine disturbs far less than wall-clock throughput.

    python bench/files.py [--duration 3] [--connections 4] [--rounds 1] [--only "5 MB"]

SnackBase runs from the virtualenv (`python -m snackbase`, with Pillow for thumbnails: the one-file
executable has no thumbnails, see docs/files.md). Uploads are short runs with few connections: every
request stores a file, and a 5 MB upload run writes gigabytes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, Result, Server, request, save, wrk
from records import (
    SUPER_EMAIL,
    SUPER_PASSWORD,
    pocketbase_admin,
    pocketbase_binary,
    pocketbase_command,
    snackbase_admin,
)

BOUNDARY = "----bench-boundary-7MA4YWxkTrZu0gW"
KB, MB = 1000, 1_000_000
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def content(size: int) -> bytes:
    rng = random.Random(size)
    line = "".join(rng.choice(string.ascii_letters) for _ in range(99)) + "\n"
    return (line * (size // 100 + 1)).encode()[:size]


def png(width: int = 1200, height: int = 800) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.radial_gradient("L").resize((width, height)).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def multipart(field: str, filename: str, data: bytes, title: bool = True) -> bytes:
    parts = (
        [f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="title"\r\n\r\nbench\r\n'.encode()]
        if title
        else []
    )
    parts.append(
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "content-type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_multipart(url: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    target = url.removeprefix("http://")
    host, _, path = target.partition("/")
    conn = http.client.HTTPConnection(host, timeout=60)
    conn.request(
        "POST",
        "/" + path,
        body=body,
        headers={**headers, "content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    if response.status >= 300:
        raise SystemExit(f"upload failed: {response.status} {data}")
    return data  # type: ignore[no-any-return]


# --- the two servers ---------------------------------------------------------------------------


def snackbase() -> tuple[Server, dict[str, Any]]:
    server = Server(
        [PYTHON, "-m", "snackbase", "serve", "--port", "{port}", "--data-dir", "{data}"],
        "/health",
        env={
            "SNACKBASE_SUPERADMIN_EMAIL": SUPER_EMAIL,
            "SNACKBASE_SUPERADMIN_PASSWORD": SUPER_PASSWORD,
            "SNACKBASE_LOG_LEVEL": "WARNING",
        },
    )
    api, admin, registered = snackbase_admin(server)
    user = {"authorization": "Bearer " + registered["access_token"]}
    fields = [
        {"name": "title", "type": "text"},
        {"name": "doc", "type": "file", "options": {"max_size": 200 * MB, "thumbs": ["100x100"]}},
    ]
    rules = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
    request(api + "/collections", "POST", {"name": "files_bench", "fields": fields, "rules": rules}, admin)
    url = api + "/records/files_bench"
    big = post_multipart(url, multipart("doc", "big.bin", content(5 * MB)), user)
    image = post_multipart(url, multipart("doc", "photo.png", png()), user)
    files = api + "/files/files_bench"
    return server, {
        "headers": user,  # uploads need the account: a user's token
        "read_headers": {},  # downloads as an <img> does: anonymous, public view rule (as PocketBase's)
        "upload": url,
        "big": f"{files}/{big['id']}/{big['doc']['name']}",
        "thumb": f"{files}/{image['id']}/{image['doc']['name']}?thumb=100x100",
    }


def pocketbase(binary: str) -> tuple[Server, dict[str, Any]]:

    server = Server(pocketbase_command(binary), "/api/health")
    api, admin = pocketbase_admin(binary, server)
    fields = [
        {"name": "title", "type": "text"},
        {"name": "doc", "type": "file", "maxSelect": 1, "maxSize": 200 * MB, "thumbs": ["100x100"]},
    ]
    rules = {f"{op}Rule": "" for op in ("list", "view", "create", "update", "delete")}
    request(
        api + "/collections",
        "POST",
        {"name": "files_bench", "type": "base", "fields": fields, **rules},
        admin,
    )
    url = api + "/collections/files_bench/records"
    big = post_multipart(url, multipart("doc", "big.bin", content(5 * MB)), {})
    image = post_multipart(url, multipart("doc", "photo.png", png()), {})
    files = api + "/files/files_bench"
    return server, {
        "headers": {},
        "read_headers": {},
        "upload": url,
        "big": f"{files}/{big['id']}/{big['doc']}",
        "thumb": f"{files}/{image['id']}/{image['doc']}?thumb=100x100",
    }


# --- scenarios ---------------------------------------------------------------------------------


def scenarios(setup: dict[str, Any], bodies: dict[str, str]) -> list[tuple[str, dict[str, Any], float]]:
    """(label, wrk arguments, MB per request)."""
    h, r = setup["headers"], setup["read_headers"]
    upload = {**h, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    return [
        (
            "upload 100 KB",
            {
                "url": setup["upload"],
                "method": "POST",
                "headers": upload,
                "lua_extra": f'wrk.body = io.open("{bodies["100k"]}", "rb"):read("*a")',
            },
            0.1,
        ),
        (
            "upload 5 MB",
            {
                "url": setup["upload"],
                "method": "POST",
                "headers": upload,
                "lua_extra": f'wrk.body = io.open("{bodies["5m"]}", "rb"):read("*a")',
            },
            5.0,
        ),
        ("download 5 MB", {"url": setup["big"], "headers": r}, 5.0),
        (
            "download 1 MB Range of 5 MB",
            {"url": setup["big"], "headers": {**r, "range": "bytes=1000000-1999999"}},
            1.0,
        ),
        ("thumbnail 100x100 (cached)", {"url": setup["thumb"], "headers": r}, 0.0),
    ]


def cpu_s(server: Server) -> float:
    """CPU time the server process has used (user + system, all threads): with the machine shared,
    requests per CPU-second compare the servers better than requests per second of wall time."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_growth_mb(server: Server, setup: dict[str, Any]) -> float:
    def peak() -> int:
        for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    before = peak()
    size = 100 * 1024 * 1024
    head = (
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="doc"; filename="huge.bin"\r\n'
        "content-type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = content(1024 * 1024)

    def body() -> Any:
        yield head
        for _ in range(100):
            yield block
        yield tail

    host = setup["upload"].removeprefix("http://").split("/", 1)[0]
    conn = http.client.HTTPConnection(host, timeout=120)
    conn.request(
        "POST",
        "/" + setup["upload"].removeprefix("http://").split("/", 1)[1],
        body=body(),
        headers={
            **setup["headers"],
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
            "content-length": str(len(head) + size + len(tail)),
        },
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status >= 300:
        raise SystemExit(f"100 MB upload failed: {response.status}")
    return (peak() - before) / 1024


def run(duration: int, connections: int, rounds: int, only: str = "") -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-files-"))
    bodies = {}
    for key, size in (("100k", 100 * KB), ("5m", 5 * MB)):
        path = tmp / f"{key}.body"
        path.write_bytes(multipart("doc", f"{key}.bin", content(size)))
        bodies[key] = str(path)
    servers: dict[str, tuple[Server, dict[str, Any]]] = {"snackbase": snackbase()}
    binary = pocketbase_binary()
    if binary:
        servers["pocketbase"] = pocketbase(binary)
    results: list[tuple[Result, float, float]] = []  # (median round, MB per request, CPU ms per request)
    rss: dict[str, float] = {}
    try:
        for name, (server, setup) in servers.items():
            rss[name] = peak_rss_growth_mb(server, setup)
        labels = scenarios(servers["snackbase"][1], bodies)
        for i, (label, _, mb) in enumerate(labels):
            if only and only not in label:
                continue
            runs: dict[str, list[tuple[Result, float]]] = {name: [] for name in servers}
            for round_ in range(rounds):  # alternate which server goes first, as records.py does
                for name in sorted(servers, reverse=round_ % 2 == 0):
                    args = scenarios(servers[name][1], bodies)[i][1]
                    before = cpu_s(servers[name][0])
                    r = wrk(scenario=label, server=name, duration_s=duration, connections=connections, **args)
                    spent = cpu_s(servers[name][0]) - before
                    runs[name].append((r, spent * 1000 / max(r.requests_per_s * duration, 1)))
            for found in runs.values():  # the median round
                r, cpu_ms = sorted(found, key=lambda x: x[0].requests_per_s)[len(found) // 2]
                results.append((r, mb, cpu_ms))
    finally:
        for server, _ in servers.values():
            server.stop()
        for path in bodies.values():
            os.unlink(path)
    print("| server | scenario | requests/s | MB/s | server CPU ms/request | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r, mb, cpu_ms in results:
        print(
            f"| {r.server} | {r.scenario} | {r.requests_per_s:,.0f} | {r.requests_per_s * mb:,.0f} | "
            f"{cpu_ms:.2f} | {r.p99_ms:.1f} | {r.errors} |"
        )
    for name, growth in rss.items():
        print(f"{name}: peak RSS growth during one 100 MB upload: {growth:.1f} MB")
    save(
        "files",
        {
            "results": [r for r, _, _ in results],
            "cpu_ms_per_request": [
                {"server": r.server, "scenario": r.scenario, "ms": c} for r, _, c in results
            ],
            "rss_growth_mb": rss,
            "duration_s": duration,
            "connections": connections,
            "at": time.time(),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default="", help="run only the scenarios whose label contains this")
    args = parser.parse_args()
    run(args.duration, args.connections, args.rounds, args.only)


if __name__ == "__main__":
    main()
