"""Soak: ten minutes of steady load on the real `sfd run`, then its memory, sockets and outbox.

Everything runs on 127.0.0.1. In this process:
- 20 sandbox marketplaces (Mirakl's shop API), one per channel, each polled by sfd every 10 s.
  A backlog of 60 orders per channel is there at start; then new orders arrive at 20 per second
  in all, a quarter of them waiting for acceptance (sfd accepts them: an OR21 call each);
- a shop pulling the orders to process every 5 s over v1 (pages of 100) and acknowledging each
  page in one request;
- 20 shipments per second, `POST /v1/store/1/order/ship` with one order each, which sfd's worker
  forwards to the marketplace (OR23 tracking + OR24 ship);
- 50 API reads per second, alternately a page of 100 orders and one order; `/ws` GetOrders
  every 5 s and `/healthz` every second.

`sfd run` runs in its own process, so the memory, file descriptors and sockets measured from
/proc are its own. The load starts once the backlog is imported. "Start" is the end of the
warm-up, the first 60 s of full load (connection pools are full by then); "end" is the last
moment of the load. RSS is split into anonymous memory and file-backed pages; a small probe
loaded into the daemon (PROBE below, `--no-probe` leaves it out) splits the anonymous part
further into SQLite's page caches, Python's allocated blocks and malloc's heap. After the
load, a drain period (no new orders) lets every operation finish and be confirmed; then the
outbox is read from the database file.

    .venv/bin/python bench/soak.py [--duration 600] [--warmup 60] [--json PATH] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Daemon,
    Load,
    cpu_seconds,
    memory_kb,
    open_fds,
    tcp_sockets,
    write_config,
)
from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.storage.db import CACHE_KIB

CHANNELS = 20
POLL_INTERVAL = "10s"
BACKLOG = 60
ORDER_RATE = 20.0
WAITING_ACCEPTANCE = 0.25
SHOP_EVERY = 5.0
SHIP_RATE = 20.0
READ_RATE = 50.0
WS_EVERY = 5.0
HEALTH_EVERY = 1.0
SAMPLE_EVERY = 5.0
PAGE = 100
#: In-flight requests of one kind past which the load generator skips a beat (and says so).
MAX_IN_FLIGHT = 400
TIMEOUT = aiohttp.ClientTimeout(total=60)
CONNECTIONS = 32

KINDS = {
    "orders_page": ("API order list page (100 orders)", READ_RATE / 2),
    "order_one": ("API one order", READ_RATE / 2),
    "to_process_page": ("Shop pull: page of orders to process", None),
    "acknowledge": ("API acknowledge (one page of orders)", None),
    "ship": ("API ship operation (one order)", SHIP_RATE),
    "ws_get_orders": ("Legacy /ws GetOrders", 1 / WS_EVERY),
    "healthz": ("/healthz", 1 / HEALTH_EVERY),
}
READS = ("orders_page", "order_one")
#: Loaded into the daemon as `sitecustomize` (through PYTHONPATH). Every second it writes what
#: only the process can tell: SQLite's own memory (its page caches), Python's allocated blocks
#: and malloc's heap. A leak grows the heap; a cache filling up grows SQLite's figure. It reads
#: counters only; the daemon's code is untouched.
PROBE = """
import ctypes, json, os, sys, threading, time


def _probe(path):
    figures = {}
    try:
        import _sqlite3

        memory_used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
        memory_used.restype = ctypes.c_int64
    except (OSError, AttributeError):
        memory_used = None
    try:

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        mallinfo2 = None
    while True:
        figures["python_blocks"] = sys.getallocatedblocks()
        if memory_used is not None:
            figures["sqlite_kb"] = memory_used() // 1024
        if mallinfo2 is not None:
            heap = mallinfo2()
            figures["malloc_in_use_kb"] = (heap.uordblks + heap.hblkhd) // 1024
            figures["malloc_free_kb"] = heap.fordblks // 1024
        with open(path + ".tmp", "w") as out:
            json.dump(figures, out)
        os.replace(path + ".tmp", path)
        time.sleep(1.0)


if os.environ.get("SFD_SOAK_PROBE"):
    threading.Thread(
        target=_probe, args=(os.environ["SFD_SOAK_PROBE"],), daemon=True, name="soak-probe"
    ).start()
