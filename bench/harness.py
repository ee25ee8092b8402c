"""Benchmark plumbing shared by the scenario scripts: start a pinned server, drive it with wrk, read results.

The server runs on core 0 (`taskset -c 0`) and wrk on core 1, so the numbers are "one core of server".
Only 127.0.0.1 is ever contacted; every run is bounded by wrk's own duration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / "dist" / "snackbase"


@dataclass
class Result:
    scenario: str
    server: str
    requests_per_s: float
    p99_ms: float
    errors: int
    p50_ms: float = float("nan")  # the median latency: issue 21 holds the lists' p99 to 3× it

    def row(self) -> str:
        rps, p50, p99 = f"{self.requests_per_s:,.0f}", f"{self.p50_ms:.2f}", f"{self.p99_ms:.2f}"
        return f"| {self.server} | {self.scenario} | {rps} | {p50} | {p99} | {self.errors} |"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise SystemExit(f"{tool} is not installed (apt-get install {tool})")
    return path


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of a process and every process below it, from /proc."""
    stats = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats.append((int(entry.name), int(fields[1]), int(fields[11]) + int(fields[12])))
    tree, grew = {root_pid}, True
    while grew:  # children first appear under the parent, grandchildren under them
        grew = False
        for pid, ppid, _ in stats:
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(cpu for pid, _, cpu in stats if pid in tree) / os.sysconf("SC_CLK_TCK")


class Server:
    """A server process pinned to core 0; stopped by its own PID."""

    def __init__(
        self,
        args: list[str],
        health_path: str,
        env: dict[str, str] | None = None,
        cores: str = "0",
        startup_timeout: float = 30.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="sb-bench-"))
        argv = [a.format(port=self.port, data=self.data_dir) for a in args]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            ["taskset", "-c", cores, *argv],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.startup_s = self._wait(health_path, startup_timeout)

    def _wait(self, path: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.002)
        self.stop()
        raise SystemExit(f"server did not answer {path} within {timeout} s")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else float("nan")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server and every process below it (`--workers N`)."""
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def request(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(req, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


_LUA = """
wrk.method = "{method}"
wrk.body = {body}
{headers}
{extra}
"""


def wrk(
    url: str,
    *,
    scenario: str,
    server: str,
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
    lua_extra: str = "",
    duration_s: int = 10,
    connections: int = 32,
    cores: str = "1",
) -> Result:
    """Runs wrk (on core 1 unless told) and returns requests/s and p99 latency."""
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    script = _LUA.format(
        method=method,
        body=json.dumps(body) if body is not None else "nil",
        headers=header_lines,
        extra=lua_extra,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            [
                "taskset",
                "-c",
                cores,
                require("wrk"),
                "-t1",
                f"-c{connections}",
                f"-d{duration_s}s",
                "--latency",
                "-s",
                handle.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration_s + 60,
        ).stdout
    finally:
        os.unlink(handle.name)
    return parse_wrk(out, scenario, server)


def parse_wrk(output: str, scenario: str, server: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50_ms, p99_ms = _percentile(output, "50%"), _percentile(output, "99%")
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(g) for g in match.groups())
    return Result(scenario, server, rps, p99_ms, errors, p50_ms)


def _percentile(output: str, label: str) -> float:
    """A line of wrk's latency distribution (`--latency`), in ms."""
    found = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\b", output, re.MULTILINE)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return float(found.group(1)) * scale[found.group(2)] if found else float("nan")


def existing_files(parser: argparse.ArgumentParser, paths: list[Path]) -> list[Path]:
    """The paths resolved, or the command's usage error naming the first that is not a file (a server
    started from a missing executable would only time out waiting for its health check)."""
    for path in paths:
        if not path.is_file():
            parser.error(f"{path} is not a file")
    return [path.resolve() for path in paths]


def print_table(results: list[Result]) -> None:
    print("| server | scenario | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|")
    for result in results:
        print(result.row())


def save(name: str, payload: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: o.__dict__))
    return path
