"""The server's HTTP protocol (snackbase.http_protocol) driven byte for byte through a recording
transport: a response with a length leaves in one write, a stream's head leaves at once, HEAD and 304
carry no body, pipelined requests are answered in order, and bad header bytes are refused."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from snackbase.http_protocol import EnvelopeHttpToolsProtocol
from tests.conftest import fresh_interpreter

pytestmark = pytest.mark.anyio  # anyio's pytest plugin runs these on asyncio

App = Callable[[Any, Any, Any], Awaitable[None]]


class RecordingTransport(asyncio.Transport):
    """What the protocol writes, one entry per write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.closed_by_server = False  # closed before the test ended the connection
        self.sock = socket.socket()
        self.protocol: asyncio.BaseProtocol | None = None

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000), "socket": self.sock}
        return extra.get(name, default)

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...


def connect(
    app: App,
    state: ServerState | None = None,
    kind: type[EnvelopeHttpToolsProtocol] = EnvelopeHttpToolsProtocol,
) -> tuple[EnvelopeHttpToolsProtocol, RecordingTransport, ServerState]:
    """A fresh connection of the server's protocol (or a subclass, `kind`) to `app`, over a recording
    transport (of the server whose `state` is given: its other connections are open at the same time)."""
    config = Config(app, http=kind, lifespan="off", log_config=None)
    config.load()
    state = state or ServerState()
    protocol = kind(config=config, server_state=state, app_state={})
    transport = RecordingTransport()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return protocol, transport, state


async def answered(state: ServerState, transport: RecordingTransport, answers: int = 1) -> None:
    for _ in range(1000):
        if state.total_requests >= answers or transport.closed:
            return
        await asyncio.sleep(0)


async def exchange(app: App, request: bytes, answers: int = 1) -> RecordingTransport:
    """Feeds `request` to a fresh connection and waits until `answers` responses are complete."""
    protocol, transport, state = connect(app)
    protocol.data_received(request)
    await answered(state, transport, answers)
    transport.closed_by_server = transport.closed
    protocol.connection_lost(None)
    transport.close()
    return transport


def json_app(body: bytes = b'{"ok":true}', status: int = 200) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if status != 304 else b""})

    return app


GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_a_response_with_a_length_is_one_write() -> None:
    transport = await exchange(json_app(), GET)
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 11" in head
    assert body == b'{"ok":true}'


async def test_each_request_cycle_is_made_as_the_servers_own() -> None:
    """uvicorn builds the cycle from its module's name for the class, which the protocol binds to its
    own: made as `_Cycle`, not changed into one afterwards (a changed class would cost every request;
    see http_protocol). Fails if a uvicorn release makes its cycle some other way."""
    from snackbase.http_protocol import _Cycle

    made: list[type] = []

    class Watched(EnvelopeHttpToolsProtocol):
        def _start_asgi_task(self, cycle: Any, app: Any) -> None:  # uvicorn's, right after making it
            made.append(type(cycle))
            super()._start_asgi_task(cycle, app)

    protocol, transport, state = connect(json_app(), kind=Watched)
    protocol.data_received(GET + GET)
    await answered(state, transport, 2)
    protocol.connection_lost(None)
    transport.close()
    assert made == [_Cycle, _Cycle]
    assert len(transport.writes) == 2


async def test_a_big_body_follows_its_head_in_a_second_write() -> None:
    big = b"x" * (256 * 1024)
    transport = await exchange(json_app(big), GET)
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"\r\n\r\n") and transport.writes[1] == big


