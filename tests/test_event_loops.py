"""snackbase.event_loops: uvloop's loop accepting every waiting connection at once.

libuv accepts one connection per loop turn, so under load a burst of new connections waited turn
after turn before their first request was read (the lists' p99 tail at 32 connections). These tests
put connections in a real listening socket's backlog before the loop runs and watch the order in
which the server sees them."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from snackbase import event_loops
from snackbase.cli import _uvicorn_options
from tests.conftest import make_settings

CLIENTS = 8


class _Recorder(asyncio.Protocol):
    """Notes when its connection is made and when its first bytes arrive, spinning a little on
    data as a busy request would, so that a loop turn is long."""

    def __init__(self, events: list[str], transports: list[asyncio.BaseTransport]) -> None:
        self.events = events
        self.transports = transports

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        self.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        self.events.append("data")
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def _connect_and_send(port: int) -> list[socket.socket]:
    """CLIENTS connections in the backlog, each with a request sent, before the server looks."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
    for client in clients:
        client.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    return clients


def _run(loop: asyncio.AbstractEventLoop, main: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _serve_backlog(loop: asyncio.AbstractEventLoop) -> list[str]:
    events: list[str] = []
    transports: list[asyncio.BaseTransport] = []
    sock = _listening_socket()
    clients = _connect_and_send(sock.getsockname()[1])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Recorder(events, transports), sock=sock)
        deadline = time.monotonic() + 10
        while events.count("data") < CLIENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        server.close()
        await server.wait_closed()
        for transport in transports:
            transport.close()
        await asyncio.sleep(0)  # the transports' connection_lost

    try:
        _run(loop, main)
    finally:
        for client in clients:
            client.close()
        sock.close()
    return events


def test_every_waiting_connection_is_made_before_a_request_is_read() -> None:
    events = _serve_backlog(event_loops.uvloop_loop())
    assert events == ["made"] * CLIENTS + ["data"] * CLIENTS


def test_uvloop_alone_makes_them_one_per_turn() -> None:
    """Why the module exists: with libuv's own accept, requests of the first connections are read
    (and served) before the later connections are even made. If this ever fails, uvloop accepts
    greedily again and snackbase.event_loops can go."""
    events = _serve_backlog(uvloop.new_event_loop())
    assert events.count("made") == CLIENTS
    assert events.index("data") < len(events) - events[::-1].index("made") - 1


def test_the_server_answers_and_closes_like_asyncios() -> None:
    async def main() -> tuple[bytes, bool, bool]:
        loop = asyncio.get_running_loop()
        sock = _listening_socket()
        server = await loop.create_server(_Echo, sock=sock, backlog=16)
        port = sock.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        answer = await reader.readexactly(4)
        writer.close()
        serving = server.is_serving() and server.sockets == (sock,)
        server.close()
        await server.wait_closed()
        refused = False
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            refused = True
        return answer, serving, refused and not server.is_serving() and server.sockets == ()

    assert _run(event_loops.uvloop_loop(), main) == (b"ping", True, True)


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class _OutOfDescriptors(socket.socket):
    """A listening socket whose first accept fails as when the process has no file descriptor left."""

    failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if not _OutOfDescriptors.failed:
            _OutOfDescriptors.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_accepting_pauses_after_running_out_of_descriptors_and_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loops, "_RETRY_AFTER_S", 0.05)
    sock = _OutOfDescriptors(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    errors: list[dict[str, Any]] = []

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        server = await loop.create_server(_Echo, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(b"pong")
        answer = await asyncio.wait_for(reader.readexactly(4), 5)
        writer.close()
        server.close()
        return answer

    assert _run(event_loops.uvloop_loop(), main) == b"pong"
    assert _OutOfDescriptors.failed
    assert [e["exception"].errno for e in errors] == [errno.EMFILE]


def test_serve_runs_this_loop_in_one_process_only(tmp_path: Any) -> None:
    """Several workers share one listening socket: there libuv's one connection per turn deals a burst
    of connections out among them, where accepting all at once let the first one awake take them all."""
    one = _uvicorn_options(make_settings(tmp_path / "a"))["loop"]
    several = _uvicorn_options(make_settings(tmp_path / "b", workers=2))["loop"]
    plain = _uvicorn_options(make_settings(tmp_path / "c", event_loop="asyncio"))["loop"]
    assert (one, several, plain) == ("snackbase.event_loops:uvloop_loop", "uvloop", "asyncio")
    import uvicorn

    loop = uvicorn.Config(lambda: None, loop=one).get_loop_factory()()  # type: ignore[misc]
    assert isinstance(loop, event_loops.GreedyAcceptLoop)
    loop.close()
