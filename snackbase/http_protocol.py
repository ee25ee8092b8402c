"""uvicorn's HTTP protocol (httptools) with its one non-ASGI answer in the error envelope, each
response written in one piece, and the ASGI zero-copy send extension for stored files.

A request the HTTP parser itself refuses (a malformed `Content-Length`, a broken request line or
header) never reaches the ASGI app: uvicorn answers it with a hard-coded `text/plain` 400. This
subclass answers the same 400 as every other error, `{status, code, message, fields, request_id}`,
with the security headers. It overrides one method of uvicorn's class (`send_400_response`, stable
since uvicorn 0.13); imported only by the CLI, when serving.

One write per response: uvicorn writes a response's head as soon as the app starts it and the body
when it comes, two system calls and two TCP segments for every small JSON answer. `_Cycle` keeps the
head of a response with a Content-Length until its first body message and writes both at once.

Downloads: uvicorn implements neither `http.response.pathsend` nor `http.response.zerocopysend`, and
uvloop's `loop.sendfile` is not implemented, so a file went through Python in 1 MiB reads and
transport writes. This protocol offers ASGI's zero-copy send extension
(`{"type": "http.response.zerocopysend", "file", "offset", "count", "more_body"}`, which unlike
pathsend takes a byte range) and serves it with `sendfile(2)` from the page cache to the socket, as
PocketBase does. The socket is written through a duplicate of its descriptor, only once uvicorn's own
write buffer is empty (so the bytes keep their order), and waited on with the loop's writer callback
when the kernel's buffer is full. Everything else about the response (headers, Content-Length
accounting, keep-alive) stays uvicorn's.

Requests served in the order they waited (`_FairReads`): under saturation uvloop hands the loop the
requests that arrived during one turn in the order epoll lists their sockets, not the order they
arrived, so one connection could lose that race several turns running: at 32 connections a list's
p99 was ~6× its median. The bytes of one turn's reads are parsed, and their requests started, after
all of that turn's reads, the connection that has waited longest since its last answer first.

WebSockets (`lazy_wsproto`): uvicorn's wsproto protocol, with wsproto and h11 behind it, is imported
when the first WebSocket upgrade arrives, not at start, where it cost ~40 ms (`-X importtime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import select
import socket
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from snackbase.errors import ApiError, envelope
from snackbase.ids import random_bytes
from snackbase.middleware import security_headers
from snackbase.web import encode_json

ZERO_COPY = "http.response.zerocopysend"
_FALLBACK_CHUNK = 1024 * 1024


class _FairReads:
    """One event loop's connections with bytes read in this turn and not yet handed to their parser.

    A connection's rank is when it last became ready for a request (made, or its last response
    complete): the client sent its next request after that, so the earliest is the longest waiting.
    Measured with an app spinning 1 ms per request at 32 connections (bench/loop_tail.py, uvloop
    accepting every waiting connection at once): p99 69 ms against a 35 ms median served in epoll's
    order, 37 ms against 36 ms in this order; at 2 ms, 131 against 66 and 72 against 68."""

    def __init__(self) -> None:
        # No reference to the loop itself: it is the key of `_fair_reads`, which must not keep it alive.
        self.waiting: list[EnvelopeHttpToolsProtocol] = []

    def add(self, protocol: EnvelopeHttpToolsProtocol) -> None:
        if not self.waiting:
            protocol.loop.call_soon(self.serve)  # after every read callback of this turn
        self.waiting.append(protocol)

    def serve(self) -> None:
        waiting, self.waiting = self.waiting, []
        if len(waiting) > 1:
            waiting.sort(key=_rank)
        for protocol in waiting:
            try:
                protocol.feed_unread()
            except Exception as exc:  # as the loop treats a failing data_received: that connection only
                protocol.transport.close()
                protocol.loop.call_exception_handler(
                    {"message": "data_received failed", "exception": exc, "protocol": protocol}
                )


def _rank(protocol: EnvelopeHttpToolsProtocol) -> float:
    return protocol.ready_since


_fair_reads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _FairReads] = weakref.WeakKeyDictionary()


class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
    _extensions: dict[str, Any] | None = None  # per connection: asking the transport costs per request
    ready_since = 0.0  # when the connection last became ready for a request (see _FairReads)
    _unread: list[bytes] | None = None  # bytes read this turn, waiting for _FairReads.serve
    _fair: _FairReads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.ready_since = time.perf_counter()
        fair = _fair_reads.get(self.loop)
        if fair is None:
            fair = _fair_reads[self.loop] = _FairReads()
        self._fair = fair

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()  # at once, as uvicorn does: the idle timeout must not fire
        if self._unread is not None:
            self._unread.append(data)
        elif len(self.connections) > 1:
            self._unread = [data]
            self._fair.add(self)
        else:  # the only connection: nothing to put in order, and no extra turn of the loop to pay
            super().data_received(data)

    def feed_unread(self) -> None:
        """The bytes read this turn, to uvicorn's parser (or to the protocol an upgrade switched to)."""
        chunks, self._unread = self._unread, None
        for chunk in chunks or ():
            if self.parser is None or self.transport.is_closing():  # lost, or refused with a 400
                return
            current = self.transport.get_protocol()
            if current is self:
                super().data_received(chunk)
            else:  # upgraded to a WebSocket by an earlier chunk: the rest is the new protocol's
                current.data_received(chunk)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.feed_unread()  # a request read before the close is handled as it would have been
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self.ready_since = time.perf_counter()
        super().on_response_complete()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._extensions is None:
            plain = self.transport.get_extra_info("sslcontext") is None  # sendfile would bypass TLS
            self._extensions = {ZERO_COPY: {}} if plain else {}
        self.scope["extensions"] = self._extensions

    def send_400_response(self, msg: str) -> None:
        request_id = random_bytes(12).hex()
        error = ApiError(
            400, "bad_request", "The HTTP request is malformed (request line, headers or length)."
        )
        body = encode_json(envelope(error, request_id))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
            *security_headers(),
        ]
        head = b"HTTP/1.1 400 Bad Request\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in headers
        )
        self.transport.write(head + b"\r\n" + body)
        self.transport.close()


