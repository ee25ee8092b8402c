"""Online backups: one `.tar` archive holding a consistent copy of the database, the hooks and files
directories, and a manifest (versions, time, SHA-256 of every part, the audit chain heads).

The copy uses SQLite's online backup API from a connection of its own, on a thread of its own, in
steps of BACKUP_STEP_PAGES pages with a short sleep between them, so the server keeps serving reads
and writes while it runs. Before the first step the backup opens a read transaction and holds it to
the last: in WAL mode that pins one snapshot (every write acknowledged before it, nothing after) and
writers never wait for it. Without it SQLite ends its read transaction after each step, and a write
from any other connection in between makes the next step start the whole copy over — under a steady
write load a big database would never finish (the lock PocketBase takes instead stops all writes).

The archive is written as `<name>.tar.partial` and renamed when complete, so a listed archive is
always whole. Archives are uncompressed: gzip of a 1 GB database costs ~30 s of a core the server
needs, and the backups directory is the place to add compression or deduplication of your own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import apsw
import msgspec

from snackbase import __version__, audit
from snackbase.db import connect, fetch_all
from snackbase.ids import SYSTEM_ACCOUNT_ID
from snackbase.migrations import current_version, latest_version
from snackbase.times import format_ts
from snackbase.unit_of_work import unit_of_work

if TYPE_CHECKING:
    import tarfile  # imported where used: backups only, not loaded by an idle server

log = logging.getLogger("snackbase.backup")

MANIFEST = "manifest.json"
DB_PART = "snackbase.db"
FORMAT = 1
# The copy, the checksums and the archive are all paced (Pacer): after every few milliseconds of work
# the backup thread sleeps three times as long, so it takes at most a quarter of a core from the
# event loop it shares the process (and the GIL) with. Measured with a 1 GB database under a create
# load on one core (bench/backup_load.py, docs/operations.md): at half a core creates fell to 41% of
# their rate without a backup, at a quarter to 80%; the backup took 56 s and 74 s. 1,024 pages of
# 2 KiB (2 MiB) per backup step.
BACKUP_STEP_PAGES = 1024
BACKUP_DUTY = 0.25
_WORK_SLICE_S = 0.004
NAME_RE = re.compile(r"snackbase-\d{8}T\d{6}(?:-\d{3})?Z\.tar")
_CHUNK = 1 << 20  # reads of an archive's parts, to hash or to copy them


class BackupError(Exception):
    """A backup cannot be made, read or restored; the message says why, for one CLI line or a 4xx."""


class BackupInfo(msgspec.Struct, frozen=True):
    name: str
    path: Path
    size: int
    manifest: dict[str, Any]
    made: bool = True  # False: a scheduled slot another server process had already made

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name,
            "size": self.size,
            "created_at": m.get("created_at"),
            "snackbase_version": m.get("snackbase_version"),
            "schema_version": m.get("schema_version"),
            "trigger": m.get("trigger"),
            "parts": len(m.get("parts", {})),
        }


# --- making an archive -----------------------------------------------------------------------------

# One backup at a time per process (a second waits: two 1 GB copies at once help nobody); the file
# lock in the backups directory does the same across server processes and the CLI.
_running = threading.Lock()


def archive_name(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"snackbase-{moment:%Y%m%dT%H%M%S}-{moment.microsecond // 1000:03d}Z.tar"


class Pacer:
    """Spends at most `duty` of the wall-clock time working: `tick()` after each small unit of work
    sleeps once a slice of work has accumulated. With the event loop idle the sleeps cost only time;
    with it busy they leave it the core (and the GIL) at least half of the time."""

    def __init__(self, duty: float = BACKUP_DUTY) -> None:
        self.duty = duty
        self.since = time.monotonic()

    def tick(self) -> None:
        worked = time.monotonic() - self.since
        if worked >= _WORK_SLICE_S:
            time.sleep(worked * (1 - self.duty) / self.duty)
            self.since = time.monotonic()


def _lower_priority() -> None:
    """Nice the calling thread (Linux schedules threads individually): under contention for the CPU
    the event loop wins, idle the backup runs at full speed. Best effort, never fatal. An
    unprivileged thread cannot be un-niced, so the server runs each backup on a thread of its own."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def copy_database(
    source_path: Path, dest_path: Path, step_pages: int = BACKUP_STEP_PAGES, pacer: Pacer | None = None
) -> None:
    """Copies the live database at `source_path` into the new file `dest_path`, in steps (see above).

    Blocking: call it on a thread of its own, never on the event loop."""
    pacer = pacer or Pacer()
    source = connect(source_path, statement_timeout_ms=24 * 3600 * 1000)
    dest = apsw.Connection(str(dest_path))
    try:
        # The snapshot: a read transaction held over every step (see the module docstring).
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        with dest.backup("main", source, "main") as job:
            while not job.done:
                job.step(step_pages)
                pacer.tick()
        source.execute("COMMIT")
        # The copy keeps WAL mode in its header; a backup is one self-contained file.
        dest.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        dest.close()
        source.close()


