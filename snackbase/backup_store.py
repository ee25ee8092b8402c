"""Where finished backup archives are kept (SNACKBASE_BACKUP_STORAGE): the backup dir on local disk
(default), or the S3-compatible bucket of the file storage under the `backups/` prefix.

An archive is always built on local disk first (snackbase.backup writes it into the backup dir); the
S3 store then uploads it — streamed from the file, one multipart part in memory at a time — and
removes the local copy. An S3 object appears only when its upload completes and a failed multipart
upload is aborted, so a listed archive is always whole in both stores. Reading an archive from S3
(verify, restore) downloads it to a temporary file first; the archive code only reads local files.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from snackbase import backup
from snackbase.backup import NAME_RE, BackupError, BackupInfo
from snackbase.config import Settings
from snackbase.s3 import PART_SIZE, S3Client, S3Config, S3Error

PREFIX = "backups/"
_CHUNK = 1024 * 1024


class StorageError(BackupError):
    """The archive store itself failed (an S3 upload or download), not the archive."""


class ArchiveStore(ABC):
    """The interface; see LocalArchives and S3Archives. Every method blocks (run it off the loop)."""

    kind = "none"

    @abstractmethod
    def location(self, name: str = "") -> str:
        """Where an archive (or, without a name, every archive) is, for people: a path or s3://…"""
        ...

    @abstractmethod
    def list_archives(self) -> list[BackupInfo]:
        """Every complete archive, newest first; an unreadable one with an empty manifest."""
        ...

    @abstractmethod
    def names(self) -> list[str]: ...

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def info(self, name: str) -> BackupInfo: ...

    @abstractmethod
    def keep(self, made: BackupInfo) -> BackupInfo:
        """Takes an archive just written into the backup dir into the store."""
        ...

    @abstractmethod
    def fetched(self, name: str) -> contextlib.AbstractContextManager[Path]:
        """The archive as a local file while the context lasts."""
        ...

    def local_path(self, name: str) -> Path | None:
        """The archive's file when it is on local disk (served as is), else None."""
        return None

    def chunks(self, name: str) -> AsyncIterator[bytes]:
        """The archive's bytes, for a store whose archives are not on local disk (`local_path` None)."""
        raise StorageError(f"the {self.kind} archive store serves its archives as files")

    @abstractmethod
    def delete(self, name: str) -> None: ...

    def prune(self, keep: int) -> list[str]:
        """Deletes the oldest archives beyond the newest `keep` (0 keeps all); returns their names."""
        if keep <= 0:
            return []
        names = sorted(self.names())
        doomed = names[:-keep] if len(names) > keep else []
        for name in doomed:
            self.delete(name)
        return doomed


class LocalArchives(ArchiveStore):
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, name: str = "") -> str:
        return str(self.root / name) if name else str(self.root)

    def list_archives(self) -> list[BackupInfo]:
        return backup.list_backups(self.root)

    def names(self) -> list[str]:
        return [info.name for info in self.list_archives()]

    def exists(self, name: str) -> bool:
        return bool(NAME_RE.fullmatch(name)) and (self.root / name).is_file()

    def info(self, name: str) -> BackupInfo:
        return backup.read_info(self.root / name)

    def keep(self, made: BackupInfo) -> BackupInfo:
        return made

    @contextlib.contextmanager
    def fetched(self, name: str) -> Iterator[Path]:
        yield self.root / name

    def local_path(self, name: str) -> Path | None:
        return self.root / name

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def prune(self, keep: int) -> list[str]:
        return backup.prune(self.root, keep)


class S3Archives(ArchiveStore):
    kind = "s3"

    def __init__(self, client: S3Client, staging: Path, part_size: int = PART_SIZE) -> None:
        self.client = client
        self.staging = staging  # where downloads for verify and restore are written
        self.part_size = part_size

    def location(self, name: str = "") -> str:
        return f"s3://{self.client.config.bucket}/{PREFIX}{name}"

    def _objects(self) -> dict[str, int]:
        found = {key[len(PREFIX) :]: size for key, size in self.client.list_objects(PREFIX)}
        return {name: size for name, size in found.items() if NAME_RE.fullmatch(name)}

    def names(self) -> list[str]:
        return list(self._objects())

    def list_archives(self) -> list[BackupInfo]:
        """One request for the names, then one per archive that reads only its manifest."""
        items = []
        for name, size in sorted(self._objects().items(), reverse=True):
            try:
                items.append(BackupInfo(name, Path(name), size, self._manifest(name)))
            except (BackupError, S3Error, OSError):
                items.append(BackupInfo(name, Path(name), size, {}))
        return items

    def exists(self, name: str) -> bool:
        return bool(NAME_RE.fullmatch(name)) and self.client.exists(PREFIX + name)

    def info(self, name: str) -> BackupInfo:
        for key, size in self.client.list_objects(PREFIX + name):
            if key == PREFIX + name:
                return BackupInfo(name, Path(name), size, self._manifest(name))
        raise BackupError(f"no archive {name} in {self.location()}")

    def _manifest(self, name: str) -> dict[str, object]:
        # Closing the response after the first member ends the download there.
        response = self.client.get(PREFIX + name)
        try:
            return backup.read_manifest_from(response, name)
        finally:
            response.close()

    def keep(self, made: BackupInfo) -> BackupInfo:
        """Uploads the archive, then removes the local copy (also when the upload fails: the backup
        dir is only where archives are built, and a failed backup is reported, not kept)."""
        try:
            with made.path.open("rb") as handle:
                self.client.upload_stream(
                    PREFIX + made.name, handle, made.size, "application/x-tar", self.part_size
                )
        except (S3Error, OSError) as exc:
            raise StorageError(f"uploading {made.name} to {self.location()} failed: {exc}") from None
        finally:
            made.path.unlink(missing_ok=True)
        return BackupInfo(made.name, Path(made.name), made.size, made.manifest)

    @contextlib.contextmanager
    def fetched(self, name: str) -> Iterator[Path]:
        self.staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=self.staging) as tmp:
            target = Path(tmp) / name
            try:
                response = self.client.get(PREFIX + name)
            except S3Error as exc:
                if exc.status == 404:
                    raise BackupError(f"no archive {name} in {self.location()}") from None
                raise StorageError(f"downloading {name} from {self.location()} failed: {exc}") from None
            try:
                with target.open("wb") as out:
                    shutil.copyfileobj(response, out, _CHUNK)
            finally:
                response.close()
            yield target

    async def chunks(self, name: str) -> AsyncIterator[bytes]:
        response = await asyncio.to_thread(self.client.get, PREFIX + name)
        try:
            while chunk := await asyncio.to_thread(response.read, _CHUNK):
                yield chunk
        finally:
            response.close()

    def delete(self, name: str) -> None:
        self.client.delete(PREFIX + name)


def s3_config(settings: Settings) -> S3Config:
    return S3Config(
        settings.s3_endpoint, settings.s3_bucket, settings.s3_region, settings.s3_access_key,
        settings.s3_secret_key, settings.s3_force_path_style,
    )  # fmt: skip


def store_from(settings: Settings) -> ArchiveStore:
    if settings.backup_storage == "s3":
        return S3Archives(S3Client(s3_config(settings)), settings.backups_path)
    return LocalArchives(settings.backups_path)
