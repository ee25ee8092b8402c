"""No single request holds the event loop (issue 13, item 2; docs/security.md "No request holds the
server"): a read not done within SNACKBASE_LOOP_BUDGET_MS is run again on a reader thread, a write's
rule checks past it answer 503 without writing anything, and all macro calls of one request share one
total. The tests assert what finished before what, never how long anything took."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import apsw
import httpx2
import pytest
from starlette.testclient import TestClient

from snackbase import db as db_module
from snackbase.app import create_app
from snackbase.db import Database
from snackbase.migrations import migrate
from tests.conftest import TEST_PASSWORD, ServerProcess, create_user, make_settings

API = "/api/v1"
ANYONE = {"list": "", "view": "", "create": "", "update": "", "delete": ""}
# A macro that never finishes: every call ends at its time budget (false), and a read calling it is
# always still running when the loop's share is spent, so it always moves to a reader thread.
FOREVER = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) > 0 FROM n"
# Counting to a million in a recursive CTE takes far longer than any loop share (~0.3 s here).
SLOW_COUNT = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) SELECT count(*) FROM n"
)


# --- Database.read ------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(tmp_path / "x.db", statement_timeout_ms=60_000, loop_budget_ms=20)
    migrate(db.conn)
    yield db
    db.close()


def test_a_quick_read_runs_once_on_the_loop(database: Database) -> None:
    threads: list[str] = []

    def read(conn: Any) -> int:
        threads.append(threading.current_thread().name)
        return int(conn.execute("SELECT count(*) FROM accounts").fetchone()[0])

    assert asyncio.run(database.read(read)) == 1
    assert threads == [threading.current_thread().name]


def test_a_slow_read_moves_to_a_reader_and_the_loop_keeps_serving(database: Database) -> None:
    """Inline first, interrupted when the share is spent, then from the start on a reader thread with
    the full statement budget; meanwhile other tasks on the loop run."""
    threads: list[str] = []
    order: list[str] = []

    def read(conn: Any) -> int:
        threads.append(threading.current_thread().name)
        return int(conn.execute(SLOW_COUNT).fetchone()[0])

    async def scenario() -> int:
        async def slow() -> int:
            value = await database.read(read)
            order.append("slow")
            return value

        async def ticker() -> None:
            while "slow" not in order:
                order.append("tick")
                await asyncio.sleep(0.01)

        value, _ = await asyncio.gather(slow(), ticker())
        return value

    moved = db_module.reads_moved["reader"]
    assert asyncio.run(scenario()) == 1_000_000
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("sb-db-reader") and len(threads) == 2
    assert db_module.reads_moved["reader"] == moved + 1
    assert order.index("slow") > 3 and order.count("tick") > 3  # the loop ran while the read did


def test_a_read_moves_before_a_match_that_could_outlast_the_share(database: Database) -> None:
    """One `~` match is one SQLite step that nothing can interrupt. A single row of 1 MB: without the
    size check the read would match it on the loop (~100 ms+) and finish there; with it, the read
    moves to a reader before the match starts."""
    database.conn.execute("CREATE TABLE t (body TEXT)")
    database.conn.execute("INSERT INTO t VALUES (?)", ("a" * 1_000_000,))
    threads: list[str] = []
    pattern = "%" + "a" * 62 + "b%"

    def read(conn: Any) -> int:
        threads.append(threading.current_thread().name)
        sql = "SELECT count(*) FROM t WHERE sb_budget(octet_length(body)) AND body LIKE ?"
        return int(conn.execute(sql, (pattern,)).fetchone()[0])

    assert asyncio.run(database.read(read)) == 0
    assert len(threads) == 2 and threads[1].startswith("sb-db-reader"), threads


def test_a_read_past_the_full_statement_budget_is_still_a_timeout(tmp_path: Path) -> None:
    """Moved to a reader, a read that never ends is stopped by the statement budget there."""
    db = Database(tmp_path / "x.db", statement_timeout_ms=100, loop_budget_ms=20)
    threads: list[str] = []

    def endless(conn: Any) -> Any:
        threads.append(threading.current_thread().name)
        return conn.execute(FOREVER).fetchone()

    try:
        with pytest.raises(apsw.InterruptError):
            asyncio.run(db.read(endless))
        assert len(threads) == 2 and threads[1].startswith("sb-db-reader"), threads
    finally:
        db.close()


def test_slow_reads_beyond_the_waiting_limit_are_refused_at_once(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads waiting for a reader thread are bounded (64; here 1): the next one answers 503 `busy`
    at once instead of queueing without bound."""
    from snackbase.errors import ApiError

    monkeypatch.setattr(db_module, "MAX_WAITING_READS", 1)

    async def scenario() -> list[Any]:
        slow = database.read(lambda conn: conn.execute(SLOW_COUNT).fetchone()[0])
        first = asyncio.ensure_future(slow)
        await asyncio.sleep(0)  # the first read has moved off the loop and waits for its reader
        second = await asyncio.gather(database.read(lambda conn: conn.execute(SLOW_COUNT).fetchone()[0]),
                                      return_exceptions=True)  # fmt: skip
        return [await first, *second]

    first, second = asyncio.run(scenario())
    assert first == 1_000_000
    assert isinstance(second, ApiError) and (second.status, second.code) == (503, "busy")
    assert second.headers["retry-after"] == "1"


