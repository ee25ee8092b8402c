"""Several `snackbase serve` nodes on one PostgreSQL, as behind a load balancer: real server processes on
different ports, one database (docs/scaling.md, "Running N nodes").

A session made on one node is refreshed on another, and a reused refresh token is caught whichever node
sees it; a realtime subscriber on one node receives a write made on another (and resumes on a third);
a schema change made on one node is used by the others without a restart; concurrent writes for one
account from every node leave an audit chain that verifies; a write acknowledged by a node that is
then killed with SIGKILL is there on the others; login throttling is shared, rate limits are per node;
each periodic job runs on exactly one node and moves when its node dies.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import test_realtime
from tests.conftest import ServerProcess
from tests.test_realtime import Sse, Ws

API = "/api/v1"
PASSWORD = "Correct horse battery staple 42"
RULES = dict.fromkeys(("list", "view", "create", "update", "delete"), "")
PYTHON = [sys.executable, "-m", "snackbase"]


@dataclass
class Cluster:
    """The nodes of one deployment, and what the tests share between them."""

    url: str
    nodes: list[ServerProcess]
    start_node: Callable[..., ServerProcess]
    root: dict[str, str] = field(default_factory=dict)  # the superadmin's headers, in the account

    @property
    def a(self) -> ServerProcess:
        return self.nodes[0]

    @property
    def b(self) -> ServerProcess:
        return self.nodes[1]

    @property
    def c(self) -> ServerProcess:
        return self.nodes[2]


def call(node: ServerProcess, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(node.url + API + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def login(node: ServerProcess) -> dict[str, Any]:
    login = {"email": "root@example.com", "password": PASSWORD, "account_identifier": "system"}
    status, body = call(node, "POST", "/auth/login", login)
    assert status == 200, body
    return dict(body)


def bearer(token: str, account: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {token}"}
    return {**headers, "x-account-id": account} if account else headers


def node_env(url: str, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What every node of one deployment shares (the database, the signing key, the first superadmin),
    and its own name in PostgreSQL (`application_name`, to see which node holds what)."""
    return {
        "SNACKBASE_DATABASE_URL": f"{url}&application_name={name}",
        "SNACKBASE_SECRET_KEY": "multi-node-test-secret-" + "k" * 32,
        "SNACKBASE_SUPERADMIN_EMAIL": "root@example.com",
        "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD,
        **(extra or {}),
    }


@pytest.fixture
def start_cluster(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., Cluster]]:
    started: list[ServerProcess] = []

    def start_node(name: str, extra: dict[str, str] | None = None) -> ServerProcess:
        (tmp_path / name).mkdir()  # each node has a data dir of its own (nothing in it is shared)
        node = ServerProcess(PYTHON, tmp_path / name / "data", node_env(pg_url, name, extra))
        started.append(node)
        return node

    def start(count: int = 3, extra: dict[str, str] | None = None) -> Cluster:
        cluster = Cluster(pg_url, [start_node(f"node{i}", extra) for i in range(count)], start_node)
        root = bearer(login(cluster.a)["access_token"])
        status, account = call(cluster.a, "POST", "/accounts", {"name": "Acme"}, root)
        assert status == 201, account
        cluster.root = {**root, "x-account-id": account["id"]}
        return cluster

    yield start
    while test_realtime.OPEN:  # the realtime clients of the test (Ws, Sse register themselves there)
        with contextlib.suppress(Exception):
            test_realtime.OPEN.pop().close()
    for node in started:
        node.stop()


def make_notes(cluster: Cluster, node: ServerProcess | None = None) -> None:
    body = {"name": "notes", "fields": [{"name": "title", "type": "text"}], "rules": RULES}
    status, answer = call(node or cluster.a, "POST", "/collections", body, cluster.root)
    assert status == 201, answer


