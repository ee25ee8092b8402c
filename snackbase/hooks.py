"""The hook registry: the stable extension API (v1) of SnackBase. See docs/hooks.md.

A hook file writes `from snackbase.hooks import hooks, HookAbort` and registers functions with
`@hooks.on("record.before_create", collection="posts")`. The other modules call the registry at their
seams, each with one line: `await hooks.dispatch(name, event)` (before-events in async code),
`hooks.dispatch_sync(name, event)` (before-events inside the synchronous write pipeline) and
`hooks.fire(name, event)` (after-events, which never fail the caller).

Everything a hook can raise leaves as an ApiError: HookAbort is one (answered as it is); any other
exception of a before-hook is logged with the hook's name and answered with a bare 500.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.types import Scope

from snackbase.config import Settings
from snackbase.errors import ApiError
from snackbase.logs import request_context

if TYPE_CHECKING:
    import apsw

    from snackbase.hook_records import RecordsHelper
    from snackbase.queries import ListQuery
    from snackbase.record_changes import WriteContext

__all__ = ["EVENTS", "Event", "HookAbort", "HookRegistry", "RecordEvent", "hooks"]

API_VERSION = 1
SLOW_HOOK_SECONDS = 1.0  # a hook running longer is reported in the log (it holds up its request)
RESERVED_PRIORITY = 10_000  # |priority| >= this belongs to the built-ins
MAX_NESTING = 8  # hook → records helper → hook … deeper than this is a loop, not a design

log = logging.getLogger("snackbase.hooks")
HookFn = Callable[[Any], Any]


class EventSpec(msgspec.Struct, frozen=True):
    can_abort: bool  # before-style: HookAbort answers the request and nothing is written
    sync_only: bool  # fired from synchronous pipeline code (maybe inside a transaction): plain functions only
    per_collection: bool  # `collection=` narrows the hook to one collection
    payload: str


def _spec(can_abort: bool, sync_only: bool, per_collection: bool, payload: str) -> EventSpec:
    return EventSpec(can_abort, sync_only, per_collection, payload)


EVENTS: dict[str, EventSpec] = {
    "app.bootstrap": _spec(True, True, False, "AppEvent: app; runs in create_app, before serving"),
    "app.serve": _spec(False, False, False, "AppEvent: app; the server is about to accept requests"),
    "app.terminate": _spec(False, False, False, "AppEvent: app; the server is stopping, database still open"),
    **{
        f"record.before_{op}": _spec(True, True, True, f"RecordEvent: data (body), record{extra}")
        for op, extra in (("create", " = None"), ("update", " (stored)"), ("delete", " (stored), data = {}"))
    },
    "record.before_list": _spec(True, True, True, "ListEvent: query (filter, sort, page … mutable)"),
    **{
        f"record.after_{op}": _spec(False, False, True, f"RecordEvent: record ({what}), old")
        for op, what in (("create", "stored"), ("update", "stored"), ("delete", "as it was"))
    },
    **{
        f"collection.{when}_{op}": _spec(when == "before", False, True, "CollectionEvent: data, record")
        for when in ("before", "after")
        for op in ("create", "update", "delete")
    },
    **{
        f"auth.{when}_{op}": _spec(
            when == "before", False, False, "AuthEvent: data (no secrets), record (user)"
        )
        for when in ("before", "after")
        for op in ("login", "register", "refresh", "logout")
    },
    "request.before": _spec(True, False, False, "RequestEvent: request, method, path"),
    "request.after": _spec(False, False, False, "RequestEvent: request, method, path, status, duration_ms"),
    "mail.before_send": _spec(True, True, False, "MailEvent: kind, to, message (EmailMessage, mutable)"),
    "realtime.connect": _spec(
        True, False, False, "RealtimeEvent: client_id, auth, data (transport, address)"
    ),
    "realtime.disconnect": _spec(
        False, False, False, "RealtimeEvent: client_id, auth, data (transport, reason)"
    ),
}


class HookAbort(ApiError):
    """Raised by a before-hook to refuse the operation; answered in the error envelope, nothing written.

    `fields` maps a field to a message or to {code, message}:
    `HookAbort(400, "Not allowed.", {"title": "Too short."})`.
    """

    def __init__(
        self,
        status: int = 400,
        message: str | None = None,
        fields: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HookAbort status must be an HTTP error status (400-599), got {status}")
        normalized = {name: _field_entry(value) for name, value in (fields or {}).items()}
        if code is None and normalized and status == 400:
            code = "validation_failed"
        super().__init__(status, code, message, normalized)


def _field_entry(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {"code": str(value.get("code", "invalid")), "message": str(value.get("message", ""))}
    return {"code": "invalid", "message": str(value)}


# --- events -------------------------------------------------------------------------------------

# The HTTP request being served (set by stack.RequestGate): events default their auth from it.
current_scope: ContextVar[Scope | None] = ContextVar("hook_scope", default=None)
_nesting: ContextVar[int] = ContextVar("hook_nesting", default=0)


def request_id() -> str | None:
    context = request_context.get()
    return context.get("request_id") if context else None


class Event(msgspec.Struct, kw_only=True, dict=True):
    """What every hook receives. `conn` is the app's connection, for READS: write through `records`,
    so that rules, validation, audit and other hooks apply.

    The events are msgspec Structs, not dataclasses: defining these nine dataclasses took ~11 ms of
    every start. `dict=True` leaves a hook free to set attributes of its own, as on a dataclass."""

    name: str = ""
    auth: Any = None  # the caller: rules.Caller for record events, auth.Auth (or None) elsewhere
    request_id: str | None = msgspec.field(default_factory=request_id)
    settings: Settings | None = None
    conn: apsw.Connection | None = None

    # The app's dispatcher that fired the event (snackbase.hook_dispatch.HookDispatcher); None for
    # events fired straight on a registry, outside any app.
    dispatcher: Any = None

    @property
    def records(self) -> RecordsHelper:
        if self.dispatcher is None:
            raise RuntimeError("the records helper needs an event fired by a running app")
        return self.dispatcher.records(self)


class AppEvent(Event, kw_only=True):
    app: Any = None


class RecordEvent(Event, kw_only=True):
    collection: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    record: dict[str, Any] | None = None
    old: dict[str, Any] | None = None  # after_update: the record before the change
    ctx: WriteContext | None = None


class ListEvent(Event, kw_only=True):
    collection: str
    query: ListQuery


class CollectionEvent(Event, kw_only=True):
    collection: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    record: dict[str, Any] | None = None  # the definition as stored (before: the current one, if any)


class AuthEvent(Event, kw_only=True):
    data: dict[str, Any] = msgspec.field(default_factory=dict)  # the request body without passwords or tokens
    record: dict[str, Any] | None = None  # the user (public fields)


class RequestEvent(Event, kw_only=True):
    request: Request
    method: str = ""
    path: str = ""
    status: int | None = None
    duration_ms: float | None = None


class MailEvent(Event, kw_only=True):
    kind: str
    message: EmailMessage
    to: str = ""


class RealtimeEvent(Event, kw_only=True):
    client_id: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)


# --- the registry -------------------------------------------------------------------------------


class Hook(msgspec.Struct, frozen=True):
    event: str
    fn: HookFn
    collection: str | None
    priority: int
    seq: int
    name: str
    source: str | None = None  # the hook file it came from
    builtin: str | None = None  # built-ins: the function that really does the work

    def describe(self) -> dict[str, Any]:
        out = {
            "event": self.event,
            "name": self.name,
            "priority": self.priority,
            "collection": self.collection,
        }
        return {**out, "builtin": self.builtin} if self.builtin else {**out, "source": self.source}


class HookRegistry:
    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {}
        # event → the collections (None: any) its registered hooks apply to, built-ins left out:
        # `has` answers from it, since the request path asks on every request (~1% of a get).
        self._scopes: dict[str, frozenset[str | None]] = {}
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self.loading: Path | None = None  # set by the hook-file loader while a file runs
        self.slow_seconds = SLOW_HOOK_SECONDS

    # registration

    def on(self, event: str, collection: str | None = None, priority: int = 0) -> Callable[[HookFn], HookFn]:
        """Decorator: `@hooks.on("record.before_create", collection="posts", priority=10)`."""

        def decorate(fn: HookFn) -> HookFn:
            self.register(event, fn, collection=collection, priority=priority)
            return fn

        return decorate

    def register(self, event: str, fn: HookFn, *, collection: str | None = None, priority: int = 0) -> Hook:
        spec = _check_registration(event, fn, collection, priority)
        if spec.sync_only and _is_async(fn):
            raise ValueError(
                f"{event} runs inside the synchronous write path (possibly within a transaction), so its "
                f"hooks must be plain functions, not async: {_name(fn)}; do I/O in an after-event instead"
            )
        source = str(self.loading) if self.loading else None
        name = f"{self.loading.name}:{fn.__qualname__}" if self.loading else _name(fn)
        return self._add(Hook(event, fn, collection, priority, next(self._seq), name, source))

    def _add(self, hook: Hook) -> Hook:
        chain = self._hooks.setdefault(hook.event, [])
        chain.append(hook)
        chain.sort(key=lambda h: (-h.priority, h.seq))  # higher priority first, then registration order
        self._index()
        return hook

    def _index(self) -> None:
        self._scopes = {
            event: frozenset(h.collection for h in chain if h.builtin is None)
            for event, chain in self._hooks.items()
            if any(h.builtin is None for h in chain)
        }

    def builtin(self, event: str, name: str, priority: int, does: str) -> None:
        """A descriptive entry for work the pipeline does itself (listed, never called)."""
        self._add(Hook(event, _builtin_marker, None, priority, next(self._seq), name, builtin=does))

    def unregister(self, fn: HookFn) -> int:
        """Removes every registration of `fn`; returns how many there were. Built-ins stay."""
        return self._remove(lambda h: h.fn is fn and h.builtin is None)

    def unregister_files(self) -> int:
        """Removes the hooks that hook files registered (before the files are loaded again)."""
        return self._remove(lambda h: h.source is not None)

    def _remove(self, match: Callable[[Hook], bool]) -> int:
        removed = 0
        for event, chain in self._hooks.items():
            kept = [h for h in chain if not match(h)]
            removed += len(chain) - len(kept)
            self._hooks[event] = kept
        self._index()
        return removed

    def snapshot(self) -> dict[str, list[Hook]]:
        """Every registration, for `restore` (tests, embedding)."""
        return {event: list(chain) for event, chain in self._hooks.items()}

    def restore(self, saved: dict[str, list[Hook]]) -> None:
        self._hooks = {event: list(chain) for event, chain in saved.items()}
        self._index()

    def registered(self, event: str | None = None) -> list[Hook]:
        """Every hook (built-ins included) in dispatch order, per event."""
        names = [event] if event else sorted(self._hooks)
        return [h for name in names for h in self._hooks.get(name, [])]

    def has(self, event: str, collection: str | None = None) -> bool:
        scopes = self._scopes.get(event)
        return scopes is not None and (None in scopes or collection in scopes)

    def _chain(self, event: str, collection: str | None) -> list[Hook]:
        return [
            h for h in self._hooks.get(event, ()) if h.builtin is None and h.collection in (None, collection)
        ]

    # dispatch

    async def dispatch(self, name: str, event: Event) -> Event:
        """Runs the hooks of a before-event in order (awaiting async ones); HookAbort or a failure
        (as a 500) propagates. For an after-event, failures are logged and the rest still run."""
        for hook in self._prepare(name, event):
            await self._run(name, event, hook)
        return event

    def dispatch_sync(self, name: str, event: Event) -> Event:
        """`dispatch` for synchronous code: the events marked sync-only (their hooks are plain functions)."""
        for hook in self._prepare(name, event):
            started = time.perf_counter()
            try:
                if inspect.isawaitable(result := hook.fn(event)):  # a plain function returned a coroutine
                    _discard(result)
                    raise TypeError(f"{name} hooks must not return awaitables")
            except Exception as exc:
                self._failed(hook, name, exc)
            finally:
                self._timed(hook, name, started)
        return event

    def fire(self, name: str, event: Event) -> None:
        """Runs an after-event from any code: sync hooks now; from the first async hook on, the rest of
        the chain continues (in order) in a background task so the response is not held up. Never raises."""
        if EVENTS[name].can_abort:
            raise ValueError(f"fire() is for after-events; {name} can abort: use dispatch()")
        chain = self._prepare(name, event)
        for index, hook in enumerate(chain):
            started = time.perf_counter()
            try:
                result = hook.fn(event)
            except Exception as exc:
                self._failed(hook, name, exc)
                result = None
            if inspect.isawaitable(result):
                self._background(self._finish(name, event, hook, result, chain[index + 1 :], started))
                return
            self._timed(hook, name, started)

    async def _finish(self, name: str, event: Event, hook: Hook, pending: Awaitable[Any], rest: list[Hook],
                      started: float) -> None:  # fmt: skip
        try:
            await pending
        except Exception as exc:
            self._failed(hook, name, exc)
        finally:
            self._timed(hook, name, started)
        for later in rest:
            await self._run(name, event, later)

    async def _run(self, name: str, event: Event, hook: Hook) -> None:
        started = time.perf_counter()
        try:
            result = hook.fn(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._failed(hook, name, exc)
        finally:
            self._timed(hook, name, started)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (CLI, a plain script): finish right here
            asyncio.run(coro)
            return
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Waits for the after-hooks still running in the background (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _prepare(self, name: str, event: Event) -> list[Hook]:
        if name not in EVENTS:
            raise ValueError(_unknown(name))
        collection = getattr(event, "collection", None) if EVENTS[name].per_collection else None
        chain = self._chain(name, collection)
        if chain:
            event.name = name
            self._fill(event)
        return chain

    def _fill(self, event: Event) -> None:
        """The app's context for an event: the dispatcher that fired it (snackbase.hook_dispatch) knows
        the app's settings, connection and request caller; the registry itself knows no app."""
        if event.dispatcher is not None:
            event.dispatcher.fill(event)

    def _failed(self, hook: Hook, name: str, exc: Exception) -> None:
        """Before-events: HookAbort (any ApiError) passes as it is; anything else is logged and becomes a
        bare 500. After-events: everything is logged, nothing propagates."""
        extra = {"hook": hook.name, "event": name}
        if not EVENTS[name].can_abort:
            log.error("after-hook failed; the change stands", exc_info=exc, extra=extra)
            return
        if isinstance(exc, ApiError):
            raise exc
        log.error("hook failed", exc_info=exc, extra=extra)
        raise ApiError(500) from exc

    def _timed(self, hook: Hook, name: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        if elapsed > self.slow_seconds:
            log.warning(
                "hook is slow",
                extra={"hook": hook.name, "event": name, "duration_ms": round(elapsed * 1000, 1)},
            )


def _builtin_marker(event: Event) -> None:
    """Stands in for a built-in in the registry; the pipeline does the work (see Hook.builtin)."""


def _discard(result: Any) -> None:
    if inspect.iscoroutine(result):
        result.close()


def _is_async(fn: HookFn) -> bool:
    # type(fn).__call__ catches objects with an `async def __call__`
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _name(fn: HookFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _unknown(event: str) -> str:
    return f"unknown hook event {event!r}; valid events: {', '.join(EVENTS)}"


def _check_registration(event: str, fn: HookFn, collection: str | None, priority: int) -> EventSpec:
    spec = EVENTS.get(event)
    if spec is None:
        raise ValueError(_unknown(event))
    if not callable(fn):
        raise ValueError(f"a hook for {event} must be callable, got {type(fn).__name__}")
    if collection is not None and not spec.per_collection:
        raise ValueError(f"{event} is not about a collection; register it without collection=")
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) >= RESERVED_PRIORITY:
        raise ValueError(
            f"priority must be a whole number between {-RESERVED_PRIORITY + 1} and "
            f"{RESERVED_PRIORITY - 1} (beyond is reserved for the built-ins), got {priority!r}"
        )
    return spec


hooks = HookRegistry()


# --- built-ins: listed with reserved priorities, below every user hook (so they run last) ----
# Descriptive entries: the named function in the pipeline does the work, at the point shown by the
# priority; they are never called, cannot be unregistered, and exist so `snackbase info` is complete.

_ISOLATION = "builtin.account_isolation", -10_000
_TIMESTAMPS = "builtin.timestamps", -10_001
_AUDIT = "builtin.audit", -10_003
_SCOPED = "records._stored_for + rules.scope_clause: only records of the caller's account"
_IN_TX = "record_changes.record_change → audit.append, in the write's unit of work"
_BUILTINS = [
    ("record.before_create", *_ISOLATION, "records._target_account: into the caller's account"),
    ("record.before_create", *_TIMESTAMPS, "records._create: created_at = updated_at = now"),
    ("record.before_create", "builtin.created_by", -10_002, "records._create: created_by = the caller"),
    ("record.before_create", *_AUDIT, _IN_TX),
    ("record.before_update", *_ISOLATION, _SCOPED),
    ("record.before_update", *_TIMESTAMPS, "records._update: updated_at = now"),
    ("record.before_update", "builtin.updated_by", -10_002, "records._update: updated_by = the caller"),
    ("record.before_update", *_AUDIT, _IN_TX),
    ("record.before_delete", *_ISOLATION, _SCOPED),
    ("record.before_delete", *_AUDIT, _IN_TX),
    ("record.before_list", *_ISOLATION, "rules.scope_clause: WHERE account_id = the caller's account"),
    *((f"collection.before_{op}", *_AUDIT, "collections._audit, in the change's transaction")
      for op in ("create", "update", "delete")),
]  # fmt: skip
for _event, _builtin_name, _priority, _does in _BUILTINS:
    hooks.builtin(_event, _builtin_name, _priority, _does)