_ONE_WRITE_MAX = 64 * 1024  # a bigger body is written after the head rather than copied behind it


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle with a `send` that writes a whole response in one write.

    uvicorn writes the status line and headers as soon as `http.response.start` arrives, then the
    body: two writes, two system calls and two TCP segments for every small JSON answer. Here the
    head of a response with a Content-Length waits for the first body message and goes out in the
    same write (a streamed response without a length, such as Server-Sent Events, still gets its
    head at once). The header names and values are checked for forbidden bytes with one search over
    all of them, not two per header. Also takes `http.response.zerocopysend` once the head is out.
    Everything else (keep-alive, HEAD, 204/304, chunked framing, completion) is uvicorn's logic."""

    _head = b""  # the response's status line and headers, not yet written

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._start(message)
            return
        if self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        if kind == ZERO_COPY:
            self._flush_head()
            await self._zero_copy(message)
            return
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            body = b""
        elif self.chunked_encoding:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (
                b"" if more_body else b"0\r\n\r\n"
            )
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
        head, self._head = self._head, b""
        if head and len(body) <= _ONE_WRITE_MAX:
            self.transport.write(head + body)
        else:
            if head:
                self.transport.write(head)
            if body:
                self.transport.write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _start(self, message: Any) -> None:
        """The head of the response, kept for the first body message when it has a length."""
        status = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        # Checked before the response counts as started, so that the app's failure can still be
        # answered with a 500 rather than a closed connection.
        if HEADER_RE.search(b"".join([name for name, _ in headers])):  # lists: no generator to resume
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"".join([value for _, value in headers])):
            raise RuntimeError("Invalid HTTP header value.")
        self.response_started = True
        self.waiting_for_100_continue = False
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status,
            )
        content = [STATUS_LINE[status]]
        closing = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [t.lower().strip() for t in value.split(b",")]:
                self.keep_alive = False
                closing = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closing:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True  # neither a length nor chunked given: uvicorn chunks it
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self._head = b"".join(content)
        if self.chunked_encoding:  # a stream: its head goes out now, not with its first event
            self._flush_head()

    def _flush_head(self) -> None:
        head, self._head = self._head, b""
        if head:
            self.transport.write(head)

    async def _zero_copy(self, message: Any) -> None:
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{ZERO_COPY}'.")
        more_body = bool(message.get("more_body", False))
        handle = message["file"]
        offset = message.get("offset")
        offset = handle.tell() if offset is None else int(offset)
        count = message.get("count")
        count = os.fstat(handle.fileno()).st_size - offset if count is None else int(count)
        if self.scope["method"] == "HEAD" or self.disconnected:
            await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        if self.chunked_encoding:
            await self._copy(handle, offset, count, more_body)  # uvicorn frames the bytes
            return
        if count > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if self.flow.write_paused:
            await self.flow.drain()
        transport = self.transport
        if transport.get_write_buffer_size() or transport.is_closing():
            await self._copy(handle, offset, count, more_body)
            return
        try:
            await _sendfile(transport, handle.fileno(), offset, count)
        except OSError:  # the client went away mid-file, as uvicorn treats a failed write
            self.disconnected = True
            transport.close()
            return
        self.expected_content_length -= count
        await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})

    async def _copy(self, handle: Any, offset: int, count: int, more_body: bool) -> None:
        """The bytes through ordinary body messages."""
        while count > 0:
            chunk = os.pread(handle.fileno(), min(_FALLBACK_CHUNK, count), offset)
            if not chunk:
                break
            offset, count = offset + len(chunk), count - len(chunk)
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})


