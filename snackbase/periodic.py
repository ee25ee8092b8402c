"""Periodic work that exactly one node runs: sweeps, pruning, scheduled jobs.

On SQLite there is one machine and the jobs keep their own arrangements (a backup slot's archive is
named by its slot, a sweep is idempotent): `claim` always says yes and nothing changes.

On PostgreSQL many nodes run the same loops, and each job must run on exactly one of them. A node
claims a job with a session-level advisory lock (`pg_try_advisory_lock`, one key per job and schema)
on its event loop's connection, and keeps it for as long as that connection lives: the node that got
it runs the job at every tick, the others find it taken and skip. When the holder stops or dies (a
SIGKILL, a lost machine), PostgreSQL ends its session and frees the lock, and the next node to tick
takes the job over — at most one interval late, never twice at once.

A job loop, the same on both backends:

    task = asyncio.create_task(periodic.every(db.conn, "files.sweep", 600, lambda: files.sweep(conn)))
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from snackbase.db import fetch_value

log = logging.getLogger("snackbase.periodic")

# The jobs each connection holds (a session-level lock is re-entrant and counted: take it once).
_held: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def claim(conn: Any, job: str) -> bool:
    """Whether this node runs `job`: always on SQLite; on PostgreSQL, when it holds (or now takes)
    the job's advisory lock."""
    if getattr(conn, "dialect", None) != "postgresql":
        return True
    held = _held.setdefault(conn, set())
    if job in held:
        return True
    if fetch_value(conn, _TRY_LOCK, (job,)):
        held.add(job)
        log.info("this node runs the periodic job %s", job)
        return True
    return False


_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext(current_schema()), hashtext(?))"


def holder_count(conn: Any, job: str) -> int:
    """Sessions holding `job`'s lock (0 or 1): for `snackbase info` and the tests."""
    return int(fetch_value(conn, _HOLDERS, (job,)) or 0)


_HOLDERS = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2
      AND classid = hashtext(current_schema())::oid AND objid = hashtext(?)::oid
"""


async def run(conn: Any, job: str, fn: Callable[[], Any]) -> bool:
    """Runs `fn` (a function or a coroutine function) if this node runs `job`; True when it ran.
    A failing job is logged and tried again at the next tick."""
    try:
        if not claim(conn, job):
            return False
    except Exception:
        log.exception("periodic job %s: could not claim it; trying at the next tick", job)
        return False
    try:
        result = fn()
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("periodic job %s failed; it runs again at the next tick", job)
    return True


async def every(
    conn: Any, job: str, interval_s: float, fn: Callable[[], Any], at_start: bool = False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:  # fmt: skip
    """Runs `fn` every `interval_s` seconds on the one node that holds `job`, until cancelled; with
    `at_start`, first right away (so the first node up holds the job from its start)."""
    if at_start:
        await run(conn, job, fn)
    while True:
        await sleep(interval_s)
        await run(conn, job, fn)
