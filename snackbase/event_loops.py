"""The event loops `serve` runs on, named by the `event_loop` setting.

uvloop's loop is uvloop's own except for how it accepts connections. libuv accepts one connection per
turn of the loop (libuv pull request 3696, "don't accept() connections in a loop"; uvloop 0.23
carries libuv 1.52): when 32 clients connect at once to a busy server whose turns each serve 32
requests, the last connection waits 31 turns, ever longer ones, before its first request is even read
(measured: 0.8 s with 3 ms requests, the whole of the lists' p99 tail at 32 connections;
docs/performance.md, "Sessions 11–12"). Here the listening socket is watched by the loop and every
connection waiting in the backlog is accepted at once, up to `_ACCEPTS_PER_TURN`, as asyncio's own
loop does, and handed to uvloop's transport with `connect_accepted_socket`.

Only a single process serves with it (`cli._loop_option`): workers sharing one listening socket keep
libuv's accept, which deals a burst of new connections out among them. Accepting all at once, the
first worker awake took a benchmark's whole burst in some rounds: two workers served as many
requests as one.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

import uvloop

# As many as a burst of clients brings at once; the rest wait one turn (the socket stays readable).
_ACCEPTS_PER_TURN = 128
# Out of file descriptors or memory: try again after this long, as asyncio's loop does.
_RETRY_AFTER_S = 1.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class _Listener(asyncio.AbstractServer):
    """One listening socket, every pending connection accepted when it becomes readable."""

    def __init__(
        self, loop: GreedyAcceptLoop, sock: socket.socket, protocol_factory: ProtocolFactory, backlog: int
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._serving = False
        sock.setblocking(False)
        sock.listen(backlog)

    def start(self) -> None:
        if not self._serving and self._sock.fileno() != -1:
            self._serving = True
            self._loop.add_reader(self._sock.fileno(), self._accept_pending)

    def _accept_pending(self) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                conn, _address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while waiting in the backlog
                continue
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                self._pause_after(exc)
                return
            conn.setblocking(False)
            self._loop.create_task(self._hand_over(conn))

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, conn)
        except Exception as exc:  # that connection only, as a failing accept callback in asyncio
            conn.close()
            self._loop.call_exception_handler(
                {"message": "could not set up an accepted connection", "exception": exc}
            )

    def _pause_after(self, exc: OSError) -> None:
        self._loop.call_exception_handler(
            {"message": f"accept failed, trying again in {_RETRY_AFTER_S:.0f} s", "exception": exc}
        )
        self._stop_reading()
        self._loop.call_later(_RETRY_AFTER_S, self.start)

    def _stop_reading(self) -> None:
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())

    # asyncio.AbstractServer: what uvicorn and asyncio.Server's users call.
    def close(self) -> None:
        self._stop_reading()
        self._sock.close()

    async def wait_closed(self) -> None:
        return None  # uvicorn waits for the open connections itself

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self.start()

    async def serve_forever(self) -> None:
        self.start()
        await self._loop.create_future()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._sock.fileno() != -1 else ()


class GreedyAcceptLoop(uvloop.Loop):
    """uvloop's loop, except that a server on a given TCP socket accepts every waiting connection."""

    async def create_server(self, protocol_factory: ProtocolFactory, *args: Any, **kwargs: Any) -> Any:
        sock = kwargs.get("sock")
        if args or kwargs.get("ssl") is not None or sock is None or sock.family == socket.AF_UNIX:
            return await super().create_server(protocol_factory, *args, **kwargs)
        listener = _Listener(self, sock, protocol_factory, kwargs.get("backlog", 100))
        if kwargs.get("start_serving", True):
            listener.start()
        return listener


def uvloop_loop() -> asyncio.AbstractEventLoop:
    """uvicorn's `loop` option as "snackbase.event_loops:uvloop_loop": a new loop per server process."""
    return GreedyAcceptLoop()
