"""Push mode: one loop per `[[shops]]` entry puts the store's orders to process into the shop,
acknowledges them, and reads back which ones the shop completed (with tracking) or cancelled.

Every change goes through the same rules and outbox as the API (`request_operations`, source
`shop`). A push is recorded before the shop is called; an attempt whose outcome is unknown is
searched for in the shop before any new create, so no crash or retry creates an order twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Unpack

from sfd.config import ShopConfig
from sfd.connectors.base import ConnectorError, Rejected
from sfd.connectors.shop import (
    CreateUncertain,
    PushLine,
    PushOrder,
    ShopConnector,
    ShopOrder,
    ShopStatus,
    Steps,
    StepwiseShop,
    retrying,
)
from sfd.daemon.loops import (
    CURSOR_OVERLAP,
    ConnectorLoop,
    ConnectorOptions,
    Failure,
    LoopCondition,
)
from sfd.daemon.outbox import request_operations
from sfd.domain import Address, EventSource, OperationKind, OrderStatus, StoredOrder, Ticket
from sfd.domain.clock import Clock
from sfd.domain.rules import (
    LIVE,
    SHIPPABLE,
    AcknowledgePayload,
    Payload,
    ReasonPayload,
    ShipPayload,
)
from sfd.storage import OperationRequest, OrderFilter, Storage
from sfd.storage.pushes import CREATED, PENDING, REJECTED, PushRecord

#: At most this many orders are pushed in one sync; the rest go in the next, soon after.
PUSH_BATCH = 100
MORE_SOON = 1.0
_CANCELLABLE = frozenset(
    {OrderStatus.CREATED, OrderStatus.WAITING_STORE_ACCEPTANCE, OrderStatus.WAITING_SHIPMENT}
)


class PushError(Exception):
    """A push cannot be retried; the message says why."""


def push_order(order: StoredOrder) -> PushOrder:
    """What the shop is given of a stored order (loaded with its lines and addresses)."""
    billing = order.billing_address or Address()
    shipping = order.shipping_address or billing
    relay = shipping.relay_id
    note = f"{order.channel} order {order.reference}"
    if relay:
        note += f", relay point {relay}"
    return PushOrder(
        order_id=order.id,
        marketplace=order.channel,
        reference=order.reference,
        currency=order.currency,
        billing=billing,
        shipping=shipping,
        lines=tuple(
            PushLine(sku=i.reference, name=i.name, quantity=i.quantity, price=i.price)
            for i in order.items
            if i.quantity > 0
        ),
        shipping_method=order.shipping_method,
        shipping_amount=order.shipping_amount,
        payment_method=order.payment_method,
        customer_note=note,
        relay_id=relay,
        vat_number=str(order.additional_fields.get("vat_number") or ""),
        latest_ship_date=order.latest_ship_date,
    )


class PushLoop(ConnectorLoop[ShopConnector]):
    """Syncs one shop every `sync_interval`: push, acknowledge, read back."""

    failed_event = "shop_sync_failed"
    recovered_event = "shop_sync_recovered"

    def __init__(
        self,
        shop: ShopConfig,
        storage: Storage,
        connector: ShopConnector | None,
        clock: Clock,
        *,
        require_tracking: Mapping[str, bool],
        **options: Unpack[ConnectorOptions],
    ) -> None:
        name, interval = f"push:{shop.name}", shop.sync_interval
        super().__init__(name, interval, storage, connector, clock, **options)
        self.shop = shop
        self.require_tracking = require_tracking
        """Channel name → whether a shipment needs a tracking number."""
        self._registered = False
        self.log = self.log.bind(shop=shop.name)

    async def step(self) -> float | None:
        now = self.clock()
        if not self._registered:
            await self.storage.pushes.register(
                self.shop.name, self.shop.store, self.shop.connector, now
            )
            self._registered = True
        connector = self.working_connector()
        await self.storage.pushes.sync_started(self.shop.name, now)
        counts = await self._push(connector)
        counts |= await self._read_back(connector)
        self.metrics.shop_synced(self.shop.name, "ok")
        done = self.clock()
        await self.storage.pushes.sync_succeeded(
            self.shop.name, done, done + timedelta(seconds=self.interval)
        )
        self.status.detail = counts
        self.log.info("shop_synced", duration=round((done - now).total_seconds(), 3), **counts)
        # A full batch means more orders wait: the next one goes at once, not in 10 minutes.
        return MORE_SOON if counts["pushed"] + counts["push_errors"] >= PUSH_BATCH else None

    async def failed(self, failure: Failure, delay: float) -> None:
        if failure.condition is LoopCondition.UNAVAILABLE:
            return  # no connector: nothing was tried, and `sfd channels` shows why
        auth = failure.condition is LoopCondition.AUTH_FAILED
        self.metrics.shop_synced(self.shop.name, "auth_failed" if auth else "failed")
        now = self.clock()
        await self.storage.pushes.sync_failed(
            self.shop.name, now, failure.reason, now + timedelta(seconds=delay), auth_failed=auth
        )

    # -- push ------------------------------------------------------------------------------

    async def _push(self, connector: ShopConnector) -> dict[str, int]:
        counts = {"pushed": 0, "push_errors": 0}
        now = self.clock()
        orders = await self.storage.orders.find(
            OrderFilter.to_process(now, store_id=self.shop.store, limit=PUSH_BATCH), details=True
        )
        records = await self.storage.pushes.for_orders(self.shop.name, [o.id for o in orders])
        for order in orders:
            record = records.get(order.id)
            if record is not None and record.state == CREATED and record.shop_order_id:
                # Created before a crash, not yet acknowledged: acknowledge only.
                await self._acknowledge(order, record.shop_order_id)
                continue
            # A refused order back among those to process was unacknowledged by a person (or a
            # crash came before its error acknowledgement): the shop is asked again.
            if await self._push_one(connector, order, record):
                counts["pushed"] += 1
            else:
                counts["push_errors"] += 1
        return counts

    async def _push_one(
        self, connector: ShopConnector, order: StoredOrder, earlier: PushRecord | None
    ) -> bool:
        """Create one order in the shop and acknowledge it; False if the shop refused it."""
        shop = self.shop.name
        pushed = push_order(order)
        # Written before the call: a row still pending later means "maybe created".
        record = await self.storage.pushes.begin(shop, order.id, self.clock())
        try:
            uncertain = earlier is not None and earlier.state == PENDING
            shop_id = await self._create(connector, pushed, uncertain, record)
        except Rejected as exc:
            message = self.redact(exc.message)
            await self.storage.pushes.rejected(shop, order.id, message, self.clock())
            self.log.warning("shop_push_rejected", order=order.reference, reason=message)
            self.metrics.order_pushed(shop, "refused")
            await self._acknowledge_error(order, message)
            return False
        except ConnectorError as exc:
            await self.storage.pushes.attempt_failed(
                shop, order.id, self.redact(str(exc)), self.clock()
            )
            raise
        await self.storage.pushes.created(shop, order.id, shop_id, self.clock())
        self.metrics.order_pushed(shop, "created")
        self.log.info("shop_pushed", order=order.reference, order_id=order.id, shop_order=shop_id)
        await self._acknowledge(order, shop_id)
        return True

    async def _create(
        self, connector: ShopConnector, order: PushOrder, uncertain: bool, record: PushRecord
    ) -> str:
        """Search the shop first whenever an earlier attempt may have created the order.

        Only an uncertain create is tried again here (after a search): the shop's reads
        are retried by the connector already, and retrying them here too would multiply the
        attempts, holding the sync for minutes while a shop is down.
        """
        steps = self._steps(connector, record)
        async for attempt in retrying(connector.retry, on=CreateUncertain):
            with attempt:
                if uncertain:
                    try:
                        found = await (
                            connector.find_order_in_steps(order, record.started_at, steps)
                            if isinstance(connector, StepwiseShop)
                            else connector.find_order(order, record.started_at)
                        )
                    except Rejected as exc:
                        # Not the order's fault, and it may be in the shop: never a rejection.
                        raise ConnectorError(
                            f"cannot tell whether order {order.reference} is in the shop: {exc}"
                        ) from None
                    if found is not None:
                        self.log.info(
                            "shop_push_found", order=order.reference, shop_order=found,
                            reason="an earlier attempt's outcome was unknown; it had created it",
                        )  # fmt: skip
                        return found
                uncertain = True
                if isinstance(connector, StepwiseShop):
                    return await connector.create_order_in_steps(order, steps)
                return await connector.create_order(order)
        raise AssertionError("unreachable: stamina raises after the last attempt")

    def _steps(self, connector: ShopConnector, record: PushRecord) -> Steps:
        """The create's steps made so far, each new one written to the push row at once."""
        if not isinstance(connector, StepwiseShop):
            return Steps()

        async def save(done: dict[str, str]) -> None:
            await self.storage.pushes.record_steps(
                self.shop.name, record.order_id, done, self.clock()
            )

        return Steps(record.steps, save)

    async def _acknowledge(self, order: StoredOrder, shop_id: str) -> None:
        payload = AcknowledgePayload(status="success", store_reference=shop_id)
        await self._request(OperationKind.ACKNOWLEDGE, order.id, payload)

    async def _acknowledge_error(self, order: StoredOrder, message: str) -> None:
        payload = AcknowledgePayload(status="error", message=message)
        await self._request(OperationKind.ACKNOWLEDGE, order.id, payload)

    async def _request(self, kind: OperationKind, order_id: int, payload: Payload) -> bool:
        """Submit through the outbox; False if the rules refused it (the ticket says why)."""
        batch = await request_operations(
            self.storage,
            self.shop.store,
            kind,
            [OperationRequest(payload=payload, order_id=order_id)],
            EventSource.SHOP,
            self.clock(),
            self.on_operations,
            actor=self.shop.name,
        )
        return all(t.reason is None for t in batch.tickets)

    # -- read back -------------------------------------------------------------------------

    async def _read_back(self, connector: ShopConnector) -> dict[str, int]:
        counts = {"shipped": 0, "cancelled": 0, "waiting_tracking": 0}
        cursor = await self.storage.pushes.cursor(self.shop.name)
        newest: datetime | None = None
        seen: set[str] = set()
        async for page in connector.changed_orders(cursor):
            for shop_order in page:
                if shop_order.modified_at and (newest is None or shop_order.modified_at > newest):
                    newest = shop_order.modified_at
                seen.add(shop_order.shop_id)
                await self._settle(shop_order, None, counts)
        if newest is not None:
            candidate = newest - CURSOR_OVERLAP
            if cursor is None or candidate > cursor:
                await self.storage.pushes.set_cursor(self.shop.name, candidate, self.clock())
        # Completed without tracking: asked again each sync until it comes or the wait ends.
        for push in await self.storage.pushes.waiting_tracking(self.shop.name):
            if push.shop_order_id is None or push.shop_order_id in seen:
                continue
            current = await connector.get_order(push.shop_order_id)
            if current is None:
                await self.storage.pushes.settle(push.id, "gone", self.clock())
                continue
            await self._settle(current, push, counts)
        return counts

    async def _settle(
        self, shop_order: ShopOrder, push: PushRecord | None, counts: dict[str, int]
    ) -> None:
        """Turn one shop order's status into a ship or cancel operation, once."""
        if shop_order.status == ShopStatus.OTHER:
            return
        if push is None:
            push = await self.storage.pushes.by_shop_order(self.shop.name, shop_order.shop_id)
        if push is None or push.settled_at is not None:
            return  # not an order sfd pushed, or already turned into an operation
        order = await self.storage.orders.get(push.order_id, details=False)
        if order is None:
            return
        now = self.clock()
        if shop_order.status == ShopStatus.CANCELLED:
            if order.status in _CANCELLABLE:
                reason = f"cancelled in shop {self.shop.name} (order {shop_order.shop_id})"
                await self._request(OperationKind.CANCEL, order.id, ReasonPayload(reason=reason))
                counts["cancelled"] += 1
                self.log.info(
                    "shop_order_cancelled", order=order.reference, shop_order=push.shop_order_id
                )
                await self.storage.pushes.settle(push.id, "cancel", now)
            else:
                await self.storage.pushes.settle(push.id, "none", now)
            return
        if order.status not in SHIPPABLE:
            await self.storage.pushes.settle(push.id, "none", now)
            return
        ships = [
            t
            for t in await self.storage.operations.for_order(order.id)
            if t.kind == OperationKind.SHIP
        ]
        forwarded = _forwarded([t for t in ships if t.state in LIVE])
        if forwarded is None:
            await self.storage.pushes.settle(push.id, "none", now)  # shipped whole another way
            return
        partial = shop_order.status == ShopStatus.PARTIALLY_SHIPPED
        if partial:
            # A part is asked for once, even if the marketplace refused it (Mirakl ships whole
            # orders only): the end of the shipment then goes whole, with every line.
            forwarded = _forwarded(ships) or {}
        items: tuple[tuple[int, int], ...] = ()
        if partial or forwarded:
            detailed = await self.storage.orders.get(order.id, details=True)
            if detailed is None:
                return
            shipped = _shipped_items(detailed, shop_order.shipped) if partial else None
            items = _left_to_ship(detailed, forwarded, shipped)
            if not items:
                if not partial:
                    await self.storage.pushes.settle(push.id, "none", now)
                return  # nothing shipped since the last part was forwarded
        tracking = shop_order.tracking
        number = tracking.tracking_number.strip() if tracking else ""
        if not number and self.require_tracking.get(order.channel, False):
            counts["waiting_tracking"] += 1
            if not partial:
                await self._wait_for_tracking(order, push, now)
            return
        payload = ShipPayload(
            carrier=(tracking.carrier if tracking else "") or shop_order.shipping_method or "Other",
            tracking_number=number,
            tracking_link=tracking.tracking_link if tracking else "",
            items=items,
        )
        accepted = await self._request(OperationKind.SHIP, order.id, payload)
        counts["shipped"] += 1
        self.log.info(
            "shop_order_completed" if accepted else "shop_order_completed_refused",
            order=order.reference,
            shop_order=push.shop_order_id,
            carrier=payload.carrier,
            tracking_number=number,
            lines=len(items) or "all",
        )
        if not partial:
            # A part shipped leaves the push open: the next parts, and the end, come later.
            await self.storage.pushes.settle(push.id, "ship", now)

    async def _wait_for_tracking(self, order: StoredOrder, push: PushRecord, now: datetime) -> None:
        if push.completed_seen_at is None:
            await self.storage.pushes.completed_seen(push.id, now)
            self.log.info(
                "shop_tracking_awaited",
                order=order.reference,
                shop_order=push.shop_order_id,
                wait=self.shop.tracking_wait,
            )
            return
        waited = (now - push.completed_seen_at).total_seconds()
        if waited >= self.shop.tracking_wait and push.tracking_flagged_at is None:
            message = (
                f"completed in shop {self.shop.name} (order {push.shop_order_id}) "
                f"{waited / 3600:.1f} h ago without a tracking number; channel "
                f"{order.channel} requires one"
            )
            await self.storage.pushes.flag_tracking(push, now, message)
            self.log.warning("shop_tracking_missing", order=order.reference, reason=message)