def test_a_session_made_on_one_node_is_refreshed_on_another_and_reuse_is_caught_anywhere(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster()
    first = login(cluster.a)
    status, second = call(cluster.b, "POST", "/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert status == 200, second
    assert call(cluster.c, "GET", "/auth/me", headers=bearer(second["access_token"]))[0] == 200
    # The spent token presented to a third node: a reuse, which ends the session on every node.
    status, body = call(cluster.c, "POST", "/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert (status, body["code"]) == (401, "unauthorized")
    for node in cluster.nodes:
        assert call(node, "GET", "/auth/me", headers=bearer(second["access_token"]))[0] == 401
    status, _ = call(cluster.a, "POST", "/auth/refresh", {"refresh_token": second["refresh_token"]})
    assert status == 401


def test_one_refresh_token_spent_on_two_nodes_at_once_is_a_reuse(
    start_cluster: Callable[..., Cluster],
) -> None:
    """Both nodes read the token unspent at the same moment: exactly one rotation wins, the other is
    a reuse and the session ends (no two live token families from one token)."""
    cluster = start_cluster(2)
    for _ in range(5):
        token = login(cluster.a)["refresh_token"]
        barrier = threading.Barrier(2)
        answers: list[tuple[int, Any]] = []

        def spend(node: ServerProcess, token: str, barrier: threading.Barrier, answers: list[Any]) -> None:
            barrier.wait()
            answers.append(call(node, "POST", "/auth/refresh", {"refresh_token": token}))

        threads = [
            threading.Thread(target=spend, args=(node, token, barrier, answers)) for node in cluster.nodes
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [body for status, body in answers if status == 200]
        assert len(winners) <= 1, answers
        for body in winners:  # the session of the one rotation that won is over too (a reuse followed)
            assert call(cluster.b, "GET", "/auth/me", headers=bearer(body["access_token"]))[0] == 401


def test_a_realtime_subscriber_on_one_node_receives_writes_made_on_others(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster()
    make_notes(cluster)
    token = cluster.root["authorization"].split()[1]
    user = type("U", (), {"token": token, "headers": cluster.root})
    ws = Ws(cluster.b, user)  # type: ignore[arg-type]
    assert ws.subscribe(["notes"])["type"] == "subscribed"
    sse = Sse(cluster.c, cluster.root)
    status, _ = call(cluster.c, "POST", "/realtime/subscriptions",
                     {"client_id": sse.client_id, "topics": ["notes"]}, cluster.root)  # fmt: skip
    assert status == 200
    made = []
    for node in (cluster.a, cluster.c, cluster.a):
        status, body = call(node, "POST", "/records/notes", {"title": f"from {node.port}"}, cluster.root)
        assert status == 201, body
        made.append(body["id"])
    events = [ws.recv() for _ in made]
    assert [e["record"]["id"] for e in events] == made
    assert [e["record"]["id"] for e in sse.events(3)] == made
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    # Resume on another node with the last id received here: what was missed meanwhile, in order.
    ws.ws.close()
    missed = [call(cluster.b, "POST", "/records/notes", {"title": f"m{i}"}, cluster.root)[1]["id"]
              for i in range(2)]  # fmt: skip
    again = Sse(cluster.a, {**cluster.root, "last-event-id": str(ids[-1])})
    status, _ = call(cluster.a, "POST", "/realtime/subscriptions",
                     {"client_id": again.client_id, "topics": ["notes"]}, cluster.root)  # fmt: skip
    assert status == 200
    assert [e["record"]["id"] for e in again.events(2)] == missed


def test_a_schema_change_on_one_node_is_used_by_the_others_without_a_restart(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster()
    make_notes(cluster)
    assert call(cluster.b, "POST", "/records/notes", {"title": "one"}, cluster.root)[0] == 201
    body = {"fields": [{"name": "title", "type": "text"}, {"name": "priority", "type": "number"}]}
    status, answer = call(cluster.a, "PATCH", "/collections/notes", body, cluster.root)
    assert status == 200, answer
    status, made = call(cluster.b, "POST", "/records/notes", {"title": "two", "priority": 3}, cluster.root)
    assert (status, made.get("priority")) == (201, 3), made
    status, listed = call(cluster.c, "GET", "/records/notes?filter=priority%20%3E%202", headers=cluster.root)
    assert status == 200 and [r["title"] for r in listed["items"]] == ["two"]
    assert call(cluster.a, "DELETE", "/collections/notes", headers=cluster.root)[0] == 204
    for node in (cluster.b, cluster.c):
        assert call(node, "GET", "/records/notes", headers=cluster.root)[0] == 404


def test_concurrent_writes_for_one_account_from_every_node_leave_a_chain_that_verifies(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster()
    make_notes(cluster)
    failures: list[Any] = []

    def write(node: ServerProcess) -> None:
        for i in range(15):
            status, body = call(node, "POST", "/records/notes", {"title": f"{node.port}-{i}"}, cluster.root)
            if status != 201:
                failures.append((status, body))

    threads = [threading.Thread(target=write, args=(node,)) for node in cluster.nodes for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    status, listed = call(cluster.a, "GET", "/records/notes?per_page=1", headers=cluster.root)
    assert status == 200 and listed["total_items"] == 90, listed
    verify = subprocess.run([*PYTHON, "audit", "verify", "--database-url", cluster.url],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    status, report = call(cluster.b, "GET", "/audit-log/verify", headers=cluster.root)
    assert status == 200 and report["ok"] is True, report


def test_nothing_acknowledged_is_lost_when_a_node_is_killed(start_cluster: Callable[..., Cluster]) -> None:
    """Writes acknowledged by node A before its SIGKILL are all readable on node B, and a realtime
    subscriber on B received an event for each."""
    cluster = start_cluster(2)
    make_notes(cluster)
    token = cluster.root["authorization"].split()[1]
    subscriber = Ws(cluster.b, type("U", (), {"token": token, "headers": cluster.root}))  # type: ignore[arg-type]
    assert subscriber.subscribe(["notes"])["type"] == "subscribed"
    acknowledged: list[str] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            try:
                status, body = call(cluster.a, "POST", "/records/notes", {"title": f"w{i}"}, cluster.root)
            except OSError:  # the node died mid-request: not acknowledged
                return
            if status == 201:
                acknowledged.append(body["id"])
            i += 1

    writers = [threading.Thread(target=write) for _ in range(3)]
    for thread in writers:
        thread.start()
    deadline = time.monotonic() + 10
    while len(acknowledged) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    cluster.a.proc.send_signal(signal.SIGKILL)
    cluster.a.proc.wait(timeout=10)
    stop.set()
    for thread in writers:
        thread.join()
    assert len(acknowledged) >= 30
    found: set[str] = set()
    page = 1
    while True:
        status, listed = call(
            cluster.b, "GET", f"/records/notes?per_page=200&page={page}", headers=cluster.root
        )
        assert status == 200, listed
        found |= {r["id"] for r in listed["items"]}
        if len(listed["items"]) < 200:
            break
        page += 1
    assert set(acknowledged) <= found
    assert call(cluster.b, "GET", "/audit-log/verify", headers=cluster.root)[1]["ok"] is True
    heard: set[str] = set()
    while not set(acknowledged) <= heard:
        heard.add(subscriber.recv()["record"]["id"])  # TimeoutError after 5 s of silence: a lost event
    assert heard <= found


def test_login_throttling_is_shared_and_rate_limits_are_per_node(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(2, {"SNACKBASE_LOGIN_BACKOFF_AFTER": "2", "SNACKBASE_LOGIN_LOCKOUT_AFTER": "4",
                                "SNACKBASE_RATE_LIMIT_READS": "3/60"})  # fmt: skip
    wrong = {"email": "root@example.com", "password": "wrong password 123", "account_identifier": "system"}
    statuses = [call(node, "POST", "/auth/login", wrong)[0] for node in (cluster.a, cluster.b)]
    assert statuses == [401, 401]
    # The third failure in a row, on either node: the failures counted on both are one count.
    status, body = call(cluster.a, "POST", "/auth/login", wrong)
    assert status == 429, body
    # Rate limits are per node (in memory): node A refuses the fourth read, node B still has its own.
    reads = [call(cluster.a, "GET", "/collections", headers=cluster.root)[0] for _ in range(4)]
    assert reads == [200, 200, 200, 429]
    assert call(cluster.b, "GET", "/collections", headers=cluster.root)[0] == 200


def holder(url: str, job: str) -> str | None:
    """The application_name (the node) holding a periodic job's lock, or None."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                 AND l.classid = hashtext(current_schema())::oid AND l.objid = hashtext(%s)::oid""",
            (job,),
        ).fetchall()
    assert len(row) <= 1, row
    return str(row[0][0]) if row else None


def test_each_periodic_job_runs_on_exactly_one_node_and_moves_when_it_dies(
    start_cluster: Callable[..., Cluster],
) -> None:
    from snackbase.backends.pg_realtime import CLEANUP_JOB

    cluster = start_cluster(2)
    assert holder(cluster.url, CLEANUP_JOB) == "node0"  # the first node up took it
    cluster.a.proc.send_signal(signal.SIGKILL)
    cluster.a.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while holder(cluster.url, CLEANUP_JOB) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder(cluster.url, CLEANUP_JOB) is None  # PostgreSQL ended the dead node's session
    cluster.start_node("node2")  # a node started now takes it (node1 would at its next tick)
    deadline = time.monotonic() + 10
    while holder(cluster.url, CLEANUP_JOB) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder(cluster.url, CLEANUP_JOB) == "node2"


def test_a_node_whose_listening_connection_drops_reconnects_and_misses_nothing(
    start_cluster: Callable[..., Cluster],
) -> None:
    import psycopg

    cluster = start_cluster(2)
    make_notes(cluster)
    token = cluster.root["authorization"].split()[1]
    subscriber = Ws(cluster.b, type("U", (), {"token": token, "headers": cluster.root}))  # type: ignore[arg-type]
    assert subscriber.subscribe(["notes"])["type"] == "subscribed"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'node1' AND query LIKE 'LISTEN%%'"
        ).fetchall()
    assert ended == [(True,)]
    # Written while node1 may not be listening yet: read once it is back, in order.
    made = [
        call(cluster.a, "POST", "/records/notes", {"title": f"t{i}"}, cluster.root)[1]["id"] for i in range(3)
    ]
    assert [subscriber.recv()["record"]["id"] for _ in made] == made
