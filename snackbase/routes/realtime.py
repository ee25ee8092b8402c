"""Realtime over HTTP: Server-Sent Events, WebSocket, and the SSE client's subscriptions.

- `GET /realtime/sse` opens an event stream; its first event (`connect`) carries the `client_id`
  that `POST /realtime/subscriptions {client_id, topics}` (same caller) uses to set its topics.
  `Last-Event-ID` resumes: the missed events follow the first subscription.
- `GET /realtime` is a WebSocket: an optional first `{"type": "auth", "token", "account"}` message,
  then `subscribe`, `resume` and `ping` messages.
Authentication: the Bearer header or the WebSocket auth message — never a token in the URL; an
anonymous client names its account (X-Account-ID, the `account` query parameter or message field).
The protocol and event format are in docs/realtime.md; the broker is snackbase/realtime.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from snackbase.auth import resolve_auth
from snackbase.context import caller_for
from snackbase.errors import ApiError, envelope
from snackbase.hooks import RealtimeEvent
from snackbase.realtime import Broker, Client, LimitError, Message, Topic
from snackbase.realtime_access import RecordGate, Viewer
from snackbase.routes import RouteTable
from snackbase.tokens import InvalidToken, decode_access_token
from snackbase.web import json_response, read_json

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
WS_MAX_MESSAGE = 64 * 1024
# WebSocket close codes by the reason a client is disconnected (4000 + HTTP status where one fits).
_CLOSE_CODES = {
    "slow_client": 4008, "session_ended": 4401, "token_expired": 4401, "server_stopping": 1001,
    "too_many_connections": 4429,
}  # fmt: skip


# --- who is connecting ---------------------------------------------------------------------------


async def _viewer(conn: HTTPConnection, token: str | None = None, account: str | None = None) -> Viewer:
    """The connection's caller, from the Bearer header (or a WebSocket auth message's token), or an
    anonymous caller of the account named by X-Account-ID / `account`."""
    settings = conn.app.state.settings
    header = f"Bearer {token}" if token is not None else conn.headers.get("authorization")
    account_ref = account or conn.query_params.get("account") or conn.headers.get("x-account-id")
    auth = resolve_auth(settings, conn.app.state.db.conn, header, account_ref)
    state = conn.scope.setdefault("state", {})
    state["auth"] = auth
    state.pop("caller", None)
    # The one caller builder reads a Request; a WebSocket scope shares its state dict with the copy.
    caller = await caller_for(Request({**conn.scope, "type": "http"}))
    expires_at = float("inf")
    if header is not None:
        try:
            expires_at = float(decode_access_token(settings, header.split(None, 1)[1].strip())["exp"])
        except (InvalidToken, IndexError):  # resolve_auth accepted it: cannot happen
            raise ApiError(401, "unauthorized", "The access token is invalid or has expired.") from None
    return Viewer(caller, auth.session_id, expires_at)


def _broker(conn: HTTPConnection) -> Broker:
    broker = conn.app.state.realtime
    assert isinstance(broker, Broker)
    return broker


def _address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


async def _connect(conn: HTTPConnection, viewer: Viewer, kind: str) -> Client:
    """A new client, admitted by the connection limits and the `realtime.connect` hooks."""
    broker = _broker(conn)
    caller = viewer.caller
    client = broker.new_client(kind, viewer, caller.account_id, caller.user_id, _address(conn))
    hooks = conn.app.state.hooks  # the app's dispatcher: events carry its settings and connection
    if hooks.has("realtime.connect"):
        event = RealtimeEvent(client_id=client.id, data={"transport": kind, "address": client.address},
                              auth=caller)  # fmt: skip
        await hooks.dispatch("realtime.connect", event)
    try:
        broker.connect(client)
    except LimitError as exc:
        raise ApiError(429, exc.code, exc.message) from None
    client.push((None, "connect", _encode({"type": "connect", "client_id": client.id})))
    return client


def _disconnect(conn: HTTPConnection, client: Client) -> None:
    _broker(conn).disconnect(client)
    hooks = conn.app.state.hooks
    if hooks.has("realtime.disconnect"):
        data = {"transport": client.kind, "reason": client.close_code or "closed"}
        event = RealtimeEvent(client_id=client.id, auth=client.viewer.caller, data=data)
        hooks.fire("realtime.disconnect", event)


def _subscribe(conn: HTTPConnection, client: Client, raw_topics: Any) -> list[Topic]:
    broker = _broker(conn)
    gate = broker.gate
    assert isinstance(gate, RecordGate)
    topics = gate.validate(client.viewer, raw_topics)
    try:
        broker.subscribe(client, topics)
    except LimitError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    return topics


def _renew(client: Client, viewer: Viewer) -> None:
    """A fresh token for the same user keeps the connection's right to events past the old token's
    expiry (and from the new token's session on)."""
    if viewer.caller.user_id is None or viewer.caller.user_id != client.viewer.caller.user_id:
        raise ApiError(403, "forbidden", "A realtime connection keeps its user: open a new one to switch.")
    client.viewer = viewer


def _expiry(viewer: Viewer) -> int | None:
    return int(viewer.expires_at) if viewer.expires_at != float("inf") else None


def _resume(conn: HTTPConnection, client: Client, after: int) -> None:
    if not _broker(conn).resume(client, after):
        client.push((None, "reload", _encode({"type": "reload", "after": after,
                     "message": "Missed events are no longer available; reload the data."})))  # fmt: skip


# --- Server-Sent Events --------------------------------------------------------------------------


async def sse(request: Request) -> Response:
    viewer = await _viewer(request)
    after = _event_id(request.headers.get("last-event-id"))
    client = await _connect(request, viewer, "sse")
    client.resume_after = after
    return EventStream(client)


def _event_id(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    if not raw.strip().isdigit() or len(raw.strip()) > 18:
        raise ApiError(400, "bad_request", "Last-Event-ID must be an event id (a number).")
    return int(raw)


class EventStream(Response):
    """text/event-stream from a client's queue, until either side ends it. No task group: the one
    extra task per connection only waits for the disconnect."""

    def __init__(self, client: Client) -> None:
        super().__init__(status_code=200)
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self.client
        client.task = asyncio.current_task()
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        watcher.add_done_callback(lambda _: client.close())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            body: Send = scope.get(_RAW_SEND, send)  # see realtime_first
            client.direct = lambda m: body(
                {"type": "http.response.body", "body": _sse_frame(m), "more_body": True}
            )
            client.write = _sse_writer(body)
            while (message := await client.next()) is not None:
                await body({"type": "http.response.body", "body": _sse_frame(message), "more_body": True})
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if client.close_code != "slow_client":
                raise
            # A slow client that did not even read its final error: the server closes the socket.
        finally:
            watcher.cancel()
            _disconnect(HTTPConnection(scope), client)


_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies must not buffer the stream
]


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# --- frames written below the ASGI layer ----------------------------------------------------------
# Half of what one recipient of a fan-out cost was uvicorn's ASGI `send` (a coroutine, a dict, the
# chunk or WebSocket frame built per connection) around the socket write. The broker hands every
# recipient of one payload the same message object, so its frame is encoded once (a one-entry cache
# per kind) and written straight to each connection's transport while uvicorn would do just that: the
# response or WebSocket is open and not paused by flow control. Otherwise the message takes the ASGI
# `send` (which waits for the drain), and everything after it too, in order. Only uvicorn's httptools
# and wsproto protocols are recognised; with any other server the writers are None.


def _sse_writer(send: Send) -> Callable[[Message], bool] | None:
    cycle: Any = getattr(send, "__self__", None)
    if not all(hasattr(cycle, name) for name in ("transport", "flow", "disconnected", "chunked_encoding",
                                                 "response_complete")):  # fmt: skip
        return None
    transport, flow = cycle.transport, cycle.flow
    if not cycle.chunked_encoding:
        return None

    def write(message: Message) -> bool:
        if cycle.disconnected or cycle.response_complete or flow.write_paused or transport.is_closing():
            return False
        transport.write(_sse_chunk(message))
        return True

    return write


_last_sse: list[Any] = [None, b""]  # the last message and its chunk (held, so its id stays unique)


def _sse_chunk(message: Message) -> bytes:
    if message is not _last_sse[0]:
        frame = _sse_frame(message)
        _last_sse[:] = [message, b"%x\r\n%s\r\n" % (len(frame), frame)]
    chunk: bytes = _last_sse[1]
    return chunk


def _ws_writer(ws: WebSocket) -> Callable[[Message], bool] | None:
    protocol: Any = getattr(getattr(ws, "_send", None), "__self__", None)
    if not all(hasattr(protocol, name) for name in ("transport", "writable", "disconnected", "close_sent",
                                                    "handshake_complete", "conn")):  # fmt: skip
        return None
    transport, writable, open_state = protocol.transport, protocol.writable, _ws_open_state()

    def write(message: Message) -> bool:
        p = protocol
        if (not writable.is_set() or p.disconnected or p.close_sent or not p.handshake_complete
                or p.conn.state is not open_state or transport.is_closing()):  # fmt: skip
            return False
        transport.write(_ws_frame(message))
        return True

    return write


_last_ws: list[Any] = [None, b""]


def _ws_frame(message: Message) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455 5.2): what wsproto writes for a server's message.
    Never compressed: a frame without RSV1 is valid with or without permessage-deflate."""
    if message is not _last_ws[0]:
        data = message[2]
        size = len(data)
        if size < 126:
            head = bytes((0x81, size))
        elif size < 1 << 16:
            head = bytes((0x81, 126)) + size.to_bytes(2, "big")
        else:
            head = bytes((0x81, 127)) + size.to_bytes(8, "big")
        _last_ws[:] = [message, head + data]
    frame: bytes = _last_ws[1]
    return frame


def _ws_open_state() -> Any:
    """wsproto's OPEN state, looked up when a WebSocket opens: importing wsproto (and h11) at start
    cost ~40 ms of the server's start and is needed only by WebSocket clients."""
    try:
        from wsproto.connection import ConnectionState
    except ImportError:  # no wsproto: the WebSocket writer is never used
        return object()
    return ConnectionState.OPEN


