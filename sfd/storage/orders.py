"""Orders: idempotent import of marketplace pages, and the reads the CLI, API and page need."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from sfd.domain import (
    CLOSED_STATUSES,
    OFFER_WINDOW,
    TO_SHIP_STATUSES,
    Address,
    EventSource,
    MarketplaceOrder,
    OperationKind,
    OrderEvent,
    OrderIssue,
    OrderStatus,
    StoredItem,
    StoredOrder,
    describe_change,
)
from sfd.domain.clock import from_iso, to_iso
from sfd.domain.rules import confirms
from sfd.storage.channels import move_cursor
from sfd.storage.database import (
    Connection,
    Database,
    Params,
    StorageError,
    Store,
    from_row,
    marks,
    quoted,
)

_ADDRESS_FIELDS = tuple(Address.__struct_fields__)
_ORDER_COLUMNS = (
    "status",
    "created_at",
    "marketplace_updated_at",
    "latest_ship_date",
    "is_test",
    "fulfilled_by",
    "currency",
    "product_amount",
    "shipping_amount",
    "total_amount",
    "payment_method",
    "shipping_method",
    "carrier",
    "tracking_number",
    "tracking_link",
    "additional_fields",
    "payment_pending",
)


_encoder = msgspec.json.Encoder(decimal_format="number")


def _json(value: Any) -> str:
    return _encoder.encode(value).decode()


def _money(value: Decimal) -> str:
    return format(value, "f")


@dataclass
class ImportResult:
    """What one page did to the stored orders."""

    created: list[tuple[int, str, OrderStatus]] = field(default_factory=list)
    """(order id, reference, status) of each new order."""
    changed: list[tuple[int, str, OrderStatus, OrderStatus]] = field(default_factory=list)
    """(order id, reference, from, to) of each status change."""
    updated: int = 0
    unchanged: int = 0
    jumped: list[tuple[int, str, str]] = field(default_factory=list)
    """(order id, reference, how) of each change that skipped steps of the transition table:
    applied all the same, the marketplace's status being the truth."""
    confirmed: list[tuple[str, int, str, float]] = field(default_factory=list)
    """(reference, operation id, kind, seconds since the request) of each confirmation."""
    touched: set[int] = field(default_factory=set)
    """Ids of the orders written, whose documents need rendering again."""


def _order_from_row(row: Any) -> StoredOrder:
    return from_row(StoredOrder, row)


@dataclass(frozen=True)
class OrderFilter:
    """Which orders to list. None means "any"."""

    store_id: int | None = None
    statuses: Sequence[OrderStatus] | None = None
    channel: str | None = None
    acknowledged: bool | None = None
    late_at: datetime | None = None
    """Only orders whose ship-by date passed before this time, still to ship."""
    updated_since: datetime | None = None
    channel_id: int | None = None
    order_id: int | None = None
    reference: str | None = None
    store_reference: str | None = None
    created_since: datetime | None = None
    created_until: datetime | None = None
    store_fulfilled: bool | None = None
    """Only orders the merchant ships (True), or only those the marketplace ships (False)."""
    payment_pending: bool | None = None
    """Only accepted orders still waiting for the buyer's payment (True), or only the others."""
    needs_person: bool = False
    """Only orders a person should look at: see `NEEDS_PERSON`."""
    search: str | None = None
    """A part of the marketplace reference or of the store reference, any case."""
    limit: int = 100
    offset: int = 0
    sort: str = "ship_by"
    """`ship_by`: soonest deadline first, for people; `updated`: the API's stable paging order."""

    @classmethod
    def to_process(cls, now: datetime, store_id: int | None = None, **more: Any) -> OrderFilter:
        """The orders to process: accepted and paid, not shipped, unacknowledged, updated in
        7 days. An order waiting for the buyer's payment is offered once the marketplace
        releases it."""
        return cls(
            store_id=store_id,
            statuses=[OrderStatus.WAITING_SHIPMENT],
            acknowledged=False,
            updated_since=now - OFFER_WINDOW,
            store_fulfilled=True,
            payment_pending=False,
            **more,
        )


