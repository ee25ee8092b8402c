"""`serve --workers 2` under concurrent writers: no 5xx, every acknowledged write present exactly once,
every update's audit entry read the row as it was (its `old` is the previous entry's `new`), and the
audit chain verifies afterwards. Before the one write path, deferred read-then-write transactions
failed with SQLITE_BUSY across the two processes (a 500 in 1 of 150-1,100 refreshes)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import ServerProcess

API = "/api/v1"
EMAIL, PASSWORD = "root@example.com", "Correct horse battery staple 42"
CLIENTS = 8
SECONDS = 10.0
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")


class Http:
    """One keep-alive connection, JSON in and out."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        payload = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *_: object) -> None:
        self.conn.close()


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def login(http: Http, account: str, email: str = EMAIL, password: str = PASSWORD) -> dict[str, Any]:
    credentials = {"email": email, "password": password, "account_identifier": account}
    status, body = http.call("POST", f"{API}/auth/login", credentials)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def client_loop(port: int, number: int, shared_id: str, tokens: dict[str, str], tally: Tally,
                deadline: float) -> None:  # fmt: skip
    with Http(port) as http:
        _loop(http, number, shared_id, tokens, tally, deadline)


def _loop(http: Http, number: int, shared_id: str, tokens: dict[str, str], tally: Tally,
          deadline: float) -> None:  # fmt: skip
    mine: list[str] = []
    step = 0

    def record(status: int, body: Any) -> Any:
        tally.statuses[status] += 1
        if status >= 500:
            tally.errors.append(f"{status} {body}")
        return body

    while time.monotonic() < deadline:
        step += 1
        status, pair = http.call("POST", f"{API}/auth/refresh", {"refresh_token": tokens["refresh"]})
        record(status, pair)
        if status == 200:
            tokens.update(access=pair["access_token"], refresh=pair["refresh_token"])
        token = tokens["access"]
        status, created = http.call("POST", f"{API}/records/notes", {"n": step, "by": number}, token)
        if record(status, created) and status == 201:
            tally.created.append(created["id"])
            mine.append(created["id"])
        status, body = http.call("PATCH", f"{API}/records/notes/{shared_id}", {"n": number * 100_000 + step},
                                 token)  # fmt: skip
        record(status, body)
        if step % 3 == 0 and mine:
            victim = mine.pop(0)
            status, body = http.call("DELETE", f"{API}/records/notes/{victim}", None, token)
            record(status, body)
            if status == 204:
                tally.deleted.append(victim)


def run_clients(port: int, shared_id: str, sessions: list[dict[str, str]]) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + SECONDS
    threads = [
        threading.Thread(target=client_loop, args=(port, i, shared_id, sessions[i], tally, deadline))
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=SECONDS + 60)
    return tally


def setup(server: ServerProcess) -> tuple[str, str, list[dict[str, str]]]:
    with Http(server.port) as http:
        return _setup(http)


def _setup(http: Http) -> tuple[str, str, list[dict[str, str]]]:
    root = login(http, "SY0000")["access_token"]
    body = {"name": "notes", "rules": PUBLIC,
            "fields": [{"name": "n", "type": "number"}, {"name": "by", "type": "number"}]}  # fmt: skip
    assert http.call("POST", f"{API}/collections", body, root)[0] == 201
    signup = {"account_name": "Lab", "email": "lead@example.com", "password": PASSWORD}
    status, registered = http.call("POST", f"{API}/auth/register", signup)
    assert status == 201, registered
    account = registered["account"]["id"]
    status, shared = http.call("POST", f"{API}/records/notes", {"n": 0}, registered["access_token"])
    assert status == 201, shared
    sessions = []
    for _ in range(CLIENTS):
        pair = login(http, account, "lead@example.com")
        sessions.append({"access": pair["access_token"], "refresh": pair["refresh_token"]})
    return account, shared["id"], sessions


def stored_ids(server: ServerProcess, account: str) -> list[str]:
    ids: list[str] = []
    with Http(server.port) as http:
        token = login(http, account, "lead@example.com")["access_token"]
        after: str | None = ""
        while after is not None:
            status, page = http.call("GET", f"{API}/records/notes?per_page=500&after={after}", token=token)
            assert status == 200, page
            ids += [item["id"] for item in page["items"]]
            after = page["next_cursor"]
    return ids


def update_chain_problems(server: ServerProcess, record_id: str) -> list[str]:
    """Each update entry's `old` must be the previous entry's `new`: read inside the write lock."""
    import apsw

    conn = apsw.Connection(str(server.data_dir / "snackbase.db"), flags=apsw.SQLITE_OPEN_READONLY)
    rows = conn.execute("SELECT changes FROM audit_log WHERE record_id = ? ORDER BY seq", (record_id,))
    problems, value = [], None
    for (changes,) in rows:
        change = json.loads(changes).get("n")
        if change is None:
            continue
        if change["old"] != value:
            problems.append(f"old {change['old']} after new {value}")
        value = change["new"]
    conn.close()
    return problems


def test_two_workers_and_eight_writers(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(env={"SNACKBASE_WORKERS": "2", "SNACKBASE_SUPERADMIN_EMAIL": EMAIL,
                               "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD})  # fmt: skip
    account, shared_id, sessions = setup(server)
    batons = sorted(p.name for p in server.data_dir.glob(".write-baton-*"))  # snackbase.write_baton
    assert len(batons) == 2 and batons[1] == batons[0] + "-wish", batons
    tally = run_clients(server.port, shared_id, sessions)
    assert not tally.errors, tally.errors[:5]
    assert tally.statuses[200] > 100 and tally.statuses[201] > 50, tally.statuses
    assert set(tally.statuses) <= {200, 201, 204}, tally.statuses
    stored = stored_ids(server, account)
    expected = {shared_id, *tally.created} - set(tally.deleted)
    assert len(stored) == len(set(stored)) and set(stored) == expected
    assert update_chain_problems(server, shared_id) == []
    code, _ = server.stop()
    assert code == 0
    assert list(server.data_dir.glob(".write-baton-*")) == []  # removed with the workers
    verify = subprocess.run(
        [sys.executable, "-m", "snackbase", "audit", "verify", "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=60, env={"SNACKBASE_ENVIRONMENT": "testing",
                                                         "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert verify.returncode == 0 and "ok" in verify.stdout, verify.stdout + verify.stderr
