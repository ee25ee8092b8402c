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


def upload(port: int, token: str, field: str, data: bytes) -> dict[str, Any]:
    head, tail, _ = multipart(field, "scan.bin", len(data))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        f"{API}/records/scans",
        body=head + data + tail,
        headers={
            "authorization": f"Bearer {token}",
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    response = conn.getresponse()
    record: dict[str, Any] = json.loads(response.read())
    conn.close()
    assert response.status == 201, record
    return record


def test_downloads_through_sendfile_keep_every_check(start_server: Callable[..., ServerProcess]) -> None:
    """The server sends stored files with sendfile(2) (snackbase.http_protocol): whole files, ranges,
    HEAD, 304 and small files answer byte for byte, one keep-alive connection serves them in order, and
    a client that drops a download mid-file leaves the server serving."""
    server = start_server(
        env={"SNACKBASE_SUPERADMIN_EMAIL": EMAIL, "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD}
    )
    token = setup(server)
    data = hashlib.sha256(b"seed").digest() * (6 * MB // 32) + b"tail"  # larger than any socket buffer
    record = upload(server.port, token, "raw", data)
    small = upload(server.port, token, "small", b"just a few bytes")
    url = f"{API}/files/scans/{record['id']}/{record['raw']['name']}"
    auth = {"authorization": f"Bearer {token}"}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)

    def get(path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
        conn.request(method, path, headers={**auth, **headers})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    for _ in range(2):  # the same connection, again: nothing of one response leaks into the next
        status, headers, body = get(url)
        assert status == 200 and body == data and headers["content-length"] == str(len(data))
        assert (
            "sandbox" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
        )
        status, headers, body = get(url, range="bytes=1000000-2999999")
        assert status == 206 and body == data[1000000:3000000]
        assert headers["content-range"] == f"bytes 1000000-2999999/{len(data)}"
        status, headers, body = get(url, range="bytes=-100")
        assert status == 206 and body == data[-100:]
    status, headers, body = get(url, "HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(data))
    status, _, body = get(url, **{"if-none-match": headers["etag"]})
    assert status == 304 and body == b""
    status, headers, body = get(url + "?download=1")
    assert status == 200 and body == data and headers["content-disposition"].startswith("attachment")
    status, _, body = get(f"{API}/files/scans/{small['id']}/{small['small']['name']}")
    assert status == 200 and body == b"just a few bytes"
    status, _, _ = get(url, **{"authorization": "Bearer nope"})
    assert status == 401
    conn.close()

    # a client that reads a little and hangs up: the server carries on
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    with Http(server.port) as client:
        assert client.call("GET", "/health")[0] == 200
    status_line = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    status_line.request("GET", url, headers=auth)
    again = status_line.getresponse()
    assert again.status == 200 and hashlib.sha256(again.read()).digest() == hashlib.sha256(data).digest()
    status_line.close()


def test_a_postgresql_node_with_local_files_serves_them_and_warns(
    start_server: Callable[..., ServerProcess], pg_url: str
) -> None:
    """On PostgreSQL the nodes share no disk: a node with local file storage serves files (one node)
    and says in its log that several nodes need S3 or one shared volume (docs/scaling.md)."""
    server = start_server(
        env={"SNACKBASE_DATABASE_URL": pg_url, "SNACKBASE_SUPERADMIN_EMAIL": EMAIL,
             "SNACKBASE_SUPERADMIN_PASSWORD": PASSWORD}
    )  # fmt: skip
    token = setup(server)
    record = upload(server.port, token, "small", b"on postgresql")
    url = f"{API}/files/scans/{record['id']}/{record['small']['name']}"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", url, headers={"authorization": f"Bearer {token}"})
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"on postgresql"
    conn.close()
    assert (server.data_dir / "files").is_dir()
    _, stderr = server.stop()
    assert "SNACKBASE_FILES_STORAGE=s3" in stderr and "shared volume" in stderr
