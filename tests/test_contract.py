"""Contract tests: schemathesis generates requests from GET /api/v1/openapi.json and sends them to a real
server process; no answer may be a 5xx, and every answer must match the document (status code, content
type, body schema).

`make test` runs a bounded pass (SNACKBASE_CONTRACT_EXAMPLES, default 5 examples per operation, ~20 s);
`make contract` runs a long one (200 examples per operation). docs/openapi.md reports a long run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "Contract-testing-2026!"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
# These end the superadmin's own session (or change its password), which would turn the rest of the run
# into 401s; tests/test_api_auth.py covers them.
SESSION_ENDING = r"/auth/(logout|logout-all|sessions/.*|change-password)$"
SEED_COLLECTION = {
    "name": "contract_items",
    "fields": [
        {"name": "title", "type": "text", "required": True, "options": {"max_length": 80}},
        {"name": "status", "type": "select", "options": {"values": ["open", "done"]}},
        {"name": "tags", "type": "select", "options": {"values": ["a", "b"], "multiple": True}},
        {"name": "count", "type": "number", "options": {"min": 0, "integer_only": True}},
        {"name": "due", "type": "date"},
        {"name": "at", "type": "datetime"},
        {"name": "site", "type": "url"},
        {"name": "contact", "type": "email", "pii": True, "mask": "email"},
        {"name": "flag", "type": "boolean"},
        {"name": "meta", "type": "json", "options": {"max_bytes": 2000}},
    ],
    "rules": {"list": "", "view": "", "create": "", "update": "", "delete": ""},
}


def _call(base: str, method: str, path: str, body: Any = None, token: str = "") -> Any:
    request = urllib.request.Request(
        base + "/api/v1" + path, data=None if body is None else json.dumps(body).encode(), method=method
    )
    request.add_header("content-type", "application/json")
    request.add_header("x-account-id", "SY0000")  # superadmins name the account records go to
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read()[:300]!r}") from None


def seed(base: str, token: str) -> dict[str, str]:
    """One of each resource, so operations on `{id}`/`{name}` paths reach their logic instead of 404."""
    call = lambda method, path, body=None: _call(base, method, path, body, token)  # noqa: E731
    call("POST", "/collections", SEED_COLLECTION)
    call("POST", "/collections", {"name": "contract_scratch", "fields": [{"name": "x", "type": "text"}]})
    account = call("POST", "/accounts", {"name": "Contract Co"})
    user = call("POST", "/users", {"email": "member@example.com", "password": "Velvet-harbor-lantern-77",
                                   "account_id": account["id"]})  # fmt: skip
    group = call("POST", "/groups", {"name": "contract-group", "account_id": account["id"]})
    call("POST", "/roles", {"name": "auditor"})
    call("POST", "/macros", {"name": "contract_macro", "sql": "SELECT ? > 0"})
    invitation = call("POST", "/invitations", {"email": "invitee@example.com", "account_id": account["id"]})
    record = call("POST", "/records/contract_items", {"title": "seed"})
    return {
        "account": account["id"], "user": user["id"], "group": group["id"], "invitation": invitation["id"],
        "invitation_token": invitation["token"], "record": record["id"],
    }  # fmt: skip


def config_file(path: Path, ids: dict[str, str]) -> Path:
    """Per-operation path parameters: real ids (schemathesis still fuzzes bodies and queries)."""
    api = "^/api/v1"
    table = [
        (f"{api}/records/contract_items/", {"id": ids["record"]}),
        (f"{api}/records/\\{{collection\\}}", {"collection": "contract_items", "id": ids["record"]}),
        (f"{api}/collections/\\{{name", {"name": "contract_scratch"}),
        (f"{api}/accounts/", {"id": ids["account"]}),
        (f"{api}/users/", {"id": ids["user"]}),
        (f"{api}/groups/", {"id": ids["group"], "user_id": ids["user"]}),
        (f"{api}/roles/", {"name": "auditor"}),
        (f"{api}/macros/", {"name": "contract_macro"}),
        (f"{api}/audit-log/\\{{seq", {"seq": "1"}),
        (f"{api}/invitations/\\{{id", {"id": ids["invitation"]}),
        (f"{api}/invitations/\\{{token", {"token": ids["invitation_token"]}),
    ]
    lines = []
    for regex, params in table:
        values = ", ".join(f'{k} = "{v}"' for k, v in params.items())
        lines += ["[[operations]]", f"include-path-regex = '{regex}'", f"parameters = {{ {values} }}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_schemathesis(url: str, token: str, examples: int, config: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("schemathesis")
    command = [
        str(cli), "--config-file", str(config), "--no-color", "run", url + "/api/v1/openapi.json",
        "-H", f"Authorization: Bearer {token}", "-H", "X-Account-ID: SY0000",
        "--max-examples", str(examples), "--checks", CHECKS, "--workers", "1",
        "--exclude-path-regex", SESSION_ENDING, "--seed", os.environ.get("SNACKBASE_CONTRACT_SEED", "1"),
    ]  # fmt: skip
    # cwd: schemathesis keeps a cache directory (.schemathesis/) where it runs; not in the checkout
    return subprocess.run(
        command, cwd=config.parent, capture_output=True, text=True, timeout=3600, check=False
    )


def test_no_5xx_and_every_answer_matches_the_document(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    server = start_server(
        env={"SNACKBASE_SUPERADMIN_EMAIL": ADMIN_EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": ADMIN_PASSWORD}
    )
    login = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "account_identifier": "system"}
    token = _call(server.url, "POST", "/auth/login", login)["access_token"]
    config = config_file(tmp_path / "schemathesis.toml", seed(server.url, token))
    examples = int(os.environ.get("SNACKBASE_CONTRACT_EXAMPLES", "5"))
    result = run_schemathesis(server.url, token, examples, config)
    output = result.stdout + result.stderr
    summary = output[output.find("SUMMARY") :] if "SUMMARY" in output else output[-3000:]
    print(summary)  # the numbers, for docs/openapi.md (pytest -s)
    assert result.returncode == 0, output[-12000:]
    tested = re.search(r"Tested:\s+(\d+)", output)
    assert tested and int(tested.group(1)) >= 70, summary  # every operation but the session-ending ones
    assert re.search(r"(\d+) generated, \1 passed", output), summary
