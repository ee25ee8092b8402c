"""The write baton of `serve --workers N`: one byte in a FIFO that the processes hand each other, so a
process waits for the other's writes on its event loop, woken when they end, instead of polling
SQLite's write lock.

SQLite's lock cannot be waited for without blocking: a process waiting for another's write either sleeps
in the busy handler (its event loop stopped) or tries BEGIN IMMEDIATE again and again between turns of
its loop, as `unit_of_work.write_turn` did before the baton: with two workers each create then cost 40%
more CPU than with one. Here a process writes only while it holds the baton. The byte is taken with a
non-blocking read of the FIFO; a process without it waits for the FIFO to become readable (the loop's
reader callback: no thread, no timer) and keeps serving meanwhile. When it comes, every write of that
process waiting for it goes, one after another, each request's answer after all of their writes
(`write_turn` yields once after its write while others hold a grant): the byte goes back as soon as the
writes are done, and the answers are composed while the other process writes.

A waiting process puts one byte in a second FIFO, the wishes, and takes it out when its wait ends. A
process that finds a wish there does not take the baton back for its next write but waits its turn: the
two alternate in runs instead of one process taking the baton again and again while the other, just
woken, finds the FIFO empty. Measured (docs/performance.md, "Session 13"): two workers creating, the
baton without the wishes 1,656 req/s, with them 1,804, polling the lock 1,603; answers after the writes
2,371 against 1,744 without (one worker: 1,643).

The baton only orders writes: SQLite's lock still guards them. A writer holding the baton still takes
BEGIN IMMEDIATE, which fails while a write outside the baton runs (another route's unit of work, a CLI
command, a second server); `write_turn` then tries again as before. A baton lost with a process killed
mid-write is replaced: a process that has waited `LOST_AFTER_S` writes as if it held one and gives one
back afterwards, unless one already waits in the FIFO (so two batons merge again when both are free).
A wish left by a killed process only makes the others take one turn of their loop longer per run.

The serving process creates both FIFOs in the data directory before it starts its workers, names them
in `SNACKBASE_WRITE_BATON` and removes them when they have stopped (`serving`); a single process has no
baton and pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import stat
import termios
from collections.abc import Iterator
from pathlib import Path

from snackbase.config import WRITE_BATON_ENV

log = logging.getLogger("snackbase")
LOST_AFTER_S = 0.25  # far longer than a run of writes holds it (~0.2 ms per create)
_BYTE = b"B"


@contextlib.contextmanager
def serving(data_dir: Path) -> Iterator[Path | None]:
    """The FIFOs of a new baton (holding the baton) and of the wishes for it (empty), named in the
    environment the workers are started with, for as long as they serve. This process keeps both open:
    a pipe's bytes are dropped when nobody has it open. Where the data directory cannot hold a FIFO,
    the workers run without a baton (SQLite's lock alone orders their writes) and None is yielded."""
    _remove_stale(data_dir)
    path = data_dir / f".write-baton-{os.getpid()}"
    fifos, fds = (path, _wishes(path)), []
    try:
        for fifo in fifos:
            fds.append(_make_fifo(fifo))
        os.write(fds[0], _BYTE)
    except OSError as exc:
        _close(fds, fifos)
        log.warning("no write baton for the workers (%s): they poll the write lock instead", exc.strerror)
        yield None
        return
    os.environ[WRITE_BATON_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(WRITE_BATON_ENV, None)
        _close(fds, fifos)


def _close(fds: list[int], fifos: tuple[Path, ...]) -> None:
    for fd in fds:
        os.close(fd)
    for fifo in fifos:
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()


def _remove_stale(data_dir: Path) -> None:
    """The FIFOs of serving processes that were killed before they could remove them."""
    for fifo in data_dir.glob(".write-baton-*"):
        pid = fifo.name.removeprefix(".write-baton-").removesuffix("-wish")
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _make_fifo(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a process of this pid that did not stop cleanly
    os.mkfifo(path, 0o600)
    return _open(path)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)  # read-write: never blocks (Linux)


def _wishes(path: Path) -> Path:
    return path.with_name(path.name + "-wish")


class Baton:
    """This process's side of the baton. `claims` counts the write turns granted it and not yet ended
    (a write that asks while the baton is here joins at once); the baton goes back when they are over."""

    def __init__(self, fd: int, wish_fd: int) -> None:
        self.fd = fd
        self.wish_fd = wish_fd  # one byte per process waiting for the baton
        self.held = False
        self.claims = 0
        self.waiting: list[asyncio.Future[None]] = []
        self._reading = False  # waiting for the FIFO, with a wish left and a lost-baton timer running
        self._lost: asyncio.TimerHandle | None = None

    async def claim(self) -> None:
        """Returns holding the baton, with one claim counted: `unclaim()` must follow."""
        if self.held or (_pending(self.wish_fd) == 0 and self._take()):  # the other's turn if it waits
            self.claims += 1
            return
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()
        self.waiting.append(granted)
        if not self._reading:
            loop.add_reader(self.fd, self._on_readable)
            self._reading = True
            os.write(self.wish_fd, _BYTE)
            self._lost = loop.call_later(LOST_AFTER_S, self._replace_lost)
        try:
            await granted  # the grant counted our claim
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.unclaim()  # granted, then cancelled before resuming
            else:
                self.waiting.remove(granted)
                if not self.waiting:
                    self._stop_reading()
            raise

    def unclaim(self) -> None:
        self.claims -= 1
        if self.claims == 0:
            self._release()

    def _take(self) -> bool:
        try:
            taken = os.read(self.fd, 1)
        except BlockingIOError:
            return False
        self.held = bool(taken)
        return self.held

    def _on_readable(self) -> None:
        if not self.waiting:  # every waiter was cancelled: stop watching (the FIFO stays readable)
            self._stop_reading()
        elif self._take():
            self._grant()

    def _stop_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._reading = False
            with contextlib.suppress(BlockingIOError):
                os.read(self.wish_fd, 1)  # our wish, or another's of equal weight: one byte per waiter
            if self._lost is not None:
                self._lost.cancel()
                self._lost = None

    def _replace_lost(self) -> None:
        """Waited past LOST_AFTER_S since this process began to wait: write as if holding the baton
        (SQLite's lock still decides)."""
        if self.waiting and not self.held:
            self.held = True
            self._grant()

    def _grant(self) -> None:
        self._stop_reading()
        waiting, self.waiting = self.waiting, []
        for granted in waiting:
            if not granted.done():
                self.claims += 1
                granted.set_result(None)
        if self.claims == 0:  # every one of them was cancelled meanwhile
            self._release()

    def _release(self) -> None:
        if self.claims or not self.held:
            return
        self.held = False
        if _pending(self.fd) == 0:  # a replaced baton merges with the one already waiting
            os.write(self.fd, _BYTE)


def _pending(fd: int) -> int:
    """Bytes waiting in the FIFO."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")


@functools.cache
def of_process() -> Baton | None:
    """This process's baton, when the serving process made one (several workers); else None."""
    path = os.environ.get(WRITE_BATON_ENV)
    if not path:
        return None
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
        return Baton(_open(Path(path)), _open(_wishes(Path(path))))
    except OSError:
        return None  # gone (the serving process stopped): SQLite's lock alone orders the writes
