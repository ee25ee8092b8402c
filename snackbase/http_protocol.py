"""uvicorn's HTTP protocol (httptools) with its one non-ASGI answer in the error envelope, and the ASGI
zero-copy send extension for stored files.

A request the HTTP parser itself refuses (a malformed `Content-Length`, a broken request line or
header) never reaches the ASGI app: uvicorn answers it with a hard-coded `text/plain` 400. This
subclass answers the same 400 as every other error, `{status, code, message, fields, request_id}`,
with the security headers. It overrides one method of uvicorn's class (`send_400_response`, stable
since uvicorn 0.13); imported only by the CLI, when serving.

Downloads: uvicorn implements neither `http.response.pathsend` nor `http.response.zerocopysend`, and
uvloop's `loop.sendfile` is not implemented, so a file went through Python in 1 MiB reads and
transport writes. This protocol offers ASGI's zero-copy send extension
(`{"type": "http.response.zerocopysend", "file", "offset", "count", "more_body"}`, which unlike
pathsend takes a byte range) and serves it with `sendfile(2)` from the page cache to the socket, as
PocketBase does. The socket is written through a duplicate of its descriptor, only once uvicorn's own
write buffer is empty (so the bytes keep their order), and waited on with the loop's writer callback
when the kernel's buffer is full. Everything else about the response (headers, Content-Length
accounting, keep-alive) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import functools
import os
import select
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from snackbase.errors import ApiError, envelope
from snackbase.ids import random_bytes
from snackbase.middleware import security_headers
from snackbase.web import encode_json

ZERO_COPY = "http.response.zerocopysend"
_FALLBACK_CHUNK = 1024 * 1024


class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
    _extensions: dict[str, Any] | None = None  # per connection: asking the transport costs per request

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._extensions is None:
            plain = self.transport.get_extra_info("sslcontext") is None  # sendfile would bypass TLS
            self._extensions = {ZERO_COPY: {}} if plain else {}
        self.scope["extensions"] = self._extensions

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not for an upgrade (WebSocket)
            cycle.send = _ZeroCopySend(cycle, cycle.send)  # type: ignore[method-assign]

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


class _ZeroCopySend:
    """The cycle's `send`, also taking `http.response.zerocopysend` once the headers are out."""

    def __init__(self, cycle: RequestResponseCycle, send: Any) -> None:
        self.cycle, self.send = cycle, send

    def __call__(self, message: Any) -> Coroutine[Any, Any, None]:
        if message["type"] != ZERO_COPY:
            return self.send(message)  # uvicorn's own coroutine: no frame of ours on every send
        return self._zero_copy(message)

    async def _zero_copy(self, message: Any) -> None:
        cycle = self.cycle
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{ZERO_COPY}'.")
        more_body = bool(message.get("more_body", False))
        handle = message["file"]
        offset = message.get("offset")
        offset = handle.tell() if offset is None else int(offset)
        count = message.get("count")
        count = os.fstat(handle.fileno()).st_size - offset if count is None else int(count)
        if cycle.scope["method"] == "HEAD" or cycle.disconnected:
            await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        if cycle.chunked_encoding:
            await self._copy(handle, offset, count, more_body)  # uvicorn frames the bytes
            return
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if cycle.flow.write_paused:
            await cycle.flow.drain()
        transport = cycle.transport
        if transport.get_write_buffer_size() or transport.is_closing():
            await self._copy(handle, offset, count, more_body)
            return
        try:
            await _sendfile(transport, handle.fileno(), offset, count)
        except OSError:  # the client went away mid-file, as uvicorn treats a failed write
            cycle.disconnected = True
            transport.close()
            return
        cycle.expected_content_length -= count
        await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})

    async def _copy(self, handle: Any, offset: int, count: int, more_body: bool) -> None:
        """The bytes through uvicorn's ordinary body messages."""
        while count > 0:
            chunk = os.pread(handle.fileno(), min(_FALLBACK_CHUNK, count), offset)
            if not chunk:
                break
            offset, count = offset + len(chunk), count - len(chunk)
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})


async def _sendfile(transport: asyncio.Transport, fd: int, offset: int, count: int) -> None:
    """`count` bytes of file `fd` from `offset` to the transport's socket with sendfile(2). A loop will
    not watch a descriptor its transport owns, so the socket is used through a duplicate."""
    loop = asyncio.get_running_loop()
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
