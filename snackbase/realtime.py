"""The realtime broker of one server process: connected clients, their topics and send queues, fan-out
of committed events, resume, heartbeats, limits. It knows neither HTTP nor SQL:
- events arrive from a `BrokerTransport` (snackbase/realtime_transport.py), in sequence order;
- who may receive an event, and the record as each client reads it, come from a `Gate`
  (snackbase/realtime_access.py: the view rule, the topic's filter, the one presenter);
- the routes (snackbase/routes/realtime.py) turn a client's queue into SSE or WebSocket frames.

Memory per idle client is kept small on purpose (10,000 idle clients per worker is a target): a
client is one object with __slots__, an empty deque and no task of its own — heartbeats and session
re-checks are one timer each for all clients, and a waiting sender awaits a bare future.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import msgspec

from snackbase.realtime_transport import BrokerTransport, Published

log = logging.getLogger("snackbase.realtime")

HEARTBEAT_SECONDS = 25.0
# Sessions are re-checked before every event batch that would reach them, and at least this often
# for idle clients (so a revoked one is disconnected even when nothing happens).
RECHECK_SECONDS = 5.0
SLOW_GRACE_SECONDS = 2.0

# A queued message: (sequence or None, kind, JSON payload). Kinds: an event action (create, update,
# delete), or connect, subscribed, heartbeat, reload, error (the last message before a close).
Message = tuple[int | None, str, bytes]


class LimitError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Topic(msgspec.Struct, frozen=True):
    """`collection` or `collection/<record id>`, optionally narrowed by a filter."""

    collection: str
    record_id: str | None = None
    filter: str | None = None

    @property
    def name(self) -> str:
        return self.collection if self.record_id is None else f"{self.collection}/{self.record_id}"

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.name, "filter": self.filter}


class Client:
    """One SSE or WebSocket connection. `viewer` is the Gate's view of who it is (opaque here)."""

    __slots__ = (
        "_pending", "_waiter", "account_id", "address", "close_code", "closed", "direct", "id", "kind",
        "limit", "queue", "resume_after", "task", "topics", "user_id", "viewer", "write",
    )  # fmt: skip

    def __init__(
        self, kind: str, viewer: Any, account_id: str | None, user_id: str | None, address: str, limit: int
    ) -> None:
        self.id = secrets.token_urlsafe(16)
        self.kind = kind  # sse | ws
        self.viewer = viewer
        self.account_id = account_id  # None: a superadmin watching every account
        self.user_id = user_id
        self.address = address
        self.limit = limit
        self.topics: tuple[Topic, ...] = ()
        # A list, created on the first message and dropped once drained: an idle client holds none
        # (an empty deque alone is ~600 bytes); queues are short, so pop(0) costs nothing.
        self.queue: list[Message] | None = None
        self.closed = False
        self.close_code: str | None = None
        self.resume_after: int | None = None  # SSE: Last-Event-ID, replayed at the first subscription
        self._waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[Any] | None = None  # the connection's task, ended if it stays stuck
        # The transport's send for one message, set by the route: see `push`.
        self.direct: Callable[[Message], Any] | None = None  # returns the send's coroutine
        self._pending: tuple[Coroutine[Any, Any, None], Any] | None = None
        # Below the ASGI layer, set by the route where the server allows it: writes the message's
        # frame straight to the socket's transport and returns True, or False when it cannot now
        # (flow control, a closing connection) and the message must take the ASGI `send`.
        self.write: Callable[[Message], bool] | None = None

    def push(self, message: Message) -> None:
        """Queues a message; a client that lets LIMIT messages pile up is disconnected with a reason."""
        if self.closed:
            return
        if self.queue is None:
            if self._pending is None and self._idle():
                if self.write is not None and self.write(message):
                    return
                if self.direct is not None:
                    self._send_now(message)
                    return
            self.queue = [message]
            self._wake()
            return
        if len(self.queue) >= self.limit:
            self.close("slow_client", "The client did not read its events fast enough.")
            return
        self.queue.append(message)
        self._wake()

    def close(self, code: str | None = None, message: str = "") -> None:
        """Ends the client: what is queued is dropped, a final error (when `code`) is still sent."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.queue = [(None, "error", error_payload(code, message))] if code is not None else None
        self._wake()
        if code == "slow_client":
            # Its sender is blocked on a full socket buffer; if the peer does not read the final error
            # within the grace period, the connection task is cancelled and the socket closed.
            asyncio.get_running_loop().call_later(SLOW_GRACE_SECONDS, self._abort)

    def _abort(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _idle(self) -> bool:
        """The sender waits for a message (it is not in the middle of sending one)."""
        return self._waiter is not None and not self._waiter.done()

    def _send_now(self, message: Message) -> None:
        """Fan-out fast path: the transport's send runs right here instead of waking the client's
        sender (a task switch and a future per recipient, most of the cost of an event sent to
        thousands). An ASGI server's send only suspends when the socket buffer is full (flow control);
        then the sender finishes it, in order, before anything queued after it."""
        assert self.direct is not None
        coro = self.direct(message)
        try:
            awaited = coro.send(None)
        except StopIteration:
            return
        except Exception:  # the peer is gone: the connection's own loop notices and cleans up
            self.close()
            return
        self._pending = (coro, awaited)
        self._wake()

    async def _finish_pending(self) -> None:
        assert self._pending is not None
        coro, awaited = self._pending
        try:
            while True:
                try:
                    await awaited
                except BaseException:
                    coro.close()
                    raise
                awaited = coro.send(None)
        except StopIteration:
            pass
        finally:
            self._pending = None

    async def next(self) -> Message | None:
        """The next message to send; None once the client is closed and its queue is empty."""
        if self._pending is not None:
            await self._finish_pending()
        while not self.queue:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
            if self._pending is not None:
                await self._finish_pending()
        message = self.queue.pop(0)
        if not self.queue:
            self.queue = None
        return message

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Gate(Protocol):
    def check(self, clients: Iterable[Client]) -> None:
        """Closes the clients whose right to events has ended (token expired, session revoked)."""

    def render(
        self, event: Published, clients: list[Client], topics: list[tuple[Topic, ...]]
    ) -> list[tuple[bytes, list[Client]]]:
        """The open clients that may see the event (`topics[i]`: the topics of `clients[i]` it
        matches), grouped by the payload as they read it."""


class Limits(msgspec.Struct, frozen=True):
    max_topics: int
    per_user: int
    per_address: int
    queue: int
    heartbeat: float = HEARTBEAT_SECONDS  # seconds between heartbeats (SNACKBASE_REALTIME_HEARTBEAT_SECONDS)


class Broker:
    def __init__(self, transport: BrokerTransport, gate: Gate, limits: Limits) -> None:
        self.transport = transport
        self.gate = gate
        self.limits = limits
        self.clients: dict[str, Client] = {}
        self._by_collection: dict[str, set[Client]] = {}
        self._per_user: Counter[str] = Counter()
        self._per_address: Counter[str] = Counter()
        self._topic_sets: dict[tuple[Topic, ...], tuple[Topic, ...]] = {}
        self._timers: list[asyncio.TimerHandle] = []
        self._started = False

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """On the event loop, at the first connection (or at server start)."""
        if self._started:
            return
        self._started = True
        self.transport.start(self.deliver)
        loop = asyncio.get_running_loop()
        self._timers = [loop.call_later(self.limits.heartbeat, self._heartbeat),
                        loop.call_later(RECHECK_SECONDS, self._recheck)]  # fmt: skip

    def stop(self) -> None:
        for client in list(self.clients.values()):
            client.close("server_stopping", "The server is stopping; reconnect and resume.")
        for timer in self._timers:
            timer.cancel()
        self.transport.stop()
        self._started = False

    # --- clients ---------------------------------------------------------------------------------

    def new_client(self, kind: str, viewer: Any, account_id: str | None, user_id: str | None,
                   address: str) -> Client:  # fmt: skip
        return Client(kind, viewer, account_id, user_id, address, self.limits.queue)

    def connect(self, client: Client) -> None:
        """Registers a client, or LimitError when its user or address holds too many connections."""
        if client.user_id is not None and self._per_user[client.user_id] >= self.limits.per_user:
            raise LimitError(
                "too_many_connections",
                f"This user already holds {self.limits.per_user} realtime connections.",
            )
        if self._per_address[client.address] >= self.limits.per_address:
            raise LimitError(
                "too_many_connections",
                f"This address already holds {self.limits.per_address} realtime connections.",
            )
        self.start()
        # Before the client is acknowledged: every event committed from now on is recorded for it
        # (the transport's error, a busy database, leaves nothing registered).
        self.transport.listen(True)
        self.clients[client.id] = client
        if client.user_id is not None:
            self._per_user[client.user_id] += 1
        self._per_address[client.address] += 1

    def disconnect(self, client: Client) -> None:
        if self.clients.pop(client.id, None) is None:
            return
        client.close()
        self._index(client, ())
        _decrement(self._per_user, client.user_id)
        _decrement(self._per_address, client.address)
        if not self.clients:
            self.transport.listen(False)

    def subscribe(self, client: Client, topics: list[Topic]) -> None:
        """Replaces the client's topics (validated by the caller: names, filters, rights)."""
        if len(topics) > self.limits.max_topics:
            raise LimitError(
                "too_many_topics", f"A client may subscribe to at most {self.limits.max_topics} topics."
            )
        unique = tuple(dict.fromkeys(topics))
        # Interned: clients with the same topics share one tuple (less memory per idle client, and
        # the gate recognises equal subscriptions by identity).
        unique = self._topic_sets.setdefault(unique, unique)
        self._index(client, unique)
        client.topics = unique

    def _index(self, client: Client, topics: tuple[Topic, ...]) -> None:
        for topic in client.topics:
            members = self._by_collection.get(topic.collection)
            if members is not None:
                members.discard(client)
                if not members:
                    del self._by_collection[topic.collection]
        if client.id in self.clients:
            for topic in topics:
                self._by_collection.setdefault(topic.collection, set()).add(client)

    # --- events ----------------------------------------------------------------------------------

    def deliver(self, events: list[Published]) -> None:
        """From the transport: committed events in sequence order, fanned out to their subscribers.

        No object is allocated per recipient (parallel lists, payload groups, one message per
        payload): a fan-out to thousands otherwise filled the young generation with tuples that a
        collection then promoted, and the full collections that followed (~80 ms with 5,000 idle
        clients) were the tail of the delivery latency."""
        batch = [(event, found) for event in events if (found := self._subscribers(event))[0]]
        if not batch:
            return
        self.gate.check({client for _, (clients, _) in batch for client in clients})
        for event, (clients, topics) in batch:
            for payload, members in self.gate.render(event, clients, topics):
                # One message object per payload: the routes encode its frame once.
                message: Message = (event.seq, event.action, payload)
                for client in members:
                    client.push(message)

    def _subscribers(self, event: Published) -> tuple[list[Client], list[tuple[Topic, ...]]]:
        clients: list[Client] = []
        matched: list[tuple[Topic, ...]] = []
        for client in self._by_collection.get(event.collection, ()):
            if client.account_id is not None and client.account_id != event.account_id:
                continue
            topics = _matching(client.topics, event)
            if topics:
                clients.append(client)
                matched.append(topics)
        return clients, matched

    def resume(self, client: Client, after: int) -> bool:
        """Queues the events after `after` the client may see now; False when they left the window."""
        events = self.transport.replay(after)
        if events is None:
            return False
        self.gate.check([client])
        for event in events:
            topics = _matching(client.topics, event)
            if topics and not client.closed and client.account_id in (None, event.account_id):
                for payload, _ in self.gate.render(event, [client], [topics]):
                    client.push((event.seq, event.action, payload))
        return True

    # --- timers ----------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        beat: Message = (None, "heartbeat", b'{"type":"heartbeat"}')
        for client in list(self.clients.values()):
            client.push(beat)
        self._timers[0] = asyncio.get_running_loop().call_later(self.limits.heartbeat, self._heartbeat)

    def _recheck(self) -> None:
        try:
            self.gate.check(list(self.clients.values()))
        except Exception:
            log.exception("realtime session re-check failed")
        self._timers[1] = asyncio.get_running_loop().call_later(RECHECK_SECONDS, self._recheck)

    def counts(self) -> dict[str, int]:
        return {"clients": len(self.clients), "cursor": self.transport.cursor}


def _matching(topics: tuple[Topic, ...], event: Published) -> tuple[Topic, ...]:
    """The client's topics an event matches; the client's own (interned) tuple when all of them do."""
    for topic in topics:
        if topic.collection != event.collection or (topic.record_id not in (None, event.record_id)):
            return tuple(t for t in topics if t.collection == event.collection
                         and t.record_id in (None, event.record_id))  # fmt: skip
    return topics


def _decrement(counter: Counter[str], key: str | None) -> None:
    if key is None:
        return
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def error_payload(code: str, message: str) -> bytes:
    return msgspec.json.encode({"type": "error", "code": code, "message": message})
