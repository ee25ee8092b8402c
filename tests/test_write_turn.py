"""`write_turn`: the records routes take SQLite's write lock on the event loop, so a process waiting for
another process's write keeps serving its other requests; the unit of work opened inside adopts the
transaction, and a write refused before its unit began leaves no transaction behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from snackbase.db import busy_waiter, connect, fetch_value
from snackbase.errors import ApiError
from snackbase.unit_of_work import current, unit_of_work, write_turn


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[apsw.Connection, apsw.Connection]]:
    """Two connections to one file, as two `serve --workers` processes have."""
    path = tmp_path / "db.sqlite"
    ours, other = connect(path), connect(path)
    ours.execute("CREATE TABLE t (v INTEGER)")
    yield ours, other
    ours.close()
    other.close()


async def insert(conn: apsw.Connection, value: int) -> None:
    """A records route's shape: the lock on the event loop, then the synchronous unit of work."""
    async with write_turn(conn):
        with unit_of_work(conn):
            conn.execute("INSERT INTO t VALUES (?)", (value,))


def test_the_unit_inside_adopts_the_transaction_and_commits(pair: tuple) -> None:
    ours, other = pair

    async def write() -> None:
        async with write_turn(ours):
            assert ours.in_transaction  # the lock is held before the unit opens
            with unit_of_work(ours) as work:
                ours.execute("INSERT INTO t VALUES (1)")
                assert not work.pending
            assert ours.in_transaction  # in its group commit: the COMMIT runs on the loop's next turn
        assert not ours.in_transaction  # write_turn's exit waited for that COMMIT

    asyncio.run(write())
    assert fetch_value(other, "SELECT count(*) FROM t") == 1
    assert current(ours) is None


def test_a_write_refused_before_its_unit_leaves_no_transaction(pair: tuple) -> None:
    ours, _ = pair

    async def refused() -> None:
        async with write_turn(ours):
            raise ApiError(400, "validation_failed", "refused before the unit of work")

    async def nothing_written() -> None:
        async with write_turn(ours):
            pass

    with pytest.raises(ApiError):
        asyncio.run(refused())
    assert not ours.in_transaction and current(ours) is None
    asyncio.run(nothing_written())
    assert not ours.in_transaction and current(ours) is None
    with unit_of_work(ours):  # the connection writes as before
        ours.execute("INSERT INTO t VALUES (2)")
    assert fetch_value(ours, "SELECT count(*) FROM t") == 1


def test_waiting_for_another_process_keeps_the_loop_serving(pair: tuple) -> None:
    ours, other = pair
    other.execute("BEGIN IMMEDIATE")  # the other process is writing
    served: list[int] = []

    async def other_requests() -> None:
        for n in range(5):
            served.append(n)
            await asyncio.sleep(0.005)
        other.execute("ROLLBACK")  # the other process's write ends

    async def write() -> int:
        async with write_turn(ours):
            with unit_of_work(ours):
                ours.execute("INSERT INTO t VALUES (3)")
        return len(served)

    async def both() -> int:
        _, seen = await asyncio.gather(other_requests(), write())
        return seen

    assert asyncio.run(both()) == 5  # the write went through only after every other request was served
    assert fetch_value(other, "SELECT count(*) FROM t") == 1
    assert busy_waiter(ours).patient  # synchronous writes wait for the lock again


def test_a_lock_held_past_the_limit_is_503_busy(pair: tuple) -> None:
    ours, other = pair
    busy_waiter(ours).limit_s = 0.05
    other.execute("BEGIN IMMEDIATE")

    async def write() -> None:
        async with write_turn(ours):
            raise AssertionError("the lock was never free")

    with pytest.raises(ApiError) as refused:
        asyncio.run(write())
    other.execute("ROLLBACK")
    assert refused.value.status == 503 and refused.value.code == "busy"
    assert not ours.in_transaction and busy_waiter(ours).patient


def test_a_unit_switching_foreign_keys_off_takes_the_lock_itself(pair: tuple) -> None:
    """PRAGMA foreign_keys is a no-op inside a transaction, so such a unit gives the begun one back."""
    ours, _ = pair

    async def rebuild() -> int:
        async with write_turn(ours):
            with unit_of_work(ours, foreign_keys_off=True):
                return int(fetch_value(ours, "PRAGMA foreign_keys"))

    assert asyncio.run(rebuild()) == 0
    assert fetch_value(ours, "PRAGMA foreign_keys") == 1 and not ours.in_transaction


def test_inside_an_open_unit_or_on_another_engine_it_does_nothing(tmp_path: Path) -> None:
    ours = connect(tmp_path / "db.sqlite")
    plain = apsw.Connection(str(tmp_path / "db.sqlite"))  # no busy handler of ours, as PostgreSQL's

    async def nested() -> None:
        with unit_of_work(ours) as outer:
            async with write_turn(ours):
                assert current(ours) is outer and not outer.pending

    async def other_engine() -> None:
        async with write_turn(plain):
            assert not plain.in_transaction

    asyncio.run(nested())
    asyncio.run(other_engine())
    assert not ours.in_transaction


def test_one_request_polls_and_the_others_write_after_it(
    pair: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten requests wait for another process's write; one polls the lock, the others join its group
    commit once it has it. If each polled for itself, ten times as many BEGIN IMMEDIATEs would fail."""
    from snackbase import unit_of_work as uow

    ours, other = pair
    tries: list[bool] = []
    real_try = uow._try_begin

    def counted(conn: apsw.Connection, waiter: Any) -> bool:
        tries.append(real_try(conn, waiter))
        return tries[-1]

    monkeypatch.setattr(uow, "_try_begin", counted)
    other.execute("BEGIN IMMEDIATE")

    async def all_of_them() -> None:
        writes = [asyncio.create_task(insert(ours, n)) for n in range(10)]
        await asyncio.sleep(0.03)
        other.execute("ROLLBACK")
        await asyncio.gather(*writes)

    asyncio.run(all_of_them())
    assert fetch_value(ours, "SELECT count(*) FROM t") == 10
    assert tries.count(True) == 1  # one BEGIN IMMEDIATE: the nine others wrote in its transaction
    polls = tries.count(False)
    assert 10 < polls < 100, polls  # one poller: ~20 tries a turn apart, then one per millisecond


def test_a_cancelled_poller_hands_over_to_a_waiting_request(pair: tuple) -> None:
    ours, other = pair
    other.execute("BEGIN IMMEDIATE")

    async def cancel_the_poller() -> None:
        poller = asyncio.create_task(insert(ours, 1))
        await asyncio.sleep(0.005)
        waiting = asyncio.create_task(insert(ours, 2))
        await asyncio.sleep(0.005)
        poller.cancel()  # its client went away
        await asyncio.sleep(0.005)
        other.execute("ROLLBACK")
        await waiting
        with pytest.raises(asyncio.CancelledError):
            await poller

    asyncio.run(cancel_the_poller())
    assert fetch_value(ours, "SELECT v FROM t") == 2
    assert not ours.in_transaction


def test_every_waiting_request_gets_503_when_the_lock_stays_busy(pair: tuple) -> None:
    ours, other = pair
    busy_waiter(ours).limit_s = 0.05
    other.execute("BEGIN IMMEDIATE")

    async def write() -> int:
        try:
            async with write_turn(ours):
                return 201
        except ApiError as refused:
            return refused.status

    async def three() -> list[int]:
        return list(await asyncio.gather(write(), write(), write()))

    assert asyncio.run(three()) == [503, 503, 503]
    other.execute("ROLLBACK")
    assert not ours.in_transaction
