"""The daemon's loops: small objects with `run()`, whose state shows in /healthz and the CLI."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypedDict, TypeVar, Unpack

import anyio
import anyio.abc
import msgspec

from sfd.config import ChannelConfig
from sfd.connectors.base import (
    AuthFailed,
    ConnectorError,
    MarketplaceConnector,
    OrderPage,
    RateLimited,
)
from sfd.daemon.backoff import LOOP_BACKOFF, Backoff
from sfd.daemon.metrics import Metrics, PollResult
from sfd.daemon.outbox import request_operations
from sfd.domain import EventSource, OperationKind, OrderStatus
from sfd.domain.clock import Clock
from sfd.domain.rules import ReasonPayload
from sfd.logs import get_logger
from sfd.storage import ImportResult, OperationRequest, Storage, StorageUnavailable

#: The cursor steps back this far, so an order updated while a poll ran is never missed.
CURSOR_OVERLAP = timedelta(minutes=5)
#: A loop busy in one tick for longer than this counts as stalled, and the watchdog stops.
STALL_AFTER = 300.0
#: How slowly a channel whose credentials fail is retried.
AUTH_RETRY = 900.0
#: A loop whose writes fail for lack of disk (full, read-only) tries again this often.
STORAGE_RETRY = 10.0


class LoopCondition(StrEnum):
    """How a loop's work goes, as /healthz and `sfd channels` show it."""

    OK = "ok"
    FAILING = "failing"
    AUTH_FAILED = "auth_failed"
    UNAVAILABLE = "unavailable"
    """The loop has no working connector (not built yet, or its settings are unusable)."""
    STORAGE_UNAVAILABLE = "storage_unavailable"


STORAGE_CONDITION = LoopCondition.STORAGE_UNAVAILABLE


class LoopUnavailable(Exception):
    """Raised by a step that cannot work at all (no connector); the message says why."""


@dataclass(frozen=True)
class Failure:
    """One failed step, classified."""

    condition: LoopCondition
    reason: str
    """What went wrong, safe to store and show (secrets redacted)."""
    error: Exception
    retry_after: float | None = None
    """The wait the remote side asked for, when it was rate-limited."""
    unexpected: bool = False
    """Not a failure the loop knows: a bug, or a library raising what it never raised before."""


class LoopState(msgspec.Struct, kw_only=True):
    """What a loop is doing, as /healthz shows it."""

    name: str
    state: str = "starting"
    """What it does: starting, idle, busy, stopped, or standby (another instance runs it)."""
    condition: LoopCondition = LoopCondition.OK
    """How its work goes: ok, failing, auth_failed, unavailable or storage_unavailable."""
    ticks: int = 0
    last_tick_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    busy_since: datetime | None = None
    next_tick_at: datetime | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    holder: str | None = None
    """The instance holding this loop's lease, where loops are leased (None: none yet)."""