def _sse_frame(message: Message) -> bytes:
    seq, kind, data = message
    if kind == "heartbeat":
        return b": heartbeat\n\n"
    head = b"id: %d\n" % seq if seq is not None else b""
    return head + b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


async def subscriptions(request: Request) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "The body must be {client_id, topics}.")
    client_id = body.get("client_id")
    client = _broker(request).clients.get(client_id) if isinstance(client_id, str) else None
    caller = await caller_for(request)
    owner = client.viewer.caller if client is not None else None
    # The same caller as the stream (an anonymous stream: an anonymous request; the client id is secret).
    if client is None or client.kind != "sse" or owner is None or owner.user_id != caller.user_id:
        raise ApiError(404, "not_found", "No realtime connection of yours has this client_id.")
    if caller.user_id is not None:  # the request's (maybe refreshed) token now carries the stream
        _renew(client, await _viewer(request))
    topics = _subscribe(request, client, body.get("topics"))
    if client.resume_after is not None:
        after, client.resume_after = client.resume_after, None
        _resume(request, client, after)
    return json_response({"client_id": client.id, "topics": [t.to_json() for t in topics]})


# --- WebSocket -----------------------------------------------------------------------------------


async def websocket(ws: WebSocket) -> None:
    await ws.accept()
    try:
        first = await _receive(ws)
    except WebSocketDisconnect:
        return
    try:
        if first is not None and first.get("type") == "auth":
            viewer = await _viewer(ws, _text(first.get("token")), _text(first.get("account")))
            first = None
        else:
            viewer = await _viewer(ws)
        client = await _connect(ws, viewer, "ws")
    except ApiError as exc:
        await _refuse(ws, exc)
        return
    sender = asyncio.ensure_future(_ws_sender(ws, client))
    client.task = asyncio.current_task()
    try:
        if first is not None:
            await _handle(ws, client, first)
        while not client.closed:
            await _handle(ws, client, await _receive(ws))
    except WebSocketDisconnect:
        client.close()
    except asyncio.CancelledError:
        if client.close_code != "slow_client":
            raise
        sender.cancel()  # stuck on a full socket buffer: returning closes the socket
    finally:
        _disconnect(ws, client)
        with contextlib.suppress(BaseException):
            await sender


