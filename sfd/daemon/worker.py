"""The operations worker: delivers the outbox to the marketplaces, and confirms what they did.

Written operations wake it at once. It claims work under a lease, calls the channel's
connector with at most `concurrency` calls per channel, and writes every outcome in a shielded
transaction. A marketplace that is down or throttling gets the operation again later, with
exponential backoff and jitter; one whose credentials fail gets it again without spending an
attempt. After a delivery, it asks the marketplace for the order's status until the result
shows, unless a poll saw it first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import anyio
import anyio.abc
import structlog

from sfd.connectors.base import (
    AuthFailed,
    ConnectorError,
    MarketplaceConnector,
    RateLimited,
    RefundRequest,
    Rejected,
    ShipmentReceipt,
    ShipmentRequest,
)
from sfd.daemon.backoff import LOOP_BACKOFF, OPERATION_BACKOFF, Backoff
from sfd.daemon.loops import Loop
from sfd.daemon.metrics import Metrics
from sfd.domain import OperationKind
from sfd.domain.clock import Clock, utcnow
from sfd.domain.rules import RefundPayload, ShipPayload
from sfd.logs import get_logger
from sfd.storage import Claim, Storage, StorageUnavailable

K = OperationKind
T = TypeVar("T")
#: Operations from other processes (the CLI) are found at least this often.
POLL = 2.0
LEASE = timedelta(minutes=5)
#: A call still running when a stop comes gets this long to finish before it is cancelled.
STOP_GRACE = 5.0
AUTH_WAIT = 300.0
#: While the disk cannot take a marketplace's answer, it is kept and written again this often.
SAVE_RETRY = 1.0


@dataclass(frozen=True)
class Delivered:
    """The marketplace took the operation; a shipment brings back what was sent of it."""

    receipt: ShipmentReceipt | None = None


@dataclass(frozen=True)
class Failed:
    """The marketplace refused it, or it was tried for too long: the ticket fails."""

    reason: str


@dataclass(frozen=True)
class RetryAt:
    """Down or throttling: the operation is due again at `at`."""

    at: datetime
    reason: str
    delay: float
    paused_until: datetime | None = None
    """When the channel may be called again, if it asked for a wait (Retry-After)."""
    error: Exception | None = None


@dataclass(frozen=True)
class WaitingForCredentials:
    """The channel's credentials fail: the operation waits without spending an attempt."""

    until: datetime
    reason: str
    message: str
    """What the marketplace said, for the log."""


@dataclass(frozen=True)
class Interrupted:
    """A stop came mid-call: whether the marketplace took it is unknown until the next start."""


Outcome = Delivered | Failed | RetryAt | WaitingForCredentials | Interrupted
Handler = Callable[[MarketplaceConnector, Claim], Awaitable[ShipmentReceipt | None]]


def _receipt_events(channel: str, receipt: ShipmentReceipt | None) -> tuple[str, list[str]]:
    """What a shipment's delivery event says was sent, and the warnings for what was not."""
    if receipt is None:
        return "", []
    numbers = ", ".join(receipt.tracking_numbers) or "none"
    carrier = receipt.carrier or "none"
    matched = receipt.carrier_match
    if receipt.carrier and matched is not None:
        # Which code went out, and why: the channel's table, a match sfd made, or none.
        carrier = f'{receipt.carrier} ({matched.source.value}: "{matched.name}")'
    detail = f"carrier {carrier}, tracking {numbers}"
    warnings = []
    if receipt.not_forwarded:
        left = ", ".join(receipt.not_forwarded)
        why = "; ".join(receipt.notes)
        warnings.append(
            f"tracking number(s) {left} not forwarded to {channel}" + (f": {why}" if why else "")
        )
    else:
        warnings.extend(receipt.notes)
    return detail, warnings