"""


@dataclass
class Calls:
    """Every timed request of the load: (seconds since the load started, latency), by kind."""

    origin: float = 0.0
    ok: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    skipped: Counter[str] = field(default_factory=Counter)

    async def request(
        self,
        kind: str,
        http: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        expect: int = 200,
        **kwargs: Any,
    ) -> bytes | None:
        """Make one request and time it; the body if it got the expected status, else None."""
        started = time.perf_counter()
        try:
            async with http.request(method, url, **kwargs) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[kind][f"{type(exc).__name__}: {exc}"[:120]] += 1
            return None
        if response.status != expect:
            self.errors[kind][f"HTTP {response.status}: {body[:100]!r}"] += 1
            return None
        self.ok[kind].append((started - self.origin, time.perf_counter() - started))
        return body

    def load(self, kind: str, seconds: float, since: float = 0.0, until: float = 1e12) -> Load:
        """The calls of one kind started in [since, until), as a `Load`."""
        latencies = [s for at, s in self.ok[kind] if since <= at < until]
        return Load(seconds=seconds, latencies=latencies, errors=sum(self.errors[kind].values()))


@dataclass
class Sample:
    """The daemon seen from outside at one moment."""

    at: float
    memory: dict[str, int]
    fds: int
    sockets: dict[str, int]
    cpu_s: float
    """The daemon's CPU time so far."""
    bench_cpu_s: float
    """This process's (the load generator's and the sandboxes') CPU time so far."""
    probe: dict[str, int]
    counters: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str) -> dict[str, float]:
    """The Prometheus text format as {'name{labels}': value}."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def total(counters: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in counters.items() if k.startswith(prefix))


IMPORTED = "sfd_orders_imported_total{"
SHIPPED = 'sfd_operations_total{kind="ship",outcome="delivered"}'
ACCEPTED = 'sfd_operations_total{kind="accept",outcome="delivered"}'


class Soak:
    """The load generator and the daemon's observer."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.database = work / "sfd.db"
        self.probe = work / "probe.json"
        self.calls = Calls()
        self.samples: list[Sample] = []
        self.marketplaces = [
            SandboxMarketplace(f"soak-key-{n:02d}", seed=n, ship_confirm_delay=2.0)
            for n in range(CHANNELS)
        ]
        self.sandbox_ports: set[int] = set()
        self.daemon_port = 0
        self.placed = 0
        self.to_ship: deque[int] = deque()
        self.seen: set[int] = set()
        self.max_id = 0
        self.starved = 0
        self.shipped_ids: list[int] = []
        self.stop_at = 0.0

    # -- setup ----------------------------------------------------------------------------

    def config(self, urls: list[str]) -> Path:
        channels = "".join(
            f"""
[[channels]]
name = "shop{n:02d}"
store = 1
connector = "mirakl"
poll_interval = "{POLL_INTERVAL}"
auto_accept = true
require_tracking = true
[channels.settings]
base_url = "{url}"
api_key = "{market.api_key}"
"""
            for n, (url, market) in enumerate(zip(urls, self.marketplaces, strict=True))
        )
        return write_config(self.work, self.database, channels)

    def token(self, config: Path) -> str:
        command = [sys.executable, "-m", "sfd", "--config", str(config), "token", "create"]
        return subprocess.run(
            [*command, "--store", "1", "--name", "soak-shop"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def place(self, count_per_channel: float, carry: list[float]) -> None:
        for n, market in enumerate(self.marketplaces):
            carry[n] += count_per_channel
            whole = int(carry[n])
            if whole:
                carry[n] -= whole
                market.add_orders(whole, waiting_acceptance_ratio=WAITING_ACCEPTANCE)
                self.placed += whole

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """A read of the daemon's database file, on a connection of our own."""
        with closing(sqlite3.connect(self.database, timeout=30)) as db:
            db.execute("PRAGMA query_only = 1")
            return db.execute(sql).fetchall()

    # -- observation ----------------------------------------------------------------------

    def sockets(self, pid: int) -> dict[str, int]:
        """The daemon's TCP sockets: listening, from clients, to marketplaces, by state."""
        kinds: Counter[str] = Counter()
        for local, remote, state in tcp_sockets(pid):
            if state == "LISTEN":
                kinds["listening"] += 1
            elif state != "ESTABLISHED":
                kinds[state.lower()] += 1
            elif local == self.daemon_port:
                kinds["from_clients"] += 1
            elif remote in self.sandbox_ports:
                kinds["to_marketplaces"] += 1
            else:
                kinds["other_established"] += 1
        return dict(kinds)

    def snapshot(self, pid: int, at: float) -> Sample:
        """Memory, fds, sockets and CPU of the daemon now, from /proc and the probe."""
        try:
            probe = json.loads(self.probe.read_text())
        except (OSError, ValueError):
            probe = {}
        return Sample(
            at=at,
            memory=memory_kb(pid),
            fds=len(open_fds(pid)),
            sockets=self.sockets(pid),
            cpu_s=cpu_seconds(pid),
            bench_cpu_s=time.process_time(),
            probe=probe,
        )

    async def sample(self, pid: int, http: aiohttp.ClientSession, url: str, at: float) -> Sample:
        """A snapshot with the daemon's counters from /metrics, kept in the timeline."""
        counters: dict[str, float] = {}
        try:
            async with http.get(f"{url}/metrics") as response:
                counters = parse_metrics(await response.text())
        except (aiohttp.ClientError, TimeoutError):
            pass
        sample = self.snapshot(pid, at)
        sample.counters = {
            "imported": total(counters, IMPORTED),
            "ship_delivered": counters.get(SHIPPED, 0.0),
            "accept_delivered": counters.get(ACCEPTED, 0.0),
            "polls_failed": sum(
                v
                for k, v in counters.items()
                if k.startswith("sfd_polls_total{") and 'result="ok"' not in k
            ),
        }
        self.samples.append(sample)
        return sample

    # -- load -----------------------------------------------------------------------------

    async def paced(
        self, kind: str, rate: float, action: Callable[[int], Awaitable[None]], tasks: set[Any]
    ) -> None:
        """Start `action(n)` `rate` times a second until the end, open loop: a slow answer
        does not slow the next request down."""
        start = time.perf_counter()
        mine: set[asyncio.Task[None]] = set()
        n = 0
        while (at := start + n / rate) < self.stop_at:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            if len(mine) >= MAX_IN_FLIGHT:
                self.calls.skipped[kind] += 1
            else:
                task = asyncio.create_task(action(n))
                for group in (mine, tasks):
                    group.add(task)
                    task.add_done_callback(group.discard)
            n += 1

    async def arrivals(self) -> None:
        carry = [0.0] * CHANNELS
        start = time.perf_counter()
        n = 1
        while (at := start + n) < self.stop_at:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            self.place(ORDER_RATE / CHANNELS, carry)
            n += 1

    async def shop(self, http: aiohttp.ClientSession, url: str) -> None:
        """Pull the orders to process every 5 s: page 1 until empty, acknowledging each page."""
        base = f"{url}/v1/store/1/order"
        query = {"acknowledgment": "unacknowledged", "status": "waiting_shipment"}
        start = time.perf_counter()
        n = 0
        while (at := start + n * SHOP_EVERY) < self.stop_at:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            n += 1
            for _ in range(50):
                body = await self.calls.request(
                    "to_process_page", http, "GET", base, params={**query, "limit": str(PAGE)}
                )
                if body is None:
                    break
                orders = json.loads(body)["_embedded"]["order"]
                if not orders:
                    break
                entries = [
                    {"id": o["id"], "storeReference": f"SHOP-{o['id']}", "status": "success"}
                    for o in orders
                ]
                acked = await self.calls.request(
                    "acknowledge",
                    http,
                    "POST",
                    f"{base}/acknowledge",
                    json={"order": entries},
                    expect=202,
                )
                if acked is None:
                    break
                for order in orders:
                    if order["id"] not in self.seen:
                        self.seen.add(order["id"])
                        self.to_ship.append(order["id"])
                        self.max_id = max(self.max_id, order["id"])
                if len(orders) < PAGE:
                    break

    async def ship(self, http: aiohttp.ClientSession, url: str, n: int) -> None:
        if not self.to_ship:
            self.starved += 1
            return
        order_id = self.to_ship.popleft()
        entry = {
            "id": order_id,
            "carrier": "Colissimo",
            "trackingNumber": f"6A{order_id:011d}",
            "trackingLink": f"https://www.laposte.fr/outils/suivre-vos-envois?code={order_id}",
        }
        body = await self.calls.request(
            "ship",
            http,
            "POST",
            f"{url}/v1/store/1/order/ship",
            json={"order": [entry]},
            expect=202,
        )
        if body is not None:
            self.shipped_ids.append(order_id)

    async def read(self, http: aiohttp.ClientSession, url: str, n: int) -> None:
        if n % 2 == 0 or not self.max_id:
            page = (n // 2) % 5 + 1
            target = f"{url}/v1/store/1/order?limit={PAGE}&page={page}"
            await self.calls.request("orders_page", http, "GET", target)
        else:
            order_id = random.randint(1, self.max_id)
            await self.calls.request("order_one", http, "GET", f"{url}/v1/store/1/order/{order_id}")

    async def ws(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        form = {"TOKEN": token, "CALL": "GetOrders", "MODE": "Production"}
        await self.calls.request("ws_get_orders", http, "POST", f"{url}/ws", data=form)

    async def healthz(self, http: aiohttp.ClientSession, url: str) -> None:
        await self.calls.request("healthz", http, "GET", f"{url}/healthz")

    # -- the run --------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Start the sandboxes and the daemon, soak, and return every figure."""
        load_average = {"start": os.getloadavg()}
        for market in self.marketplaces:
            market.add_orders(BACKLOG, waiting_acceptance_ratio=WAITING_ACCEPTANCE)
        self.placed = BACKLOG * CHANNELS
        async with AsyncExitStack() as stack:
            urls = [await stack.enter_async_context(run_sandbox(m)) for m in self.marketplaces]
            self.sandbox_ports = {int(u.rpartition(":")[2]) for u in urls}
            config = self.config(urls)
            token = self.token(config)
            probe_dir = self.work / "probe"
            probe_dir.mkdir(exist_ok=True)
            (probe_dir / "sitecustomize.py").write_text(PROBE)
            path = os.pathsep.join(filter(None, [str(probe_dir), os.environ.get("PYTHONPATH")]))
            env = {"PYTHONPATH": path, "SFD_SOAK_PROBE": str(self.probe)}
            daemon = Daemon(config, env=env if self.args.probe else None)
            try:
                return await self.drive(daemon, token, load_average)
            finally:
                if daemon.proc.poll() is None:
                    daemon.stop()

    async def drive(
        self, daemon: Daemon, token: str, load_average: dict[str, tuple[float, ...]]
    ) -> dict[str, Any]:
        """Wait for the backlog, load for `--duration`, drain, then read what is left."""
        args = self.args
        url = await asyncio.to_thread(daemon.wait_ready)
        self.daemon_port = int(url.rpartition(":")[2])
        pid = daemon.proc.pid
        headers = {"Authorization": f"Bearer {token}"}
        # Each client keeps at most CONNECTIONS connections, as a shop module or a monitoring
        # agent would; when the daemon is slow, requests wait in the client, and it counts.
        monitor, shop, reader = (
            aiohttp.ClientSession(
                headers=h, timeout=TIMEOUT, connector=aiohttp.TCPConnector(limit=CONNECTIONS)
            )
            for h in ({}, headers, headers)
        )
        # The first polls import the backlog; the load starts on a daemon that has it.
        deadline = time.perf_counter() + 120
        while self.query("SELECT count(*) FROM orders")[0][0] < self.placed:
            if time.perf_counter() > deadline:
                raise RuntimeError("the backlog was not imported within 120 s")
            await asyncio.sleep(0.5)
        idle = await self.sample(pid, monitor, url, -1.0)
        duration, warmup = args.duration, args.warmup
        self.calls.origin = origin = time.perf_counter()
        load_started = datetime.now(UTC)
        self.stop_at = origin + duration
        tasks: set[asyncio.Task[None]] = set()

        async def sampler() -> None:
            k = 0
            while (at := origin + k * SAMPLE_EVERY) <= self.stop_at + 0.001:
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                await self.sample(pid, monitor, url, k * SAMPLE_EVERY)
                k += 1

        await asyncio.gather(
            sampler(),
            self.arrivals(),
            self.shop(shop, url),
            self.paced("ship", SHIP_RATE, lambda n: self.ship(shop, url, n), tasks),
            self.paced("read", READ_RATE, lambda n: self.read(reader, url, n), tasks),
            self.paced("ws_get_orders", 1 / WS_EVERY, lambda n: self.ws(reader, url, token), tasks),
            self.paced("healthz", 1 / HEALTH_EVERY, lambda n: self.healthz(monitor, url), tasks),
        )
        await asyncio.gather(*tasks)
        end = self.samples[-1]
        load_ended = datetime.now(UTC)
        load_average["end"] = os.getloadavg()
        for session in (shop, reader):
            await session.close()

        # Drain: no new orders; wait for every operation to finish and be confirmed.
        drain_started = time.perf_counter()
        unfinished = self.unfinished()
        while any(unfinished.values()) and time.perf_counter() - drain_started < args.drain:
            await asyncio.sleep(1.0)
            unfinished = self.unfinished()
            elapsed = time.perf_counter() - drain_started
            if elapsed // SAMPLE_EVERY > (elapsed - 1.0) // SAMPLE_EVERY:
                await self.sample(pid, monitor, url, duration + elapsed)
        drained = time.perf_counter() - drain_started
        await monitor.close()
        await asyncio.sleep(2.0)  # the daemon's side of closed client connections goes away
        after = self.snapshot(pid, duration + drained)
        fd_targets = Counter(_fd_kind(t) for t in open_fds(pid))
        outbox = self.outbox()
        marketplace = self.marketplace_calls()
        daemon.stop()
        log = _log_summary(daemon.log, load_started, load_ended)
        if log["polls"]:
            first = next(s for s in self.samples if s.at >= 0)
            log["polls"]["errors"] = int(
                end.counters["polls_failed"] - first.counters["polls_failed"]
            )
        start = next(s for s in self.samples if s.at >= warmup)
        return {
            "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["bench/soak.py", *sys.argv[1:]]),
            "cpus": os.cpu_count(),
            "load_average": {k: [round(x, 2) for x in v] for k, v in load_average.items()},
            "duration_s": duration,
            "warmup_s": warmup,
            "channels": CHANNELS,
            "orders_placed": self.placed,
            "calls": {
                kind: {
                    "label": label,
                    "target_per_second": rate,
                    **self.calls.load(kind, duration).summary(),
                    "error_kinds": dict(self.calls.errors[kind].most_common(5)),
                }
                for kind, (label, rate) in KINDS.items()
            },
            "skipped_beats": dict(self.calls.skipped),
            "ship_starved_beats": self.starved,
            "per_minute": self.per_minute(duration),
            "timeline": [_figures(s) for s in [*self.samples, after]],
            "daemon": {
                "idle": _figures(idle),
                "start": _figures(start),
                "end": _figures(end),
                "after_drain": _figures(after),
                "growth_percent": {
                    name: _growth(_figures(start).get(name), _figures(end).get(name))
                    for name in (
                        "rss_mb",
                        "anon_mb",
                        "file_mb",
                        "sqlite_mb",
                        "python_blocks",
                        "malloc_in_use_mb",
                        "fds",
                    )
                },
                "peak_rss_mb": _mb(after.memory.get("VmHWM", 0)),
                "fds_after_drain_by_kind": dict(fd_targets),
            },
            "drain": {"seconds": round(drained, 1), "unfinished_at_end": unfinished},
            "outbox": outbox,
            "marketplace": marketplace,
            "shop": {
                "acknowledged_orders": len(self.seen),
                "ship_requests_accepted": len(self.shipped_ids),
                "left_to_ship": len(self.to_ship),
            },
            "daemon_exit_status": daemon.proc.returncode,
            "daemon_log": log,
        }

    def unfinished(self) -> dict[str, int]:
        """What is still under way: operations, unconfirmed deliveries, unimported orders."""
        pending = self.query("SELECT count(*) FROM pending_operations")[0][0]
        unconfirmed = self.query(
            "SELECT count(*) FROM operations WHERE state = 'succeed' "
            "AND delivered_at IS NOT NULL AND confirmed_at IS NULL"
        )[0][0]
        imported = self.query("SELECT count(*) FROM orders")[0][0]
        return {
            "pending_operations": pending,
            "delivered_unconfirmed": unconfirmed,
            "orders_not_imported": self.placed - imported,
        }

    def outbox(self) -> dict[str, Any]:
        states = self.query("SELECT kind, state, count(*) FROM operations GROUP BY 1, 2")
        errors = self.query(
            "SELECT kind, last_error, count(*) FROM operations WHERE state = 'failed' "
            "GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5"
        )
        orders = self.query("SELECT status, count(*) FROM orders GROUP BY 1")
        return {
            "operations": {f"{kind}/{state}": n for kind, state, n in states},
            "failed_reasons": [f"{kind}: {error} ({n})" for kind, error, n in errors],
            "orders_by_status": dict(orders),
            "database_mb": round(
                sum(
                    p.stat().st_size
                    for p in self.work.glob("sfd.db*")
                    if p.is_file() and not p.name.endswith(".sock")
                )
                / 1024**2,
                1,
            ),
        }

    def marketplace_calls(self) -> dict[str, int]:
        """Calls the marketplaces received, and how many repeated an order already done."""
        figures: Counter[str] = Counter()
        for market in self.marketplaces:
            for operation in ("OR11", "OR21", "OR23", "OR24"):
                calls = market.calls_to(operation)
                figures[operation] += len(calls)
                if operation in ("OR21", "OR24"):
                    done = [c.order_id for c in calls if c.status == 204]
                    figures[f"{operation}_repeated"] += len(done) - len(set(done))
                figures[f"{operation}_not_2xx"] += sum(
                    1 for c in calls if c.status is None or not 200 <= c.status < 300
                )
            figures["shipped_on_marketplace"] += sum(
                1 for o in market.orders.values() if o["order_state"] == "SHIPPED"
            )
        return dict(figures)

    def per_minute(self, duration: float) -> list[dict[str, Any]]:
        """Throughput and latency minute by minute, to show the pace was held."""
        by_time = {round(s.at): s for s in self.samples}
        rows = []
        minute = 0
        while minute * 60 < duration:
            since, until = minute * 60, min(duration, minute * 60 + 60)
            seconds = until - since
            first, last = by_time.get(round(since)), by_time.get(round(until))
            row: dict[str, Any] = {"minute": minute + 1, "seconds": seconds}
            if first and last:
                for name in ("imported", "ship_delivered", "accept_delivered"):
                    row[f"{name}_per_s"] = round(
                        (last.counters[name] - first.counters[name]) / seconds, 1
                    )
                row["daemon_cpu_percent"] = round(100 * (last.cpu_s - first.cpu_s) / seconds)
                row["bench_cpu_percent"] = round(
                    100 * (last.bench_cpu_s - first.bench_cpu_s) / seconds
                )
                row["end"] = _figures(last)
            reads = [self.calls.load(k, seconds, since, until) for k in READS]
            row["reads_per_s"] = round(sum(len(r.latencies) for r in reads) / seconds, 1)
            ships = self.calls.load("ship", seconds, since, until)
            row["ship_requests_per_s"] = round(ships.rate, 1)
            for kind in ("orders_page", "order_one", "ship", "acknowledge"):
                part = self.calls.load(kind, seconds, since, until)
                row[f"{kind}_p99_ms"] = round(part.percentile(99), 1) if part.latencies else None
            rows.append(row)
            minute += 1
        return rows


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def _figures(s: Sample) -> dict[str, Any]:
    """What one sample says of the daemon's memory, descriptors and sockets."""
    figures: dict[str, Any] = {
        "at_s": round(s.at, 1),
        "rss_mb": _mb(s.memory["VmRSS"]),
        "anon_mb": _mb(s.memory.get("RssAnon", 0)),
        "file_mb": _mb(s.memory.get("RssFile", 0)),
        "fds": s.fds,
        "tcp": s.sockets,
        "cpu_s": round(s.cpu_s, 1),
    }
    if "sqlite_kb" in s.probe:
        figures["sqlite_mb"] = _mb(s.probe["sqlite_kb"])
    if "python_blocks" in s.probe:
        figures["python_blocks"] = s.probe["python_blocks"]
    if "malloc_in_use_kb" in s.probe:
        figures["malloc_in_use_mb"] = _mb(s.probe["malloc_in_use_kb"])
        figures["malloc_free_mb"] = _mb(s.probe["malloc_free_kb"])
    return figures


def _growth(before: float | None, after: float | None) -> float | None:
    return None if not before or after is None else round(100 * (after / before - 1), 1)


def _fd_kind(target: str) -> str:
    """What an fd is, without its inode: socket, pipe, anon_inode:[eventpoll], a file name."""
    if target.startswith(("socket:", "pipe:")):
        return target.partition(":")[0]
    return Path(target).name if target.startswith("/") else target


def _log_summary(path: Path, since: datetime, until: datetime) -> dict[str, Any]:
    """The daemon's log lines by level, the warnings and errors by event, and the polls that
    ended between `since` and `until` (the load): how many, how long each took."""
    levels: Counter[str] = Counter()
    events: Counter[str] = Counter()
    polls: list[float] = []
    lines = 0
    with path.open("rb") as log:
        for raw in log:
            lines += 1
            try:
                line = json.loads(raw)
            except ValueError:
                levels["not_json"] += 1
                continue
            level = str(line.get("level", "?"))
            levels[level] += 1
            if level in ("warning", "error", "critical"):
                events[f"{level}:{line.get('event')}"] += 1
            if line.get("event") == "poll_done" and "duration" in line:
                at = datetime.fromisoformat(line["timestamp"])
                if since <= at < until:
                    polls.append(float(line["duration"]))
    seconds = (until - since).total_seconds()
    return {
        "lines": lines,
        "levels": dict(levels),
        "warnings_and_errors": dict(events),
        "polls": Load(seconds=seconds, latencies=polls).summary() if polls else {},
        "poll_period_per_channel_s": round(CHANNELS * seconds / len(polls), 1) if polls else None,
    }


MOMENTS = ("idle", "start", "end", "after_drain")


def _minute(m: dict[str, Any], r: dict[str, Any]) -> str:
    return f"{m['minute']}{' (warm-up)' if m['minute'] * 60 <= r['warmup_s'] else ''}"


def _median(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over several samples (TCP sockets: of each kind)."""
    result: dict[str, Any] = {}
    for name, value in figures[0].items():
        if isinstance(value, int | float):
            values = [f[name] for f in figures if name in f]
            result[name] = round(statistics.median(values), 1)
    kinds = {k for f in figures for k in f["tcp"]}
    result["tcp"] = {
        k: round(statistics.median(f["tcp"].get(k, 0) for f in figures)) for k in kinds
    }
    return result


def _memory_cells(f: dict[str, Any]) -> str:
    tcp = f["tcp"]
    return (
        f"{f['rss_mb']:g} MB | {f['anon_mb']:g} MB | {f['file_mb']:g} MB | "
        f"{f.get('sqlite_mb', '-'):g} MB | {f.get('python_blocks', '-'):,.0f} | "
        f"{f.get('malloc_in_use_mb', '-'):g} MB | {f['fds']:g} | "
        f"{tcp.get('from_clients', 0)} / {tcp.get('to_marketplaces', 0)}"
    )


def markdown(r: dict[str, Any]) -> str:
    """The figures as tables ready for docs/reliability.md."""

    def ms(value: float) -> str:
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"

    out = [
        f"`.venv/bin/python {r['command']}` on {r['when']}: {r['duration_s']} s of load "
        f"({r['warmup_s']} s warm-up) against `sfd run` in its own process, {r['channels']} "
        f"channels, {r['orders_placed']:,} orders placed in all. {r['cpus']} CPUs, shared: "
        f"load average {r['load_average']['start'][0]} at start, "
        f"{r['load_average']['end'][0]} at the end of the load.",
        "",
        "| call | target rate | held | requests | errors | median | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r["calls"].values():
        target = f"{c['target_per_second']:g}/s" if c["target_per_second"] else "every 5 s"
        if not c["requests"]:
            out.append(f"| {c['label']} | {target} | 0/s | 0 | {c['errors']} | - | - |")
            continue
        out.append(
            f"| {c['label']} | {target} | {c['per_second']:g}/s | {c['requests']:,} | "
            f"{c['errors']} | {ms(c['median_ms'])} | {ms(c['p99_ms'])} |"
        )
    polls = r["daemon_log"].get("polls")
    if polls:
        out.append(
            f"| Channel poll in the daemon (OR11 fetch + store), {r['channels']} channels | "
            f"every {POLL_INTERVAL} after the last | every "
            f"{r['daemon_log']['poll_period_per_channel_s']} s | {polls['requests']:,} | "
            f"{polls.get('errors', '-')} | {ms(polls['median_ms'])} | {ms(polls['p99_ms'])} |"
        )
    out += [
        "",
        "| minute | imported/s | accepted (OR21)/s | ship requests/s | shipped (OR24)/s | "
        "API reads/s | read p99 (page / one) | ship p99 | daemon CPU | load generator CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["per_minute"]:

        def p99(kind: str, row: dict[str, Any] = m) -> str:
            value = row.get(f"{kind}_p99_ms")
            return "-" if value is None else ms(value)

        out.append(
            f"| {_minute(m, r)} | {m.get('imported_per_s', '-')} | "
            f"{m.get('accept_delivered_per_s', '-')} | {m['ship_requests_per_s']} | "
            f"{m.get('ship_delivered_per_s', '-')} | {m['reads_per_s']} | "
            f"{p99('orders_page')} / {p99('order_one')} | {p99('ship')} | "
            f"{m.get('daemon_cpu_percent', '-')} % | {m.get('bench_cpu_percent', '-')} % |"
        )
    out += [
        "",
        "The daemon minute by minute: the median of its samples (one every "
        f"{SAMPLE_EVERY:g} s), so that requests in flight at one instant do not hide the trend.",
        "",
        "| minute | RSS | anonymous | file-backed | SQLite's own memory | "
        "Python blocks | malloc in use | open fds | TCP from clients / to marketplaces |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["per_minute"]:
        since = (m["minute"] - 1) * 60
        window = [t for t in r["timeline"] if since < t["at_s"] <= since + m["seconds"]]
        if window:
            out.append(f"| {_minute(m, r)} | {_memory_cells(_median(window))} |")
    d = r["daemon"]
    growth = dict(d["growth_percent"])
    connections = d["fds_after_drain_by_kind"].get("sfd.db", 0)  # one fd per SQLite connection
    for moment in MOMENTS:  # beside SQLite's caches: Python, its C side, aiohttp, msgspec
        f = d[moment]
        if "sqlite_mb" in f:
            f["anon_outside_sqlite_mb"] = round(f["anon_mb"] - f["sqlite_mb"], 1)
        if "malloc_in_use_mb" in f and "sqlite_mb" in f:
            f["malloc_outside_sqlite_mb"] = round(f["malloc_in_use_mb"] - f["sqlite_mb"], 1)
    for name in ("anon_outside_sqlite_mb", "malloc_outside_sqlite_mb"):
        growth[name] = _growth(d["start"].get(name), d["end"].get(name))

    def sockets(s: dict[str, int]) -> str:
        return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(s.items())) or "none"

    def row(label: str, name: str, unit: str = "") -> str:
        cells = [f"{d[moment].get(name, '-'):,}{unit}" for moment in MOMENTS]
        change = growth.get(name)
        if change is not None:
            cells[2] += f" (**{change:+.1f} %**)"
        return f"| {label} | {' | '.join(cells)} |"

    out += [
        "",
        f"| daemon | idle, backlog imported | start: after the {r['warmup_s']:g} s warm-up | "
        f"end of the load | after the drain |",
        "|---|---|---|---|---|",
        row("RSS", "rss_mb", " MB"),
        row("anonymous RSS", "anon_mb", " MB"),
        row("file-backed RSS", "file_mb", " MB"),
        row("SQLite's own memory (page caches)", "sqlite_mb", " MB"),
        row("anonymous RSS outside SQLite's caches", "anon_outside_sqlite_mb", " MB"),
        row("Python allocated blocks", "python_blocks"),
        row("malloc in use", "malloc_in_use_mb", " MB"),
        row("malloc in use outside SQLite", "malloc_outside_sqlite_mb", " MB"),
        row("open file descriptors", "fds"),
        f"| TCP sockets | {' | '.join(sockets(d[m]['tcp']) for m in MOMENTS)} |",
        "",
        "File-backed RSS is the interpreter's and libraries' mapped code (SQLite does not map "
        "the database file: `mmap_size` 0). "
        f"SQLite's own memory is its page caches (`cache_size` {CACHE_KIB // 1024} MB per "
        f"connection, so at most {CACHE_KIB // 1024 * connections} MB). "
        "Anonymous RSS outside those caches, Python's allocated blocks and malloc outside SQLite "
        "are what a leak in sfd would grow.",
    ]
    ops = r["outbox"]["operations"]
    unfinished = r["drain"]["unfinished_at_end"]
    market = r["marketplace"]
    warnings = ", ".join(f"{k} {v}" for k, v in r["daemon_log"]["warnings_and_errors"].items())
    out += [
        "",
        "| outbox after the drain | |",
        "|---|---|",
        f"| drain time (no new orders) | {r['drain']['seconds']} s |",
        f"| operations scheduled or running (`pending_operations`) | "
        f"**{unfinished['pending_operations']}** |",
        f"| delivered, not yet confirmed by the marketplace | "
        f"{unfinished['delivered_unconfirmed']} |",
        f"| orders placed on the marketplaces, not imported | "
        f"{unfinished['orders_not_imported']} |",
        "| operations by kind/state | "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(ops.items()))
        + " |",
        f"| ship requests accepted (202) / OR24 calls answered / repeated | "
        f"{r['shop']['ship_requests_accepted']:,} / "
        f"{market.get('OR24', 0) - market.get('OR24_not_2xx', 0):,} / "
        f"{market.get('OR24_repeated', 0)} |",
        f"| OR21 accept calls / repeated | {market.get('OR21', 0):,} / "
        f"{market.get('OR21_repeated', 0)} |",
        f"| failed operations | {', '.join(r['outbox']['failed_reasons']) or 'none'} |",
        f"| daemon log warnings and errors | {warnings or 'none'} |",
    ]
    return "\n".join(out)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds of load before 'start' (memory)"
    )
    parser.add_argument("--drain", type=float, default=120.0, help="most seconds to drain")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--markdown", action="store_true", help="print tables for the docs")
    parser.add_argument("--keep", type=Path, help="keep the database and log in this directory")
    parser.add_argument(
        "--from-json", type=Path, help="print the tables of an earlier run's --json file; no run"
    )
    parser.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="do not load the memory probe (SQLite, Python, malloc figures) into the daemon",
    )
    args = parser.parse_args()
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return
    args.warmup = min(args.warmup, args.duration / 2) // SAMPLE_EVERY * SAMPLE_EVERY
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = await Soak(args, args.keep).run()
    else:
        with tempfile.TemporaryDirectory(prefix="sfd-soak-") as tmp:
            result = await Soak(args, Path(tmp)).run()
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    if args.markdown:
        print(markdown(result))
    else:
        print(text)


if __name__ == "__main__":
    asyncio.run(main())
