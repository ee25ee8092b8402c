"""The lists' p99 tail without SnackBase's app: uvicorn with SnackBase's HTTP protocol serving an ASGI
app that spins for a fixed time per request, on the loop `serve` runs (`uvloop`: uvloop accepting
every waiting connection at once, snackbase.event_loops), on uvloop with libuv's own accept
(`libuv`, one connection per loop turn) or on asyncio's loop (`asyncio`). Run it pinned to core 0
and load it from core 1:

    taskset -c 0 .venv/bin/python bench/loop_tail.py PORT uvloop|libuv|asyncio MS &
    taskset -c 1 wrk -t2 -c32 -d8s --latency http://127.0.0.1:PORT/

then stop the server by its PID.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from snackbase.http_protocol import EnvelopeHttpToolsProtocol

BODY = b'{"ok":true}' * 100  # ~1 KB, one TCP segment with its head


def spinning_app(seconds: float) -> Any:
    """An ASGI app that holds the loop for `seconds` per request, as a list does, then answers."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})

    return app


LOOPS = {"uvloop": "snackbase.event_loops:uvloop_loop", "libuv": "uvloop", "asyncio": "asyncio"}

if __name__ == "__main__":
    port, loop, ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # a bound socket, as `serve` passes it to uvicorn
    config = uvicorn.Config(spinning_app(ms / 1000), loop=LOOPS[loop], http=EnvelopeHttpToolsProtocol,
                            log_level="warning", access_log=False)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