class OperationsWorker(Loop):
    """Delivers operations through each channel's connector."""

    def __init__(
        self,
        storage: Storage,
        connectors: Mapping[int, MarketplaceConnector],
        clock: Clock,
        *,
        concurrency: int = 4,
        max_age: timedelta = timedelta(hours=48),
        confirm_delay: float = 60.0,
        metrics: Metrics | None = None,
        carriers: Mapping[int, Mapping[str, str]] | None = None,
        operation_backoff: Backoff = OPERATION_BACKOFF,
        backoff: Backoff = LOOP_BACKOFF,
        storage_retry: float | None = None,
        save_retry: float | None = None,
        holder: str | None = None,
    ) -> None:
        super().__init__(
            "operations-worker", POLL, clock, backoff=backoff, storage_retry=storage_retry
        )
        self.operation_backoff = operation_backoff
        """How long an operation the marketplace could not take waits before the next try."""
        self.save_retry = SAVE_RETRY if save_retry is None else save_retry
        self.storage = storage
        self.connectors = connectors
        self.concurrency = concurrency
        self.max_age = max_age
        self.confirm_delay = confirm_delay
        self.metrics = metrics or Metrics()
        self.carriers = carriers or {}
        """Channel id → its `[channels.carriers]` table, handed to the connector with a shipment."""
        self._limiters: dict[int, anyio.CapacityLimiter] = {}
        self._paused: dict[int, datetime] = {}
        """Channel id → when it may be called again (throttled, or credentials broken)."""
        self._inflight: set[int] = set()
        self._channel_of: dict[int, int] = {}
        """Operation in flight → its channel id."""
        self.holder = holder
        """This instance's id: only operations of channels whose lease it holds are taken."""
        self.claim_lock = anyio.Lock()
        """Held from a claim until its deliveries are in flight; a lease is given back under it."""
        self._called: set[int] = set()
        """Operations whose marketplace call has begun: their outcome is unknown until it ends."""
        self._confirming: set[int] = set()
        self._calls: set[anyio.CancelScope] = set()
        self._stopping = False
        self._group: anyio.abc.TaskGroup
        self.log = get_logger(loop="operations-worker")

    def _limiter(self, channel_id: int) -> anyio.CapacityLimiter:
        if channel_id not in self._limiters:
            self._limiters[channel_id] = anyio.CapacityLimiter(self.concurrency)
        return self._limiters[channel_id]

    def busy_channels(self) -> set[int]:
        """Channels with a delivery under way in this instance."""
        return set(self._channel_of.values())

    async def run(self) -> None:
        """Tick until cancelled; deliveries run beside the ticks, in one task group."""
        async with anyio.create_task_group() as tg:
            self._group = tg
            await super().run()

    def stop_gracefully(self, grace: float | None = None) -> None:
        """Claim nothing more; calls under way get `grace` seconds to bring their answer."""
        self._stopping = True
        deadline = anyio.current_time() + (STOP_GRACE if grace is None else grace)
        for scope in self._calls:
            scope.deadline = min(scope.deadline, deadline)

    async def step(self) -> float | None:
        if self._stopping:
            return POLL
        # No new claims while answers could not be written; calls under way carry on.
        self.storage.check_writable()
        now = self.clock()
        lease_now = utcnow()  # leases run on real time, whatever the injected clock says
        paused = [c for c, until in self._paused.items() if until > now]
        room = self.concurrency * max(1, len(self.connectors)) - len(self._inflight)
        async with self.claim_lock:
            claims = (
                await self.storage.queue.claim(
                    now, LEASE, room, paused, holder=self.holder, lease_now=lease_now
                )
                if room > 0
                else []
            )
            for claim in claims:
                if claim.operation_id in self._inflight:
                    # Its answer is still waiting for the disk (a lease ran out meanwhile).
                    continue
                self._inflight.add(claim.operation_id)
                self._channel_of[claim.operation_id] = claim.channel_id
                self._group.start_soon(self._deliver, claim, name=f"operation {claim.operation_id}")
        confirmations = [
            c
            for c in await self.storage.queue.due_confirmations(
                now,
                16,
                next_check=now + timedelta(seconds=self.confirm_delay),
                holder=self.holder,
                lease_now=lease_now,
            )
            if c.operation_id not in self._confirming
        ]
        for claim in confirmations:
            self._confirming.add(claim.operation_id)
            self._group.start_soon(self._confirm, claim, name=f"confirm {claim.operation_id}")
        self.status.detail = {
            "in_flight": len(self._inflight),
            "claimed": len(claims),
            "confirmations": len(confirmations),
        }
        self.status.last_success_at = self.clock()
        # A paused channel's operations are not due before its pause ends: no spinning.
        wake_at = [until for until in self._paused.values() if until > now]
        due = await self.storage.queue.next_due(
            skip_channels=paused, holder=self.holder, lease_now=lease_now if self.holder else None
        )
        if due is not None:
            wake_at.append(due)
        if not wake_at:
            return POLL
        return min(POLL, max(0.05, (min(wake_at) - self.clock()).total_seconds()))

    async def _save(self, write: Callable[[], Awaitable[T]]) -> T:
        """Write a marketplace's answer, waiting out a disk that cannot take it.

        The answer lives only in memory until written; dropping it would call the marketplace
        again. Only a stop gives up, and the lease then brings the operation back at start.
        """
        while True:
            try:
                return await write()
            except StorageUnavailable:
                if self._stopping:
                    raise
                await anyio.sleep(self.save_retry)

    async def _deliver(self, claim: Claim) -> None:
        try:
            await self._deliver_one(claim)
        except StorageUnavailable as exc:
            # Stopping with the answer unwritten: the claim stays leased, and the next start
            # (or the lease's end) makes the operation due again. Nothing is lost.
            self.log.warning(
                "operation_outcome_unsaved",
                channel=claim.channel,
                order=claim.order_reference,
                operation=claim.operation_id,
                reason=str(exc),
            )
        except anyio.get_cancelled_exc_class():
            if claim.operation_id not in self._called:
                # Stopped before calling the marketplace: give the claim back at once. A disk
                # that refuses it leaves the lease to do the same at the next start.
                with anyio.CancelScope(shield=True), contextlib.suppress(StorageUnavailable):
                    await self.storage.queue.release([claim], self.clock())
            raise
        finally:
            self._inflight.discard(claim.operation_id)
            self._channel_of.pop(claim.operation_id, None)
            self._called.discard(claim.operation_id)
            self.wake()  # room for the next one

    async def _deliver_one(self, claim: Claim) -> None:
        connector = self.connectors.get(claim.channel_id)
        requested = self.clock()
        if connector is None:
            reason = f"channel {claim.channel} has no working connector"
            await self._write(claim, Failed(reason), requested)
            return
        async with self._limiter(claim.channel_id):
            if self._stopping:
                await self.storage.queue.release([claim], self.clock())
                return
            requested = self.clock()
            # Once the call is made, a stop lets it finish for a moment: its answer decides
            # whether the marketplace has the operation, and must be written.
            with anyio.CancelScope(shield=True) as call:
                self._called.add(claim.operation_id)
                self._calls.add(call)
                try:
                    outcome = await self._call(connector, claim)
                finally:
                    self._calls.discard(call)
            if call.cancelled_caught:
                # Whether the marketplace took it is unknown: the operation is due again at
                # the next start, and connectors treat "already done" as done.
                outcome = Interrupted()
            # Kept in a local until here, then written once: a cancellation cannot lose it.
            with anyio.CancelScope(shield=True):
                await self._write(claim, outcome, requested)

    async def _call(self, connector: MarketplaceConnector, claim: Claim) -> Outcome:
        """Make the marketplace call, and say what came of it."""
        handler = _HANDLERS.get(claim.kind)
        try:
            if handler is None:
                raise Rejected(
                    f"the {connector.name} connector cannot {claim.kind.value} orders yet"
                )
            if claim.kind == K.SHIP:
                table = self.carriers.get(claim.channel_id, {})
                return Delivered(await _ship(connector, claim, table))
            return Delivered(await handler(connector, claim))
        except Rejected as exc:
            return Failed(exc.message)
        except AuthFailed as exc:
            return WaitingForCredentials(
                self.clock() + timedelta(seconds=AUTH_WAIT), f"AuthFailed: {exc}", str(exc)
            )
        except Exception as exc:
            # A connector error, or a bug in a connector: tried again later, never fatal to
            # the worker (an operation that keeps failing gives up at `max_age`).
            return self._retry_at(claim, exc)

    def _retry_at(self, claim: Claim, exc: Exception) -> Failed | RetryAt:
        now = self.clock()
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if now - claim.created_at > self.max_age:
            return Failed(f"gave up after {claim.attempts} attempts over {self.max_age}: {reason}")
        retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
        delay = self.operation_backoff.delay(claim.attempts, retry_after)
        paused = now + timedelta(seconds=retry_after) if retry_after else None
        unexpected = None if isinstance(exc, ConnectorError) else exc
        return RetryAt(now + timedelta(seconds=delay), reason, delay, paused, unexpected)

    async def _write(self, claim: Claim, outcome: Outcome, requested: datetime) -> None:
        """Write an operation's outcome, then count and log it: the one place that does."""
        log = self.log.bind(
            channel=claim.channel,
            order=claim.order_reference,
            operation=claim.operation_id,
            kind=claim.kind.value,
        )
        queue = self.storage.queue
        match outcome:
            case Delivered(receipt):
                await self._delivered(claim, receipt, requested, log)
            case Failed(reason):
                await self._save(lambda: queue.failed(claim, self.clock(), reason))
                self.metrics.operation_outcome(claim.kind, "failed")
                log.warning("operation_failed", reason=reason, attempts=claim.attempts)
            case RetryAt(at, reason, delay, paused, error):
                if paused is not None:
                    self._paused[claim.channel_id] = paused
                await self._save(lambda: queue.retry(claim, self.clock(), at, reason))
                self.metrics.operation_outcome(claim.kind, "retried")
                log.info(
                    "operation_retry", reason=reason, attempts=claim.attempts,
                    delay=round(delay, 1), exc_info=error or False,
                )  # fmt: skip
            case WaitingForCredentials(until, reason, message):
                self._paused[claim.channel_id] = until
                await self._save(
                    lambda: queue.retry(claim, self.clock(), until, reason, spend_attempt=False)
                )
                self.metrics.operation_outcome(claim.kind, "waiting_credentials")
                log.warning("operation_waiting_for_credentials", reason=message)
            case Interrupted():
                await self._save(
                    lambda: queue.retry(
                        claim, self.clock(), self.clock(), "interrupted by a stop",
                        spend_attempt=False,
                    )
                )  # fmt: skip
                log.info("operation_interrupted")

    async def _delivered(
        self,
        claim: Claim,
        receipt: ShipmentReceipt | None,
        requested: datetime,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        now = self.clock()
        detail, warnings = _receipt_events(claim.channel, receipt)
        confirmed = await self._save(
            lambda: self.storage.queue.delivered(
                claim,
                now,
                now + timedelta(seconds=self.confirm_delay),
                detail=detail,
                warnings=warnings,
            )
        )
        self.metrics.operation_delivered(claim.kind, (now - claim.created_at).total_seconds())
        sent = {}
        if receipt is not None and receipt.carrier_match is not None:
            sent = {"carrier": receipt.carrier, "carrier_source": receipt.carrier_match.source}
        log.info(
            "operation_delivered",
            **sent,
            attempts=claim.attempts,
            seconds=round((now - claim.created_at).total_seconds(), 3),
            call_seconds=round((now - requested).total_seconds(), 3),
        )
        for _, kind, seconds in confirmed:
            self.metrics.operation_confirmed(kind, seconds)
            log.info("operation_confirmed", confirmed_kind=kind, seconds=round(seconds, 1))

    async def _confirm(self, claim: Claim) -> None:
        try:
            await self._confirm_one(claim)
        except StorageUnavailable:
            pass  # the check stays due and is made again once the disk takes writes
        finally:
            self._confirming.discard(claim.operation_id)

    async def _confirm_one(self, claim: Claim) -> None:
        connector = self.connectors.get(claim.channel_id)
        now = self.clock()
        # Ask again later and later: 1 min, 2, 4... up to an hour; a poll may answer first.
        waited = max(self.confirm_delay, (now - claim.created_at).total_seconds())
        next_check = now + timedelta(seconds=min(3600.0, waited))
        if connector is None:
            return
        try:
            status = await connector.order_status(claim.order_reference)
        except ConnectorError as exc:
            self.log.info(
                "confirmation_deferred",
                channel=claim.channel,
                order=claim.order_reference,
                reason=f"{type(exc).__name__}: {exc}",
            )
            status = None
        confirmed = await self.storage.queue.observed(claim, status, self.clock(), next_check)
        for _, kind, seconds in confirmed:
            self.metrics.operation_confirmed(kind, seconds)
            self.log.info(
                "operation_confirmed",
                channel=claim.channel,
                order=claim.order_reference,
                operation=claim.operation_id,
                confirmed_kind=kind,
                seconds=round(seconds, 1),
            )


async def _accept(connector: MarketplaceConnector, claim: Claim) -> None:
    await connector.accept(claim.order_reference)


async def _refuse(connector: MarketplaceConnector, claim: Claim) -> None:
    await connector.refuse(claim.order_reference)


async def _cancel(connector: MarketplaceConnector, claim: Claim) -> None:
    await connector.cancel(claim.order_reference)


async def _mark_delivered(connector: MarketplaceConnector, claim: Claim) -> None:
    await connector.deliver(claim.order_reference)


async def _ship(
    connector: MarketplaceConnector, claim: Claim, carriers: Mapping[str, str] | None = None
) -> ShipmentReceipt:
    p = claim.payload
    if not isinstance(p, ShipPayload):
        raise Rejected(f"a shipment needs a ship payload, not {type(p).__name__}")
    return await connector.ship(
        claim.order_reference,
        ShipmentRequest(
            carrier=p.carrier,
            tracking_number=p.tracking_number,
            tracking_link=p.tracking_link,
            items={claim.item_references[item]: qty for item, qty in p.items} or None,
            carriers=carriers or {},
        ),
    )


async def _refund(connector: MarketplaceConnector, claim: Claim) -> None:
    p = claim.payload
    if not isinstance(p, RefundPayload):
        raise Rejected(f"a refund needs a refund payload, not {type(p).__name__}")
    # Merchant SKUs, as the refund was requested: each connector matches its own lines.
    items: dict[str, int] = {}
    for sku, qty in p.products:
        items[sku] = items.get(sku, 0) + qty
    await connector.refund(
        claim.order_reference, RefundRequest(shipping=p.shipping, items=items or None)
    )


async def _upload_document(connector: MarketplaceConnector, claim: Claim) -> None:
    if claim.document is None:
        raise Rejected("the document's content was erased before it was sent")
    await connector.upload_document(claim.order_reference, claim.document)


#: Operation kind → the marketplace call that delivers it; a kind not here is refused.
_HANDLERS: dict[OperationKind, Handler] = {
    K.ACCEPT: _accept,
    K.REFUSE: _refuse,
    K.CANCEL: _cancel,
    K.SHIP: _ship,
    K.REFUND: _refund,
    K.DELIVER: _mark_delivered,
    K.UPLOAD_DOCUMENT: _upload_document,
}
