"""Prometheus metrics: counters and histograms fed by the loops, gauges read from the database.

Each `Metrics` owns its registry, never prometheus_client's global one, so tests and several
daemons in one process do not clash. The gauges come from SQLite: `refresh()` reads them
through the storage's reader pool (off the event loop) into memory, and the collector only
hands out what it holds, so rendering never touches the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from sfd.domain.clock import Clock, utcnow
from sfd.logs import get_logger
from sfd.storage import Storage, StorageError
from sfd.storage.deadlines import AUTH_STATES, DatabaseGauges

#: The Prometheus text format `generate_latest` writes. prometheus_client's own
#: CONTENT_TYPE_LATEST names format 1.0.0 since 0.22, whatever generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: From a tenth of a second to a day: an operation waits from a moment (worker awake) to hours (a
#: marketplace down, or slow to show the result).
OPERATION_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)
#: A poll is one page or many, from a fraction of a second to minutes.
POLL_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

Outcome = Literal["delivered", "failed", "retried", "waiting_credentials"]
PollResult = Literal["ok", "failed", "auth_failed"]
POLL_RESULTS: tuple[PollResult, ...] = ("ok", "failed", "auth_failed")

log = get_logger()


class _DatabaseCollector:
    """The gauges read from the database, as of the last refresh."""

    def __init__(self) -> None:
        self.values: DatabaseGauges | None = None

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "sfd_pending_operations",
                "Operations scheduled or running, not yet delivered to the marketplace.",
                labels=["channel", "kind"],
            ),
            GaugeMetricFamily(
                "sfd_late_orders",
                "Orders still to ship whose ship-by date has passed.",
                labels=["channel"],
            ),
            GaugeMetricFamily(
                "sfd_channel_auth_state",
                "1 for the current state of the channel's credentials, 0 for the others.",
                labels=["channel", "state"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        pending, late, auth = self._families()
        values = self.values
        if values is not None:
            for (channel, kind), count in sorted(values.pending_operations.items()):
                pending.add_metric([channel, kind], count)
            for channel, count in sorted(values.late_orders.items()):
                late.add_metric([channel], count)
            for channel, current in sorted(values.auth_states.items()):
                for state in AUTH_STATES:
                    auth.add_metric([channel, state], 1.0 if state == current else 0.0)
        return [pending, late, auth]


class _StorageCollector:
    """Whether the database takes writes: read from memory, the condition the writer keeps."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "sfd_storage_writable",
            "1 while the database takes writes; 0 while the disk is full, read-only or failing.",
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        if self.metrics.storage is not None:
            family.add_metric([], 0.0 if self.metrics.storage.condition else 1.0)
        return [family]


class Metrics:
    """The daemon's metrics and the /metrics handler.

    `storage`, when given, is what the handler refreshes the gauges from before rendering.
    """

    def __init__(self, storage: Storage | None = None, *, clock: Clock = utcnow) -> None:
        self.storage = storage
        self.clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self.orders_imported = Counter(
            "sfd_orders_imported", "Orders imported for the first time.", ["channel"], registry=r
        )
        self.operations = Counter(
            "sfd_operations",
            "Operation outcomes: delivered, failed, retried, waiting_credentials.",
            ["kind", "outcome"],
            registry=r,
        )
        self.operation_delivery_seconds = Histogram(
            "sfd_operation_delivery_seconds",
            "From an operation's request to its successful marketplace call.",
            ["kind"],
            buckets=OPERATION_BUCKETS,
            registry=r,
        )
        self.operation_confirmation_seconds = Histogram(
            "sfd_operation_confirmation_seconds",
            "From an operation's request to the marketplace showing its result.",
            ["kind"],
            buckets=OPERATION_BUCKETS,
            registry=r,
        )
        self.poll_duration_seconds = Histogram(
            "sfd_poll_duration_seconds",
            "How long one poll of a channel took, whatever its result.",
            ["channel"],
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.polls = Counter(
            "sfd_polls", "Polls of a channel, by result.", ["channel", "result"], registry=r
        )
        self.shop_syncs = Counter(
            "sfd_shop_syncs",
            "Syncs of a push-mode shop, by result.",
            ["shop", "result"],
            registry=r,
        )
        self.orders_pushed = Counter(
            "sfd_orders_pushed",
            "Orders sfd created in a push-mode shop (created), or the shop refused (refused).",
            ["shop", "outcome"],
            registry=r,
        )
        self.database = _DatabaseCollector()
        r.register(self.database)
        r.register(_StorageCollector(self))

    # -- what the loops report --------------------------------------------------------------

    def declare_channels(self, channels: Iterable[str]) -> None:
        """Show every channel's counters at zero from the start, so rate() sees the first."""
        for channel in channels:
            self.orders_imported.labels(channel=channel)
            for result in POLL_RESULTS:
                self.polls.labels(channel=channel, result=result)

    def declare_shops(self, shops: Iterable[str]) -> None:
        """Show every push-mode shop's counters at zero from the start."""
        for shop in shops:
            for result in POLL_RESULTS:
                self.shop_syncs.labels(shop=shop, result=result)
            for outcome in ("created", "refused"):
                self.orders_pushed.labels(shop=shop, outcome=outcome)

    def shop_synced(self, shop: str, result: PollResult) -> None:
        """A sync of a push-mode shop ended."""
        self.shop_syncs.labels(shop=shop, result=result).inc()

    def order_pushed(self, shop: str, outcome: Literal["created", "refused"]) -> None:
        """An order went into a push-mode shop, or the shop refused it."""
        self.orders_pushed.labels(shop=shop, outcome=outcome).inc()

    def orders_created(self, channel: str, count: int = 1) -> None:
        """`count` new orders were imported on `channel`."""
        if count:
            self.orders_imported.labels(channel=channel).inc(count)

    def operation_outcome(self, kind: str, outcome: Outcome) -> None:
        """One attempt at an operation ended in `outcome` (delivered: see operation_delivered)."""
        self.operations.labels(kind=str(kind), outcome=outcome).inc()

    def operation_delivered(self, kind: str, seconds: float) -> None:
        """The marketplace took an operation `seconds` after it was requested."""
        self.operation_outcome(kind, "delivered")
        self.operation_delivery_seconds.labels(kind=str(kind)).observe(max(0.0, seconds))

    def operation_confirmed(self, kind: str, seconds: float) -> None:
        """The marketplace showed an operation's result `seconds` after it was requested."""
        self.operation_confirmation_seconds.labels(kind=str(kind)).observe(max(0.0, seconds))

    def poll_finished(self, channel: str, result: PollResult, seconds: float | None) -> None:
        """A poll of `channel` ended; `seconds` is None when no call was made."""
        self.polls.labels(channel=channel, result=result).inc()
        if seconds is not None:
            self.poll_duration_seconds.labels(channel=channel).observe(max(0.0, seconds))

    # -- the database gauges and the endpoint ----------------------------------------------

    async def refresh(self, storage: Storage | None = None) -> None:
        """Read the gauges from the database (through the reader pool) into memory."""
        source = storage or self.storage
        if source is None:
            return
        self.database.values = await source.deadline_gauges(self.clock())

    def render(self) -> bytes:
        """The metrics in the Prometheus text format, as of the last refresh."""
        return generate_latest(self.registry)

    async def handler(self, _request: web.Request) -> web.Response:
        """GET /metrics: refresh the gauges, then render everything."""
        try:
            await self.refresh()
        except (StorageError, ValueError) as exc:
            # The counters are still worth serving; the gauges keep their last values.
            log.warning("metrics_refresh_failed", reason=f"{type(exc).__name__}: {exc}")
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE})