#: Waiting for acceptance, or for a shipment by the merchant (late ones included; not while the
#: buyer's payment is pending), or with a failed operation while still open, or acknowledged
#: with an error by the shop.
NEEDS_PERSON = (
    "(o.status = 'waiting_store_acceptance' "
    f"OR (o.status IN ({quoted(TO_SHIP_STATUSES)}) AND o.fulfilled_by = 'store' "
    "AND o.payment_pending = 0) "
    "OR o.acknowledgment_status = 'error' "
    f"OR (o.status NOT IN ({quoted(sorted(CLOSED_STATUSES))}) AND EXISTS ("
    "SELECT 1 FROM operations p WHERE p.order_id = o.id AND p.state = 'failed')))"
)


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_SORTS = {
    "ship_by": "o.latest_ship_date IS NULL, o.latest_ship_date, o.id",
    "updated": "o.updated_at, o.id",
}

_SELECT_ORDER = (
    "SELECT o.*, c.name AS channel FROM orders o JOIN channels c ON c.id = o.channel_id "
)


DocumentRenderer = Callable[[StoredOrder], bytes]


class OrderStore(Store):
    """Orders, their lines, addresses, raw payloads and events."""

    def __init__(self, db: Database, renderer: DocumentRenderer | None = None) -> None:
        super().__init__(db)
        self.renderer = renderer

    async def import_page(
        self,
        channel_id: int,
        store_id: int,
        orders: Sequence[MarketplaceOrder],
        now: datetime,
        cursor: datetime | None = None,
    ) -> ImportResult:
        """Upsert one page in one transaction and move the channel's cursor with it.

        Idempotent: an order seen again with nothing new changes nothing, so the cursor's
        overlap never duplicates an order or an event.
        """
        result = ImportResult()
        latest: dict[str, MarketplaceOrder] = {}
        for order in orders:
            # A page may repeat an order; the newest version wins.
            known = latest.get(order.reference)
            if known is None or order.updated_at >= known.updated_at:
                latest[order.reference] = order
        async with self.db.write() as tx:
            existing = await self._existing(tx, channel_id, list(latest))
            fresh = [o for ref, o in latest.items() if ref not in existing]
            await self._insert(tx, channel_id, store_id, fresh, now, result)
            for reference, order in latest.items():
                if reference in existing:
                    await self._update(tx, existing[reference], order, now, result)
            await self.refresh_documents(tx, result.touched)
            if cursor is not None:
                # The cursor moves in the page's own transaction: never past an unsaved order.
                await move_cursor(tx, channel_id, cursor, now)
        return result

    @staticmethod
    async def _existing(tx: Connection, channel_id: int, references: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        # SQLite allows 32766 host parameters; pages are far smaller, but chunk to be safe.
        for start in range(0, len(references), 500):
            chunk = references[start : start + 500]
            rows = await tx.fetch(
                "SELECT id, reference, status, payment_pending, marketplace_updated_at FROM orders "
                f"WHERE channel_id = $1 AND reference IN ({marks(len(chunk), 2)})",
                [channel_id, *chunk],
            )
            found.update({row["reference"]: row for row in rows})
        return found

    @staticmethod
    def _order_values(order: MarketplaceOrder) -> tuple[Any, ...]:
        shipment = order.shipment
        return (
            order.status.value,
            to_iso(order.created_at),
            to_iso(order.updated_at),
            to_iso(order.latest_ship_date) if order.latest_ship_date else None,
            int(order.is_test),
            order.fulfilled_by.value,
            order.currency,
            _money(order.product_amount),
            _money(order.shipping_amount),
            _money(order.total_amount),
            order.payment_method,
            order.shipping_method,
            shipment.carrier if shipment else "",
            shipment.tracking_number if shipment else "",
            shipment.tracking_link if shipment else "",
            _json(order.additional_fields),
            int(order.payment_pending),
        )

    async def _insert(
        self,
        tx: Connection,
        channel_id: int,
        store_id: int,
        orders: list[MarketplaceOrder],
        now: datetime,
        result: ImportResult,
    ) -> None:
        if not orders:
            return
        stamp = to_iso(now)
        columns = ", ".join(_ORDER_COLUMNS)
        values = marks(len(_ORDER_COLUMNS), 6)
        await tx.executemany(
            f"INSERT INTO orders (channel_id, store_id, reference, updated_at, imported_at, "
            f"{columns}) VALUES ($1, $2, $3, $4, $5, {values})",
            [
                (channel_id, store_id, o.reference, stamp, stamp, *self._order_values(o))
                for o in orders
            ],
        )
        ids = await self._existing(tx, channel_id, [o.reference for o in orders])
        pairs = [(ids[o.reference]["id"], o) for o in orders]
        await self._write_details(tx, pairs, now)
        await tx.executemany(
            "INSERT INTO order_events (order_id, at, source, kind, to_status, message) "
            "VALUES ($1, $2, 'marketplace', 'imported', $3, '')",
            [(order_id, stamp, o.status.value) for order_id, o in pairs],
        )
        result.created.extend((order_id, o.reference, o.status) for order_id, o in pairs)
        await self._render_new(tx, channel_id, store_id, pairs, now)

    async def _render_new(
        self,
        tx: Connection,
        channel_id: int,
        store_id: int,
        pairs: list[tuple[int, MarketplaceOrder]],
        now: datetime,
    ) -> None:
        """Render new orders from what was just written, without reading them back."""
        if self.renderer is None or not pairs:
            return
        channel = await tx.fetchrow("SELECT name FROM channels WHERE id = $1", (channel_id,))
        assert channel is not None
        ids = [order_id for order_id, _ in pairs]
        item_ids: dict[tuple[int, int], int] = {
            (r["order_id"], r["position"]): r["id"]
            for r in await tx.fetch(
                "SELECT id, order_id, position FROM order_items "
                f"WHERE order_id IN ({marks(len(ids))})",
                ids,
            )
        }
        documents = []
        for order_id, o in pairs:
            shipment = o.shipment
            stored = StoredOrder(
                id=order_id,
                store_id=store_id,
                channel_id=channel_id,
                channel=channel[0],
                reference=o.reference,
                status=o.status,
                store_reference=None,
                acknowledged_at=None,
                acknowledgment_status=None,
                acknowledgment_message=None,
                created_at=o.created_at,
                updated_at=now,
                marketplace_updated_at=o.updated_at,
                imported_at=now,
                latest_ship_date=o.latest_ship_date,
                is_test=o.is_test,
                fulfilled_by=o.fulfilled_by.value,
                currency=o.currency,
                product_amount=o.product_amount,
                shipping_amount=o.shipping_amount,
                total_amount=o.total_amount,
                payment_method=o.payment_method,
                shipping_method=o.shipping_method,
                carrier=shipment.carrier if shipment else "",
                tracking_number=shipment.tracking_number if shipment else "",
                tracking_link=shipment.tracking_link if shipment else "",
                additional_fields=o.additional_fields,
                payment_pending=o.payment_pending,
                billing_address=o.billing_address,
                shipping_address=o.shipping_address,
                # A stored item is the marketplace's item with its row id.
                items=[
                    StoredItem(id=item_ids[(order_id, position)], **msgspec.structs.asdict(i))
                    for position, i in enumerate(o.items)
                ],
            )
            documents.append((self.renderer(stored), order_id))
        await tx.executemany("UPDATE orders SET document = $1 WHERE id = $2", documents)

    async def _update(
        self, tx: Connection, row: Any, order: MarketplaceOrder, now: datetime, result: ImportResult
    ) -> None:
        stored_at = from_iso(row["marketplace_updated_at"])
        current = OrderStatus(row["status"])
        if order.updated_at <= stored_at:
            result.unchanged += 1
            return
        # The marketplace's status is the truth: applied even when it skips steps of the
        # transition table, which governs only what sfd itself may request.
        assignments = ", ".join(f"{c} = ${n}" for n, c in enumerate(_ORDER_COLUMNS, 1))
        last = len(_ORDER_COLUMNS)
        await tx.execute(
            f"UPDATE orders SET {assignments}, updated_at = ${last + 1} WHERE id = ${last + 2}",
            (*self._order_values(order), to_iso(now), row["id"]),
        )
        await self._write_details(tx, [(row["id"], order)], now)
        result.touched.add(row["id"])
        if order.status != current:
            how = describe_change(current, order.status)
            await self.add_event(
                tx,
                row["id"],
                now,
                EventSource.MARKETPLACE,
                "status",
                from_status=current,
                to_status=order.status,
                message=how,
            )
            if how:
                result.jumped.append((row["id"], order.reference, how))
            for operation_id, kind, seconds in await confirm_operations(
                tx, row["id"], order.status, now
            ):
                result.confirmed.append((order.reference, operation_id, kind, seconds))
            result.changed.append((row["id"], order.reference, current, order.status))
        else:
            result.updated += 1
        if order.payment_pending != bool(row["payment_pending"]):
            await self.add_event(
                tx,
                row["id"],
                now,
                EventSource.MARKETPLACE,
                "payment_pending" if order.payment_pending else "payment_received",
                message="the marketplace waits for the buyer's payment before releasing it"
                if order.payment_pending
                else "the buyer's payment is taken: the marketplace released the order",
            )

    @staticmethod
    async def _write_details(
        tx: Connection, pairs: list[tuple[int, MarketplaceOrder]], now: datetime
    ) -> None:
        stamp = to_iso(now)
        item_rows = []
        for order_id, order in pairs:
            for position, item in enumerate(order.items):
                item_rows.append(
                    (
                        order_id,
                        position,
                        item.reference,
                        item.channel_reference,
                        item.name,
                        item.status,
                        item.quantity,
                        _money(item.price),
                        _money(item.commission),
                        _money(item.tax_amount),
                        _money(item.ecotax_amount),
                        item.image,
                        _json(item.additional_fields),
                    )
                )
        await tx.executemany(
            "INSERT INTO order_items (order_id, position, reference, channel_reference, name, "
            "status, quantity, price, commission, tax_amount, ecotax_amount, image, "
            "additional_fields) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
            "ON CONFLICT (order_id, position) DO UPDATE SET reference = excluded.reference, "
            "channel_reference = excluded.channel_reference, name = excluded.name, "
            "status = excluded.status, quantity = excluded.quantity, price = excluded.price, "
            "commission = excluded.commission, tax_amount = excluded.tax_amount, "
            "ecotax_amount = excluded.ecotax_amount, image = excluded.image, "
            "additional_fields = excluded.additional_fields",
            item_rows,
        )
        await tx.executemany(
            "DELETE FROM order_items WHERE order_id = $1 AND position >= $2",
            [(order_id, len(order.items)) for order_id, order in pairs],
        )
        columns = ", ".join(_ADDRESS_FIELDS)
        values = marks(len(_ADDRESS_FIELDS), 3)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _ADDRESS_FIELDS)
        await tx.executemany(
            f"INSERT INTO order_addresses (order_id, kind, {columns}) VALUES ($1, $2, {values}) "
            f"ON CONFLICT (order_id, kind) DO UPDATE SET {updates}",
            [
                (order_id, kind, *(getattr(address, f) for f in _ADDRESS_FIELDS))
                for order_id, order in pairs
                for kind, address in (
                    ("billing", order.billing_address),
                    ("shipping", order.shipping_address),
                )
            ],
        )
        await tx.executemany(
            "INSERT INTO order_payloads (order_id, payload, received_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (order_id) DO UPDATE SET payload = excluded.payload, "
            "received_at = excluded.received_at",
            [(order_id, order.raw.decode("utf-8", "replace"), stamp) for order_id, order in pairs],
        )

    @staticmethod
    async def add_event(
        tx: Connection,
        order_id: int,
        now: datetime,
        source: EventSource,
        kind: str,
        *,
        from_status: OrderStatus | None = None,
        to_status: OrderStatus | None = None,
        message: str = "",
        operation_id: int | None = None,
        actor: str | None = None,
    ) -> int:
        """Record one entry of an order's audit trail, inside the caller's transaction."""
        event_id: int = await tx.fetchval(
            "INSERT INTO order_events (order_id, at, source, kind, from_status, to_status, "
            "message, operation_id, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "RETURNING id",
            (
                order_id,
                to_iso(now),
                source.value,
                kind,
                from_status.value if from_status else None,
                to_status.value if to_status else None,
                message,
                operation_id,
                actor,
            ),
        )
        return event_id

    async def get(
        self, order_id: int, *, store_id: int | None = None, details: bool = True
    ) -> StoredOrder | None:
        """One order with its lines, addresses and events; None if absent or in another store."""
        async with self.db.read() as reader:
            # The cast gives PostgreSQL the type of a parameter that may be NULL.
            row = await reader.fetchrow(
                _SELECT_ORDER
                + "WHERE o.id = $1 AND (CAST($2 AS BIGINT) IS NULL OR o.store_id = $3)",
                (order_id, store_id, store_id),
            )
            if row is None:
                return None
            if not details:
                return _order_from_row(row)
            [order] = await load_orders(reader, [row], events=True)
        return order

    async def documents(self, query: OrderFilter) -> tuple[int, list[bytes]]:
        """How many orders match a filter, and the API documents of the requested page."""
        where, filters = self._where(query)
        params = Params(filters)
        tables = self._tables(query)
        async with self.db.read() as reader:
            # One statement answers both: the count is a constant subquery, computed once.
            rows = await reader.fetch(
                f"SELECT (SELECT count(*) FROM {tables} WHERE {where}) AS total, "
                f"o.id, o.document FROM {tables} WHERE {where} "
                f"ORDER BY {_SORTS[query.sort]} LIMIT {params(query.limit)} "
                f"OFFSET {params(query.offset)}",
                params,
            )
            if rows:
                total = int(rows[0]["total"])
            else:
                row = await reader.fetchrow(f"SELECT count(*) FROM {tables} WHERE {where}", filters)
                total = int(row[0]) if row else 0
            missing = [row["id"] for row in rows if row["document"] is None]
            rendered: dict[int, bytes] = {}
            if missing:
                # Orders written before documents existed, or without a renderer: render now.
                full = await reader.fetch(
                    _SELECT_ORDER + f"WHERE o.id IN ({marks(len(missing))})", missing
                )
                for order in await load_orders(reader, full):
                    rendered[order.id] = self._render(order)
        return total, [
            rendered[row["id"]] if row["document"] is None else row["document"] for row in rows
        ]

    async def carrier_names(self, store_id: int) -> list[str]:
        """The carrier names a store's orders carry, as /ws GetOrders writes ShippingMethod:
        the shipment's carrier, else the shipping method. Sorted, without repeats."""
        async with self.db.read() as reader:
            rows = await reader.fetch(
                "SELECT DISTINCT CASE WHEN carrier <> '' THEN carrier ELSE shipping_method END "
                "AS name FROM orders "
                "WHERE store_id = $1 AND (carrier <> '' OR shipping_method <> '')",
                [store_id],
            )
        return sorted(str(row["name"]) for row in rows)

    def _render(self, order: StoredOrder) -> bytes:
        if self.renderer is None:
            raise StorageError("no document renderer: open Storage with one to serve the API")
        return self.renderer(order)

    async def refresh_documents(self, tx: Connection, order_ids: Collection[int]) -> None:
        """Render the API document of each order again, inside the writing transaction."""
        if self.renderer is None or not order_ids:
            return
        ids = sorted(set(order_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await tx.fetch(_SELECT_ORDER + f"WHERE o.id IN ({marks(len(chunk))})", chunk)
            orders = await load_orders(tx, rows)
            await tx.executemany(
                "UPDATE orders SET document = $1 WHERE id = $2",
                [(self.renderer(order), order.id) for order in orders],
            )

    async def find(self, query: OrderFilter, *, details: bool = False) -> list[StoredOrder]:
        """Orders matching a filter, in the filter's sort; with lines and addresses if asked."""
        where, params = self._where(query)
        async with self.db.read() as reader:
            rows = await reader.fetch(
                _SELECT_ORDER + f"WHERE {where} ORDER BY {_SORTS[query.sort]} "
                f"LIMIT {params(query.limit)} OFFSET {params(query.offset)}",
                params,
            )
            if details:
                return await load_orders(reader, rows)
        return [_order_from_row(row) for row in rows]

    async def count(self, query: OrderFilter) -> int:
        """How many orders match a filter."""
        where, params = self._where(query)
        row = await self.db.fetchrow(
            f"SELECT count(*) FROM {self._tables(query)} WHERE {where}", params
        )
        return int(row[0]) if row else 0

    async def status_counts(self, store_id: int | None = None) -> dict[int, dict[str, int]]:
        """Channel id → order status → how many orders, for one store or all."""
        # The cast gives PostgreSQL the type of a parameter that may be NULL.
        rows = await self.db.fetch(
            "SELECT channel_id, status, count(*) AS n FROM orders "
            "WHERE (CAST($1 AS BIGINT) IS NULL OR store_id = $2) GROUP BY channel_id, status",
            (store_id, store_id),
        )
        counts: dict[int, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(row["channel_id"], {})[row["status"]] = int(row["n"])
        return counts

    @staticmethod
    def _tables(query: OrderFilter) -> str:
        # The channel is joined only to filter by its name, so counts stay index-only.
        if query.channel is None:
            return "orders o"
        return "orders o JOIN channels c ON c.id = o.channel_id"

    @staticmethod
    def _where(query: OrderFilter) -> tuple[str, Params]:
        clauses, p = ["1 = 1"], Params()
        # Each filter that is set compares a column with its value (times as ISO text).
        compared: dict[str, Any] = {
            "o.store_id =": query.store_id,
            "c.name =": query.channel,
            "o.channel_id =": query.channel_id,
            "o.id =": query.order_id,
            "o.reference =": query.reference,
            "o.store_reference =": query.store_reference,
            "o.fulfilled_by =": _either(query.store_fulfilled, "store", "channel"),
            "o.payment_pending =": _either(query.payment_pending, 1, 0),
            "o.updated_at >=": query.updated_since,
            "o.created_at >=": query.created_since,
            "o.created_at <=": query.created_until,
        }
        for left, value in compared.items():
            if value is not None:
                clauses.append(
                    f"{left} {p(to_iso(value) if isinstance(value, datetime) else value)}"
                )
        if query.statuses:
            clauses.append(f"o.status IN ({p.many(s.value for s in query.statuses)})")
        if query.acknowledged is not None:
            clauses.append(
                "o.acknowledged_at IS NOT NULL"
                if query.acknowledged
                else "o.acknowledged_at IS NULL"
            )
        if query.late_at is not None:
            clauses.append(
                f"o.status IN ({quoted(TO_SHIP_STATUSES)}) "
                f"AND o.fulfilled_by = 'store' AND o.latest_ship_date < {p(to_iso(query.late_at))}"
            )
        if query.needs_person:
            clauses.append(NEEDS_PERSON)
        if query.search:
            # lower() on both sides: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
            pattern = p(_like(query.search.lower()))
            clauses.append(
                f"(lower(o.reference) LIKE {pattern} ESCAPE '\\' "
                f"OR lower(o.store_reference) LIKE {pattern} ESCAPE '\\')"
            )
        return " AND ".join(clauses), p


def _either(flag: bool | None, yes: Any, no: Any) -> Any:
    """`yes` or `no` as the flag is set, or None (no filter) when it is None."""
    return None if flag is None else yes if flag else no


def _item_from_row(r: Any) -> StoredItem:
    return from_row(StoredItem, r)


def _event_from_row(r: Any) -> OrderEvent:
    return from_row(OrderEvent, r)


class OrdersFollower(Store):
    """A store whose writes change orders too (their events, their API documents), which it
    leaves to the order store."""

    def __init__(self, db: Database, orders: OrderStore) -> None:
        super().__init__(db)
        self.orders = orders


async def load_orders(
    reader: Connection, rows: Sequence[Any], *, events: bool = False
) -> list[StoredOrder]:
    """Orders from their rows, with lines, addresses and errors loaded in a few queries."""
    if not rows:
        return []
    ids = [row["id"] for row in rows]
    in_ids = marks(len(ids))
    items: dict[int, list[StoredItem]] = {i: [] for i in ids}
    for r in await reader.fetch(
        f"SELECT * FROM order_items WHERE order_id IN ({in_ids}) ORDER BY order_id, position", ids
    ):
        items[r["order_id"]].append(_item_from_row(r))
    addresses: dict[tuple[int, str], Address] = {
        (r["order_id"], r["kind"]): Address(**{f: r[f] for f in _ADDRESS_FIELDS})
        for r in await reader.fetch(
            f"SELECT * FROM order_addresses WHERE order_id IN ({in_ids})", ids
        )
    }
    issues: dict[int, list[OrderIssue]] = {i: [] for i in ids}
    for r in await reader.fetch(
        f"SELECT order_id, kind, last_error, coalesce(finished_at, updated_at) AS at "
        f"FROM operations WHERE order_id IN ({in_ids}) AND state = 'failed' AND kind = 'ship' "
        "ORDER BY id",
        ids,
    ):
        issues[r["order_id"]].append(
            OrderIssue(type=r["kind"], message=r["last_error"] or "", occurred_at=from_iso(r["at"]))
        )
    # A shop's completed order still without tracking (push mode) is flagged until it ships.
    flagged: dict[int, OrderIssue] = {}
    for r in await reader.fetch(
        f"SELECT order_id, message, at FROM order_events WHERE order_id IN ({in_ids}) "
        "AND kind = 'tracking_missing' ORDER BY id",
        ids,
    ):
        flagged[r["order_id"]] = OrderIssue(
            type="ship", message=r["message"] or "", occurred_at=from_iso(r["at"])
        )
    trail: dict[int, list[OrderEvent]] = {i: [] for i in ids}
    if events:
        for r in await reader.fetch(
            f"SELECT * FROM order_events WHERE order_id IN ({in_ids}) ORDER BY id", ids
        ):
            trail[r["order_id"]].append(_event_from_row(r))
    orders = []
    for row in rows:
        order = _order_from_row(row)
        found = list(issues[order.id])
        if order.id in flagged and order.status in TO_SHIP_STATUSES:
            found.append(flagged[order.id])
        if order.acknowledgment_status == "error" and order.acknowledged_at is not None:
            found.insert(
                0,
                OrderIssue(
                    type="acknowledge",
                    message=order.acknowledgment_message or "",
                    occurred_at=order.acknowledged_at,
                ),
            )
        orders.append(
            msgspec.structs.replace(
                order,
                billing_address=addresses.get((order.id, "billing")),
                shipping_address=addresses.get((order.id, "shipping")),
                items=items[order.id],
                events=trail[order.id],
                errors=found,
            )
        )
    return orders


async def confirm_operations(
    tx: Connection,
    order_id: int,
    status: OrderStatus,
    now: datetime,
    *,
    answered: int | None = None,
) -> list[tuple[int, str, float]]:
    """Mark the order's delivered operations that `status` confirms; record when and how fast.

    `answered` names an operation whose marketplace answer is its confirmation, because no
    status will ever show it (see `rules.confirmed_by_answer`).
    Returns (operation id, kind, seconds from request to confirmation) for each.
    """
    confirmed = []
    rows = await tx.fetch(
        "SELECT id, kind, created_at FROM operations WHERE order_id = $1 AND state = 'succeed' "
        "AND confirmed_at IS NULL ORDER BY id",
        (order_id,),
    )
    for row in rows:
        kind = OperationKind(row["kind"])
        by_answer = row["id"] == answered
        if not by_answer and not confirms(kind, status):
            continue
        seconds = (now - from_iso(row["created_at"])).total_seconds()
        await tx.execute(
            "UPDATE operations SET confirmed_at = $1, confirm_at = NULL, updated_at = $2 "
            "WHERE id = $3",
            (to_iso(now), to_iso(now), row["id"]),
        )
        how = (
            "the marketplace took the document"
            if kind == OperationKind.UPLOAD_DOCUMENT
            else f"the marketplace's answer confirms it: a {status.value} order keeps its status"
            if by_answer and not confirms(kind, status)
            else f"confirmed {seconds:.0f}s after the request"
        )
        await OrderStore.add_event(
            tx,
            order_id,
            now,
            EventSource.MARKETPLACE,
            f"{kind.value}_confirmed",
            message=how,
            operation_id=row["id"],
        )
        confirmed.append((row["id"], kind.value, seconds))
    return confirmed
