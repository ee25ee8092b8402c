"""Hooks meet the app: loading `<data-dir>/hooks/*.py` (or SNACKBASE_HOOKS_DIR), the app.* events, and
serving a request with its request.before / request.after hooks.

Loading is all or nothing: a file that does not import — a SyntaxError, an exception at import, a
registration the registry refuses — stops the start with the file, the line and the error on one line,
and the hooks of the files loaded before it are removed again, so a server never runs half its hooks.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from snackbase.config import ConfigError
from snackbase.errors import ApiError, error_response
from snackbase.hooks import AppEvent, HookRegistry, RequestEvent, hooks, request_id

if TYPE_CHECKING:
    from snackbase.hook_dispatch import HookDispatcher

MODULE_PREFIX = "snackbase_hook_file_"
_NOT_IDENT = re.compile(r"\W")


class HookLoadError(ConfigError):
    """A hook file that cannot be loaded; the CLI prints it as one `snackbase: error: …` line."""


def start_hooks(app: Any, directory: Path, registry: HookRegistry = hooks) -> list[Path]:
    """Loads the hook files, binds the app and runs app.bootstrap; returns the files loaded."""
    loaded = load_hook_files(directory, registry)
    try:
        registry.dispatch_sync("app.bootstrap", app.state.hooks.bind(AppEvent(app=app)))
    except ApiError as exc:
        registry.unregister_files()
        raise HookLoadError(f"an app.bootstrap hook refused the start: {exc.message}") from None
    return loaded


async def serve_hooks(app: Any) -> None:
    await app.state.hooks.dispatch("app.serve", AppEvent(app=app))


async def terminate_hooks(app: Any) -> None:
    """app.terminate, then waits for after-hooks still running: both may read the database, still open."""
    await app.state.hooks.dispatch("app.terminate", AppEvent(app=app))
    await app.state.hooks.registry.drain()


def load_hook_files(directory: Path, registry: HookRegistry = hooks) -> list[Path]:
    """Imports every *.py of `directory` in name order (replacing hooks of an earlier load)."""
    registry.unregister_files()
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.glob("*.py") if p.is_file())
    for index, path in enumerate(files):
        try:
            _load_one(path, index, registry)
        except (Exception, SystemExit) as exc:  # sys.exit() in a hook file is a broken file too
            registry.unregister_files()
            raise HookLoadError(describe_failure(path, exc)) from None
    return files


def _load_one(path: Path, index: int, registry: HookRegistry) -> None:
    name = f"{MODULE_PREFIX}{index:03d}_{_NOT_IDENT.sub('_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # unique per file: two files never share (or replace) a module
    registry.loading = path
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        registry.loading = None


def describe_failure(path: Path, exc: BaseException) -> str:
    """`hook file /x/hooks/a.py, line 3: SyntaxError: invalid syntax` — the line in THAT file."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        return f"hook file {path}, line {exc.lineno}: SyntaxError: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    where = f", line {frames[-1].lineno}" if frames else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"hook file {path}{where}: {type(exc).__name__}{': ' + text if text else ''}"


async def serve_with_request_hooks(
    app: ASGIApp, hooks: HookDispatcher, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serves a request with request.before (which may abort, answered in the envelope) and
    request.after (once the response is sent) around it; stack.RequestGate calls it only when such hooks
    are registered, after the caller is known, so events see the caller."""
    started, status = time.perf_counter(), {"code": 500}

    async def send_status(message: Message) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]
        await send(message)

    try:
        if await _allowed(hooks, scope, receive, send_status):
            await app(scope, receive, send_status)
    finally:
        if hooks.has("request.after"):
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            hooks.fire("request.after", _request_event(scope, status["code"], duration_ms))


async def _allowed(hooks: HookDispatcher, scope: Scope, receive: Receive, send: Send) -> bool:
    """request.before: False when a hook aborted (its error has been answered)."""
    if not hooks.has("request.before"):
        return True
    try:
        await hooks.dispatch("request.before", _request_event(scope))
    except ApiError as exc:
        await error_response(exc, request_id() or "")(scope, receive, send)
        return False
    return True


def _request_event(scope: Scope, status: int | None = None, duration_ms: float | None = None) -> RequestEvent:
    request = Request(scope)
    return RequestEvent(request=request, method=request.method, path=request.url.path, status=status,
                        duration_ms=duration_ms)  # fmt: skip
