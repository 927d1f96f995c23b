"""The operations outbox and its tickets: each request is decided and written in one transaction."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from sfd.domain import (
    FINISHED_TICKET_STATES,
    EventSource,
    FulfilledBy,
    OperationKind,
    OrderStatus,
    Ticket,
    TicketState,
    describe_change,
    line_open,
)
from sfd.domain.clock import from_iso, to_iso
from sfd.domain.documents import Document
from sfd.domain.rules import (
    PAYLOAD_TYPES,
    AcknowledgePayload,
    Decision,
    OrderView,
    Payload,
    PriorOperation,
    ReasonPayload,
    ShipPayload,
    confirmed_by_answer,
    decide,
)
from sfd.storage.database import Connection, Params, from_row, marks
from sfd.storage.documents import DocumentStore
from sfd.storage.leases import OPERATIONS_CHANNEL
from sfd.storage.orders import OrdersFollower, confirm_operations

K = OperationKind


@dataclass(frozen=True)
class OperationRequest:
    """One entry of an operation request: an order, by id or by reference and channel."""

    payload: Payload
    order_id: int | None = None
    reference: str | None = None
    channel: str | None = None
    document: Document | None = None
    """An upload_document's bytes, stored with the operation (`storage.documents`)."""


class Batch(msgspec.Struct, kw_only=True, frozen=True):
    """What one operation request produced."""

    id: str
    store_id: int
    kind: OperationKind
    tickets: list[Ticket]


def new_id() -> str:
    """A batch or ticket id: 24 hex digits, unguessable."""
    return secrets.token_hex(12)


_SELECT_TICKET = (
    "SELECT p.*, o.reference AS order_reference, c.name AS channel "
    "FROM operations p LEFT JOIN orders o ON o.id = p.order_id "
    "LEFT JOIN channels c ON c.id = p.channel_id "
)


def _ticket(row: Any, batch_id: str | None = None) -> Ticket:
    payload = json.loads(row["payload"])
    return from_row(
        Ticket,
        row,
        id=row["ticket_id"],
        operation_id=row["id"],
        batch_id=batch_id or row["batch_id"],
        order_reference=row["order_reference"] or payload.get("reference"),
        channel=row["channel"] or payload.get("channel"),
        payload=payload,
        reason=row["last_error"],
    )


