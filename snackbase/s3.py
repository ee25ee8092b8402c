"""A small S3-compatible object storage client: AWS Signature Version 4 over the standard library.

Why not boto3: it and botocore are ~80 MB installed, several times the whole executable's budget
(≤ 15 MB). SnackBase needs four calls — PUT an object from a file, GET it (with a Range), HEAD and
DELETE it — and SigV4 for them is the ~60 lines below. Calls are blocking (http.client); the server
runs them on a thread (`asyncio.to_thread`) so the event loop never waits on the network.
Tested against moto's S3 server (tests/test_files_s3.py).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO
from urllib.parse import quote, urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"


class S3Error(Exception):
    """An S3 answer other than success (the status and the start of the body)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"S3 answered {status}: {body[:200]!r}")
        self.status = status


@dataclass(frozen=True)
class S3Config:
    endpoint: str  # https://s3.eu-central-1.amazonaws.com, http://127.0.0.1:9000, …
    bucket: str
    region: str
    access_key: str
    secret_key: str
    path_style: bool = True  # endpoint/bucket/key (MinIO, moto, most self-hosted); else bucket.endpoint/key


class S3Client:
    def __init__(self, config: S3Config, timeout_s: float = 60.0) -> None:
        self.config = config
        self.timeout_s = timeout_s
        parts = urlsplit(config.endpoint)
        self._secure = parts.scheme == "https"
        host = parts.netloc
        self._host = host if config.path_style else f"{config.bucket}.{host}"
        self._base = parts.path.rstrip("/") + (f"/{config.bucket}" if config.path_style else "")

    def put_file(self, key: str, stream: BinaryIO, size: int, sha256: str, content_type: str) -> None:
        headers = {"content-type": content_type, "content-length": str(size)}
        response = self._send("PUT", key, headers, stream, sha256)
        _read_ok(response)

    def get(self, key: str, range_header: str | None = None) -> http.client.HTTPResponse:
        """The open response (200 or 206); the caller reads and closes it."""
        headers = {"range": range_header} if range_header else {}
        response = self._send("GET", key, headers, None, EMPTY_SHA256)
        if response.status not in (200, 206):
            _read_ok(response)
        return response

    def read(self, key: str) -> bytes:
        response = self.get(key)
        try:
            return response.read()
        finally:
            response.close()

    def delete(self, key: str) -> None:
        response = self._send("DELETE", key, {}, None, EMPTY_SHA256)
        if response.status != 404:  # already gone is what we wanted
            _read_ok(response)
        else:
            response.read()

    def exists(self, key: str) -> bool:
        response = self._send("HEAD", key, {}, None, EMPTY_SHA256)
        response.read()
        if response.status in (200, 404):
            return response.status == 200
        raise S3Error(response.status, b"")

    def _send(
        self, method: str, key: str, headers: dict[str, str], body: BinaryIO | None, payload_sha256: str
    ) -> http.client.HTTPResponse:
        path = self._base + "/" + quote(key, safe="/~")
        signed = sign(self.config, method, self._host, path, headers, payload_sha256, datetime.now(UTC))
        cls = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
        conn = cls(
            self._host, timeout=self.timeout_s, blocksize=1024 * 1024
        )  # uploads in 1 MiB sends, not 8 KiB
        conn.request(method, path, body=body, headers=signed)
        return conn.getresponse()


def _read_ok(response: http.client.HTTPResponse) -> None:
    body = response.read()
    response.close()
    if not 200 <= response.status < 300:
        raise S3Error(response.status, body)


def sign(
    config: S3Config,
    method: str,
    host: str,
    path: str,
    headers: dict[str, str],
    payload_sha256: str,
    now: datetime,
) -> dict[str, str]:
    """The headers of a request signed with AWS Signature Version 4 (no query string is ever used)."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    out = {**{k.lower(): v for k, v in headers.items()}, "host": host,
           "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256}  # fmt: skip
    names = sorted(out)
    canonical_headers = "".join(f"{n}:{' '.join(str(out[n]).split())}\n" for n in names)
    signed_headers = ";".join(names)
    canonical = "\n".join((method, path, "", canonical_headers, signed_headers, payload_sha256))
    scope = f"{day}/{config.region}/s3/aws4_request"
    to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()))
    key = _hmac(("AWS4" + config.secret_key).encode(), day)
    for part in (config.region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={config.access_key}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return out


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()
