"""The write baton of `serve --workers N`: two processes' sides of one baton (here two `Baton`s on the
same FIFOs, as each worker opens them) hand it to each other; a waiting side keeps its loop serving; a
lost baton is replaced and two merge again; `write_turn` writes only with it."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from snackbase import unit_of_work as unit_of_work_module
from snackbase import write_baton
from snackbase.config import WRITE_BATON_ENV
from snackbase.db import connect, fetch_value
from snackbase.unit_of_work import unit_of_work, write_turn
from snackbase.write_baton import Baton, _pending


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    with write_baton.serving(tmp_path) as path:
        assert path is not None
        yield path


def side(path: Path) -> Baton:
    """One worker's side of the baton, opened as `of_process` opens it."""
    os.environ[WRITE_BATON_ENV] = str(path)
    write_baton.of_process.cache_clear()
    try:
        baton = write_baton.of_process()
    finally:
        write_baton.of_process.cache_clear()
    assert baton is not None
    return baton


def test_serving_makes_one_baton_for_the_workers_and_removes_it(tmp_path: Path) -> None:
    with write_baton.serving(tmp_path) as path:
        assert path is not None
        assert os.environ[WRITE_BATON_ENV] == str(path)
        assert stat.S_ISFIFO(path.stat().st_mode)
        assert path.stat().st_mode & 0o777 == 0o600
        baton = side(path)
        assert _pending(baton.fd) == 1 and _pending(baton.wish_fd) == 0
    assert WRITE_BATON_ENV not in os.environ
    assert list(tmp_path.iterdir()) == []


