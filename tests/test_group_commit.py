"""Group commit: record writes that reach `write_turn` in the same turn of the event loop share one
transaction and one COMMIT, each in a savepoint of its own. A failed write undoes only itself, every
request answers after the COMMIT, after-commit work runs only for committed writes, any other write on
the connection commits the group first, and a failing COMMIT fails every write that was in it."""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from snackbase.db import connect, fetch_value
from snackbase.errors import ApiError
from snackbase.unit_of_work import current, unit_of_work, write_turn
from tests.conftest import ServerProcess


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    conn = connect(tmp_path / "db.sqlite")
    conn.execute("CREATE TABLE t (v INTEGER)")
    yield conn
    conn.close()


def traced(conn: apsw.Connection) -> list[str]:
    """The statements `conn` runs from now on (its statement budget still sees each one)."""
    seen: list[str] = []
    budget = conn.exec_trace

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        seen.append(sql.strip())
        return bool(budget(cursor, sql, bindings))

    conn.exec_trace = trace
    return seen


async def write(conn: apsw.Connection, value: int, log: list[str], fail: bool = False) -> str:
    """A records route's shape: `write_turn`, the synchronous unit of work, then the answer."""
    try:
        async with write_turn(conn):
            with unit_of_work(conn) as work:
                conn.execute("INSERT INTO t VALUES (?)", (value,))
                work.after_commit(lambda: log.append(f"after {value}"))
                if fail:
                    raise ApiError(400, "validation_failed", "refused after its insert")
        log.append(f"answered {value}")
        return "written"
    except ApiError:
        log.append(f"refused {value}")
        return "refused"


def test_writes_of_one_turn_share_one_commit(conn: apsw.Connection, tmp_path: Path) -> None:
    other = connect(tmp_path / "db.sqlite")  # another process's view: only committed rows
    statements = traced(conn)
    log: list[str] = []
    seen_when_answered: list[int] = []

    async def answered(value: int) -> None:
        await write(conn, value, log)
        seen_when_answered.append(int(fetch_value(other, "SELECT count(*) FROM t WHERE v = ?", (value,))))

    async def five() -> None:
        await asyncio.gather(*(answered(n) for n in range(5)))

    asyncio.run(five())
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    assert statements.count("SAVEPOINT grouped") == 5 and statements.count("RELEASE grouped") == 5
    assert seen_when_answered == [1] * 5  # each request answered only once its row was committed
    assert log == [f"after {n}" for n in range(5)] + [f"answered {n}" for n in range(5)]
    assert not conn.in_transaction and current(conn) is None
    other.close()


def test_after_commit_work_runs_in_its_own_requests_context(conn: apsw.Connection) -> None:
    """The COMMIT runs from the loop, not from a request: each write's after-commit work still sees its
    own request's context variables (hooks take their default caller from them, logs the request id)."""
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")
    seen: list[str] = []

    async def request(value: int) -> None:
        request_id.set(f"request {value}")
        async with write_turn(conn):
            with unit_of_work(conn) as work:
                conn.execute("INSERT INTO t VALUES (?)", (value,))
                work.after_commit(lambda: seen.append(f"{value} in {request_id.get()}"))

    async def three() -> None:
        await asyncio.gather(*(request(n) for n in range(3)))

    asyncio.run(three())
    assert seen == ["0 in request 0", "1 in request 1", "2 in request 2"]


def test_a_failed_write_undoes_only_itself(conn: apsw.Connection) -> None:
    log: list[str] = []

    async def three() -> list[str]:
        return list(
            await asyncio.gather(write(conn, 1, log), write(conn, 2, log, fail=True), write(conn, 3, log))
        )

    assert asyncio.run(three()) == ["written", "refused", "written"]
    assert [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 3]
    assert "after 2" not in log  # its after-commit work went with its savepoint
    assert log.index("refused 2") < log.index("after 1")  # a refusal does not wait for the COMMIT
    assert not conn.in_transaction


def test_a_write_refused_before_its_unit_leaves_the_group_alone(conn: apsw.Connection) -> None:
    log: list[str] = []

    async def refused_early() -> None:
        async with write_turn(conn):
            raise ApiError(403, "forbidden", "refused before its unit of work")

    async def mixed() -> list[Any]:
        return list(
            await asyncio.gather(
                write(conn, 1, log), refused_early(), write(conn, 2, log), return_exceptions=True
            )
        )

    results = asyncio.run(mixed())
    assert results[0] == results[2] == "written" and isinstance(results[1], ApiError)
    assert fetch_value(conn, "SELECT count(*) FROM t") == 2 and not conn.in_transaction


