"""Uploads against a real server process: a 100 MB upload is streamed (the server's peak memory grows
by a few MB, not 100), an over-size upload is answered 413 before the client has sent it all, and the
file comes back byte for byte with Range."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

from tests.conftest import ServerProcess
from tests.test_concurrency import EMAIL, PASSWORD, Http, login

API = "/api/v1"
MB = 1024 * 1024
BOUNDARY = "----snackbase-test-boundary"


def peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def setup(server: ServerProcess) -> str:
    with Http(server.port) as http:
        root = login(http, "SY0000")["access_token"]
        body = {
            "name": "scans",
            "rules": dict.fromkeys(("list", "view", "create", "update", "delete"), ""),
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "raw", "type": "file", "options": {"max_size": 200 * MB}},
                {"name": "small", "type": "file", "options": {"max_size": MB}},
            ],
        }
        assert http.call("POST", f"{API}/collections", body, root)[0] == 201
        signup = {"account_name": "Lab", "email": "lead@example.com", "password": PASSWORD}
        status, registered = http.call("POST", f"{API}/auth/register", signup)
        assert status == 201, registered
        return str(registered["access_token"])


def multipart(field: str, filename: str, size: int) -> tuple[bytes, bytes, int]:
    head = (
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="title"\r\n\r\nbig\r\n'
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "content-type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head, tail, len(head) + size + len(tail)


def content_chunks(size: int) -> Iterator[bytes]:
    block = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(size // len(block)):
        yield block


def test_100_mb_upload_streams_in_flat_memory(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(
        env={"SNACKBASE_SUPERADMIN_EMAIL": EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD}
    )
    token = setup(server)
    size = 100 * MB
    head, tail, length = multipart("raw", "run.bin", size)
    before = peak_rss_kb(server.proc.pid)

    def body() -> Iterator[bytes]:
        yield head
        yield from content_chunks(size)
        yield tail

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request(
        "POST",
        f"{API}/records/scans",
        body=body(),
        headers={
            "authorization": f"Bearer {token}",
            "content-length": str(length),
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    response = conn.getresponse()
    record: dict[str, Any] = json.loads(response.read())
    assert response.status == 201, record
    growth_mb = (peak_rss_kb(server.proc.pid) - before) / 1024
    print(f"peak RSS growth during a 100 MB upload: {growth_mb:.1f} MB")
    assert growth_mb < 16, growth_mb
    expected = hashlib.sha256()
    for chunk in content_chunks(size):
        expected.update(chunk)
    assert record["raw"]["size"] == size and record["raw"]["sha256"] == expected.hexdigest()
    url = f"{API}/files/scans/{record['id']}/{record['raw']['name']}"
    conn.request("GET", url, headers={"authorization": f"Bearer {token}", "range": f"bytes={size - 1000}-"})
    part = conn.getresponse()
    assert part.status == 206 and part.read() == (bytes(range(256)) * 4)[-1000:]
    conn.close()


def test_over_size_is_refused_before_the_body_ends(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(
        env={"SNACKBASE_SUPERADMIN_EMAIL": EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD}
    )
    token = setup(server)
    head, _, length = multipart("small", "big.bin", 500 * MB)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        request = (
            f"POST {API}/records/scans HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n"
            f"content-type: multipart/form-data; boundary={BOUNDARY}\r\ncontent-length: {length}\r\n\r\n"
        )
        sock.sendall(request.encode() + head)
        for block in content_chunks(2 * MB):  # 2 MB of the 500 MB declared, then wait for the answer
            sock.sendall(block)
        answer = ""
        while "file_too_large" not in answer and (chunk := sock.recv(65536)):
            answer += chunk.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert '"code":"file_too_large"' in answer
    staging = server.data_dir / "files" / ".staging"
    assert list(staging.iterdir()) == []