class OperationStore(OrdersFollower):
    """Decide and record operations; read tickets."""

    async def submit(
        self,
        store_id: int,
        kind: OperationKind,
        requests: Sequence[OperationRequest],
        source: EventSource,
        now: datetime,
        actor: str | None = None,
    ) -> Batch:
        """Decide every entry and write them all, with their tickets, in one transaction.

        `actor` names who asked, in each order's events."""
        batch_id = new_id()
        stamp = to_iso(now)
        touched: set[int] = set()
        async with self.db.write() as tx:
            await tx.execute(
                "INSERT INTO batches (id, store_id, kind, source, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                (batch_id, store_id, kind.value, source.value, stamp),
            )
            for position, request in enumerate(requests):
                operation_id = await self._submit_one(
                    tx, store_id, kind, request, source, now, batch_id, touched, actor
                )
                await tx.execute(
                    "INSERT INTO batch_tickets (batch_id, position, operation_id) "
                    "VALUES ($1, $2, $3)",
                    (batch_id, position, operation_id),
                )
            await self.orders.refresh_documents(tx, touched)
            await self._notify(tx, touched)
            rows = await tx.fetch(
                _SELECT_TICKET + "JOIN batch_tickets b ON b.operation_id = p.id "
                "WHERE b.batch_id = $1 ORDER BY b.position",
                (batch_id,),
            )
        return Batch(
            id=batch_id,
            store_id=store_id,
            kind=kind,
            tickets=[_ticket(row, batch_id) for row in rows],
        )

    async def _notify(self, tx: Connection, orders: Collection[int]) -> None:
        """Wake the other instances' workers when this transaction commits (PostgreSQL's
        NOTIFY; on SQLite one instance writes and delivers, and wakes its worker itself)."""
        if self.db.scheme != "postgres" or not orders:
            return
        await tx.execute("SELECT pg_notify($1, $2)", (OPERATIONS_CHANNEL, ""))

    async def _submit_one(
        self,
        tx: Connection,
        store_id: int,
        kind: OperationKind,
        request: OperationRequest,
        source: EventSource,
        now: datetime,
        batch_id: str,
        touched: set[int],
        actor: str | None,
    ) -> int:
        order = await self._find_order(tx, store_id, request)
        prior = await self._prior(tx, order.id) if order else []
        decision = decide(kind, order, request.payload, prior)
        if decision.reuse is not None:
            return decision.reuse.id
        payload = msgspec.to_builtins(decision.payload or request.payload)
        if order is None:
            # Keep what the caller named, so the failed ticket says which order was not found.
            payload |= {
                "orderId": request.order_id,
                "reference": request.reference,
                "channel": request.channel,
            }
        finished = to_iso(now) if decision.state in FINISHED_TICKET_STATES else None
        channel_id = await self._channel_id(tx, order.id) if order else None
        operation_id: int = await tx.fetchval(
            "INSERT INTO operations (ticket_id, batch_id, store_id, channel_id, order_id, kind, "
            "payload, source, state, last_error, created_at, updated_at, finished_at, started_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
            (
                new_id(),
                batch_id,
                store_id,
                channel_id,
                order.id if order else None,
                kind.value,
                json.dumps(payload, default=str),
                source.value,
                decision.state.value,
                decision.reason or None,
                to_iso(now),
                to_iso(now),
                finished,
                finished,
            ),
        )
        if order is None:
            return operation_id
        if request.document is not None and decision.state not in FINISHED_TICKET_STATES:
            await DocumentStore.insert(tx, order.id, operation_id, request.document, now)
        touched.add(order.id)
        await self._record_outcome(
            tx, order.id, kind, request, decision, source, now, operation_id, actor
        )
        return operation_id

    async def _record_outcome(
        self,
        tx: Connection,
        order_id: int,
        kind: OperationKind,
        request: OperationRequest,
        decision: Decision,
        source: EventSource,
        now: datetime,
        operation_id: int,
        actor: str | None,
    ) -> None:
        """The order's side of a new ticket: its events, and an acknowledgement's fields."""

        if decision.state == TicketState.FAILED:
            await self.orders.add_event(
                tx,
                order_id,
                now,
                source,
                f"{kind.value}_refused",
                message=decision.reason,
                operation_id=operation_id,
                actor=actor,
            )
        elif kind == K.ACKNOWLEDGE:
            assert isinstance(request.payload, AcknowledgePayload)
            await self._acknowledge(tx, order_id, request.payload, now)
            await self.orders.add_event(
                tx,
                order_id,
                now,
                source,
                "acknowledge",
                message=_ack_message(request.payload),
                operation_id=operation_id,
                actor=actor,
            )
        elif kind == K.UNACKNOWLEDGE:
            await tx.execute(
                "UPDATE orders SET acknowledged_at = NULL, acknowledgment_status = NULL, "
                "acknowledgment_message = NULL, updated_at = $1 WHERE id = $2",
                (to_iso(now), order_id),
            )
            await self.orders.add_event(
                tx, order_id, now, source, "unacknowledge", operation_id=operation_id, actor=actor
            )
        else:
            await self.orders.add_event(
                tx,
                order_id,
                now,
                source,
                f"{kind.value}_requested",
                operation_id=operation_id,
                actor=actor,
            )
            for warning in decision.warnings:
                await self.orders.add_event(
                    tx,
                    order_id,
                    now,
                    source,
                    f"{kind.value}_warning",
                    message=warning,
                    operation_id=operation_id,
                    actor=actor,
                )

    @staticmethod
    async def _acknowledge(
        tx: Connection, order_id: int, ack: AcknowledgePayload, now: datetime
    ) -> None:
        # The first acknowledgement's time is kept; the store reference follows the latest.
        # An error acknowledgement also stops the offer: the shop saw the order, and a person
        # decides (unacknowledge) whether it is offered again. Offering it on would duplicate.
        await tx.execute(
            "UPDATE orders SET acknowledged_at = coalesce(acknowledged_at, $1), "
            "store_reference = coalesce($2, store_reference), acknowledgment_status = $3, "
            "acknowledgment_message = $4, updated_at = $5 WHERE id = $6",
            (
                to_iso(ack.acknowledged_at or now),
                ack.store_reference,
                ack.status,
                ack.message or None,
                to_iso(now),
                order_id,
            ),
        )

    @staticmethod
    async def _find_order(
        tx: Connection, store_id: int, request: OperationRequest
    ) -> OrderView | None:
        if request.order_id is not None and not 0 < request.order_id < 2**63:
            return None  # no row can have it
        p = Params([store_id])
        if request.order_id is not None:
            where = f"o.id = {p(request.order_id)}"
        else:
            # Channel names are ASCII ([A-Za-z0-9_-]): lower() is SQLite's NOCASE, portably.
            where = f"o.reference = {p(request.reference)} "
            where += f"AND lower(c.name) = lower({p(request.channel)})"
        row = await tx.fetchrow(
            "SELECT o.id, o.reference, o.status, o.fulfilled_by, o.payment_pending, "
            "c.name AS channel, c.require_tracking FROM orders o "
            "JOIN channels c ON c.id = o.channel_id "
            f"WHERE {where} AND o.store_id = $1",
            p,
        )
        if row is None:
            return None
        items = await tx.fetch(
            "SELECT id, quantity, status FROM order_items WHERE order_id = $1", (row["id"],)
        )
        return OrderView(
            id=row["id"],
            reference=row["reference"],
            channel=row["channel"],
            status=OrderStatus(row["status"]),
            fulfilled_by=FulfilledBy(row["fulfilled_by"]),
            require_tracking=bool(row["require_tracking"]),
            items={item["id"]: item["quantity"] for item in items},
            closed_items=frozenset(item["id"] for item in items if not line_open(item["status"])),
            payment_pending=bool(row["payment_pending"]),
        )

    @staticmethod
    async def _prior(tx: Connection, order_id: int) -> list[PriorOperation]:
        rows = await tx.fetch(
            "SELECT id, ticket_id, kind, state, payload FROM operations WHERE order_id = $1 "
            "ORDER BY id",
            (order_id,),
        )
        return [
            PriorOperation(
                id=r["id"],
                ticket_id=r["ticket_id"],
                kind=OperationKind(r["kind"]),
                state=TicketState(r["state"]),
                payload=json.loads(r["payload"]),
            )
            for r in rows
        ]

    @staticmethod
    async def _channel_id(tx: Connection, order_id: int) -> int:
        row = await tx.fetchrow("SELECT channel_id FROM orders WHERE id = $1", (order_id,))
        assert row is not None
        return int(row[0])

    async def rules_view(
        self, store_id: int, order_id: int
    ) -> tuple[OrderView | None, list[PriorOperation]]:
        """What the rules would see of an order now, so a page offers only what they allow."""
        async with self.db.read() as reader:
            order = await self._find_order(
                reader, store_id, OperationRequest(payload=ReasonPayload(), order_id=order_id)
            )
            prior = await self._prior(reader, order.id) if order else []
        return order, prior

    async def batch(self, store_id: int, batch_id: str) -> list[Ticket]:
        """The tickets of one batch, in request order; empty if unknown or another store's."""
        rows = await self.db.fetch(
            _SELECT_TICKET + "JOIN batch_tickets b ON b.operation_id = p.id "
            "JOIN batches s ON s.id = b.batch_id "
            "WHERE b.batch_id = $1 AND s.store_id = $2 ORDER BY b.position",
            (batch_id, store_id),
        )
        return [_ticket(row, batch_id) for row in rows]

    async def ticket(self, store_id: int, ticket_id: str) -> Ticket | None:
        """One ticket; None if unknown or another store's."""
        row = await self.db.fetchrow(
            _SELECT_TICKET + "WHERE p.ticket_id = $1 AND p.store_id = $2", (ticket_id, store_id)
        )
        return _ticket(row) if row else None

    async def tickets(
        self,
        store_id: int | None,
        *,
        states: Sequence[TicketState] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[Ticket]]:
        """A page of tickets, newest first, of one store or all, and how many there are."""
        filters = Params()
        # The cast gives PostgreSQL the type of a parameter that may be NULL.
        where = f"(CAST({filters(store_id)} AS BIGINT) IS NULL OR p.store_id = {filters(store_id)})"
        if states:
            where += f" AND p.state IN ({filters.many(s.value for s in states)})"
        total = await self.db.fetchrow(f"SELECT count(*) FROM operations p WHERE {where}", filters)
        params = Params(filters)
        rows = await self.db.fetch(
            _SELECT_TICKET + f"WHERE {where} ORDER BY p.id DESC "
            f"LIMIT {params(limit)} OFFSET {params(offset)}",
            params,
        )
        return int(total[0]) if total else 0, [_ticket(row) for row in rows]

    async def retry(
        self, operation_id: int, source: EventSource, now: datetime, actor: str | None = None
    ) -> Ticket:
        """Make a failed operation due again, as a person asked; raise ValueError if it is not."""
        async with self.db.write() as tx:
            row = await tx.fetchrow(_SELECT_TICKET + "WHERE p.id = $1", (operation_id,))
            if row is None:
                raise ValueError(f"no operation with id {operation_id}")
            if row["state"] != TicketState.FAILED.value:
                raise ValueError(
                    f"operation {operation_id} is {row['state']}; only a failed "
                    "operation can be retried"
                )
            if row["attempts"] == 0:
                # Never sent: the rules refused it, and would refuse it again unchanged.
                raise ValueError(
                    f"operation {operation_id} was refused by the rules "
                    f"({row['last_error'] or 'no reason'}), not by the marketplace; "
                    "ask again with what was missing"
                )
            await tx.execute(
                "UPDATE operations SET state = 'scheduled', next_attempt_at = NULL, "
                "finished_at = NULL, attempts = 0, created_at = $1, updated_at = $2 WHERE id = $3",
                (to_iso(now), to_iso(now), operation_id),
            )
            if row["order_id"] is not None:
                await self.orders.add_event(
                    tx,
                    row["order_id"],
                    now,
                    source,
                    f"{row['kind']}_retried",
                    message=f"after: {row['last_error'] or 'failure'}",
                    operation_id=operation_id,
                    actor=actor,
                )
                await self.orders.refresh_documents(tx, [row["order_id"]])
            await self._notify(tx, [row["order_id"]] if row["order_id"] is not None else [])
            updated = await tx.fetchrow(_SELECT_TICKET + "WHERE p.id = $1", (operation_id,))
        assert updated is not None
        return _ticket(updated)

    async def for_order(self, order_id: int) -> list[Ticket]:
        """Every operation on an order, oldest first."""
        rows = await self.db.fetch(
            _SELECT_TICKET + "WHERE p.order_id = $1 ORDER BY p.id", (order_id,)
        )
        return [_ticket(row) for row in rows]

    async def failed_orders(self, order_ids: Sequence[int]) -> set[int]:
        """Which of these orders have a failed operation."""
        if not order_ids:
            return set()
        rows = await self.db.fetch(
            "SELECT DISTINCT order_id FROM operations WHERE state = 'failed' "
            f"AND order_id IN ({marks(len(order_ids))})",
            list(order_ids),
        )
        return {int(row[0]) for row in rows}

    async def shipments(self, order_id: int) -> list[Ticket]:
        """The order's shipments: its ship operations that have not failed."""
        rows = await self.db.fetch(
            _SELECT_TICKET + "WHERE p.order_id = $1 AND p.kind = 'ship' "
            "AND p.state IN ('scheduled', 'running', 'succeed') ORDER BY p.id",
            (order_id,),
        )
        return [_ticket(row) for row in rows]


