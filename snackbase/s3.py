"""A small S3-compatible object storage client: AWS Signature Version 4 over the standard library.

Why not boto3: it and botocore are ~80 MB installed, several times the whole executable's budget
(≤ 15 MB). SnackBase needs a handful of calls — PUT an object from a file (in one request, or as a multipart
upload for backup archives), GET it (with a Range), HEAD, DELETE and list them — and SigV4 for them is
the ~60 lines below. Calls are blocking (http.client); the server
runs them on a thread (`asyncio.to_thread`) so the event loop never waits on the network.
Tested against moto's S3 server (tests/test_files_s3.py).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import msgspec

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
# Multipart uploads: S3 takes parts of 5 MiB to 5 GiB (the last may be smaller) and at most 10,000 of
# them. 8 MiB parts keep one part in memory at a time (it is hashed for the signature, then sent) and
# cover archives up to ~80 GB; `upload_stream` grows the part size past that.
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000


class S3Error(Exception):
    """An S3 answer other than success (the status and the start of the body)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"S3 answered {status}: {body[:200]!r}")
        self.status = status


class S3Config(msgspec.Struct, frozen=True):
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

    def upload_stream(
        self, key: str, stream: BinaryIO, size: int, content_type: str, part_size: int = PART_SIZE
    ) -> None:
        """Uploads `size` bytes read from `stream`, holding at most one part in memory: one PUT when it
        fits in a part, else a multipart upload. The object appears only when the upload completes; a
        failed multipart upload is aborted (its parts deleted), so nothing partial is ever listed."""
        part_size = max(part_size, -(-size // MAX_PARTS))
        if size <= part_size:
            data = _read_exactly(stream, size)
            self._put_bytes(key, data, {"content-type": content_type})
            return
        upload_id = self._create_multipart(key, content_type)
        try:
            etags = []
            for number in range(1, -(-size // part_size) + 1):
                data = _read_exactly(stream, min(part_size, size - (number - 1) * part_size))
                query = {"partNumber": str(number), "uploadId": upload_id}
                response = self._put_bytes(key, data, {}, query)
                etags.append(response.getheader("etag") or "")
            self._complete_multipart(key, upload_id, etags)
        except BaseException:
            try:
                response = self._send("DELETE", key, {}, None, EMPTY_SHA256, {"uploadId": upload_id})
                response.read()
                response.close()
            except (OSError, http.client.HTTPException):
                pass  # the bucket's lifecycle rule for incomplete uploads is the last resort
            raise

    def list_objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with `prefix`, in key order (ListObjectsV2)."""
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            response = self._send("GET", "", {}, None, EMPTY_SHA256, query, bucket_root=True)
            body = response.read()
            response.close()
            if response.status != 200:
                raise S3Error(response.status, body)
            # The endpoint is the operator's own storage; expat refuses external entities.
            root = _xml(body)
            for item in root.iterfind("{*}Contents"):
                yield item.findtext("{*}Key", ""), int(item.findtext("{*}Size", "0"))
            token = root.findtext("{*}NextContinuationToken")
            if root.findtext("{*}IsTruncated") != "true" or not token:
                return

    def _put_bytes(
        self, key: str, data: bytes, headers: dict[str, str], query: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        headers = {**headers, "content-length": str(len(data))}
        response = self._send("PUT", key, headers, io.BytesIO(data), hashlib.sha256(data).hexdigest(), query)
        body = response.read()
        response.close()
        if not 200 <= response.status < 300:
            raise S3Error(response.status, body)
        return response

    def _create_multipart(self, key: str, content_type: str) -> str:
        response = self._send(
            "POST", key, {"content-type": content_type}, None, EMPTY_SHA256, {"uploads": ""}
        )
        body = response.read()
        response.close()
        if response.status != 200:
            raise S3Error(response.status, body)
        upload_id = _xml(body).findtext("{*}UploadId")
        if not upload_id:
            raise S3Error(response.status, body)
        return upload_id

    def _complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_text(etag)}</ETag></Part>"
            for n, etag in enumerate(etags, 1)
        )
        data = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        headers = {"content-type": "application/xml", "content-length": str(len(data))}
        sha = hashlib.sha256(data).hexdigest()
        response = self._send("POST", key, headers, io.BytesIO(data), sha, {"uploadId": upload_id})
        body = response.read()
        response.close()
        # S3 may answer 200 and still report an error in the body (it sends the status before it is done).
        if response.status != 200 or b"<Error>" in body:
            raise S3Error(response.status, body)

    def _send(
        self,
        method: str,
        key: str,
        headers: dict[str, str],
        body: BinaryIO | None,
        payload_sha256: str,
        query: dict[str, str] | None = None,
        bucket_root: bool = False,
    ) -> http.client.HTTPResponse:
        path = (self._base or "/") if bucket_root else self._base + "/" + quote(key, safe="/~")
        canonical_query = self.canonical_query(query or {})
        signed = sign(
            self.config, method, self._host, path, headers, payload_sha256, datetime.now(UTC), canonical_query
        )
        cls = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
        conn = cls(
            self._host, timeout=self.timeout_s, blocksize=1024 * 1024
        )  # uploads in 1 MiB sends, not 8 KiB
        conn.request(method, path + (f"?{canonical_query}" if query else ""), body=body, headers=signed)
        return conn.getresponse()

    @staticmethod
    def canonical_query(query: dict[str, str]) -> str:
        """S3's canonical query string: names and values percent-encoded (`/` too), sorted by name."""
        return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise OSError(f"the file ended {size - len(data)} bytes early (it changed while being uploaded)")
    return data


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


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
    canonical_query: str = "",
) -> dict[str, str]:
    """The headers of a request signed with AWS Signature Version 4; `canonical_query` is the query
    string already encoded and sorted by name (S3's canonical form)."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    out = {**{k.lower(): v for k, v in headers.items()}, "host": host,
           "x-amz-date": amz_date, "x-amz-content-sha256": payload_sha256}  # fmt: skip
    names = sorted(out)
    canonical_headers = "".join(f"{n}:{' '.join(str(out[n]).split())}\n" for n in names)
    signed_headers = ";".join(names)
    canonical = "\n".join((method, path, canonical_query, canonical_headers, signed_headers, payload_sha256))
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


def _xml(body: bytes) -> Any:
    """S3's XML answers (listings, multipart uploads). ElementTree is imported here, on first use: an
    idle server with local storage never needs it (about 1.5 MiB of RSS)."""
    import xml.etree.ElementTree as ET

    return ET.fromstring(body)
