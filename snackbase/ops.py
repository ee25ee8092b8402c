"""The operations side of a running server, wired into the app in one place: the request observer
(metrics and the request log), the rate limiter, backups on demand and on a schedule.

`Ops.observe` is called by RequestMiddleware once per finished request; with metrics off and the
request log off it is not installed at all, so an operator who wants neither pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import apsw
import msgspec
from starlette.types import Scope

from snackbase import audit, backup, backup_store, cron, db, metrics, periodic, unit_of_work
from snackbase.config import ConfigError, Settings
from snackbase.db import Database
from snackbase.ratelimit import RateGuard, RateLimiter, limits_from
from snackbase.requestlog import RequestLog
from snackbase.s3 import S3Error
from snackbase.times import now_iso

log = logging.getLogger("snackbase.ops")
T = TypeVar("T")


class BackupState(msgspec.Struct):
    running: bool = False
    last_success_at: float = 0.0
    last_duration_s: float = 0.0
    last_size: int = 0
    last_error: str | None = None
    next_run: datetime | None = None
    outcomes: dict[str, int] = msgspec.field(default_factory=dict)


async def in_own_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs `fn` on a new thread (not the shared pool: the backup lowers its thread's priority)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result, error = fn(*args, **kwargs), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=run, name="sb-backup", daemon=True).start()
    return await future


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Ops:
    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.db = database
        self.auth_login_path = settings.api_prefix + "/auth/login"
        self.ui_prefix = "/_/"
        self.request_log = (
            RequestLog(settings.request_log_path, settings.request_log_days)
            if settings.request_log_days > 0
            else None
        )
        self.limiter = RateLimiter(limits_from(settings))
        self.backups = BackupState()
        self.archives = backup_store.store_from(settings)
        try:
            self.schedule = cron.parse(settings.backup_cron) if settings.backup_cron.strip() else None
        except cron.CronError as exc:
            raise ConfigError(f"SNACKBASE_BACKUP_CRON: {exc}") from None
        self.registry = metrics.Registry()
        self._define_metrics()
        self._tasks: list[asyncio.Task[Any]] = []

    # --- metrics ---------------------------------------------------------------------------------

    def _define_metrics(self) -> None:
        r, C, G, H = self.registry, metrics.Counter, metrics.Gauge, metrics.Histogram
        self.requests = r.add(
            C(
                "snackbase_http_requests",
                "HTTP requests by route template and status",
                ("method", "route", "status"),
            )
        )
        self.latency = r.add(
            H("snackbase_http_request_duration_seconds", "time to answer a request", ("method", "route"))
        )
        self.db_errors = r.add(
            C(
                "snackbase_db_errors",
                "requests failed by SQLite: busy (lock wait over "
                "the busy timeout) or interrupted (statement time budget)",
                ("kind",),
            )
        )
        self.logins_failed = r.add(C("snackbase_login_failures", "failed logins (401/403 from /auth/login)"))
        self.logins_throttled = r.add(C("snackbase_login_throttled", "logins refused with 429 by throttling"))
        self.rate_limited = r.add(C("snackbase_rate_limited", "requests refused by rate limits", ("class",)))
        if not self.settings.database_url:  # SQLite's own mechanics; PostgreSQL has none of them
            self._define_sqlite_metrics()
        r.add(
            G(
                "snackbase_backups",
                "backups attempted by this process, by outcome",
                lambda: {(k,): float(v) for k, v in self.backups.outcomes.items()},
                ("outcome",),
            )
        )
        r.add(
            G(
                "snackbase_backup_last_success_timestamp_seconds",
                "Unix time of the last good backup",
                lambda: {(): self.backups.last_success_at},
            )
        )
        r.add(
            G(
                "snackbase_backup_last_duration_seconds",
                "duration of the last good backup",
                lambda: {(): self.backups.last_duration_s},
            )
        )
        r.add(
            G(
                "snackbase_backup_last_size_bytes",
                "size of the last good backup archive",
                lambda: {(): float(self.backups.last_size)},
            )
        )
        r.add(
            G(
                "snackbase_request_log_dropped",
                "request log rows dropped because the writer fell behind",
                lambda: {(): float(self.request_log.dropped if self.request_log else 0)},
            )
        )

    def _define_sqlite_metrics(self) -> None:
        r, G = self.registry, metrics.Gauge
        r.add(G("snackbase_wal_bytes", "size of the database's write-ahead log file", self._wal_size))
        r.add(
            G(
                "snackbase_checkpoints",
                "WAL checkpoints run by the server, by where they ran",
                lambda: {(k,): float(v) for k, v in db.checkpoint_counts.items()},
                ("where",),
            )
        )
        r.add(
            G(
                "snackbase_group_commits",
                "COMMITs of record writes grouped in one transaction, and the writes they committed",
                lambda: {(k,): float(v) for k, v in unit_of_work.group_counts.items()},
                ("count",),
            )
        )
        r.add(
            G(
                "snackbase_reads_off_loop",
                "reads that outgrew the event loop's share and ran again on a reader thread",
                lambda: {(): float(db.reads_moved["reader"])},
            )
        )

    def _wal_size(self) -> dict[tuple[str, ...], float]:
        try:
            return {(): float(os.stat(f"{self.settings.db_path}-wal").st_size)}
        except OSError:
            return {(): 0.0}

    def observe(self, scope: Scope, status: int, duration_s: float, error: BaseException | None) -> None:
        """Called once per finished HTTP request by RequestMiddleware."""
        route = scope.get("route")
        template: str | None = getattr(route, "path", None)
        method: str = scope["method"]
        if self.settings.metrics_enabled:
            label = template or "(unmatched)"
            self.requests.inc((method, label, str(status)))  # type: ignore[union-attr]
            self.latency.observe((method, label), duration_s)  # type: ignore[union-attr]
            if template == self.auth_login_path:
                if status in (401, 403):
                    self.logins_failed.inc()  # type: ignore[union-attr]
                elif status == 429:
                    self.logins_throttled.inc()  # type: ignore[union-attr]
            if isinstance(error, apsw.BusyError):
                self.db_errors.inc(("busy",))  # type: ignore[union-attr]
            elif isinstance(error, apsw.InterruptError):
                self.db_errors.inc(("interrupted",))  # type: ignore[union-attr]
        if self.request_log is not None and not scope["path"].startswith(self.ui_prefix):
            auth = scope["state"].get("auth")
            client = scope.get("client")
            self.request_log.add(
                (
                    now_iso(),
                    method,
                    template,
                    status,
                    round(duration_s * 1000, 3),
                    getattr(auth, "user_id", None),
                    getattr(auth, "account_id", None),
                    client[0] if client else None,
                    scope["state"].get("request_id"),
                )
            )

    def count_rate_limited(self, klass: str) -> None:
        self.rate_limited.inc((klass,))  # type: ignore[union-attr]

    def rate_guard(self, api_prefix: str) -> RateGuard | None:
        """SNACKBASE_RATE_LIMIT_* for the request stack (None when no limit is set). The buckets live in
        this process's memory: N workers or nodes allow a caller up to N times the budget."""
        if not self.limiter.limits:
            return None
        return RateGuard(api_prefix, self.limiter, self.count_rate_limited)

    @property
    def observing(self) -> bool:
        return self.settings.metrics_enabled or self.request_log is not None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.request_log is not None:
            self._tasks.append(asyncio.create_task(self.request_log.run()))
        if self.schedule is not None:
            self._tasks.append(asyncio.create_task(self.run_schedule()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.request_log is not None:
            await self.request_log.close()

    # --- backups ---------------------------------------------------------------------------------

    async def create_backup(
        self,
        trigger: str,
        actor: audit.Actor,
        meta: audit.RequestMeta | None = None,
        name: str | None = None,
    ) -> backup.BackupInfo:
        """Makes an archive on a thread of its own (the event loop keeps serving), applies the
        retention, and audits it as `backup.create` in the system account's chain."""
        s = self.settings
        self.backups.running = True
        started = time.monotonic()
        try:
            info = await in_own_thread(self._make_backup, trigger, name)
            if not info.made:
                return info
            pruned = await self._prune(s.backup_keep)
        except Exception as exc:
            self.backups.outcomes["failed"] = self.backups.outcomes.get("failed", 0) + 1
            self.backups.last_error = str(exc)
            raise
        finally:
            self.backups.running = False
        self.backups.outcomes["ok"] = self.backups.outcomes.get("ok", 0) + 1
        self.backups.last_success_at = time.time()
        self.backups.last_duration_s = time.monotonic() - started
        self.backups.last_size = info.size
        self.backups.last_error = None
        extra = {**backup.audit_extra(info), "trigger": trigger, "pruned": pruned}
        backup.audit_event(self.db.conn, "backup.create", actor, extra, meta)
        return info

    async def _prune(self, keep: int) -> list[str]:
        """The retention; once the archive is stored a failing prune (the bucket refusing a delete)
        must not leave the archive unaudited, so it is logged and retried after the next backup."""
        try:
            return await asyncio.to_thread(self.archives.prune, keep)
        except (S3Error, OSError) as exc:
            log.warning("backup retention failed: %s", exc)
            return []

    def _make_backup(self, trigger: str, name: str | None) -> backup.BackupInfo:
        """Blocking: builds the archive in the backup dir and hands it to the archive store (which
        uploads it when that is S3). A slot already in the store was made by another process."""
        s = self.settings
        if name is not None and self.archives.kind != "local" and self.archives.exists(name):
            found = self.archives.info(name)
            return backup.BackupInfo(found.name, found.path, found.size, found.manifest, made=False)
        if s.database_url:  # PostgreSQL: a logical dump of SnackBase's tables (snackbase/backup_pg.py)
            from snackbase import backup_pg  # imported here: an idle SQLite server never loads its code

            info = backup_pg.create_backup(
                s.database_url, s.hooks_path, s.files_path, s.backups_path, trigger=trigger, name=name,
                include_files=s.files_storage == "local",
            )  # fmt: skip
        else:
            info = backup.create_backup(
                s.db_path, s.hooks_path, s.files_path, s.backups_path, trigger=trigger, name=name
            )
        return self.archives.keep(info) if info.made else info

    async def run_schedule(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Runs a backup at every slot of SNACKBASE_BACKUP_CRON. Archives are named by their slot, so
        with several server processes the first one makes it and the others find it made; on
        PostgreSQL one node holds the schedule (an advisory lock) and the others skip it."""
        assert self.schedule is not None
        while True:
            now = datetime.now(UTC)
            slot = self.schedule.next_after(now)
            self.backups.next_run = slot
            await sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds()))
            if not periodic.claim(self.db.conn, "backups.schedule"):
                continue  # on PostgreSQL another node makes the scheduled backups (snackbase/periodic.py)
            try:
                await self.create_backup("scheduled", audit.SYSTEM_ACTOR, name=backup.archive_name(slot))
            except Exception:
                log.exception("scheduled backup failed")