def test_readers_cannot_write(database: Database) -> None:
    """A read path that wrote would race the event loop's writes: reader connections are query-only."""

    def sneaky(conn: Any) -> None:
        conn.execute(SLOW_COUNT).fetchone()  # long enough to move to a reader
        conn.execute("INSERT INTO roles (name, description, builtin, created_at) VALUES ('x', '', 0, '')")

    with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
        asyncio.run(database.read(sneaky))


# --- every read entry point, through the app --------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, Any], dict[str, Any]]]:
    """Collections whose list and view rules call the never-ending macro before an ordinary test, so
    every read of them outgrows the loop's share and still has one right answer."""
    settings = make_settings(tmp_path / "data", loop_budget_ms=20, statement_timeout_ms=60_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        su = create_user(client.app, account_id="SY0000", role="admin")
        user = create_user(client.app, role="admin")
        assert client.post(f"{API}/macros", json={"name": "forever", "sql": FOREVER},
                           headers=su["headers"]).status_code == 201  # fmt: skip
        slow_rule = "@forever() || @is_authenticated()"
        slow = {**ANYONE, "list": slow_rule, "view": slow_rule}
        for body in (
            {"name": "owners", "fields": [{"name": "name", "type": "text"}], "rules": slow},
            {"name": "items", "rules": slow, "fields": [
                {"name": "title", "type": "text"}, {"name": "n", "type": "number"},
                {"name": "owner", "type": "reference", "options": {"collection": "owners"}}]},
        ):  # fmt: skip
            assert client.post(f"{API}/collections", json=body, headers=su["headers"]).status_code == 201
        owner = client.post(f"{API}/records/owners", json={"name": "Ada"}, headers=user["headers"]).json()
        ids = [
            client.post(f"{API}/records/items", json={"title": f"t{i}", "n": i, "owner": owner["id"]},
                        headers=user["headers"]).json()["id"]
            for i in range(3)
        ]  # fmt: skip
        yield client, user, {"owner": owner["id"], "items": ids}


def test_every_record_read_outgrowing_the_loop_gives_the_right_answer(
    world: tuple[TestClient, dict[str, Any], dict[str, Any]],
) -> None:
    client, user, ids = world
    first = ids["items"][0]
    reads: list[tuple[str, Callable[[Any], bool]]] = [
        (f"{API}/records/items?sort=-n", lambda b: [i["n"] for i in b["items"]] == [2, 1, 0]),
        (f"{API}/records/items?filter=owner.name%3D%22Ada%22&after=", lambda b: len(b["items"]) == 3),
        (f"{API}/records/owners?filter=items_via_owner.n%20%3F%3D%202", lambda b: b["total_items"] == 1),
        (f"{API}/records/items/{first}", lambda b: b["title"] == "t0"),
        (f"{API}/records/items/{first}?expand=owner", lambda b: b["expand"]["owner"]["name"] == "Ada"),
        (f"{API}/records/owners/{ids['owner']}?expand=items_via_owner",
         lambda b: len(b["expand"]["items_via_owner"]) == 3),
        (f"{API}/records/items/aggregate?count=*&sum=n", lambda b: b["items"][0]["sum_n"] == 3),
        (f"{API}/records/items/{first}/history", lambda b: b["items"][0]["action"] == "record.create"),
        (f"{API}/records/items/{first}/signatures", lambda b: b["items"] == []),
    ]  # fmt: skip
    for path, right in reads:
        moved = db_module.reads_moved["reader"]
        response = client.get(path, headers=user["headers"])
        assert response.status_code == 200, (path, response.text)
        assert right(response.json()), (path, response.json())
        assert db_module.reads_moved["reader"] > moved, path


def test_a_write_whose_rule_checks_outgrow_the_loop_is_refused_and_writes_nothing(
    world: tuple[TestClient, dict[str, Any], dict[str, Any]],
) -> None:
    client, user, _ = world
    su = create_user(client.app, account_id="SY0000", role="admin")
    rules = {**ANYONE, "create": "@forever() || @is_authenticated()", "update": "@forever() || true = true"}
    body = {"name": "gated", "fields": [{"name": "t", "type": "text"}], "rules": rules}
    assert client.post(f"{API}/collections", json=body, headers=su["headers"]).status_code == 201
    audit_before = client.get(f"{API}/audit-log?per_page=1", headers=user["headers"]).json()["total_items"]
    refused = client.post(f"{API}/records/gated", json={"t": "x"}, headers=user["headers"])
    assert refused.status_code == 503 and refused.json()["code"] == "statement_timeout", refused.text
    batch = {"create": [{"t": "a"}, {"t": "b"}]}
    refused = client.post(f"{API}/records/gated/batch", json=batch, headers=user["headers"])
    assert refused.status_code == 503 and refused.json()["code"] == "statement_timeout", refused.text
    assert client.get(f"{API}/records/gated", headers=user["headers"]).json()["total_items"] == 0
    after = client.get(f"{API}/audit-log?per_page=1", headers=user["headers"]).json()["total_items"]
    assert after == audit_before


def test_all_macro_calls_of_a_request_share_one_total(
    world: tuple[TestClient, dict[str, Any], dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """Eight macro calls (the most a rule may make), seven of a never-ending macro: before, each ran to
    its own 200 ms (1.4 s). Now the first spends the request's whole macro time and the other six are
    refused without running."""
    client, user, _ = world
    su = create_user(client.app, account_id="SY0000", role="admin")
    rule = " || ".join(["@forever()"] * 7) + " || @is_authenticated()"
    body = {"name": "eight", "fields": [{"name": "t", "type": "text"}], "rules": {**ANYONE, "list": rule}}
    assert client.post(f"{API}/collections", json=body, headers=su["headers"]).status_code == 201
    client.post(f"{API}/records/eight", json={"t": "x"}, headers=user["headers"])
    with caplog.at_level(logging.WARNING, logger="snackbase.macros"):
        caplog.clear()
        response = client.get(f"{API}/records/eight", headers=user["headers"])
    assert response.status_code == 200 and response.json()["total_items"] == 1, response.text
    messages = [r.getMessage() for r in caplog.records if r.name == "snackbase.macros"]
    assert messages.count("macro over its time budget; access denied") == 1, messages
    assert messages.count("macro time of this request used up; access denied") == 6, messages


# --- a real server: /health and a cheap get answer while slow requests run ---------------------------

BODY = 200_000  # characters per large text
# The longest `~` pattern with a wildcard (64 characters): SQLite's LIKE compares it at every position.
PATTERN = "%" + "a" * 62 + "b"
BIG_ROWS = 200_000
SCAN = 'views > 500 && title ~ "99"'  # no index serves either term: every row is read, twice (COUNT)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("loop") / "data"
    env = {"SNACKBASE_SUPERADMIN_EMAIL": "root@example.com", "SNACKBASE_SUPERADMIN_PASSWORD": TEST_PASSWORD,
           "SNACKBASE_STATEMENT_TIMEOUT_MS": "60000"}  # fmt: skip
    server = ServerProcess([sys.executable, "-m", "snackbase"], data, env)
    try:
        with httpx2.Client(base_url=server.url, timeout=120) as http:
            su = {
                "authorization": f"Bearer {_login(http, 'root@example.com', 'system')}",
                "x-account-id": "SY0000",
            }
            assert (
                http.post(f"{API}/macros", json={"name": "forever", "sql": FOREVER}, headers=su).status_code
                == 201
            )
            big_rules = {**ANYONE, "list": "@forever() || views >= 0"}
            for body in (
                {"name": "pages", "fields": [{"name": "body", "type": "text"}], "rules": ANYONE},
                {"name": "notes", "fields": [{"name": "t", "type": "text"}], "rules": ANYONE},
                {"name": "big", "rules": big_rules,
                 "fields": [{"name": "title", "type": "text"}, {"name": "views", "type": "number"}]},
            ):  # fmt: skip
                assert http.post(f"{API}/collections", json=body, headers=su).status_code == 201
            for i in range(30):  # three of them end in "b": the pattern matches exactly those
                text = "a" * (BODY - 1) + ("b" if i % 10 == 0 else "a")
                assert http.post(f"{API}/records/pages", json={"body": text}, headers=su).status_code == 201
            note = http.post(f"{API}/records/notes", json={"t": "cheap"}, headers=su).json()
            # An account user, whom the rules bind (a superadmin passes them all).
            account = http.post(f"{API}/accounts", json={"name": "Big"}, headers=su).json()["id"]
            user = {"email": "big@example.com", "password": TEST_PASSWORD, "account_id": account}
            assert http.post(f"{API}/users", json=user, headers=su).status_code == 201
            user_headers = {"authorization": f"Bearer {_login(http, 'big@example.com', account)}"}
        _seed_big(data, account)
        yield {"server": server, "su": su, "user": user_headers, "note": note["id"]}
    finally:
        server.stop()


def _login(http: httpx2.Client, email: str, account: str) -> str:
    body = {"email": email, "password": TEST_PASSWORD, "account_identifier": account}
    response = http.post(f"{API}/auth/login", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _seed_big(data: Path, account: str) -> None:
    """Many rows straight into the collection's table (through the API this would take minutes)."""
    conn = apsw.Connection(str(data / "snackbase.db"))
    conn.set_busy_timeout(10_000)
    now = "2026-12-01T00:00:00.000Z"
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO c_big (id, account_id, created_at, updated_at, title, views) VALUES (?, ?, ?, ?, ?, ?)",
        ((f"row-{i:09d}", account, now, now, f"title {i}", i % 1000) for i in range(BIG_ROWS)),
    )
    conn.execute("COMMIT")
    conn.close()


def _while_slow(server: dict[str, Any], who: str, slow_path: str) -> tuple[list[str], Any]:
    """Sends the slow request, then /health and a cheap GET by id one after the other until it is
    answered; returns what was answered, in order, and the slow answer."""
    order: list[str] = []
    answer: dict[str, Any] = {}
    lock = threading.Lock()
    url = server["server"].url

    def slow() -> None:
        with httpx2.Client(base_url=url, timeout=120) as http:
            answer["response"] = http.get(slow_path, headers=server[who])
        with lock:
            order.append("slow")

    worker = threading.Thread(target=slow)
    worker.start()
    with httpx2.Client(base_url=url, timeout=120) as http:
        threading.Event().wait(0.1)  # let the slow request reach the server first
        while worker.is_alive():
            assert http.get("/health").status_code == 200
            with lock:
                order.append("health")
            got = http.get(f"{API}/records/notes/{server['note']}", headers=server["su"])
            assert got.json()["t"] == "cheap"
            with lock:
                order.append("get")
    worker.join()
    return order, answer["response"]


LIKE_FILTER = urlencode({"filter": f'body ~ "{PATTERN}"'})
SCANNED = sum(1 for i in range(BIG_ROWS) if i % 1000 > 500 and "99" in f"title {i}")


@pytest.mark.parametrize(
    ("who", "path", "right"),
    [
        ("su", f"{API}/records/pages?{LIKE_FILTER}&per_page=5",
         lambda b: b["total_items"] == 3 and len(b["items"]) == 3),
        ("su", f"{API}/records/pages/aggregate?count=*&{LIKE_FILTER}",
         lambda b: b["items"][0]["count"] == 3),
        ("user", f"{API}/records/big?{urlencode({'filter': SCAN})}&per_page=5",
         lambda b: b["total_items"] == SCANNED and len(b["items"]) == 5),
    ],
    ids=["like-list-with-count", "like-aggregate", "big-table-scan-with-count-and-a-slow-macro-rule"],
)  # fmt: skip
def test_health_and_a_get_answer_before_a_slow_read_ends(
    slow_server: dict[str, Any], who: str, path: str, right: Callable[[Any], bool]
) -> None:
    """Before: the slow read ran on the event loop from start to end, and everything else waited."""
    order, response = _while_slow(slow_server, who, path)
    assert response.status_code == 200, response.text
    assert right(response.json()), response.json()
    before = order[: order.index("slow")]
    assert before.count("health") >= 10 and before.count("get") >= 10, order