async def test_head_and_304_have_no_body() -> None:
    head = await exchange(json_app(), b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b"".join(head.writes).endswith(b"content-length: 11\r\n\r\n")
    not_modified = await exchange(json_app(status=304), GET)
    assert b"".join(not_modified.writes).startswith(b"HTTP/1.1 304 Not Modified\r\n")
    assert b"".join(not_modified.writes).endswith(b"\r\n\r\n")


async def test_a_stream_without_a_length_sends_its_head_at_once() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    writes_before_first_chunk: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        started.set()
        await release.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def watch(transport_holder: list[RecordingTransport]) -> None:
        await started.wait()
        writes_before_first_chunk.extend(transport_holder[0].writes)
        release.set()

    protocol, transport, state = connect(app)
    watcher = asyncio.create_task(watch([transport]))
    protocol.data_received(GET)
    await answered(state, transport)
    await watcher
    protocol.connection_lost(None)
    assert len(writes_before_first_chunk) == 1
    assert b"transfer-encoding: chunked" in writes_before_first_chunk[0]
    assert b"".join(transport.writes).endswith(b"9\r\ndata: 1\n\n\r\n0\r\n\r\n")


async def test_pipelined_requests_are_answered_in_order() -> None:
    count = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal count
        count += 1
        body = f"{scope['path']}#{count}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    request = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n"
    transport = await exchange(app, request, answers=2)
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"/a#1") and transport.writes[1].endswith(b"/b#2")
    assert not transport.closed_by_server  # keep-alive


@pytest.mark.parametrize(
    "header",
    [(b"x-bad", b"split\r\ninjected: 1"), (b"bad name", b"v"), (b"x-nul", b"a\x00b")],
)
async def test_forbidden_header_bytes_are_refused_and_nothing_is_sent(header: tuple[bytes, bytes]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [header, (b"content-length", b"0")]}
        )
        await send({"type": "http.response.body", "body": b""})

    transport = await exchange(app, GET)
    sent = b"".join(transport.writes)
    assert b"injected" not in sent
    assert sent.startswith(b"HTTP/1.1 500 ")  # uvicorn's answer to an app that failed before any byte


async def test_connection_close_closes_after_the_response() -> None:
    transport = await exchange(json_app(), b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert transport.closed_by_server
    assert b"connection: close" in transport.writes[0].lower()


@pytest.mark.parametrize(
    ("status", "headers"),
    [(200, None), (201, {"ETag": '"v1"', "Location": "/x"}), (204, None), (304, {"ETag": '"v1"'}), (404, {})],
)
def test_json_responses_carry_the_headers_starlette_would_give_them(
    status: int, headers: dict[str, str] | None
) -> None:
    from starlette.responses import Response

    from snackbase.web import JsonResponse

    body = b"" if status == 204 else b'{"a":1}'
    expected = Response(body, status_code=status, media_type="application/json", headers=headers)
    assert JsonResponse(body, status, headers).raw_headers == expected.raw_headers


def test_the_unsent_limit_is_set_on_tcp_sockets() -> None:
    """Before a file bigger than NOTSENT_LOWAT is sent, TCP_NOTSENT_LOWAT is set on the connection's
    socket (the kernel then sends from the server's context rather than on the client's ACKs, see
    docs/performance.md); a socket that is not TCP is left alone, without an error."""
    from snackbase.http_protocol import _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT, _limit_unsent

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        with client, served:
            before = served.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT)
            transport = RecordingTransport()
            transport.sock.close()
            transport.sock = served
            _limit_unsent(transport)
            assert before != NOTSENT_LOWAT
            assert served.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT
    left, right = socket.socketpair()  # AF_UNIX: no such option, and no error either
    with left, right:
        transport = RecordingTransport()
        transport.sock.close()
        transport.sock = left
        _limit_unsent(transport)


# --- requests started in the order their connections waited (_FairReads) -----------------------------


def recording_app(started: list[str]) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.append(scope["path"])
        await json_app()(scope, receive, send)

    return app


