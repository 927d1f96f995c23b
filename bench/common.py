"""What the benchmarks share: a real `sfd run` process, a load client, and figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Load:
    """Latencies of one load run."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    bytes: int = 0
    errors: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def summary(self) -> dict[str, float]:
        return {
            "requests": len(self.latencies),
            "per_second": round(self.rate, 1),
            "median_ms": round(statistics.median(self.latencies) * 1000, 2),
            "p99_ms": round(self.percentile(99), 2),
            "mean_body_kb": round(self.bytes / max(1, len(self.latencies)) / 1024, 1),
            "errors": self.errors,
        }


async def load(
    url_for: Callable[[int], str],
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> Load:
    """GET as fast as `connections` keep-alive connections allow, for `seconds`."""
    result = Load(seconds=seconds)
    connector = aiohttp.TCPConnector(limit=connections)
    deadline = time.perf_counter() + seconds
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            counter += 1
            started = time.perf_counter()
            async with http.get(url_for(counter), headers=headers) as response:
                body = await response.read()
            if response.status != 200:
                result.errors += 1
                continue
            result.latencies.append(time.perf_counter() - started)
            result.bytes += len(body)

    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker() for _ in range(connections)))
    return result


#: The PostgreSQL server the `--database postgres` runs use (a fresh database each run).
POSTGRES = os.environ.get("SFD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def add_database_option(parser: argparse.ArgumentParser, help: str) -> None:
    """`--database sqlite|postgres|both`: where the benchmark's daemon stores its orders."""
    parser.add_argument(
        "--database", choices=("sqlite", "postgres", "both"), default="sqlite", help=help
    )


def chosen_backends(database: str) -> list[str]:
    """The backends a `--database` choice runs, in order: `both` is SQLite, then PostgreSQL."""
    return ["sqlite", "postgres"] if database == "both" else [database]


def _admin(sql: str) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(POSTGRES)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    with ThreadPoolExecutor(1) as pool:  # callers may be inside a running loop
        pool.submit(asyncio.run, run()).result()


@contextmanager
def postgres_database(prefix: str = "sfd_bench") -> Iterator[str]:
    """A new, empty database on the benchmark server, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield urllib.parse.urlsplit(POSTGRES)._replace(path=f"/{name}").geturl()
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_orders(database: Path | str) -> int:
    """Orders stored, in an SQLite file or a PostgreSQL database."""
    if isinstance(database, str) and "://" in database:

        async def run() -> int:
            connection = await asyncpg.connect(database)
            try:
                return int(await connection.fetchval("SELECT count(*) FROM orders"))
            finally:
                await connection.close()

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result()
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT count(*) FROM orders").fetchone()[0])


def write_config(directory: Path, database: Path | str, body: str = "") -> Path:
    """A config for a benchmark daemon on a free port."""
    path = directory / "sfd.toml"
    path.write_text(
        f'[daemon]\ndatabase = "{database}"\nlisten = "127.0.0.1:0"\nlog_format = "json"\n'
        f'log_level = "info"\n\n[[stores]]\nid = 1\nname = "Bench"\n\n{body}'
    )
    return path


class Daemon:
    """`sfd run` as a separate process, so the load client does not share its GIL."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.log = config.parent / "sfd.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sfd", "--config", str(config), "run"],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.url = ""

    def wait_ready(self, timeout: float = 120) -> str:
        """Wait for the daemon_ready log line; return the URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sfd exited: {self.log.read_text()[-2000:]}")
            for line in self.log.read_text().splitlines():
                if '"daemon_ready"' in line:
                    self.url = json.loads(line)["url"]
                    return self.url
            time.sleep(0.1)
        raise RuntimeError("sfd did not get ready in time")

    def rss_mb(self) -> float:
        """The daemon's resident memory now."""
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process, from /proc (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_kb(pid: int) -> dict[str, int]:
    """Every kB figure of /proc/<pid>/status: VmRSS, RssAnon, RssFile, VmHWM..."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            figures[name] = int(value.split()[0])
    return figures


def open_fds(pid: int) -> list[str]:
    """What each open file descriptor of a process points to (`socket:[123]`, a path...)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    return found


#: The `st` column of /proc/net/tcp.
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def tcp_sockets(pid: int) -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of each TCP socket the process holds open."""
    inodes = {t[8:-1] for t in open_fds(pid) if t.startswith("socket:[")}
    sockets = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                local, remote = (int(a.rpartition(":")[2], 16) for a in cols[1:3])
                sockets.append((local, remote, TCP_STATES.get(cols[3], cols[3])))
    return sockets


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