# uvicorn makes each request's cycle in `on_headers_complete` from this module-level name: bound to
# `_Cycle`, the cycle is ours from the start and uvicorn's own request handling stays untouched. The
# first way, swapping the `__class__` of the instance uvicorn had just made, cost ~14,000 instructions a
# get (callgrind): CPython 3.11 turns an instance's inline attribute values into a dict when its
# class changes, and each of the cycle's attribute reads then takes the slower path. Imported only when
# serving (by the CLI, and by tests of this protocol), where every HTTP/1.1 connection is ours.
httptools_impl.RequestResponseCycle = _Cycle  # type: ignore[misc]


async def _sendfile(transport: asyncio.Transport, fd: int, offset: int, count: int) -> None:
    """`count` bytes of file `fd` from `offset` to the transport's socket with sendfile(2). A loop will
    not watch a descriptor its transport owns, so the socket is used through a duplicate."""
    loop = asyncio.get_running_loop()
    if count > NOTSENT_LOWAT:
        _limit_unsent(transport)
    sock = os.dup(transport.get_extra_info("socket").fileno())
    waiter: list[asyncio.Future[None]] = []
    watching = False
    global _senders_busy
    try:
        if count >= _THREAD_MIN and _senders_busy < _SENDERS:
            _senders_busy += 1
            try:
                await loop.run_in_executor(_sender_pool(), _send_waiting_in_thread, sock, fd, offset, count)
            finally:
                _senders_busy -= 1
            return
        while count > 0:
            try:
                sent = os.sendfile(sock, fd, offset, count)
            except BlockingIOError:
                waiter[:] = [loop.create_future()]
                if not watching:  # once per file: registering a descriptor costs system calls
                    loop.add_writer(sock, _wake, waiter)
                    watching = True
                await waiter[0]
                continue
            if sent == 0:
                raise BrokenPipeError("the connection closed")
            offset, count = offset + sent, count - sent
    finally:
        if watching:
            loop.remove_writer(sock)
        os.close(sock)


# At most this many bytes of a connection's response wait unsent in its socket (TCP_NOTSENT_LOWAT,
# set once a file bigger than this is sent on it). Without a limit, sendfile fills the whole send buffer
# (autotuned up to 4 MiB) at once, and the kernel sends that backlog as the client's ACKs come in: in
# the client's context, on the client's core. With two cores, 4 connections downloading 5 MB files made
# the client's core the limit (23% of it in softirq), the server's core 30-50% idle: 285-330 downloads/s.
# With the limit, the server refills the socket as it drains, and sends from its own context: 525-600
# downloads/s (64 KiB; 16 KiB: ~445, 128 KiB: ~415, 512 KiB: ~430). Unlike a smaller SO_SNDBUF, which
# gave the same here, it leaves the kernel's buffer autotuning (the data in flight) alone, so a far
# client on a fast link is not held to a small window (a 32 KiB SO_SNDBUF even stalled: 1-3/s).
NOTSENT_LOWAT = 64 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's value; named from Python 3.12


def _limit_unsent(transport: asyncio.Transport) -> None:
    with contextlib.suppress(OSError):  # not a TCP socket (tests' pipes), or an older kernel
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


def _wake(waiter: list[asyncio.Future[None]]) -> None:
    if waiter and not waiter[0].done():  # the writer callback also fires while nobody waits
        waiter[0].set_result(None)


# Big files: a sender thread waits for room in the socket's buffer with poll(2) and sends at once,
# where the loop path above wakes the event loop for every buffer's worth (measured: the loop path
# left the core half idle on 5 MB downloads). Few threads; when all are busy, the loop path serves.
_THREAD_MIN = 1024 * 1024
_SENDERS = 4
_senders_busy = 0  # changed on the event loop only
_POLL_MS = 30_000  # a client that reads nothing for this long is dropped


@functools.cache
def _sender_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_SENDERS, thread_name_prefix="sb-sendfile")


def _send_waiting_in_thread(sock: int, fd: int, offset: int, count: int) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while count > 0:
        try:
            sent = os.sendfile(sock, fd, offset, count)
        except BlockingIOError:
            if not poller.poll(_POLL_MS):
                raise TimeoutError("the client stopped reading") from None
            continue
        if sent == 0:
            raise BrokenPipeError("the connection closed")
        offset, count = offset + sent, count - sent


def lazy_wsproto(**kwargs: Any) -> asyncio.Protocol:
    """uvicorn's `ws` protocol class as a factory: the upgrade calls it with (config, server_state,
    app_state) keywords, so wsproto is imported on the first upgrade rather than at start."""
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

    return WSProtocol(**kwargs)