def sha256_file(path: Path, pacer: Pacer | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if pacer is not None:
                pacer.tick()
    return digest.hexdigest()


class _PacedReader(io.RawIOBase):
    """A file whose reads tick the pacer (tarfile copies a member in 16 KiB reads)."""

    def __init__(self, path: Path, pacer: Pacer) -> None:
        self.handle = path.open("rb")
        self.pacer = pacer

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.pacer.tick()
        return data

    def close(self) -> None:
        self.handle.close()
        super().close()


def chain_heads(db_path: Path) -> dict[str, dict[str, Any]]:
    """The end of every account's audit chain in the database file: {account: {account_seq, seq, hash}}."""
    conn = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = fetch_all(
            conn, "SELECT account_id, account_seq, seq, hash FROM audit_heads ORDER BY account_id"
        )
        return {
            r["account_id"]: {"account_seq": r["account_seq"], "seq": r["seq"], "hash": r["hash"]}
            for r in rows
        }
    finally:
        conn.close()


def _schema_version(db_path: Path) -> int:
    conn = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return current_version(conn)
    finally:
        conn.close()


def _tree_files(root: Path) -> list[Path]:
    """Regular files under `root`, sorted; hidden caches (__pycache__) are left out."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts
    )


@contextlib.contextmanager
def backup_lock(backups_dir: Path) -> Iterator[None]:
    """Held while an archive is written: one backup at a time in this process and across processes."""
    backups_dir.mkdir(parents=True, exist_ok=True)
    with _running, open(backups_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create_backup(
    db_path: Path,
    hooks_dir: Path,
    files_dir: Path,
    backups_dir: Path,
    *,
    trigger: str = "manual",
    name: str | None = None,
    step_pages: int = BACKUP_STEP_PAGES,
    duty: float = BACKUP_DUTY,
) -> BackupInfo:
    """Writes one archive into `backups_dir` and returns it. Blocking (see copy_database).

    With `name` given (scheduled backups name the archive by their slot) and that archive already
    there, nothing is made: another server process took this slot."""
    with backup_lock(backups_dir):
        _remove_leftovers(backups_dir)
        started = datetime.now(UTC)
        name = name or archive_name(started)
        if (backups_dir / name).exists():
            existing = read_info(backups_dir / name)
            return BackupInfo(existing.name, existing.path, existing.size, existing.manifest, made=False)
        _lower_priority()
        pacer = Pacer(duty)
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=backups_dir) as tmp:
            staging = Path(tmp)
            copy_database(db_path, staging / DB_PART, step_pages, pacer)
            parts: dict[str, Path] = {DB_PART: staging / DB_PART}
            for prefix, root in (("hooks", hooks_dir), ("files", files_dir)):
                for path in _tree_files(root):
                    parts[f"{prefix}/{path.relative_to(root).as_posix()}"] = path
            manifest = {
                "format": FORMAT,
                "snackbase_version": __version__,
                "schema_version": _schema_version(staging / DB_PART),
                "created_at": format_ts(started),
                "finished_at": format_ts(datetime.now(UTC)),
                "trigger": trigger,
                "audit_heads": chain_heads(staging / DB_PART),
                "parts": {
                    arc: {"sha256": sha256_file(path), "size": path.stat().st_size}
                    for arc, path in parts.items()
                },
            }
            partial = backups_dir / (name + ".partial")
            _write_tar(partial, manifest, parts, pacer)
            os.replace(partial, backups_dir / name)
            _fsync_dir(backups_dir)
    return BackupInfo(name, backups_dir / name, (backups_dir / name).stat().st_size, manifest)


def _remove_leftovers(backups_dir: Path) -> None:
    """What a backup interrupted by a crash or shutdown left (under the lock, so none is running)."""
    for leftover in [*backups_dir.glob(".staging-*"), *backups_dir.glob("snackbase-*.tar.partial")]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _write_tar(target: Path, manifest: dict[str, Any], parts: dict[str, Path], pacer: Pacer) -> None:
    """The manifest first (list and verify read it without walking the archive), then every part."""
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
    import tarfile  # backups only: not loaded by an idle server

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo(MANIFEST)
        member.size, member.mtime, member.mode = len(raw), int(time.time()), 0o600
        tar.addfile(member, io.BytesIO(raw))
        for arc, path in parts.items():
            member = tar.gettarinfo(str(path), arcname=arc)
            with _PacedReader(path, pacer) as reader:
                tar.addfile(member, reader)
    with target.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(backups_dir: Path, keep: int) -> list[str]:
    """Deletes the oldest archives beyond the newest `keep` (0 keeps every one); returns their names."""
    if keep <= 0:
        return []
    names = sorted(p.name for p in backups_dir.glob("snackbase-*.tar") if NAME_RE.fullmatch(p.name))
    doomed = names[:-keep] if len(names) > keep else []
    for doomed_name in doomed:
        with contextlib.suppress(FileNotFoundError):
            (backups_dir / doomed_name).unlink()
    return doomed


# --- reading archives --------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        return read_manifest_from(handle, path.name)


def read_manifest_from(stream: IO[bytes], name: str) -> dict[str, Any]:
    """The manifest at the start of an archive read from `stream` (a file, or an S3 download that is
    closed after the first member: the manifest comes first, so listing never reads a whole archive)."""
    try:
        import tarfile

        with tarfile.open(fileobj=stream, mode="r|") as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST or not member.isfile():
                raise BackupError(f"{name} is not a SnackBase backup (no manifest first)")
            handle = tar.extractfile(member)
            assert handle is not None
            manifest = json.loads(handle.read())
    except (_tar_error(), json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(f"{name} is not a readable SnackBase backup: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), dict):
        raise BackupError(f"{name} has a malformed manifest")
    return manifest


def read_info(path: Path) -> BackupInfo:
    return BackupInfo(path.name, path, path.stat().st_size, read_manifest(path))


def list_backups(backups_dir: Path) -> list[BackupInfo]:
    """Every complete archive, newest first; an unreadable one is listed with an empty manifest."""
    if not backups_dir.is_dir():
        return []
    found = []
    for path in sorted(backups_dir.glob("snackbase-*.tar"), reverse=True):
        if NAME_RE.fullmatch(path.name):
            try:
                found.append(read_info(path))
            except (BackupError, OSError):
                found.append(BackupInfo(path.name, path, path.stat().st_size, {}))
    return found


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_compatible(manifest: dict[str, Any]) -> None:
    """Refuses an archive written by a newer SnackBase or holding a newer schema than this one knows."""
    version = str(manifest.get("snackbase_version", ""))
    if _version_tuple(version) > _version_tuple(__version__):
        raise BackupError(
            f"the backup was made by SnackBase {version}, newer than this one ({__version__}); "
            "restore it with that version or newer"
        )
    schema = manifest.get("schema_version")
    if not isinstance(schema, int) or schema > latest_version():
        raise BackupError(
            f"the backup's schema version {schema} is newer than this SnackBase "
            f"understands ({latest_version()})"
        )


class VerifyReport(msgspec.Struct):
    ok: bool
    checks: list[tuple[str, bool, str]]  # (what, passed, detail)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in self.checks]}


def extract(path: Path, target: Path) -> dict[str, Any]:
    """Unpacks every part listed in the manifest into `target` (nothing else; no path escapes)."""
    manifest = read_manifest(path)
    import tarfile

    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.name == MANIFEST:
                continue
            if member.name not in manifest["parts"] or not member.isfile():
                raise BackupError(f"{path.name} holds {member.name!r}, which its manifest does not list")
            _extract_file(tar, member, target, path.name)
    return manifest


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, archive: str) -> None:
    """One regular file of the archive, written under `target` by our own copy. tarfile's `filter="data"`
    does the same checks but exists only from Python 3.11.4, and distributions ship 3.11.2 (Debian 12):
    a name that is absolute or resolves outside `target` is refused (the manifest listing a part is no
    guarantee: the manifest comes from the same archive), and the file gets the umask's permissions,
    never the archive's mode or owner."""
    root = target.resolve()
    dest = (root / member.name).resolve()
    if member.name.startswith("/") or dest == root or not dest.is_relative_to(root):
        raise BackupError(f"{archive} holds {member.name!r}, a path outside the restore directory")
    source = tar.extractfile(member)
    assert source is not None  # a regular file (checked by the caller)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with source, open(dest, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
    except OSError as exc:  # a part named under another part, a full disk: an answer, not a crash
        raise BackupError(f"{archive}: {member.name!r} cannot be written ({exc.strerror})") from None


def verify_backup(path: Path) -> VerifyReport:
    """Checksums of every part, SQLite's integrity check and the audit chains of the database copy,
    and the chain heads against the manifest. Blocking; reads the whole archive."""
    checks: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="sb-verify-") as tmp:
        root = Path(tmp)
        manifest = extract(path, root)
        for arc, meta in sorted(manifest["parts"].items()):
            part = root / arc
            ok = part.is_file() and sha256_file(part) == meta.get("sha256")
            checks.append(
                (f"sha256 {arc}", ok, "matches" if ok else "missing or different from the manifest")
            )
        db = root / DB_PART
        if not db.is_file():
            checks.append(("database", False, "the archive holds no database"))
            return VerifyReport(False, checks)
        try:
            checks.extend(_database_checks(db, manifest))
        except apsw.Error as exc:  # a damaged file can fail before the checks can say what is wrong
            checks.append(("database", False, f"cannot be read: {exc}"))
    return VerifyReport(all(ok for _, ok, _ in checks), checks)


