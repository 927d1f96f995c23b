"""The daemon, in process, polling two sandbox marketplaces: `flaky` behind a fault injector and
`steady` served plainly, so a fault on one channel can be watched from the other."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from sfd.config import Config, Duration, load_config
from sfd.connectors.shop import DEFAULT_RETRY, Retry
from sfd.daemon.loops import Poller
from sfd.daemon.notify import SystemdNotifier
from sfd.daemon.runtime import Daemon
from sfd.logs import configure_logging
from sfd.sandbox.marketplace import SandboxMarketplace, channel_toml, run_sandbox
from tests.faults.injector import FaultInjector
from tests.support import until, write_config

KEY = "sandbox-key-faults-3141"
#: Poll interval of both channels; a failed poll is retried after it too.
INTERVAL = 0.3
#: The flaky channel's client timeout: short, yet long enough for a loaded 2-core machine.
TIMEOUT = 1.0


def query(database: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file beside the running daemon, as a person would with sqlite3."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        return db.execute(sql).fetchall()


class CapturedLog:
    """Reads a daemon's JSON log lines, captured in `logs`."""

    logs: io.StringIO

    def mark(self) -> int:
        """Where the log is now: `events(..., since=mark)` reads what came after."""
        return len(self.logs.getvalue())

    def events(self, name: str, since: int = 0, **fields: Any) -> list[dict[str, Any]]:
        """The log lines of one event (after `since`), those with these fields only."""
        lines = [json.loads(line) for line in self.logs.getvalue()[since:].splitlines() if line]
        return [
            line
            for line in lines
            if line.get("event") == name and all(line.get(k) == v for k, v in fields.items())
        ]

    def levels(self, *levels: str, since: int = 0) -> list[dict[str, Any]]:
        """Every log line at these levels (after `since`)."""
        lines = [json.loads(line) for line in self.logs.getvalue()[since:].splitlines() if line]
        return [line for line in lines if line.get("level") in levels]


@dataclass
class Hub(CapturedLog):
    """The running daemon, its two marketplaces and its log."""

    daemon: Daemon
    task: asyncio.Task[None]
    database: Path
    flaky: SandboxMarketplace
    steady: SandboxMarketplace
    injector: FaultInjector
    logs: io.StringIO
    flaky_url: str

    def poller(self, channel: str) -> Poller:
        """The poller of `flaky` or `steady`."""
        return next(
            loop
            for loop in self.daemon.loops
            if isinstance(loop, Poller) and loop.channel.name == channel
        )

    def stored(self, channel: str) -> dict[str, tuple[str, str, str]]:
        """The channel's orders as stored: reference → (status, updated, total)."""
        rows = query(
            self.database,
            "SELECT o.reference, o.status, o.updated_at, o.total_amount FROM orders o "
            f"JOIN channels c ON c.id = o.channel_id WHERE c.name = '{channel}'",
        )
        return {r[0]: (r[1], r[2], str(r[3])) for r in rows}

    def duplicates(self) -> int:
        """Orders stored twice, plus imports recorded twice for one order."""
        [(rows, distinct, imports)] = query(
            self.database,
            "SELECT (SELECT count(*) FROM orders), "
            "(SELECT count(*) FROM (SELECT DISTINCT channel_id, reference FROM orders)), "
            "(SELECT count(*) FROM order_events WHERE kind = 'imported')",
        )
        return (rows - distinct) + (imports - rows)

    def integrity(self) -> str:
        """`PRAGMA integrity_check` on the live file."""
        return str(query(self.database, "PRAGMA integrity_check")[0][0])

    @property
    def running(self) -> bool:
        """The daemon's task is still running (it ends only on a stop or a crash)."""
        return not self.task.done()


def _config(tmp_path: Path, flaky_url: str, steady_url: str, timeout: float) -> Config:
    channels = "".join(
        channel_toml(url, "env:SANDBOX_KEY", name=name, store=store, auto_accept=False)
        + f"timeout = {timeout}\n"  # under [channels.settings], the entry's last table
        for name, store, url in (("flaky", 1, flaky_url), ("steady", 2, steady_url))
    )
    config = load_config(write_config(tmp_path, channels), {"SANDBOX_KEY": KEY})
    # Durations in a config file are whole seconds; a test wants polls every few tenths.
    fast = [msgspec.structs.replace(c, poll_interval=Duration(INTERVAL)) for c in config.channels]
    return msgspec.structs.replace(config, channels=fast)


@asynccontextmanager
async def running_hub(
    tmp_path: Path,
    *,
    certificate: tuple[Path, Path] | None = None,
    initial: int = 30,
    timeout: float = TIMEOUT,
) -> AsyncIterator[Hub]:
    """The daemon polling `flaky` (behind the injector, over TLS if `certificate`) and
    `steady`, once both have imported their first `initial` orders."""
    flaky = SandboxMarketplace(KEY, seed=31)
    steady = SandboxMarketplace(KEY, seed=32)
    flaky.add_orders(initial, waiting_acceptance_ratio=0.0)
    steady.add_orders(initial, waiting_acceptance_ratio=0.0)
    injector = FaultInjector()
    async with AsyncExitStack() as stack:
        flaky_url = await stack.enter_async_context(
            injector.serve(flaky.app(), certificate=certificate)
        )
        steady_url = await stack.enter_async_context(run_sandbox(steady))
        config = _config(tmp_path, flaky_url, steady_url, timeout)
        daemon, task, logs = await stack.enter_async_context(running_daemon(config))
        hub = Hub(daemon, task, config.database, flaky, steady, injector, logs, flaky_url)
        await until(
            lambda: len(hub.stored("flaky")) == initial == len(hub.stored("steady")),
            what="the first import of both channels",
        )
        yield hub


@asynccontextmanager
async def running_daemon(
    config: Config, *, shop_retry: Retry = DEFAULT_RETRY
) -> AsyncIterator[tuple[Daemon, asyncio.Task[None], io.StringIO]]:
    """The daemon serving `config` in this process, with its log captured as JSON lines;
    stopped on leaving."""
    logs = io.StringIO()
    configure_logging("json", "info", config.secrets, stream=logs)
    daemon = Daemon(
        config, notifier=SystemdNotifier({}), handle_signals=False, shop_retry=shop_retry
    )
    await daemon.start()
    task = asyncio.create_task(daemon.serve())
    try:
        await daemon.ready.wait()
        yield daemon, task, logs
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


# -- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """A test CA, and certificates for 127.0.0.1: one it signed, one for another name, one
    self-signed. Each is (certificate, key)."""

    ca: Path
    good: tuple[Path, Path]
    wrong_host: tuple[Path, Path]
    self_signed: tuple[Path, Path]


def make_certificates(directory: Path) -> Certificates:
    """Made with the `openssl` command, at test time (EC keys: a few milliseconds each)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=sfd test CA")  # fmt: skip
    for name, san in (("good", "IP:127.0.0.1"), ("wrong", "DNS:elsewhere.invalid")):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", f"{name}.ext")  # fmt: skip
    openssl("req", "-x509", *key, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")  # fmt: skip
    return Certificates(
        ca=directory / "ca.pem",
        good=(directory / "good.pem", directory / "good.key"),
        wrong_host=(directory / "wrong.pem", directory / "wrong.key"),
        self_signed=(directory / "self.pem", directory / "self.key"),
    )
