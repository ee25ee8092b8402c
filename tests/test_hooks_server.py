"""Hook files against a real server process: loading at start, refusing to start on a broken file,
request and record hooks over HTTP, failures logged with the hook's name, app.serve/terminate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess

CLI = [sys.executable, "-m", "snackbase"]
EMAIL, PASSWORD = "root@example.com", "Correct horse battery staple 42"


def hook_file(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def call(
    server: ServerProcess, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        server.url + path,
        data=data,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def log_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def superadmin_headers(server: ServerProcess) -> dict[str, str]:
    status, body = call(
        server,
        "POST",
        "/api/v1/auth/login",
        {"email": EMAIL, "password": PASSWORD, "account_identifier": "SY0000"},
    )
    assert status == 200, body
    return {"authorization": f"Bearer {body['access_token']}"}


SUPERADMIN_ENV = {
    "SNACKBASE_SUPERADMIN_EMAIL": EMAIL,
    "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD,
    "SNACKBASE_LOG_LEVEL": "INFO",
}


def test_hook_files_run_in_a_real_server(tmp_path: Path, start_server: Callable[..., ServerProcess]) -> None:
    hooks_dir = tmp_path / "data" / "hooks"
    marker = tmp_path / "lifecycle.txt"
    hook_file(
        hooks_dir,
        "10-lifecycle.py",
        f"""
        from snackbase.hooks import hooks

        @hooks.on("app.serve")
        async def serving(event):
            open({str(marker)!r}, "a").write("serve\\n")

        @hooks.on("app.terminate")
        def stopping(event):
            open({str(marker)!r}, "a").write("terminate\\n")
    """,
    )
    hook_file(
        hooks_dir,
        "20-posts.py",
        """
        import time
        from snackbase.hooks import hooks, HookAbort

        @hooks.on("request.before")
        def closed_path(event):
            if event.path == "/api/v1/records/secret":
                raise HookAbort(403, "Closed by a hook.")
            if event.path == "/api/v1/records/slow":
                time.sleep(1.05)
            if event.path == "/api/v1/records/crash":
                raise RuntimeError("secret detail of a crash")

        @hooks.on("record.after_create", collection="posts")
        def notify(event):
            text = "new: " + event.record["title"]
            event.records.create("notifications", {"text": text}, bypass_rules=True)

        @hooks.on("record.after_create", collection="posts", priority=-1)
        def flaky(event):
            raise ValueError("the after-hook broke")
    """,
    )
    server = start_server(env=SUPERADMIN_ENV)
    sa = superadmin_headers(server)
    public = {"list": "", "view": "", "create": "", "update": "", "delete": ""}
    for name, fields in (("posts", "title"), ("notifications", "text")):
        body = {"name": name, "fields": [{"name": fields, "type": "text"}], "rules": public}
        assert call(server, "POST", "/api/v1/collections", body, sa)[0] == 201
    account = {**sa, "x-account-id": "SY0000"}

    status, created = call(server, "POST", "/api/v1/records/posts", {"title": "Hello"}, account)
    assert status == 201 and created["title"] == "Hello"  # the broken after-hook changed nothing
    status, listed = call(server, "GET", "/api/v1/records/notifications", headers=account)
    assert [item["text"] for item in listed["items"]] == ["new: Hello"]

    status, aborted = call(server, "GET", "/api/v1/records/secret", headers={"x-request-id": "abort-1"})
    assert (status, aborted["message"], aborted["request_id"]) == (403, "Closed by a hook.", "abort-1")
    status, crashed = call(server, "GET", "/api/v1/records/crash")
    assert (status, crashed["code"]) == (500, "internal_error") and "secret" not in json.dumps(crashed)
    assert call(server, "GET", "/api/v1/records/slow")[0] == 404  # slow, then on to the (missing) collection

    code, stderr = server.stop()
    assert code in (0, -signal.SIGTERM), stderr
    lines = log_lines(stderr)
    failed = [line for line in lines if line["message"] == "hook failed"]
    assert [line["hook"] for line in failed] == ["20-posts.py:closed_path"]
    assert "secret detail of a crash" in failed[0]["exception"]  # in the log, never in the response
    after = [line for line in lines if line["message"].startswith("after-hook failed")]
    assert [(line["hook"], line["event"]) for line in after] == [("20-posts.py:flaky", "record.after_create")]
    slow = [line for line in lines if line["message"] == "hook is slow"]
    assert [line["hook"] for line in slow] == ["20-posts.py:closed_path"] and slow[0]["duration_ms"] >= 1000
    assert marker.read_text() == "serve\nterminate\n"


def test_hooks_dir_setting_points_elsewhere(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    elsewhere = tmp_path / "my-hooks"
    hook_file(
        elsewhere,
        "answer.py",
        """
        from snackbase.hooks import hooks, HookAbort

        @hooks.on("request.before")
        def teapot(event):
            if event.path == "/api/v1/teapot":
                raise HookAbort(418, "I am a teapot.", code="teapot")
    """,
    )
    server = start_server(env={"SNACKBASE_HOOKS_DIR": str(elsewhere)})
    status, body = call(server, "GET", "/api/v1/teapot")
    assert (status, body["code"], body["message"]) == (418, "teapot", "I am a teapot.")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "from snackbase.hooks import hooks\n\n@hooks.on('record.before_create'\ndef f(e): pass\n",
            "broken.py, line 3: SyntaxError",
        ),
        (
            "from snackbase.hooks import hooks\n\n@hooks.on('record.befor_create')\ndef f(e): pass\n",
            "broken.py, line 3: ValueError: unknown hook event 'record.befor_create'; valid events: app.boot",
        ),
        ("import json\nconfig = json.loads('{not json')\n", "broken.py, line 2: JSONDecodeError"),
    ],
)
def test_a_broken_hook_file_refuses_to_start_in_one_line(tmp_path: Path, text: str, needle: str) -> None:
    data = tmp_path / "data"
    hook_file(data / "hooks", "a_fine.py", "from snackbase.hooks import hooks\n")
    hook_file(data / "hooks", "broken.py", text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNACKBASE_")}
    result = subprocess.run(
        [*CLI, "serve", "--port", "0", "--data-dir", str(data)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"snackbase: error: hook file {data / 'hooks'}/") and needle in lines[0]


def test_info_lists_builtins_and_the_hook_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hook_file(
        data / "hooks",
        "slug.py",
        """
        from snackbase.hooks import hooks

        @hooks.on("record.before_create", collection="posts", priority=5)
        def make_slug(event):
            pass
    """,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNACKBASE_")}
    result = subprocess.run(
        [*CLI, "info", "--data-dir", str(data)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listing = json.loads(result.stdout)["hooks"]
    assert listing["files"] == ["slug.py"]
    chain = [h for h in listing["registered"] if h["event"] == "record.before_create"]
    assert chain[0] == {
        "event": "record.before_create",
        "name": "slug.py:make_slug",
        "priority": 5,
        "collection": "posts",
        "source": str(data / "hooks" / "slug.py"),
    }
    assert [h["name"] for h in chain[1:]] == [
        "builtin.account_isolation",
        "builtin.timestamps",
        "builtin.created_by",
        "builtin.audit",
    ]
    assert all(h["builtin"] for h in chain[1:])
