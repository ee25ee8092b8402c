"""Realtime liveness end to end over real sockets: heartbeats at the configured interval (an SSE
comment, a WebSocket `heartbeat` message), a dead client dropped, and token expiry — a subscription
whose access token expires is closed with `token_expired` (WebSocket close code 4401), one given a
fresh token in time keeps receiving."""

from __future__ import annotations

import itertools
import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from snackbase.config import with_secret_key
from snackbase.tokens import decode_access_token, mint_access_token
from tests import test_realtime
from tests.conftest import ServerProcess, make_settings
from tests.factories import User
from tests.test_realtime import API, Sse, World, Ws, call, create, subscribe

world = test_realtime.world
serve = test_realtime.serve


def token(world: World, user: User, ttl_s: int) -> str:
    """A token of the user's own session that expires in `ttl_s` seconds (the servers' key)."""
    settings = with_secret_key(make_settings(world.data_dir))
    sid = decode_access_token(settings, user.token)["sid"]
    return mint_access_token(settings, user_id=user.id, account_id=user.account_id, role=user.role,
                             session_id=sid, ttl_s=ttl_s)  # fmt: skip


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def test_heartbeats_at_the_configured_interval(world: World, serve: Callable[..., ServerProcess]) -> None:
    server = serve({"SNACKBASE_REALTIME_HEARTBEAT_SECONDS": "1"})
    sse = Sse(server, world.bob.headers)
    ws = Ws(server, world.bob)
    sse.conn.sock.settimeout(4)
    lines: list[tuple[float, bytes]] = []
    while len([line for _, line in lines if line == b": heartbeat\n"]) < 3:
        lines.append((time.monotonic(), sse.response.fp.readline()))
    beats = [at for at, line in lines if line == b": heartbeat\n"]  # a comment: invisible to EventSource
    assert all(0.7 < b - a < 1.6 for a, b in itertools.pairwise(beats)), beats
    while True:  # the heartbeats that arrived while the SSE stream was read
        try:
            ws.recv(0.2)
        except TimeoutError:
            break
    arrived = []
    for _ in range(3):
        assert ws.recv(3) == {"type": "heartbeat"}
        arrived.append(time.monotonic())
    assert all(0.7 < b - a < 1.6 for a, b in itertools.pairwise(arrived)), arrived
    # The default is 25 s: a server without the setting sends none within a few seconds.
    quiet = serve()
    ws = Ws(quiet, world.bob)
    ws.nothing(2.5)


def test_a_dead_client_is_dropped(world: World, serve: Callable[..., ServerProcess]) -> None:
    log = world.data_dir / "hooks.log"
    (world.data_dir / "hooks").mkdir(exist_ok=True)
    (world.data_dir / "hooks" / "rt.py").write_text(f"""
from snackbase.hooks import hooks

@hooks.on("realtime.disconnect")
def gone(event):
    open({str(log)!r}, "a").write(event.client_id + "\\n")
""")
    env = {"SNACKBASE_REALTIME_HEARTBEAT_SECONDS": "1", "SNACKBASE_REALTIME_MAX_CONNECTIONS_PER_USER": "2"}
    server = serve(env)
    sse = Sse(server, world.bob.headers)
    ws, ws_client = _raw_websocket(server, world.bob)
    dead = [sse.client_id, ws_client]
    # Both peers vanish without a goodbye (a reset, as when a machine or its router dies).
    for sock in (sse.conn.sock, ws):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sse.response.close()  # the stream's file object holds the socket open too
    sse.close()
    ws.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(_lines(log)) < 2:
        time.sleep(0.1)
    assert sorted(_lines(log)) == sorted(dead)  # both dropped, their hooks fired
    # Their slots are free again (2 connections per user): two new ones are accepted.
    fresh = [Sse(server, world.bob.headers), Ws(server, world.bob)]
    assert fresh[0].status == 200 and fresh[1].client_id
    assert subscribe(server, fresh[0], ["notes"], world.bob)[0] == 200
    made = create(server, world.bob, title="after the dead")
    assert fresh[0].events(1)[0]["record"]["id"] == made["id"]


def _raw_websocket(server: ServerProcess, user: User) -> tuple[socket.socket, str]:
    """A WebSocket on a plain socket (so the test can reset it): handshake, auth, the client id."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        f"GET {API}/realtime HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:  # as a browser: no frame before the handshake's answer
        received += sock.recv(4096)
    payload = json.dumps({"type": "auth", "token": user.token}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(payload)) + mask + masked)
    while b'"client_id":"' not in received or not received.endswith(b"}"):
        received += sock.recv(4096)
    return sock, received.split(b'"client_id":"', 1)[1].split(b'"', 1)[0].decode()


def _lines(path: Any) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_an_expired_token_ends_the_subscription_and_a_fresh_one_keeps_it(
    world: World, serve: Callable[..., ServerProcess]
) -> None:
    server = serve()
    short = token(world, world.bob, 2)
    expiring = _ws_with(server, short)
    kept = _ws_with(server, short)
    sse_expiring = Sse(server, bearer(short))
    sse_kept = Sse(server, bearer(short))
    for ws in (expiring, kept):
        assert ws.subscribe(["notes"])["type"] == "subscribed"
    for sse in (sse_expiring, sse_kept):
        assert call(server, "POST", "/realtime/subscriptions", None,
                    {"client_id": sse.client_id, "topics": ["notes"]}, bearer(short))[0] == 200  # fmt: skip
    fresh = token(world, world.bob, 600)
    kept.send({"type": "auth", "token": fresh})  # a refreshed token on the open connection
    reply = kept.recv()
    assert reply["type"] == "authenticated" and reply["expires_at"] > time.time() + 500
    status, _ = call(server, "POST", "/realtime/subscriptions", None,
                     {"client_id": sse_kept.client_id, "topics": ["notes"]}, bearer(fresh))  # fmt: skip
    assert status == 200  # SSE: the next subscription request carries the fresh token
    other = token(world, world.alice, 600)  # the connection keeps its user
    kept.send({"type": "auth", "token": other})
    assert (reply := kept.recv())["type"] == "error" and reply["code"] == "forbidden"
    time.sleep(2.5)  # the short token has expired
    made = create(server, world.alice, title="after expiry")
    message = expiring.recv()
    assert (message["type"], message["code"]) == ("error", "token_expired")
    with pytest.raises(ConnectionClosed) as closed:
        expiring.recv(2)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    kind, data = sse_expiring.next()[1:]
    assert (kind, data["code"]) == ("error", "token_expired")
    assert kept.recv()["record"]["id"] == made["id"]
    assert sse_kept.events(1)[0]["record"]["id"] == made["id"]


def test_an_idle_subscription_expires_without_any_event(
    world: World, serve: Callable[..., ServerProcess]
) -> None:
    server = serve()
    ws = _ws_with(server, token(world, world.bob, 1))
    ws.subscribe(["notes"])
    message = ws.recv(8)  # re-checked every 5 s while idle
    assert (message["type"], message["code"]) == ("error", "token_expired")


def _ws_with(server: ServerProcess, access_token: str) -> Ws:
    ws = Ws(server)
    ws.send({"type": "auth", "token": access_token})
    assert ws.recv()["type"] == "connect"
    return ws
