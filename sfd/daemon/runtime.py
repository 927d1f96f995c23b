"""`sfd run`: one anyio task group holding the HTTP server and the loops, in clear phases."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import anyio
from aiohttp import web

from sfd import __version__
from sfd.config import Config
from sfd.connectors import shoppingfeed
from sfd.connectors.base import CarrierLister, MarketplaceConnector
from sfd.connectors.registry import ConnectorUnavailable, open_marketplace, open_shop
from sfd.connectors.shop import DEFAULT_RETRY, Retry, ShopConnector
from sfd.daemon.admin import admin_app, socket_path, start_admin
from sfd.daemon.api import ShopApi
from sfd.daemon.carriers import CarrierView, carrier_view
from sfd.daemon.deadlines import DeadlineWatch
from sfd.daemon.http import build_app
from sfd.daemon.leases import LeaseKeeper
from sfd.daemon.loops import Loop, Poller
from sfd.daemon.metrics import Metrics
from sfd.daemon.notify import SystemdNotifier
from sfd.daemon.page import OrderPage
from sfd.daemon.push import PushLoop
from sfd.daemon.retention import RetentionLoop
from sfd.daemon.worker import OperationsWorker
from sfd.daemon.ws import LegacyWebservice
from sfd.domain.clock import Clock, utcnow
from sfd.logs import SecretRedactor, get_logger
from sfd.storage import (
    DatabaseLocked,
    OrderFilter,
    Storage,
    StorageCondition,
    StorageError,
    channel_lease,
    shop_lease,
)
from sfd.storage.channels import ChannelSpec
from sfd.storage.leases import Listener

log = get_logger()

_C = TypeVar("_C")


def _opened(open_connector: Callable[[], _C], **where: str) -> tuple[_C | None, str]:
    """The connector `open_connector` opens, else None and why it is unavailable (logged as
    connector_unavailable, with `where` it was to serve)."""
    try:
        return open_connector(), ""
    except ConnectorUnavailable as exc:
        log.warning("connector_unavailable", **where, reason=str(exc))
        return None, str(exc)


#: A stop must be done by then; systemd's TimeoutStopSec is 30 s, our promise is 10 s.
STOP_DEADLINE = 8.0
#: While writes fail (disk full, read-only), a one-row write is tried this often.
STORAGE_PROBE = 5.0
#: While the LISTEN connection for other instances' operations is down, it is retried this often.
LISTEN_RETRY = 5.0
#: The lease of the deadline watch (one instance warns about late orders).
DEADLINES_LEASE = "deadlines"


class StartupError(Exception):
    """The daemon cannot start; the message is one line that says why."""


async def open_storage(config: Config, *, readers: int = 1, migrate: bool = True) -> Storage:
    """Open (and migrate) the config's database: its SQLite file, or its PostgreSQL URL."""
    return await Storage.open(
        config.database_target,
        readers=readers,
        migrate=migrate,
        renderer=shoppingfeed.render_order,
        password=config.database_password,
        state_path=config.database,
    )


async def sync_config(storage: Storage, config: Config, now: datetime) -> None:
    """Record the config's stores, channels and shops in the database."""
    await storage.channels.sync(
        [(s.id, s.name) for s in config.stores],
        [ChannelSpec(c.name, c.store, c.connector, c.require_tracking) for c in config.channels],
        now,
    )
    for shop in config.shops:
        await storage.pushes.register(shop.name, shop.store, shop.connector, now)