def test_a_data_dir_without_fifos_serves_without_a_baton(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[str] = []

    def mkfifo(path: str | Path, mode: int = 0o666) -> None:
        if made:  # the second FIFO fails, as on a file system without them
            raise OSError(1, "Operation not permitted")
        made.append(str(path))
        real_mkfifo(path, mode)

    real_mkfifo = os.mkfifo
    monkeypatch.setattr(os, "mkfifo", mkfifo)
    with write_baton.serving(tmp_path) as path:
        assert path is None and WRITE_BATON_ENV not in os.environ
    assert list(tmp_path.iterdir()) == []  # the first FIFO was removed again
    assert "no write baton" in caplog.text


def test_a_killed_serving_process_s_fifos_are_removed_by_the_next(tmp_path: Path) -> None:
    ended = subprocess.Popen(["true"])  # a pid whose process has ended, as a killed server's has
    ended.wait()
    alive = os.getppid()  # a running process: a server still serving from this data dir
    stale = [tmp_path / f".write-baton-{pid}{end}" for pid in (ended.pid, alive) for end in ("", "-wish")]
    for fifo in stale:
        os.mkfifo(fifo)
    with write_baton.serving(tmp_path) as path:
        assert path is not None
        names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([path.name, path.name + "-wish", stale[2].name, stale[3].name])


def test_no_baton_without_the_serving_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_baton.of_process.cache_clear()
    monkeypatch.delenv(WRITE_BATON_ENV, raising=False)
    assert write_baton.of_process() is None
    monkeypatch.setenv(WRITE_BATON_ENV, str(tmp_path / "gone"))  # the serving process stopped
    write_baton.of_process.cache_clear()
    assert write_baton.of_process() is None
    write_baton.of_process.cache_clear()


def test_the_other_side_waits_serving_until_the_holder_is_done(fifo: Path) -> None:
    first, second = side(fifo), side(fifo)
    order: list[str] = []

    async def write(baton: Baton, name: str, hold_s: float) -> None:
        await baton.claim()
        order.append(f"{name} writes")
        await asyncio.sleep(hold_s)  # a write's turn, here held across an await on purpose
        order.append(f"{name} done")
        baton.unclaim()

    async def other_requests() -> None:
        for _ in range(3):
            order.append("served")
            await asyncio.sleep(0.005)

    async def run() -> None:
        holder = asyncio.create_task(write(first, "first", 0.03))
        await asyncio.sleep(0)  # the first side holds it now
        await asyncio.gather(holder, write(second, "second", 0), other_requests())

    asyncio.run(run())
    assert order.index("first done") < order.index("second writes")
    assert order[:2] == ["first writes", "served"]  # the waiting side served meanwhile
    assert _pending(first.fd) == 1  # given back to the FIFO once both were done
    assert _pending(first.wish_fd) == 0


def test_a_side_that_is_waited_for_lets_the_other_write_first(fifo: Path) -> None:
    first, second = side(fifo), side(fifo)
    order: list[str] = []

    async def write(baton: Baton, name: str) -> None:
        await baton.claim()
        order.append(name)
        baton.unclaim()

    async def run() -> None:
        await first.claim()
        waiting = asyncio.create_task(write(second, "second"))
        await asyncio.sleep(0)  # the second side now waits, and says so
        assert _pending(first.wish_fd) == 1
        first.unclaim()
        await write(first, "first again")  # not taken back while the other side waits
        await waiting

    asyncio.run(run())
    assert order == ["second", "first again"]


def test_a_lost_baton_is_replaced_and_two_merge_again(fifo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_baton, "LOST_AFTER_S", 0.02)
    killed, survivor = side(fifo), side(fifo)
    assert os.read(killed.fd, 1) == b"B"  # taken by a worker that is then killed mid-write

    async def write() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await survivor.claim()
        waited = loop.time() - started
        survivor.unclaim()
        return waited

    assert asyncio.run(write()) >= 0.02
    assert _pending(survivor.fd) == 1  # the replacement is the baton now
    os.write(killed.fd, b"B")  # a second one (a holder slower than LOST_AFTER_S gives its own back)
    assert asyncio.run(write()) < 0.02
    assert _pending(survivor.fd) == 1  # the two merged: one byte
    assert _pending(survivor.wish_fd) == 0


def test_a_cancelled_wait_leaves_no_wish_and_no_watch(fifo: Path) -> None:
    holder, other = side(fifo), side(fifo)

    async def run() -> None:
        await holder.claim()
        waiting = asyncio.create_task(other.claim())
        await asyncio.sleep(0)
        assert _pending(holder.wish_fd) == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert _pending(holder.wish_fd) == 0 and not other.waiting and not other._reading
        holder.unclaim()
        await other.claim()  # nothing stuck: the baton comes at once
        other.unclaim()

    asyncio.run(run())
    assert _pending(holder.fd) == 1 and other.claims == 0 and holder.claims == 0


def test_write_turn_writes_only_with_the_baton(fifo: Path, tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    ours, theirs = connect(path), connect(path)
    ours.execute("CREATE TABLE t (v INTEGER)")
    baton = side(fifo)  # the other worker's side, which holds the baton for a while
    os.environ[WRITE_BATON_ENV] = str(fifo)
    write_baton.of_process.cache_clear()
    unit_of_work_module._process_baton.cache_clear()
    order: list[str] = []

    async def insert(value: int) -> None:
        async with write_turn(ours):
            with unit_of_work(ours):
                ours.execute("INSERT INTO t VALUES (?)", (value,))
                order.append(f"wrote {value}")
        order.append(f"answered {value}")

    async def other_worker() -> None:
        await baton.claim()
        order.append("other holds")
        await asyncio.sleep(0.02)
        order.append("other done")
        baton.unclaim()

    async def run() -> None:
        other = asyncio.create_task(other_worker())
        await asyncio.sleep(0)
        await asyncio.gather(other, insert(1), insert(2))

    try:
        asyncio.run(run())
        # Both writes granted at once: both write (one group commit) before either answers, and the
        # baton goes back after their COMMIT.
        assert order == ["other holds", "other done", "wrote 1", "wrote 2", "answered 1", "answered 2"]
        assert fetch_value(theirs, "SELECT count(*) FROM t") == 2
        assert _pending(baton.fd) == 1  # given back after the writes, also for the next ones
        mine = write_baton.of_process()
        assert mine is not None and mine.claims == 0 and not mine.held
    finally:
        write_baton.of_process.cache_clear()
        unit_of_work_module._process_baton.cache_clear()
        ours.close()
        theirs.close()