def _ack_message(ack: AcknowledgePayload) -> str:
    parts = [ack.status]
    if ack.store_reference:
        parts.append(f"store reference {ack.store_reference}")
    if ack.message:
        parts.append(ack.message)
    return "; ".join(parts)


class Claim(msgspec.Struct, kw_only=True, frozen=True):
    """An operation the worker took, with what it needs to call the marketplace."""

    operation_id: int
    ticket_id: str
    kind: OperationKind
    channel_id: int
    channel: str
    order_id: int
    order_reference: str
    payload: Payload
    """The operation's typed payload (`PAYLOAD_TYPES[kind]`), decoded once, here."""
    attempts: int
    created_at: datetime
    item_references: dict[int, str]
    """Order item id → the marketplace's line reference, for partial shipments."""
    document: Document | None = None
    """An upload_document's document and bytes; None once erased."""


# The first term is implied by the last, but SQLite uses the partial index operations_due_idx
# only when the query repeats the index's own condition; without it every claim scans the
# whole outbox, history included, while holding the write lock.
_DUE = (
    "p.state IN ('scheduled', 'running') "
    "AND p.channel_id IS NOT NULL AND p.order_id IS NOT NULL "
    "AND p.kind NOT IN ('acknowledge', 'unacknowledge') AND ("
    "(p.state = 'scheduled' AND (p.next_attempt_at IS NULL OR p.next_attempt_at <= $1)) "
    "OR (p.state = 'running' AND p.lease_until < $1))"
)