def _forwarded(shipments: list[Ticket]) -> dict[int, int] | None:
    """Quantities per order item already sent as shipments; None if one shipped it whole."""
    sent: dict[int, int] = {}
    for ticket in shipments:
        lines = ticket.payload.get("items") or []
        if not lines:
            return None
        for item_id, quantity in lines:
            sent[int(item_id)] = sent.get(int(item_id), 0) + int(quantity)
    return sent


def _shipped_items(order: StoredOrder, by_sku: tuple[tuple[str, int], ...]) -> dict[int, int]:
    """The shop's shipped quantities per SKU as quantities per order item (a SKU on several
    lines fills them in order)."""
    shipped: dict[int, int] = {}
    for sku, quantity in by_sku:
        for item in order.items:
            if quantity <= 0:
                break
            if item.reference == sku and item.quantity > 0:
                take = min(quantity, item.quantity - shipped.get(item.id, 0))
                if take > 0:
                    shipped[item.id] = shipped.get(item.id, 0) + take
                    quantity -= take
    return shipped


def _left_to_ship(
    order: StoredOrder, forwarded: dict[int, int], shipped: dict[int, int] | None
) -> tuple[tuple[int, int], ...]:
    """(item id, quantity) shipped in the shop but not yet sent to the marketplace; with
    `shipped` None (the shop shipped everything), all that was not sent yet."""
    items = []
    for item in order.items:
        done = item.quantity if shipped is None else shipped.get(item.id, 0)
        left = min(done, item.quantity) - forwarded.get(item.id, 0)
        if left > 0:
            items.append((item.id, left))
    return tuple(items)