def _database_checks(db: Path, manifest: dict[str, Any]) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        checks.append(("integrity_check", result == ["ok"], "; ".join(result[:5])))
        chains = audit.verify(conn)
        detail = (
            f"ok, {chains.entries_checked} entries"
            if chains.ok
            else f"broken at seq {chains.first_bad_seq} (account {chains.account_id}): {chains.problem}"
        )
        checks.append(("audit chains", chains.ok, detail))
    finally:
        conn.close()
    heads_ok = chain_heads(db) == manifest.get("audit_heads")
    checks.append(("audit heads", heads_ok, "match the manifest" if heads_ok else "differ from the manifest"))
    return checks


# --- restore -----------------------------------------------------------------------------------------


def restore_backup(path: Path, data_dir: Path, hooks_dir: Path, *, force: bool) -> dict[str, Any]:
    """Replaces the database, hooks and files of `data_dir` with the archive's. The server must be
    stopped. Refuses an existing database without `force`; with it, what was there is moved into
    `<data-dir>/pre-restore-<time>/` rather than deleted. Returns the manifest."""
    manifest = read_manifest(path)
    check_compatible(manifest)
    report = verify_backup(path)
    if not report.ok:
        failed = "; ".join(f"{c}: {d}" for c, ok, d in report.checks if not ok)
        raise BackupError(f"the backup does not verify: {failed}")
    db_path = data_dir / DB_PART
    files_dir = data_dir / "files"
    if db_path.exists() and not force:
        raise BackupError(f"{db_path} already exists; use --force to replace it (it is kept aside)")
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=data_dir) as tmp:
        staging = Path(tmp)
        extract(path, staging)
        # The file itself, not only the manifest's word for it, before anything is moved.
        check_compatible({**manifest, "schema_version": _schema_version(staging / DB_PART)})
        aside = data_dir / f"pre-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        _move_aside(
            [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), hooks_dir, files_dir], data_dir, aside
        )
        os.replace(staging / DB_PART, db_path)
        for prefix, target in (("hooks", hooks_dir), ("files", files_dir)):
            if (staging / prefix).is_dir():
                shutil.move(str(staging / prefix), str(target))
    return manifest