class Loop:
    """Ticks on an interval or when woken; one `step()` per tick, implemented by a subclass.

    The template owns what every loop shares: it classifies a failed step (storage
    unavailable, auth failure, rate limit with its Retry-After, timeout or other connector
    error, or an unexpected exception), logs each change of condition once and the recovery
    once (never once per failed tick), picks the delay before the next tick from one injected
    `Backoff`, and never lets an exception end the loop, nor so the daemon's other loops.
    """

    failed_event: ClassVar[str] = "loop_failed"
    """The event logged, once, when the loop's work starts failing."""
    recovered_event: ClassVar[str] = "loop_recovered"
    """The event logged, once, when it works again after failures."""
    expected: ClassVar[tuple[type[Exception], ...]] = ()
    """Exceptions besides a connector's and timeouts that are this loop's ordinary failures."""

    def __init__(
        self,
        name: str,
        interval: float,
        clock: Clock,
        *,
        backoff: Backoff = LOOP_BACKOFF,
        storage_retry: float | None = None,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.name = name
        self.interval = interval
        self.clock = clock
        self.backoff = backoff
        self.storage_retry = STORAGE_RETRY if storage_retry is None else storage_retry
        self.redact = redact
        self.status = LoopState(name=name)
        self.failures = 0
        """Failed steps in a row (a paused storage aside)."""
        self._unexpected = False
        self._wake = anyio.Event()
        self.log = get_logger(loop=name)
        self.lease_check: Callable[[], bool] = lambda: True
        """Whether this instance still holds the loop's lease; checked before each tick."""

    def wake(self) -> None:
        """Tick now rather than at the next interval."""
        self._wake.set()

    def healthy(self, now: datetime) -> bool:
        """False once the loop stopped or has been stuck in one tick for too long."""
        if self.status.state == "stopped":
            return False
        if self.status.state == "standby":
            return True  # another instance holds its lease
        busy = self.status.busy_since
        return busy is None or (now - busy).total_seconds() < STALL_AFTER

    async def step(self) -> float | None:
        """Do one round of work; return the delay before the next, or None for the interval.

        A failure is raised, never handled here: the template classifies and logs it.
        """
        raise NotImplementedError

    async def failed(self, failure: Failure, delay: float) -> None:
        """Record a failed step where the loop keeps its state (metrics, storage); optional."""

    async def run(self) -> None:
        """Tick until cancelled."""
        try:
            while True:
                if not self.lease_check():
                    # The lease may lapse before the next renewal: stop before another
                    # instance may take the work over.
                    self.log.info("loop_lease_expired")
                    return
                delay: float | None = None
                self.status.busy_since = self.clock()
                self.status.state = "busy"
                try:
                    delay = await self.tick()
                finally:
                    self.status.busy_since = None
                    self.status.state = "idle"
                    self.status.last_tick_at = self.clock()
                    self.status.ticks += 1
                await self._sleep(self.interval if delay is None else delay)
        finally:
            self.status.state = "stopped"

    async def tick(self) -> float | None:
        """One step, its failure classified, logged on transition and turned into a delay."""
        try:
            delay = await self.step()
        except Exception as exc:
            return await self._failing(self.classify(exc))
        self._succeeded()
        return delay

    def classify(self, exc: Exception) -> Failure:
        """What kind of failure `exc` is, with a reason fit to store and show."""
        if isinstance(exc, StorageUnavailable):
            return Failure(STORAGE_CONDITION, str(exc), exc)
        if isinstance(exc, LoopUnavailable):
            return Failure(LoopCondition.UNAVAILABLE, str(exc), exc)
        # The reason is stored and shown: it must not carry a secret, whatever was raised.
        reason = self.redact(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, AuthFailed):
            return Failure(LoopCondition.AUTH_FAILED, reason, exc)
        if isinstance(exc, RateLimited):
            return Failure(LoopCondition.FAILING, reason, exc, retry_after=exc.retry_after)
        known = isinstance(exc, (ConnectorError, TimeoutError, *self.expected))
        return Failure(LoopCondition.FAILING, reason, exc, unexpected=not known)

    def retry_delay(self, failure: Failure) -> float:
        """Seconds before the tick after a failed one."""
        match failure.condition:
            case LoopCondition.STORAGE_UNAVAILABLE:
                return self.storage_retry
            case LoopCondition.UNAVAILABLE:
                return self.interval
            case LoopCondition.AUTH_FAILED:
                return max(self.interval, AUTH_RETRY)
        if isinstance(failure.error, RateLimited):
            return failure.retry_after or self.interval
        return min(self.interval, self.backoff.delay(self.failures))

    async def _failing(self, failure: Failure) -> float:
        self._note(failure)
        delay = self.retry_delay(failure)
        if failure.condition is not STORAGE_CONDITION:
            try:
                await self.failed(failure, delay)
            except Exception as exc:
                # The failure could not be recorded (the disk, say): that is the news now.
                later = self.classify(exc)
                self._note(later)
                return self.retry_delay(later)
        return delay

    def _note(self, failure: Failure) -> None:
        """Set the condition; log it only when it changes (a day down logs once, not 48 times)."""
        status = self.status
        changed = (status.condition, self._unexpected) != (failure.condition, failure.unexpected)
        if failure.condition is STORAGE_CONDITION:
            if changed:
                # The storage, not the marketplace, is at fault: no failure counted, no backoff.
                error = failure.error
                kind = error.condition.kind if isinstance(error, StorageUnavailable) else ""
                self.log.warning(
                    "loop_paused", condition=failure.condition.value, storage=kind,
                    reason=failure.reason,
                )  # fmt: skip
        else:
            if failure.condition is not LoopCondition.UNAVAILABLE:
                self.failures += 1
            if changed and failure.unexpected:
                self.log.error(
                    "loop_failed_unexpectedly", condition=failure.condition.value,
                    reason=failure.reason, exc_info=failure.error,
                )  # fmt: skip
            elif changed:
                self.log.error(
                    self.failed_event, condition=failure.condition.value, reason=failure.reason
                )
        status.condition = failure.condition
        status.last_error = failure.reason
        self._unexpected = failure.unexpected

    def _succeeded(self) -> None:
        if self.status.condition is STORAGE_CONDITION:
            self.log.info("loop_resumed", after=STORAGE_CONDITION.value)
        if self.failures:
            self.log.info(self.recovered_event, after_failures=self.failures)
        self.failures = 0
        self._unexpected = False
        self.status.condition = LoopCondition.OK
        self.status.last_error = None
        self.status.last_success_at = self.clock()

    async def _sleep(self, delay: float) -> None:
        self.status.next_tick_at = self.clock() + timedelta(seconds=delay)
        with anyio.move_on_after(delay):
            await self._wake.wait()
        self._wake = anyio.Event()


C = TypeVar("C")


class ConnectorOptions(TypedDict, total=False):
    """The keyword settings of a loop around one connector (see `ConnectorLoop`)."""

    unavailable_reason: str
    redact: Callable[[str], str]
    on_operations: Callable[[], None]
    metrics: Metrics | None
    backoff: Backoff
    storage_retry: float | None


class ConnectorLoop(Loop, Generic[C]):
    """A loop around one connector, a channel's or a shop's, which may be missing.

    Without a connector every step fails as unavailable, with `unavailable_reason`;
    `on_operations` is called when a step wrote operations for the worker.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        storage: Storage,
        connector: C | None,
        clock: Clock,
        *,
        unavailable_reason: str = "",
        redact: Callable[[str], str] = str,
        on_operations: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
        backoff: Backoff = LOOP_BACKOFF,
        storage_retry: float | None = None,
    ) -> None:
        super().__init__(
            name, interval, clock, backoff=backoff, storage_retry=storage_retry, redact=redact
        )
        self.metrics = metrics or Metrics()
        self.storage = storage
        self.connector = connector
        self.unavailable_reason = unavailable_reason
        self.on_operations = on_operations

    def working_connector(self) -> C:
        """The connector, or LoopUnavailable saying why there is none."""
        if self.connector is None:
            raise LoopUnavailable(self.unavailable_reason)
        return self.connector


class Poller(ConnectorLoop[MarketplaceConnector]):
    """Imports one channel's orders every `poll_interval`, with jitter, page by page."""

    failed_event = "poll_failed"
    recovered_event = "poll_recovered"

    def __init__(
        self,
        channel: ChannelConfig,
        channel_id: int,
        storage: Storage,
        connector: MarketplaceConnector | None,
        clock: Clock,
        **options: Unpack[ConnectorOptions],
    ) -> None:
        name, interval = f"poller:{channel.name}", channel.poll_interval
        super().__init__(name, interval, storage, connector, clock, **options)
        self.channel = channel
        self.channel_id = channel_id
        self._bounded_logged = False
        self._started: datetime | None = None
        self.log = get_logger(channel=channel.name)
        minimum = connector.min_poll_interval if connector else None
        if minimum is not None and channel.poll_interval < minimum:
            self.log.warning(
                "poll_interval_below_recommended",
                poll_interval=channel.poll_interval,
                recommended=minimum,
            )

    def _jittered(self, seconds: float) -> float:
        # Spread channels over time so they do not all call out in the same second.
        return seconds * random.uniform(0.9, 1.1)  # noqa: S311 - not for security

    def _polled(self, result: PollResult, started: datetime) -> None:
        seconds = (self.clock() - started).total_seconds()
        self.metrics.poll_finished(self.channel.name, result, seconds)

    async def step(self) -> float | None:
        # Nothing fetched could be stored: leave the marketplace alone until disk is back.
        self.storage.check_writable()
        self._started = None
        connector = self.working_connector()
        now = self._started = self.clock()
        await self.storage.channels.record_poll_started(self.channel_id, now)
        counts = await self._import(connector)
        delay = self._jittered(self.interval)
        done = self.clock()
        self._polled("ok", now)
        await self.storage.channels.record_poll_succeeded(
            self.channel_id, done, done + timedelta(seconds=delay)
        )
        self.status.detail = counts
        self.log.info("poll_done", duration=round((done - now).total_seconds(), 3), **counts)
        return delay

    async def failed(self, failure: Failure, delay: float) -> None:
        auth = failure.condition is LoopCondition.AUTH_FAILED
        if self._started is None:
            self.metrics.poll_finished(self.channel.name, "failed", None)
        else:
            self._polled("auth_failed" if auth else "failed", self._started)
        now = self.clock()
        await self.storage.channels.record_poll_failed(
            self.channel_id, now, failure.reason, now + timedelta(seconds=delay), auth_failed=auth
        )

    async def _import(self, connector: MarketplaceConnector) -> dict[str, int]:
        cursor = await self.storage.channels.cursor(self.channel_id)
        counts = {"pages": 0, "created": 0, "changed": 0, "skipped": 0}
        # The cursor never passes an order we could not read, so the next poll sees it again.
        ceiling: datetime | None = None
        held = False
        newest: datetime | None = None

        def advance() -> datetime | None:
            nonlocal cursor
            if newest is None or held:
                return None
            candidate = (min(newest, ceiling) if ceiling else newest) - CURSOR_OVERLAP
            if cursor is not None and candidate <= cursor:
                return None
            cursor = candidate
            return candidate

        since = cursor
        if since is None:
            # No cursor yet: reach back only `import_since`, never the whole order history.
            since = self.clock() - timedelta(seconds=self.channel.import_since)
            if not self._bounded_logged:
                # Once a process: a channel with no orders yet has no cursor at every poll.
                self.log.info(
                    "first_poll_bounded",
                    since=since,
                    import_since=float(self.channel.import_since),
                )
                self._bounded_logged = True
        async with Prefetch(connector.fetch_orders(since)) as stream:
            async for page in stream:
                for skipped in page.skipped:
                    self.log.warning(
                        "order_skipped", order=skipped.reference, reason=skipped.reason
                    )
                    counts["skipped"] += 1
                    if skipped.updated_at is None:
                        held = True
                    elif ceiling is None or skipped.updated_at < ceiling:
                        ceiling = skipped.updated_at
                for order in page.orders:
                    if newest is None or order.updated_at > newest:
                        newest = order.updated_at
                next_cursor = advance() if connector.pages_sorted_by_update else None
                result = await self.storage.orders.import_page(
                    self.channel_id, self.channel.store, page.orders, self.clock(), next_cursor
                )
                counts["pages"] += 1
                counts["created"] += len(result.created)
                counts["changed"] += len(result.changed)
                await self._imported(result)
        if not connector.pages_sorted_by_update:
            # Only a complete pass has seen every change up to the newest one.
            final = advance()
            if final is not None:
                await self.storage.channels.set_cursor(self.channel_id, final, self.clock())
        return counts

    async def _imported(self, result: ImportResult) -> None:
        """Log and count what one stored page changed, and accept what waits for it."""
        self.metrics.orders_created(self.channel.name, len(result.created))
        for order_id, reference, status in result.created:
            self.log.info("order_imported", order=reference, order_id=order_id, status=status.value)
        await self._auto_accept(result)
        for order_id, reference, old, new in result.changed:
            self.log.info(
                "order_status_changed",
                order=reference,
                order_id=order_id,
                from_status=old.value,
                to_status=new.value,
                source="marketplace",
            )
        for reference, operation_id, kind, seconds in result.confirmed:
            self.metrics.operation_confirmed(kind, seconds)
            self.log.info(
                "operation_confirmed",
                order=reference,
                operation=operation_id,
                confirmed_kind=kind,
                seconds=round(seconds, 1),
                by="poll",
            )
        for order_id, reference, how in result.jumped:
            # Once, when the change is applied: the marketplace moved the order on
            # by itself (its back office, or between two polls); sfd follows it.
            self.log.info(
                "order_status_skipped_steps", order=reference, order_id=order_id, change=how
            )

    async def _auto_accept(self, result: ImportResult) -> None:
        waiting = [
            (order_id, reference)
            for order_id, reference, status in result.created
            if status == OrderStatus.WAITING_STORE_ACCEPTANCE
        ]
        if not waiting or not self.channel.auto_accept:
            return
        await request_operations(
            self.storage,
            self.channel.store,
            OperationKind.ACCEPT,
            [
                OperationRequest(payload=ReasonPayload(), order_id=order_id)
                for order_id, _ in waiting
            ],
            EventSource.AUTO,
            self.clock(),
            self.on_operations,
        )


class Prefetch:
    """Fetches the next page while the caller stores this one.

    Used as `async with Prefetch(pages) as stream: async for page in stream: ...`. A fetch
    error reaches the caller as itself, never wrapped in an exception group.
    """

    def __init__(self, pages: AsyncIterator[OrderPage]) -> None:
        self.pages = pages
        self.send, self.receive = anyio.create_memory_object_stream[OrderPage](1)
        self.failure: list[Exception] = []
        self.group = anyio.create_task_group()

    async def _fetch(self) -> None:
        async with self.send:
            try:
                async for page in self.pages:
                    await self.send.send(page)
            except Exception as exc:
                self.failure.append(exc)

    async def __aenter__(self) -> anyio.abc.ObjectReceiveStream[OrderPage]:
        await self.group.__aenter__()
        self.group.start_soon(self._fetch)
        return self.receive

    async def __aexit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        if error is not None:
            self.group.cancel_scope.cancel()
        await self.group.__aexit__(None, None, None)
        self.receive.close()
        if error is None and self.failure:
            raise self.failure[0]