async def retry_push(
    storage: Storage,
    order_id: int,
    source: EventSource,
    now: datetime,
    wake: Callable[[], None] = lambda: None,
    *,
    actor: str | None = None,
) -> str:
    """Let an order the shop refused be pushed again at the next sync; say what was done.

    The failed push is forgotten and the error acknowledgement withdrawn (through the outbox,
    so the order's trail shows who asked), which puts the order back among those to process.
    """
    order = await storage.orders.get(order_id, details=False)
    if order is None:
        raise PushError(f"no order with id {order_id}")
    records = await storage.pushes.for_order(order_id)
    created = [r for r in records if r.state == CREATED]
    if created:
        raise PushError(
            f"order {order.reference} is already in shop {created[0].shop} as order "
            f"{created[0].shop_order_id}; it is not pushed twice"
        )
    failed = order.acknowledgment_status == "error" or any(r.state == REJECTED for r in records)
    if not failed:
        raise PushError(f"order {order.reference} has no failed push to retry")
    await storage.pushes.forget(order_id)
    if order.acknowledged_at is not None:
        await request_operations(
            storage,
            order.store_id,
            OperationKind.UNACKNOWLEDGE,
            [OperationRequest(payload=ReasonPayload(reason="push retried"), order_id=order_id)],
            source,
            now,
            wake,
            actor=actor,
        )
    return f"order {order.reference} will be pushed again at the next sync"