async def test_requests_read_in_one_turn_start_longest_waiting_first() -> None:
    started: list[str] = []
    app, state = recording_app(started), ServerState()
    connections = [connect(app, state) for _ in range(3)]
    for rank, (protocol, _, _) in zip((3.0, 1.0, 2.0), connections, strict=True):
        protocol.ready_since = rank  # as if answered at these times: the second waited longest
    # One turn of the loop reads all three, in the order epoll happened to list them.
    for name, (protocol, _, _) in zip("abc", connections, strict=True):
        protocol.data_received(f"GET /{name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert all(protocol.cycle is None for protocol, _, _ in connections)  # none parsed yet
    await answered(state, connections[0][1], answers=3)
    assert started == ["/b", "/c", "/a"]
    for protocol, transport, _ in connections:
        assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
        assert protocol.ready_since > 3.0  # its answer made it ready again, now
        protocol.connection_lost(None)
        transport.close()


async def test_a_lone_connection_is_parsed_at_once() -> None:
    started: list[str] = []
    protocol, transport, state = connect(recording_app(started))
    protocol.data_received(GET)
    assert protocol.cycle is not None  # no other connection: nothing to wait for
    await answered(state, transport)
    assert started == ["/x"]
    protocol.connection_lost(None)
    transport.close()


def with_neighbour(app: App) -> tuple[EnvelopeHttpToolsProtocol, RecordingTransport, list[Any]]:
    """A connection with another one open beside it (so that its reads wait for the turn's end)."""
    state = ServerState()
    neighbour = connect(app, state)
    protocol, transport, _ = connect(app, state)
    return protocol, transport, [neighbour[0], neighbour[1]]


async def test_a_request_read_in_pieces_in_one_turn_is_parsed_whole_and_in_order() -> None:
    started: list[str] = []
    protocol, transport, neighbour = with_neighbour(recording_app(started))
    for piece in (b"GET /one HT", b"TP/1.1\r\nHost: t\r\n", b"\r\n"):
        protocol.data_received(piece)
    assert protocol.cycle is None
    for _ in range(50):
        if transport.writes:
            break
        await asyncio.sleep(0)
    assert started == ["/one"] and len(transport.writes) == 1
    for p, t in ((protocol, transport), neighbour):
        p.connection_lost(None)
        t.close()


async def test_a_request_read_just_before_the_connection_is_lost_is_still_handled() -> None:
    started: list[str] = []
    protocol, transport, neighbour = with_neighbour(recording_app(started))
    protocol.data_received(b"POST /write HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    assert protocol.cycle is None
    protocol.connection_lost(None)  # in the same turn: uvicorn would have parsed it before the loss
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == ["/write"]  # the app ran (its answer goes nowhere), exactly once
    assert transport.writes == []
    transport.close()
    neighbour[0].connection_lost(None)
    neighbour[1].close()


async def test_bytes_after_a_malformed_request_in_the_same_turn_are_not_parsed() -> None:
    started: list[str] = []
    protocol, transport, neighbour = with_neighbour(recording_app(started))
    protocol.data_received(b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    protocol.data_received(GET)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 400 ")
    assert started == [] and transport.closed
    protocol.connection_lost(None)
    neighbour[0].connection_lost(None)
    neighbour[1].close()


async def test_a_connection_whose_bytes_fail_is_closed_and_the_others_are_still_served() -> None:
    started: list[str] = []
    state = ServerState()
    broken, broken_transport, _ = connect(recording_app(started), state)
    healthy, healthy_transport, _ = connect(recording_app(started), state)
    broken.ready_since, healthy.ready_since = 1.0, 2.0  # the broken one is fed first

    def fail() -> None:
        raise ValueError("a parser bug")

    broken.feed_unread = fail  # type: ignore[method-assign]
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    broken.data_received(GET)
    healthy.data_received(GET)
    await answered(state, healthy_transport)
    assert started == ["/x"] and healthy_transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert broken_transport.closed and isinstance(errors[0]["exception"], ValueError)
    asyncio.get_running_loop().set_exception_handler(None)
    del broken.feed_unread  # the class's own again, for the connection's end
    for protocol, transport in ((broken, broken_transport), (healthy, healthy_transport)):
        protocol.connection_lost(None)
        transport.close()


def test_wsproto_is_imported_on_the_first_upgrade_not_at_start(tmp_path: Any) -> None:
    """wsproto and h11 cost ~40 ms of the server's start; only WebSocket clients need them (their
    end-to-end tests are in tests/test_realtime.py)."""
    code = (
        "import sys\nfrom pathlib import Path\nimport uvicorn\n"
        "from snackbase.app import create_app\nfrom snackbase.cli import _uvicorn_options\n"
        "from tests.conftest import make_settings\n"
        f"app = create_app(make_settings(Path({str(tmp_path / 'data')!r})))\n"
        "config = uvicorn.Config(app, **_uvicorn_options(app.state.settings))\nconfig.load()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wsproto', 'h11')))\n"
        "from uvicorn.server import ServerState\n"
        "config.ws_protocol_class(config=config, server_state=ServerState(), app_state={})\n"
        "print('wsproto' in sys.modules)\n"
    )
    assert fresh_interpreter(code).split() == ["[]", "True"]
