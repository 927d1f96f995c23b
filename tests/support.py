"""Test support: configs, and the real `sfd` process with a systemd notify socket."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sfd.config import Config
from sfd.daemon.loops import Loop, Poller
from sfd.daemon.notify import SystemdNotifier
from sfd.daemon.push import PushLoop
from sfd.daemon.runtime import Daemon
from sfd.logs import configure_logging
from sfd.storage import Storage

L = TypeVar("L", bound=Loop)

ROOT = Path(__file__).resolve().parent.parent


async def until(
    predicate: Callable[[], bool], timeout: float = 10, what: str = "", *, in_thread: bool = False
) -> None:
    """Wait until `predicate()` holds (run in a thread if it blocks); fail after `timeout` s."""
    if not await wait_until(predicate, timeout, in_thread=in_thread):
        raise AssertionError(f"not within {timeout} s: {what or predicate}")


async def wait_until(
    predicate: Callable[[], bool], timeout: float, *, in_thread: bool = True
) -> bool:
    """Whether `predicate()` came to hold within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await asyncio.to_thread(predicate) if in_thread else predicate():
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10, what: str = ""
) -> None:
    """Await `check()` until it holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        await asyncio.sleep(0.02)


def loop_of(daemon: Daemon, kind: type[L]) -> L:
    """The daemon's loop of class `kind`."""
    return next(loop for loop in daemon.loops if isinstance(loop, kind))


class InProcess:
    """What a test reads of a daemon it runs in-process (`self.daemon`)."""

    daemon: Daemon

    @property
    def storage(self) -> Storage:
        assert self.daemon.storage is not None
        return self.daemon.storage

    @property
    def poller(self) -> Poller:
        return loop_of(self.daemon, Poller)

    @property
    def pusher(self) -> PushLoop:
        return loop_of(self.daemon, PushLoop)


async def start_daemon(
    config: Config, prepare: Callable[[Daemon], None] | None = None, **options: Any
) -> tuple[Daemon, asyncio.Task[None]]:
    """Run the daemon in this process as one task; return once it is ready and has polled.

    `prepare` adjusts the started daemon before it serves; `options` go to `Daemon` (such as
    `shop_retry`). To stop it, set its stop event and await the task.
    """
    daemon = Daemon(config, notifier=SystemdNotifier({}), handle_signals=False, **options)
    await daemon.start()
    if prepare is not None:
        prepare(daemon)
    task = asyncio.create_task(daemon.serve())
    await daemon.ready.wait()
    await until(lambda: loop_of(daemon, Poller).status.ticks >= 1)  # the poll at start-up
    return daemon, task


def read_only(database: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Read the file as a person would with sqlite3, beside the running daemon."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql, params).fetchall()


def capture_logs() -> io.StringIO:
    """Send sfd's JSON log lines to a buffer, for `events` to read."""
    out = io.StringIO()
    configure_logging("json", "info", [], stream=out)
    return out


def events(logs: io.StringIO, name: str) -> list[dict[str, Any]]:
    """The log lines of event `name`, in the order they were written."""
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    return [line for line in lines if line["event"] == name]


def write_config(
    directory: Path,
    body: str = "",
    *,
    listen: str = "127.0.0.1:0",
    database: str = "sfd.db",
    stores: str | None = None,
    lease_ttl: str | None = None,
) -> Path:
    """A config file in `directory`: one store by default, plus `body`.

    `database` is a file name in `directory`, or a whole `postgresql://` URL (the
    `database_url` fixture gives either). `lease_ttl` shortens how long a killed instance's
    leases outlive it on PostgreSQL.
    """
    if "://" not in database:
        database = str(directory / database)
    if stores is None:
        stores = '[[stores]]\nid = 1\nname = "Shop one"\n\n[[stores]]\nid = 2\nname = "Shop two"\n'
    path = directory / "sfd.toml"
    path.write_text(
        f'[daemon]\ndatabase = "{database}"\nlisten = "{listen}"\n'
        + (f'lease_ttl = "{lease_ttl}"\n' if lease_ttl else "")
        + f'log_format = "json"\n\n{stores}\n{body}',
        encoding="utf-8",
    )
    return path


def sfd_command(config: Path, *args: str) -> list[str]:
    """The command line that runs the real `sfd` on this config."""
    return [sys.executable, "-m", "sfd", "--config", str(config), *args]


def run_cli(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run one `sfd` command to completion."""
    return subprocess.run(
        sfd_command(config, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        check=False,
    )


@dataclass
class SfdProcess:
    """A running `sfd run`, its log file and the datagrams it sent to systemd."""

    proc: subprocess.Popen[bytes]
    notify: socket.socket
    log_path: Path
    notifications: list[str] = field(default_factory=list)
    url: str = ""

    def _drain(self, timeout: float) -> None:
        self.notify.settimeout(timeout)
        try:
            data = self.notify.recv(4096)
        except (TimeoutError, BlockingIOError):
            return
        self.notifications.extend(data.decode().splitlines())

    def wait_for_notification(self, line: str, timeout: float = 15) -> float:
        """Wait until systemd would have received `line`; return when (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if line in self.notifications:
                return time.monotonic()
            if self.proc.poll() is not None and line not in self.notifications:
                self._drain(0.05)
                if line in self.notifications:
                    return time.monotonic()
                raise AssertionError(
                    f"sfd exited with {self.proc.returncode} before sending {line!r}; "
                    f"log:\n{self.log_text()}"
                )
            self._drain(0.1)
        raise AssertionError(
            f"no {line!r} within {timeout}s; got {self.notifications}; log:\n{self.log_text()}"
        )

    def wait_ready(self, timeout: float = 15) -> None:
        """Wait for READY=1 and learn the URL the daemon listens on."""
        self.wait_for_notification("READY=1", timeout)
        for event in self.log_events():
            if event.get("event") == "daemon_ready":
                self.url = event["url"]
                return
        raise AssertionError(f"READY=1 without a daemon_ready log line:\n{self.log_text()}")

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed; other lines are skipped."""
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM, then wait for the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the database can tell."""
        self.proc.kill()
        self.proc.wait(10)


def notify_socket(directory: Path, abstract: bool = False) -> tuple[socket.socket, str]:
    """A datagram socket listening as systemd would, and the NOTIFY_SOCKET value naming it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"sfd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        return sock, "@" + name
    path = directory / f"n-{uuid.uuid4().hex[:8]}.sock"
    if len(str(path)) > 100:
        sock.close()
        return notify_socket(directory, abstract=True)
    sock.bind(str(path))
    return sock, str(path)


def start_sfd(
    config: Path, directory: Path, *, env: dict[str, str] | None = None, abstract: bool = False
) -> SfdProcess:
    """Start `sfd run` as systemd would, with a notify socket the test listens on."""
    sock, address = notify_socket(directory, abstract)
    log_path = directory / f"sfd-{uuid.uuid4().hex[:6]}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        sfd_command(config, "run"),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": address, **(env or {})},
        cwd=ROOT,
    )
    log.close()
    return SfdProcess(proc=proc, notify=sock, log_path=log_path)