def _move_aside(paths: list[Path], data_dir: Path, aside: Path) -> None:
    for item in paths:
        if item.exists():
            aside.mkdir(exist_ok=True)
            name = item.name if item.is_relative_to(data_dir) else f"external-{item.name}"
            shutil.move(str(item), str(aside / name))


# --- the audit entries -------------------------------------------------------------------------------


def audit_event(
    conn: apsw.Connection,
    action: str,
    actor: audit.Actor,
    extra: dict[str, Any],
    meta: audit.RequestMeta | None = None,
    during: Callable[[], None] | None = None,
) -> None:
    """One entry in the system account's chain (`backup.create`, `backup.download`, …); `during` runs
    inside its transaction (deleting the file), so the entry exists exactly when the change does."""
    with unit_of_work(conn):
        audit.append(
            conn,
            account_id=SYSTEM_ACCOUNT_ID,
            actor=actor,
            action=action,
            collection="backups",
            record_id=extra.get("name"),
            meta=meta,
            extra=extra,
        )
        if during is not None:
            during()


def audit_extra(info: BackupInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "size": info.size,
        "schema_version": info.manifest.get("schema_version"),
        "database_sha256": info.manifest.get("parts", {}).get(DB_PART, {}).get("sha256"),
    }


def _tar_error() -> type[Exception]:
    import tarfile

    return tarfile.TarError