async def _receive(ws: WebSocket) -> dict[str, Any] | None:
    """The next message as an object; None for one that is not a JSON object (answered with an error)."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text") or message.get("bytes") or b""
    try:
        value = _decode(raw) if len(raw) <= WS_MAX_MESSAGE else None
    except msgspec.DecodeError:
        value = None
    return value if isinstance(value, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


async def _handle(ws: WebSocket, client: Client, message: dict[str, Any] | None) -> None:
    kind = message.get("type") if message is not None else None
    try:
        if message is None:
            raise ApiError(400, "bad_request", "A message is a JSON object with a `type`.")
        if kind == "subscribe":
            topics = _subscribe(ws, client, message.get("topics"))
            client.push(
                (None, "subscribed", _encode({"type": "subscribed", "topics": [t.to_json() for t in topics]}))
            )
        elif kind == "resume":
            after = message.get("after")
            if not isinstance(after, int) or isinstance(after, bool) or after < 0:
                raise ApiError(400, "bad_request", "resume takes `after`, the last event id received.")
            _resume(ws, client, after)
        elif kind == "ping":
            client.push((None, "pong", b'{"type":"pong"}'))
        elif kind == "auth":
            viewer = await _viewer(ws, _text(message.get("token")) or "")
            _renew(client, viewer)
            client.push((None, "authenticated", _encode({"type": "authenticated",
                         "expires_at": _expiry(viewer)})))  # fmt: skip
        else:
            raise ApiError(400, "bad_request", "Unknown message type: use subscribe, resume or ping.")
    except ApiError as exc:
        client.push((None, "error", _error(exc, ws)))


def _error(exc: ApiError, conn: HTTPConnection) -> bytes:
    request_id = str(conn.scope.get("state", {}).get("request_id", ""))
    return _encode({"type": "error", **envelope(exc, request_id)})


async def _refuse(ws: WebSocket, exc: ApiError) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(_error(exc, ws).decode())
        await ws.close(4000 + exc.status if exc.status < 1000 else 4000, (exc.code or "error")[:100])


async def _ws_sender(ws: WebSocket, client: Client) -> None:
    client.direct = lambda m: ws.send({"type": "websocket.send", "text": m[2].decode()})
    client.write = _ws_writer(ws)
    try:
        while (message := await client.next()) is not None:
            await ws.send_text(message[2].decode())
        code = _CLOSE_CODES.get(client.close_code or "", 1000)
        await ws.close(code, client.close_code or "")
    except Exception:  # the peer went away: the receive loop sees the disconnect
        client.close()


def realtime_first(app: ASGIApp, prefix: str) -> ASGIApp:
    """Realtime at the server's edge, wrapped around the middleware stack:
    - the WebSocket is served straight away: each middleware and routing layer would stay suspended
      for the life of every connection (~3 KB per idle WebSocket, measured); WebSockets pass the
      middleware untouched anyway (no request log line; auth in the route);
    - an SSE request goes through the stack as usual (request id, log line, CORS, hooks), but keeps
      the server's own `send`: its event frames skip the middleware's send wrappers, which only look
      at the response start (two coroutines less per event and subscriber in a fan-out)."""
    ws_path, sse_path = prefix + "/realtime", prefix + "/realtime/sse"

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == ws_path:
            await websocket(WebSocket(scope, receive, send))
            return
        if scope["type"] == "http" and scope["path"] == sse_path:
            scope[_RAW_SEND] = send
        await app(scope, receive, send)

    return dispatch


_RAW_SEND = "snackbase.raw_send"


routes: RouteTable = [
    ("WS", "/realtime", websocket),
    ("GET", "/realtime/sse", sse),
    ("POST", "/realtime/subscriptions", subscriptions),
]