def test_another_write_on_the_connection_commits_the_group_first(conn: apsw.Connection) -> None:
    statements = traced(conn)
    log: list[str] = []

    async def session_write() -> None:
        # Runs in the same turn as the grouped write, before its COMMIT: a unit of work of its own.
        with unit_of_work(conn):
            assert fetch_value(conn, "SELECT count(*) FROM t WHERE v = 1") == 1
            conn.execute("INSERT INTO t VALUES (99)")
        log.append("session written")

    async def both() -> None:
        await asyncio.gather(write(conn, 1, log), session_write())

    asyncio.run(both())
    assert statements.count("COMMIT") == 2  # the group's, then the session write's own
    assert log[:2] == ["after 1", "session written"]  # the group's after-commit work ran at its COMMIT
    assert fetch_value(conn, "SELECT count(*) FROM t") == 2 and not conn.in_transaction


def test_a_failing_commit_fails_every_write_in_it(tmp_path: Path) -> None:
    """A deferred foreign key is checked at COMMIT: one bad row fails the group's one COMMIT."""
    conn = connect(tmp_path / "db.sqlite")
    conn.execute(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE t (v INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
        "INSERT INTO parent VALUES (1), (2)"
    )
    log: list[str] = []

    async def three() -> list[Any]:
        writes = (write(conn, 1, log), write(conn, 7, log), write(conn, 2, log))  # no parent 7
        return list(await asyncio.gather(*writes, return_exceptions=True))

    results = asyncio.run(three())
    assert all(isinstance(r, RuntimeError) and "COMMIT" in str(r) for r in results), results
    assert fetch_value(conn, "SELECT count(*) FROM t") == 0 and not conn.in_transaction
    assert log == []  # no after-commit work, no answer
    with unit_of_work(conn):  # the connection writes again
        conn.execute("INSERT INTO t VALUES (1)")
    assert fetch_value(conn, "SELECT count(*) FROM t") == 1
    conn.close()


# --- on a real server ----------------------------------------------------------------------------------

API = "/api/v1"
EMAIL, PASSWORD = "root@example.com", "Correct horse battery staple 42"
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
CLIENTS, ROUNDS = 16, 25


def call(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    payload = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=payload, headers={"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    raw = response.read()
    return response.status, json.loads(raw) if raw else None


def test_concurrent_creates_with_bad_ones_among_them(start_server: Callable[..., ServerProcess]) -> None:
    """Sixteen clients create at once, every fourth body invalid: each valid one is answered 201 with
    its row readable at once, each invalid one 400 with nothing written and no audit entry, the writes
    were committed in groups, and the audit chain verifies."""
    env = {"SNACKBASE_SUPERADMIN_EMAIL": EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD}
    server = start_server(env={**env, "SNACKBASE_METRICS_ENABLED": "true"})
    setup = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    credentials = {"email": EMAIL, "password": PASSWORD, "account_identifier": "SY0000"}
    token = call(setup, "POST", f"{API}/auth/login", credentials)[1]["access_token"]
    auth = {"authorization": f"Bearer {token}", "x-account-id": "SY0000"}
    body = {"name": "notes", "rules": PUBLIC, "fields": [{"name": "n", "type": "number"}]}
    assert call(setup, "POST", f"{API}/collections", body, auth)[0] == 201
    entries_before = call(setup, "GET", f"{API}/audit-log?per_page=1&collection=notes", headers=auth)[1][
        "total_items"
    ]
    created: list[str] = []
    statuses: list[int] = []
    problems: list[str] = []
    start = threading.Barrier(CLIENTS)

    def client(number: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        start.wait()
        for step in range(ROUNDS):
            bad = (number + step) % 4 == 0
            status, got = call(conn, "POST", f"{API}/records/notes", {"n": "many" if bad else step}, auth)
            statuses.append(status)
            if status == 201:
                created.append(got["id"])
                read = call(conn, "GET", f"{API}/records/notes/{got['id']}", headers=auth)
                if read[0] != 200 or read[1]["n"] != step:
                    problems.append(f"read after 201: {read}")
            elif not (bad and status == 400):
                problems.append(f"{'bad' if bad else 'good'} body answered {status}: {got}")
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert problems == []
    assert statuses.count(201) == CLIENTS * ROUNDS * 3 // 4 and statuses.count(400) == CLIENTS * ROUNDS // 4
    listed = call(setup, "GET", f"{API}/records/notes?per_page=1", headers=auth)[1]["total_items"]
    entries = call(setup, "GET", f"{API}/audit-log?per_page=1&collection=notes", headers=auth)[1][
        "total_items"
    ]
    assert listed == len(set(created)) == len(created) and entries - entries_before == len(created)
    setup.request("GET", "/metrics")
    scraped = setup.getresponse().read().decode()
    counts = dict(re.findall(r'^snackbase_group_commits\{count="(\w+)"\} (\S+)$', scraped, re.MULTILINE))
    # 400 creates from 16 clients at once: some shared a COMMIT (the setup's writes count too).
    assert float(counts["writes"]) > float(counts["commits"]) > 0, counts
    setup.close()
    server.stop()
    verify = subprocess.run(
        [sys.executable, "-m", "snackbase", "audit", "verify", "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=60,
        env={"SNACKBASE_ENVIRONMENT": "testing", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert verify.returncode == 0 and "ok" in verify.stdout, verify.stdout + verify.stderr