class Daemon:
    """The running process: storage, connectors, loops and the HTTP server."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = utcnow,
        notifier: SystemdNotifier | None = None,
        handle_signals: bool = True,
        shop_retry: Retry = DEFAULT_RETRY,
    ) -> None:
        self.config = config
        self.shop_retry = shop_retry
        self.clock = clock
        self.notifier = notifier or SystemdNotifier()
        self.handle_signals = handle_signals
        self.storage: Storage | None = None
        self.loops: list[Loop] = []
        self.worker: OperationsWorker | None = None
        self.metrics = Metrics(clock=clock)
        self.connectors: list[MarketplaceConnector] = []
        self.shop_connectors: list[ShopConnector] = []
        self.carrier_listers: dict[int, list[CarrierLister]] = {}
        """Store id → its channels' connectors that list their marketplace's carriers (/ws)."""
        self.ready = anyio.Event()
        self.stop_requested = anyio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._admin: web.AppRunner | None = None
        self._summary = ""
        self.leases: LeaseKeeper | None = None
        """Which loops run in this instance; every loop but the operations worker is leased."""
        self._listener: Listener | None = None
        self._by_name: dict[str, MarketplaceConnector] = {}

    # -- phases ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open and migrate the database, build the loops, bind the server."""
        try:
            self.storage = await open_storage(self.config, readers=3)
            await self.storage.claim_runner()
            self.metrics.storage = self.storage
            reclaimed = await self.storage.queue.reclaim(self.clock())
            if reclaimed:
                log.info(
                    "operations_reclaimed",
                    count=reclaimed,
                    reason="claimed by a process that stopped before finishing them",
                )
            await sync_config(self.storage, self.config, self.clock())
        except (StorageError, DatabaseLocked) as exc:
            if self.storage is not None:
                await self.storage.close()
                self.storage = None
            raise StartupError(str(exc)) from None
        await self._build_loops(self.storage)
        await self._bind()
        try:
            await self._take_leases(self.storage)
        except StorageError as exc:
            raise StartupError(str(exc)) from None

    async def _take_leases(self, storage: Storage) -> None:
        """Take this instance's share of the leases before anything runs."""
        ids = await storage.channels.channel_ids()
        leased: dict[str, Loop] = {}
        for loop in self.loops:
            if isinstance(loop, Poller):
                leased[channel_lease(loop.channel_id)] = loop
            elif isinstance(loop, PushLoop):
                leased[shop_lease(loop.shop.name)] = loop
            elif isinstance(loop, DeadlineWatch):
                leased[DEADLINES_LEASE] = loop
        self.leases = LeaseKeeper(
            storage,
            storage.instance_id,
            self.config.daemon.lease_ttl,
            leased,
            worker=self.worker,
            channel_ids={channel_lease(i): i for i in ids.values()},
        )
        await self.leases.round()

    async def _build_loops(self, storage: Storage) -> None:
        ids = await storage.channels.channel_ids()
        redactor = SecretRedactor(self.config.secrets)
        by_channel: dict[int, MarketplaceConnector] = {}
        self.metrics.declare_channels(c.name for c in self.config.channels)
        for channel in self.config.channels:
            settings = self.config.channel_settings[channel.name]
            connector, reason = _opened(
                partial(open_marketplace, channel.name, channel.connector, settings),
                channel=channel.name,
            )
            if connector is not None:
                self.connectors.append(connector)
                by_channel[ids[channel.name]] = connector
                self._by_name[channel.name] = connector
                if isinstance(connector, CarrierLister):
                    self.carrier_listers.setdefault(channel.store, []).append(connector)
            self.loops.append(
                Poller(
                    channel,
                    ids[channel.name],
                    storage,
                    connector,
                    self.clock,
                    unavailable_reason=reason,
                    redact=redactor.redact,
                    on_operations=self._operations_written,
                    metrics=self.metrics,
                )
            )
        daemon = self.config.daemon
        self.worker = OperationsWorker(
            storage,
            by_channel,
            self.clock,
            concurrency=daemon.operation_concurrency,
            max_age=timedelta(seconds=daemon.operation_max_age),
            confirm_delay=daemon.confirm_delay,
            metrics=self.metrics,
            holder=storage.instance_id,
            carriers={ids[c.name]: c.carriers for c in self.config.channels if c.carriers},
        )
        self.loops.append(self.worker)
        warnings = {
            ids[c.name]: timedelta(seconds=c.ship_deadline_warning) for c in self.config.channels
        }
        self.loops.append(DeadlineWatch(storage.deadlines, warnings, self.clock))
        self.loops.append(
            RetentionLoop(storage, timedelta(seconds=daemon.pii_retention), self.clock)
        )
        self._build_push_loops(storage, redactor)

    def _build_push_loops(self, storage: Storage, redactor: SecretRedactor) -> None:
        """One push loop per `[[shops]]` entry; the store keeps serving the v1 API beside it."""
        tracking = {c.name: c.require_tracking for c in self.config.channels}
        self.metrics.declare_shops(s.name for s in self.config.shops)
        for shop in self.config.shops:
            settings = self.config.shop_settings[shop.name]
            shop_connector, reason = _opened(
                partial(open_shop, shop.name, shop.connector, settings, retry=self.shop_retry),
                shop=shop.name,
            )
            if shop_connector is not None:
                self.shop_connectors.append(shop_connector)
            self.loops.append(
                PushLoop(
                    shop,
                    storage,
                    shop_connector,
                    self.clock,
                    require_tracking=tracking,
                    unavailable_reason=reason,
                    redact=redactor.redact,
                    on_operations=self._operations_written,
                    metrics=self.metrics,
                )
            )

    def _operations_written(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def _bind(self) -> None:
        assert self.storage is not None
        host, port = self.config.listen_host, self.config.listen_port
        self._runner = web.AppRunner(
            build_app(
                self.health,
                ShopApi(self.storage, self.clock, self._operations_written),
                LegacyWebservice(
                    self.storage,
                    self.clock,
                    self._operations_written,
                    carriers=self.carrier_listers,
                ),
                metrics=self.metrics,
                page=OrderPage(
                    self.storage,
                    self.clock,
                    self._operations_written,
                    poll_now=self.poll_now,
                    carriers=self.carrier_view,
                    warnings={
                        c.name: timedelta(seconds=c.ship_deadline_warning)
                        for c in self.config.channels
                    },
                ),
            ),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=3.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(f"cannot listen on {host}:{port}: {why}") from None
        bound = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        self._admin = web.AppRunner(
            admin_app(self.poll_now, self._operations_written),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
        )
        await self._admin.setup()
        path = socket_path(self.config.database.resolve())
        if not await start_admin(self._admin, path):
            log.warning(
                "admin_socket_unavailable", path=str(path), reason="path too long for a Unix socket"
            )

    async def carrier_view(self, name: str) -> CarrierView | None:
        """A channel's carriers, read through its running connector (Mirakl's SH21 cache)."""
        channel = next((c for c in self.config.channels if c.name == name), None)
        if channel is None:
            return None
        return await carrier_view(channel, self._by_name.get(name))

    def poll_now(self, channel: str) -> bool:
        """Ask a channel's poller (or a shop's push loop) to run at once; False if none runs."""
        found = False
        for loop in self.loops:
            if (isinstance(loop, Poller) and loop.channel.name == channel) or (
                isinstance(loop, PushLoop) and loop.shop.name == channel
            ):
                loop.wake()
                found = True
        return found

    async def serve(self) -> None:
        """Run every loop until a stop is asked for, then stop within the deadline."""
        assert self.storage is not None
        with self._signal_handlers():
            try:
                await self._serve()
            finally:
                await self.stop()

    async def _serve(self) -> None:
        assert self.leases is not None
        async with anyio.create_task_group() as tg:
            for loop in self.loops:
                if loop not in self.leases.loops.values():
                    tg.start_soon(loop.run, name=loop.name)
            tg.start_soon(self.leases.run, name="leases")
            tg.start_soon(self._listen, name="listen")
            tg.start_soon(self._report, name="systemd")
            tg.start_soon(self._watch_storage, name="storage")
            self._summary = await self._status_line()
            log.info(
                "daemon_ready",
                version=__version__,
                url=self.url,
                database=self.config.database_target,
                channels=len(self.config.channels),
                pid=os.getpid(),
                instance=self.leases.instance,
                leases=len(self.leases.held),
            )
            self.notifier.ready(self._summary)
            self.ready.set()
            await self.stop_requested.wait()
            tg.cancel_scope.cancel()

    async def stop(self) -> None:
        """Release everything; every step is shielded and bounded in time."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_DEADLINE):
            if self._listener is not None:
                await self._listener.close()
                self._listener = None
            if self.leases is not None and self.storage is not None:
                # Given back at once: the other instances take the work at their next round.
                await self.leases.give_back_all()
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            if self._admin is not None:
                await self._admin.cleanup()
                self._admin = None
                socket_path(self.config.database.resolve()).unlink(missing_ok=True)
            for connector in self.connectors:
                await connector.aclose()
            self.connectors.clear()
            self._by_name.clear()
            self.carrier_listers.clear()
            for shop_connector in self.shop_connectors:
                await shop_connector.aclose()
            self.shop_connectors.clear()
            if self.storage is not None:
                await self.storage.close()
                self.storage = None
        self.notifier.close()
        log.info("daemon_stopped")

    def request_stop(self) -> None:
        """Begin a graceful stop: no new work; in-flight writes finish."""
        if not self.stop_requested.is_set():
            self.notifier.stopping()
            log.info("daemon_stopping")
            if self.worker is not None:
                self.worker.stop_gracefully()
            self.stop_requested.set()

    # -- inside the task group ------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if self.stop_requested.is_set() and signum == signal.SIGINT:
            # A second Ctrl-C means "now". Every write is one SQLite transaction, which a
            # hard exit cannot leave half-written.
            sys.stderr.write("sfd: second interrupt, exiting at once\n")
            os._exit(130)
        log.info("signal_received", signal=signal.Signals(signum).name)
        self.request_stop()

    @contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        """Handle SIGTERM and SIGINT for the daemon's whole life, its stop included."""
        if not self.handle_signals:
            yield
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    async def _report(self) -> None:
        """Tell systemd how we are: STATUS= now and then, WATCHDOG=1 while all loops progress."""
        interval = self.notifier.watchdog_interval
        beat = min(interval, 10.0) if interval else 10.0
        while True:
            await anyio.sleep(beat)
            if self.all_healthy():
                if interval:
                    self.notifier.watchdog()
            else:
                log.warning(
                    "watchdog_withheld",
                    stalled=[loop.name for loop in self.loops if not loop.healthy(self.clock())],
                )
            summary = await self._status_line()
            if summary != self._summary:
                self._summary = summary
                self.notifier.status(summary)

    async def _status_line(self) -> str:
        assert self.storage is not None
        now = self.clock()
        to_process = await self.storage.orders.count(OrderFilter.to_process(now))
        late = await self.storage.orders.count(OrderFilter(late_at=now))
        failing = [
            loop.name.split(":", 1)[1]
            for loop in self.loops
            if isinstance(loop, Poller) and loop.status.condition != "ok"
        ]
        line = f"{len(self.config.channels)} channels, {to_process} orders to process, {late} late"
        if failing:
            line += f"; failing: {', '.join(failing)}"
        return line

    async def _listen(self) -> None:
        """Wake the worker when another instance writes operations (PostgreSQL); the worker's
        own timer finds them anyway while this connection is down."""
        assert self.storage is not None
        assert self.worker is not None
        down = False
        while True:
            if self._listener is None or not self._listener.alive():
                if self._listener is not None:
                    await self._listener.close()
                    self._listener = None
                try:
                    self._listener = await self.storage.listen_operations(self.worker.wake)
                except StorageError as exc:
                    if not down:
                        log.warning("operations_listen_failed", reason=str(exc))
                    down = True
                else:
                    if down:
                        log.info("operations_listen_recovered")
                    down = False
                if self._listener is None and not down:
                    return  # SQLite: this instance writes every operation itself
            await anyio.sleep(LISTEN_RETRY)

    async def _watch_storage(self) -> None:
        """Log each change of the storage condition once; while writes fail, probe for space."""
        assert self.storage is not None
        storage = self.storage
        storage.on_condition(self._storage_changed)
        while True:
            await anyio.sleep(STORAGE_PROBE)
            if storage.condition is not None:
                await storage.probe()

    def _storage_changed(
        self, now: StorageCondition | None, before: StorageCondition | None
    ) -> None:
        if now is not None:
            log.error("storage_unavailable", condition=now.kind, reason=now.reason)
        elif before is not None:
            seconds = (utcnow() - before.since).total_seconds()
            log.info("storage_recovered", after=before.kind, seconds=round(seconds, 1))
            for loop in self.loops:
                loop.wake()  # paused loops resume now, not at their next retry

    # -- health ---------------------------------------------------------------------------

    def all_healthy(self) -> bool:
        """Whether every loop has made progress recently."""
        now = self.clock()
        return all(loop.healthy(now) for loop in self.loops)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """What /healthz shows: unhealthy while a loop is stalled or the disk refuses writes."""
        now = self.clock()
        condition = self.storage.condition if self.storage is not None else None
        storage: dict[str, Any] = {"condition": "ok"}
        if condition is not None:
            storage = {
                "condition": condition.kind,
                "reason": condition.reason,
                "since": condition.since,
            }
        leases: dict[str, Any] = {}
        if self.leases is not None:
            leases = {
                "instance": self.leases.instance,
                "instances": self.leases.instances,
                "held": sorted(self.leases.held),
            }
        return self.all_healthy() and condition is None, {
            "version": __version__,
            "time": now,
            "storage": storage,
            "leases": leases,
            "loops": {loop.name: loop.status for loop in self.loops},
        }


async def run_daemon(config: Config, *, clock: Clock = utcnow) -> int:
    """`sfd run`: start, serve, stop; return the process's exit status."""
    daemon = Daemon(config, clock=clock)
    try:
        await daemon.start()
    except StartupError as exc:
        log.error("startup_failed", reason=str(exc))
        sys.stderr.write(f"sfd: {exc}\n")
        await daemon.stop()
        return 1
    await daemon.serve()
    return 0