def _held(p: Params, holder: str | None, now: datetime) -> str:
    """The condition "its channel's lease is `holder`'s at `now`" (nothing without a holder)."""
    if holder is None:
        return ""
    return (
        "AND EXISTS (SELECT 1 FROM leases l WHERE l.name = 'channel:' || p.channel_id "
        f"AND l.holder = {p(holder)} AND l.expires_at > {p(to_iso(now))}) "
    )


class OperationQueue(OrdersFollower):
    """What the worker does with the outbox: claim under a lease, and write back outcomes."""

    async def claim(
        self,
        now: datetime,
        lease: timedelta,
        limit: int,
        skip_channels: Sequence[int] = (),
        *,
        holder: str | None = None,
        lease_now: datetime | None = None,
    ) -> list[Claim]:
        """Take up to `limit` due operations; an expired lease makes a running one due again.

        One statement picks and marks them, so the claim holds on any backend without relying
        on a writer lock (PostgreSQL adds `FOR UPDATE SKIP LOCKED` to the inner SELECT, so
        instances claiming at once never wait for, nor take, each other's rows). With
        `holder`, only operations of channels whose lease `holder` holds at `lease_now` are
        taken: a channel's operations are delivered by one instance at a time.
        """
        stamp = to_iso(now)
        p = Params([stamp, to_iso(now + lease), limit])
        skip = f"AND p.channel_id NOT IN ({p.many(skip_channels)}) " if skip_channels else ""
        held = _held(p, holder, lease_now or now)
        async with self.db.write() as tx:
            rows = await tx.fetch(
                "UPDATE operations SET state = 'running', lease_until = $2, "
                "attempts = attempts + 1, started_at = coalesce(started_at, $1), updated_at = $1 "
                f"WHERE id IN (SELECT p.id FROM operations p WHERE {_DUE} {skip}{held}"
                "ORDER BY coalesce(p.next_attempt_at, p.created_at), p.id LIMIT $3"
                f"{self._skip_locked}) RETURNING id",
                p,
            )
            return await self._claims(tx, sorted(r["id"] for r in rows))

    @property
    def _skip_locked(self) -> str:
        # SQLite has one writer at a time; PostgreSQL instances claim side by side.
        return " FOR UPDATE OF p SKIP LOCKED" if self.db.scheme == "postgres" else ""

    async def _claims(self, tx: Connection, ids: list[int]) -> list[Claim]:
        if not ids:
            return []
        rows = await tx.fetch(
            "SELECT p.*, o.reference AS order_reference, c.name AS channel FROM operations p "
            "JOIN orders o ON o.id = p.order_id JOIN channels c ON c.id = p.channel_id "
            f"WHERE p.id IN ({marks(len(ids))}) ORDER BY p.id",
            ids,
        )
        items: dict[int, dict[int, str]] = {}
        order_ids = sorted({r["order_id"] for r in rows})
        for r in await tx.fetch(
            "SELECT id, order_id, channel_reference FROM order_items "
            f"WHERE order_id IN ({marks(len(order_ids))})",
            order_ids,
        ):
            items.setdefault(r["order_id"], {})[r["id"]] = r["channel_reference"]
        documents = await DocumentStore.for_operations(
            tx, [r["id"] for r in rows if r["kind"] == K.UPLOAD_DOCUMENT]
        )
        return [
            Claim(
                operation_id=r["id"],
                ticket_id=r["ticket_id"],
                kind=(kind := OperationKind(r["kind"])),
                channel_id=r["channel_id"],
                channel=r["channel"],
                order_id=r["order_id"],
                order_reference=r["order_reference"],
                payload=msgspec.convert(json.loads(r["payload"]), PAYLOAD_TYPES[kind]),
                attempts=r["attempts"],
                created_at=from_iso(r["created_at"]),
                item_references=items.get(r["order_id"], {}),
                document=documents.get(r["id"]),
            )
            for r in rows
        ]

    async def delivered(
        self,
        claim: Claim,
        now: datetime,
        confirm_at: datetime,
        *,
        detail: str = "",
        warnings: Sequence[str] = (),
    ) -> list[tuple[int, str, float]]:
        """The marketplace took it. Confirmation follows, by a later read or poll.

        `detail` says what was sent (a shipment's carrier and tracking numbers); each warning,
        what was not, becomes an order event of its own."""
        stamp = to_iso(now)
        async with self.db.write() as tx:
            await tx.execute(
                "UPDATE operations SET state = 'succeed', finished_at = $1, delivered_at = $2, "
                "lease_until = NULL, last_error = NULL, confirm_at = $3, updated_at = $4, "
                "result = $6 WHERE id = $5",
                (stamp, stamp, to_iso(confirm_at), stamp, claim.operation_id, detail or None),
            )
            if isinstance(p := claim.payload, ShipPayload):
                await tx.execute(
                    "UPDATE orders SET carrier = $1, tracking_number = $2, tracking_link = $3, "
                    "updated_at = $4 WHERE id = $5",
                    (
                        p.carrier,
                        p.tracking_number,
                        p.tracking_link,
                        stamp,
                        claim.order_id,
                    ),
                )
            await self.orders.add_event(
                tx,
                claim.order_id,
                now,
                EventSource.MARKETPLACE,
                f"{claim.kind.value}_delivered",
                message=f"taken by {claim.channel} after {claim.attempts} attempt(s)"
                + (f"; sent {detail}" if detail else ""),
                operation_id=claim.operation_id,
            )
            for warning in warnings:
                await self.orders.add_event(
                    tx,
                    claim.order_id,
                    now,
                    EventSource.MARKETPLACE,
                    f"{claim.kind.value}_warning",
                    message=warning,
                    operation_id=claim.operation_id,
                )
            row = await tx.fetchrow("SELECT status FROM orders WHERE id = $1", (claim.order_id,))
            assert row is not None
            # The marketplace may already show the result (an earlier poll saw it).
            status = OrderStatus(row[0])
            answered = claim.operation_id if confirmed_by_answer(claim.kind, status) else None
            confirmed = await confirm_operations(tx, claim.order_id, status, now, answered=answered)
            await self.orders.refresh_documents(tx, [claim.order_id])
        return confirmed

    async def failed(self, claim: Claim, now: datetime, reason: str) -> None:
        """The marketplace refused it, or it is too old to try again: the ticket fails."""
        stamp = to_iso(now)
        async with self.db.write() as tx:
            await tx.execute(
                "UPDATE operations SET state = 'failed', finished_at = $1, lease_until = NULL, "
                "last_error = $2, updated_at = $3 WHERE id = $4",
                (stamp, reason, stamp, claim.operation_id),
            )
            await self.orders.add_event(
                tx,
                claim.order_id,
                now,
                EventSource.MARKETPLACE,
                f"{claim.kind.value}_failed",
                message=reason,
                operation_id=claim.operation_id,
            )
            await self.orders.refresh_documents(tx, [claim.order_id])

    async def retry(
        self, claim: Claim, now: datetime, at: datetime, reason: str, *, spend_attempt: bool = True
    ) -> None:
        """Not now: try again at `at`. Broken credentials spend no attempt."""
        stamp = to_iso(now)
        await self.db.execute(
            "UPDATE operations SET state = 'scheduled', next_attempt_at = $1, "
            "lease_until = NULL, last_error = $2, attempts = attempts - $3, updated_at = $4 "
            "WHERE id = $5",
            (to_iso(at), reason, 0 if spend_attempt else 1, stamp, claim.operation_id),
        )

    async def release(self, claims: Sequence[Claim], now: datetime) -> None:
        """Give back claims not started (a stop came first): due again at once, no attempt spent."""
        if not claims:
            return
        ids = [c.operation_id for c in claims]
        await self.db.execute(
            "UPDATE operations SET state = 'scheduled', lease_until = NULL, "
            f"attempts = attempts - 1, updated_at = $1 WHERE id IN ({marks(len(ids), 2)})",
            (to_iso(now), *ids),
        )

    async def next_due(
        self,
        skip_channels: Sequence[int] = (),
        *,
        holder: str | None = None,
        lease_now: datetime | None = None,
    ) -> datetime | None:
        """When the soonest waiting operation or confirmation is due, paused channels aside
        (and, with `holder`, only of the channels it holds)."""
        p = Params()
        skip = ""
        if skip_channels:
            skip = f"AND coalesce(p.channel_id, 0) NOT IN ({p.many(skip_channels)}) "
        held = _held(p, holder, lease_now) if lease_now is not None else ""
        # `state IN (...)` repeats operations_due_idx's condition so SQLite uses it (see _DUE).
        row = await self.db.fetchrow(
            "SELECT min(t) FROM ("
            " SELECT coalesce(p.next_attempt_at, p.created_at) AS t FROM operations p"
            "  WHERE p.state IN ('scheduled', 'running') AND p.state = 'scheduled'"
            f"  AND p.kind NOT IN ('acknowledge', 'unacknowledge') {skip}{held}"
            " UNION ALL SELECT p.lease_until FROM operations p"
            f"  WHERE p.state IN ('scheduled', 'running') AND p.state = 'running' {held}"
            " UNION ALL SELECT p.confirm_at FROM operations p"
            "  WHERE p.state = 'succeed' AND p.confirmed_at IS NULL AND p.confirm_at IS NOT NULL"
            f" {held}) AS due",
            p,
        )
        return from_iso(row[0]) if row and row[0] else None

    async def reclaim(self, now: datetime) -> int:
        """At start, before any worker runs: what a dead process had claimed is due at once.

        The file's run lock guarantees no other daemon holds those claims. Attempts are kept;
        connectors treat a repeat of something already done as done. On PostgreSQL other
        instances may be delivering right now: nothing is reclaimed here, and each channel's
        left-over claims come back when its lease is taken (`LeaseStore.acquire`).
        """
        if self.db.scheme == "postgres":
            return 0
        return await self.db.execute(
            "UPDATE operations SET state = 'scheduled', lease_until = NULL, "
            "next_attempt_at = NULL, updated_at = $1 WHERE state = 'running'",
            (to_iso(now),),
        )

    async def due_confirmations(
        self,
        now: datetime,
        limit: int,
        *,
        next_check: datetime,
        holder: str | None = None,
        lease_now: datetime | None = None,
    ) -> list[Claim]:
        """Delivered operations whose result the marketplace should show by now.

        Each one taken is not due again before `next_check`, so a slow marketplace is asked
        once at a time.
        """
        p = Params([to_iso(now), limit])
        held = _held(p, holder, lease_now or now)
        async with self.db.write() as tx:
            rows = await tx.fetch(
                "SELECT p.id FROM operations p WHERE p.state = 'succeed' "
                "AND p.confirmed_at IS NULL AND p.confirm_at IS NOT NULL AND p.confirm_at <= $1 "
                f"{held}ORDER BY p.confirm_at LIMIT $2",
                p,
            )
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            await tx.execute(
                f"UPDATE operations SET confirm_at = $1 WHERE id IN ({marks(len(ids), 2)})",
                (to_iso(next_check), *ids),
            )
            return await self._claims(tx, ids)

    async def observed(
        self, claim: Claim, status: OrderStatus | None, now: datetime, next_check: datetime
    ) -> list[tuple[int, str, float]]:
        """The marketplace's current status for a delivered operation's order.

        A new status becomes a marketplace change of the order, even one that skips steps
        (the event says which); operations it confirms are marked; otherwise the next check
        is scheduled.
        """
        async with self.db.write() as tx:
            row = await tx.fetchrow("SELECT status FROM orders WHERE id = $1", (claim.order_id,))
            assert row is not None
            current = OrderStatus(row[0])
            if status is not None and status != current:
                await tx.execute(
                    "UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3",
                    (status.value, to_iso(now), claim.order_id),
                )
                await self.orders.add_event(
                    tx,
                    claim.order_id,
                    now,
                    EventSource.MARKETPLACE,
                    "status",
                    from_status=current,
                    to_status=status,
                    message=describe_change(current, status),
                )
            confirmed = await confirm_operations(tx, claim.order_id, status or current, now)
            if not any(op_id == claim.operation_id for op_id, _, _ in confirmed):
                await tx.execute(
                    "UPDATE operations SET confirm_at = $1, updated_at = $2 WHERE id = $3",
                    (to_iso(next_check), to_iso(now), claim.operation_id),
                )
            await self.orders.refresh_documents(tx, [claim.order_id])
        return confirmed
