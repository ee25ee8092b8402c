"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary directory, a free port, the unix
socket inside that directory, stopped (by its own postmaster PID) at the end of the session.

PostgreSQL refuses to run as root. Tests (and CI) may run as root, so the cluster is then created and run
as the `postgres` system user (Debian's postgresql package creates it) through `runuser -u postgres --`;
as any other user it runs as that user. The cluster trusts local connections: it listens on 127.0.0.1
and on a socket in a directory only its owner can enter.

The binaries come from SNACKBASE_PG_BIN or Debian's /usr/lib/postgresql/<version>/bin. When none are
there the PostgreSQL tests are skipped with that reason; `.ci/run` installs the package, so CI never skips.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"
_names = itertools.count(1)


def pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    configured = os.environ.get("SNACKBASE_PG_BIN")
    candidates = [Path(configured)] if configured else sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    for candidate in reversed(candidates):  # the newest version first
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


def _as_owner(command: list[str]) -> list[str]:
    """The command as the cluster's owner: the `postgres` system user when we are root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SUPERUSER, "--", *command]


@dataclass
class Cluster:
    bin_dir: Path
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """The URL of a new, empty place to migrate into: a schema of its own in one database, chosen
        by the URL's search_path. A fresh one per test keeps tests independent; a schema costs nothing
        to create, where CREATE DATABASE costs ~0.3 s and leaves ~8 MB on disk per test."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return self.url() + f"?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        subprocess.run(
            _as_owner(
                [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"]
            ),
            capture_output=True,
            check=False,
        )


def start(port: int) -> Cluster:
    """initdb + pg_ctl start in a new temporary directory; raises RuntimeError with the server's log."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL binaries not found")
    root = Path(tempfile.mkdtemp(prefix="snackbase-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, SUPERUSER, SUPERUSER)
    os.chmod(root, 0o700)
    cluster = Cluster(bin_dir, root, port)
    _run([str(bin_dir / "initdb"), "-D", str(cluster.data_dir), "-U", SUPERUSER, "--auth=trust",
          "-E", "UTF8", "--locale=C", "--no-sync"])  # fmt: skip
    # Throwaway data: no fsync, small shared memory, no background noise in the log.
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off -c shared_buffers=32MB -c max_connections=50"
    )
    _run([str(bin_dir / "pg_ctl"), "start", "-D", str(cluster.data_dir), "-w", "-t", "30",
          "-l", str(root / "server.log"), "-o", options])  # fmt: skip
    _wait_accepting(cluster)
    return cluster


def _run(command: list[str]) -> None:
    result = subprocess.run(_as_owner(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed: {result.stdout}\n{result.stderr}")


def _wait_accepting(cluster: Cluster, timeout: float = 20.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(cluster.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def running(port: int) -> Iterator[Cluster]:
    cluster = start(port)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
