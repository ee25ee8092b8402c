"""Where stored files live: a directory on local disk (default `<data-dir>/files/`) or an S3-compatible
bucket. Both take a file already staged on local disk (streamed there by snackbase.uploads) and serve
byte ranges of it back. Keys are `<collection id>/<file name>`; names carry a random suffix, so a key
is written once and never changes — which is why a stored file's SHA-256 is its ETag.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path

from snackbase.s3 import S3Client

# Measured on a 5 MB download: 1 MiB chunks served ~15% more per second than 256 KiB (fewer sends
# through the middleware stack and the transport).
CHUNK = 1024 * 1024


class Storage(ABC):
    """The interface; see LocalStorage and S3Storage."""

    kind = "none"

    @abstractmethod
    async def put(self, key: str, staged: Path, size: int, sha256: str, content_type: str) -> None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes start..end (inclusive) of the stored file."""
        ...

    @abstractmethod
    async def read(self, key: str) -> bytes: ...


class LocalStorage(Storage):
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key

    async def put(self, key: str, staged: Path, size: int, sha256: str, content_type: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)  # same file system (the staging dir is under the root): atomic

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        # Plain reads on the loop: a 1 MiB read from the page cache takes ~100 µs, far less than a hop
        # to a thread and back for each chunk.
        with open(self.path(key), "rb") as handle:
            handle.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    async def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()


class S3Storage(Storage):
    kind = "s3"

    def __init__(self, client: S3Client, prefix: str = "files/") -> None:
        self.client = client
        self.prefix = prefix  # the bucket may later hold backups too

    async def put(self, key: str, staged: Path, size: int, sha256: str, content_type: str) -> None:
        def upload() -> None:
            with open(staged, "rb") as handle:
                self.client.put_file(self.prefix + key, handle, size, sha256, content_type)

        await asyncio.to_thread(upload)
        staged.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self.client.delete(self.prefix + key)

    def exists(self, key: str) -> bool:
        return self.client.exists(self.prefix + key)

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        response = await asyncio.to_thread(self.client.get, self.prefix + key, f"bytes={start}-{end}")
        try:
            while chunk := await asyncio.to_thread(response.read, CHUNK):
                yield chunk
        finally:
            response.close()

    async def read(self, key: str) -> bytes:
        return await asyncio.to_thread(self.client.read, self.prefix + key)
