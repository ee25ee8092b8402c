"""File storage on an S3-compatible server: moto's S3 server (PyPI `moto[server]`, a test dependency),
started on a free local port by this module. The same API tests as on local disk, plus what the bucket
holds afterwards."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from snackbase import files
from snackbase.config import Settings
from snackbase.s3 import EMPTY_SHA256, S3Client, S3Config, S3Error, sign
from tests.conftest import free_port
from tests.test_files import API, World, make_world, png

BUCKET = "snackbase-test"
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> Any:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=BUCKET)
    yield s3
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    s3.delete_bucket(Bucket=BUCKET)


def keys(bucket: Any) -> list[str]:
    return sorted(item["Key"] for item in bucket.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def keys_soon(bucket: Any, expected: list[str]) -> list[str]:
    """The bucket's keys once they are `expected`: removed objects are deleted on a thread after the
    response, so this waits up to 5 s for them to go."""
    deadline = time.monotonic() + 5
    while (found := keys(bucket)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


@pytest.fixture
def w(settings: Settings, s3_endpoint: str, bucket: Any) -> Iterator[World]:
    settings = replace(
        settings,
        files_storage="s3",
        s3_endpoint=s3_endpoint,
        s3_bucket=BUCKET,
        s3_region="us-east-1",
        s3_access_key="test",
        s3_secret_key="test",
        files_quota_bytes=1_000_000,
    )
    yield from make_world(settings)


def test_upload_download_range_thumb_delete(w: World, bucket: Any) -> None:
    image = png(120, 80)
    record = w.upload(w.user, {"title": "t"}, {"photo": ("scan.png", image, "image/png")})
    meta = record["photo"]
    notes = w.client.app.state.registry.get(w.conn, "notes")  # type: ignore[attr-defined]
    assert keys(bucket) == [f"files/{notes.id}/{meta['name']}"]
    assert w.stored() == [] and w.staging() == []  # nothing kept on local disk
    obj = bucket.get_object(Bucket=BUCKET, Key=f"files/{notes.id}/{meta['name']}")["Body"].read()
    assert hashlib.sha256(obj).hexdigest() == meta["sha256"]
    url, h = w.url(record, meta), w.user.headers
    got = w.client.get(url, headers=h)
    assert got.status_code == 200 and got.content == image and got.headers["content-type"] == "image/png"
    part = w.client.get(url, headers={**h, "range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == image[10:20]
    assert w.client.get(url, headers={**h, "if-none-match": got.headers["etag"]}).status_code == 304
    thumb = w.client.get(url + "?thumb=50x50", headers=h)
    assert Image.open(io.BytesIO(thumb.content)).size == (50, 50)
    # replacing the file deletes the old object after commit; deleting the record deletes the rest
    record = w.upload(
        w.user, {}, {"photo": ("b.png", png(color="blue"), "image/png")}, status=200, record_id=record["id"]
    )
    expected = [f"files/{notes.id}/{record['photo']['name']}"]
    assert keys_soon(bucket, expected) == expected
    assert w.client.delete(f"{API}/records/notes/{record['id']}", headers=h).status_code == 204
    assert keys_soon(bucket, []) == []


def test_failures_leave_no_object(w: World, bucket: Any) -> None:
    # validation fails after the upload reached the bucket: the object is deleted again
    response = w.client.post(
        f"{API}/records/notes", headers=w.user.headers, files={"photo": ("a.png", png(), "image/png")}
    )
    assert response.status_code == 400 and keys(bucket) == []
    # over the quota
    big = [("docs", (f"{i}.bin", b"\x01" * 99_000, "application/octet-stream")) for i in range(3)]
    for _ in range(3):
        w.upload(w.user, {"title": "t"}, big)
    response = w.client.post(f"{API}/records/notes", headers=w.user.headers, data={"title": "t"}, files=big)
    assert response.status_code == 413 and response.json()["code"] == "quota_exceeded"
    assert len(keys(bucket)) == 9 and w.staging() == []


def test_sweeper_deletes_orphaned_objects(w: World, bucket: Any) -> None:
    record = w.upload(w.user, {"title": "t"}, {"photo": ("a.png", png(), "image/png")})
    notes = w.client.app.state.registry.get(w.conn, "notes")  # type: ignore[attr-defined]
    from snackbase.unit_of_work import unit_of_work

    with unit_of_work(w.conn):
        files._to_trash(
            w.conn, [files.storage_key(notes, record["photo"]["name"])], "2000-01-01T00:00:00.000Z"
        )
    assert files.sweep(w.conn) == 1 and keys(bucket) == []


def test_signature_is_checked(s3_endpoint: str, bucket: Any, tmp_path: Path) -> None:
    """The hand-written SigV4 client against the server directly: a put/get round trip, and a wrong key."""
    client = S3Client(S3Config(s3_endpoint, BUCKET, "us-east-1", "test", "test"))
    source = tmp_path / "x.bin"
    source.write_bytes(b"hello s3")
    with open(source, "rb") as handle:
        client.put_file("dir/x y.bin", handle, 8, hashlib.sha256(b"hello s3").hexdigest(), "text/plain")
    assert client.read("dir/x y.bin") == b"hello s3" and client.exists("dir/x y.bin")
    client.delete("dir/x y.bin")
    assert not client.exists("dir/x y.bin")
    with pytest.raises(S3Error):
        S3Client(S3Config(s3_endpoint, "no-such-bucket", "us-east-1", "test", "test")).read("x")


def test_signature_matches_the_aws_example() -> None:
    """AWS's documented example of a signed GET Object (Signature Version 4, header-based auth)."""
    config = S3Config(
        "https://s3.amazonaws.com",
        "examplebucket",
        "us-east-1",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        path_style=False,
    )
    headers = sign(
        config,
        "GET",
        "examplebucket.s3.amazonaws.com",
        "/test.txt",
        {"Range": "bytes=0-9"},
        EMPTY_SHA256,
        datetime(2013, 5, 24, tzinfo=UTC),
    )
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_a_batch_with_uploads_is_one_change_in_the_bucket_too(w: World, bucket: Any) -> None:
    """A multipart batch on S3: the good batch stores every object; a batch whose last operation fails
    leaves none (the objects already PUT are deleted before the answer)."""
    batch = {"create": [{"title": "A", "photo": {"@part": "p"}}, {"title": "B", "docs": {"@part": "d"}}]}
    parts = [("p", ("a.png", png(), "image/png")), ("d", ("d.txt", b"delta", "text/plain"))]
    data = {"@jsonPayload": json.dumps(batch)}
    response = w.client.post(f"{API}/records/notes/batch", headers=w.user.headers, data=data, files=parts)
    assert response.status_code == 200, response.text
    assert len(keys(bucket)) == 2 and w.staging() == []
    before = keys(bucket)
    batch["create"][1].pop("title")  # title is required: operation create.1 fails after both PUTs
    data = {"@jsonPayload": json.dumps(batch)}
    response = w.client.post(f"{API}/records/notes/batch", headers=w.user.headers, data=data, files=parts)
    assert response.status_code == 400 and "create.1.title" in response.json()["fields"]
    assert keys(bucket) == before and w.staging() == []
