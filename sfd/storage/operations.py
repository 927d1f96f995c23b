"""The operations outbox and its tickets: each request is decided and written in one transaction."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from sfd.clock import from_iso, to_iso
from sfd.domain import (
    FINISHED_TICKET_STATES,
    EventSource,
    FulfilledBy,
    OperationKind,
    OrderStatus,
    Ticket,
    TicketState,
)
from sfd.rules import AcknowledgePayload, OrderView, Payload, PriorOperation, decide
from sfd.storage.db import Database, Writer
from sfd.storage.orders import OrderStore

K = OperationKind


@dataclass(frozen=True)
class OperationRequest:
    """One entry of an operation request: an order, by id or by reference and channel."""

    payload: Payload
    order_id: int | None = None
    reference: str | None = None
    channel: str | None = None


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


def _opt(value: str | None) -> datetime | None:
    return from_iso(value) if value else None


def _ticket(row: Any, batch_id: str | None = None) -> Ticket:
    payload = json.loads(row["payload"])
    return Ticket(
        id=row["ticket_id"],
        operation_id=row["id"],
        batch_id=batch_id or row["batch_id"],
        store_id=row["store_id"],
        kind=OperationKind(row["kind"]),
        state=TicketState(row["state"]),
        source=row["source"],
        order_id=row["order_id"],
        order_reference=row["order_reference"] or payload.get("reference"),
        channel=row["channel"] or payload.get("channel"),
        payload=payload,
        reason=row["last_error"],
        attempts=row["attempts"],
        created_at=from_iso(row["created_at"]),
        started_at=_opt(row["started_at"]),
        finished_at=_opt(row["finished_at"]),
        confirmed_at=_opt(row["confirmed_at"]),
    )


class OperationStore:
    """Decide and record operations; read tickets."""

    def __init__(self, db: Database, orders: OrderStore) -> None:
        self.db = db
        self.orders = orders

    async def submit(
        self,
        store_id: int,
        kind: OperationKind,
        requests: Sequence[OperationRequest],
        source: EventSource,
        now: datetime,
    ) -> Batch:
        """Decide every entry and write them all, with their tickets, in one transaction."""
        batch_id = new_id()
        stamp = to_iso(now)
        touched: set[int] = set()
        async with self.db.write() as tx:
            await tx.execute(
                "INSERT INTO batches (id, store_id, kind, source, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch_id, store_id, kind.value, source.value, stamp),
            )
            for position, request in enumerate(requests):
                operation_id = await self._submit_one(
                    tx, store_id, kind, request, source, now, batch_id, touched
                )
                await tx.execute(
                    "INSERT INTO batch_tickets (batch_id, position, operation_id) VALUES (?, ?, ?)",
                    (batch_id, position, operation_id),
                )
            await self.orders.refresh_documents(tx, touched)
            rows = await tx.fetchall(
                _SELECT_TICKET + "JOIN batch_tickets b ON b.operation_id = p.id "
                "WHERE b.batch_id = ? ORDER BY b.position",
                (batch_id,),
            )
        return Batch(
            id=batch_id,
            store_id=store_id,
            kind=kind,
            tickets=[_ticket(row, batch_id) for row in rows],
        )

    async def _submit_one(
        self,
        tx: Writer,
        store_id: int,
        kind: OperationKind,
        request: OperationRequest,
        source: EventSource,
        now: datetime,
        batch_id: str,
        touched: set[int],
    ) -> int:
        order = await self._find_order(tx, store_id, request)
        prior = await self._prior(tx, order.id) if order else []
        decision = decide(kind, order, request.payload, prior)
        if decision.reuse is not None:
            return decision.reuse.id
        payload = msgspec.to_builtins(request.payload)
        if order is None:
            # Keep what the caller named, so the failed ticket says which order was not found.
            payload |= {
                "orderId": request.order_id,
                "reference": request.reference,
                "channel": request.channel,
            }
        finished = to_iso(now) if decision.state in FINISHED_TICKET_STATES else None
        channel_id = await self._channel_id(tx, order.id) if order else None
        operation_id = await tx.insert(
            "INSERT INTO operations (ticket_id, batch_id, store_id, channel_id, order_id, kind, "
            "payload, source, state, last_error, created_at, updated_at, finished_at, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        touched.add(order.id)
        if decision.state == TicketState.FAILED:
            await self.orders.add_event(
                tx,
                order.id,
                now,
                source,
                f"{kind.value}_refused",
                message=decision.reason,
                operation_id=operation_id,
            )
        elif kind == K.ACKNOWLEDGE:
            assert isinstance(request.payload, AcknowledgePayload)
            await self._acknowledge(tx, order.id, request.payload, now)
            await self.orders.add_event(
                tx,
                order.id,
                now,
                source,
                "acknowledge",
                message=_ack_message(request.payload),
                operation_id=operation_id,
            )
        elif kind == K.UNACKNOWLEDGE:
            await tx.execute(
                "UPDATE orders SET acknowledged_at = NULL, acknowledgment_status = NULL, "
                "acknowledgment_message = NULL, updated_at = ? WHERE id = ?",
                (to_iso(now), order.id),
            )
            await self.orders.add_event(
                tx, order.id, now, source, "unacknowledge", operation_id=operation_id
            )
        else:
            await self.orders.add_event(
                tx, order.id, now, source, f"{kind.value}_requested", operation_id=operation_id
            )
        return operation_id

    @staticmethod
    async def _acknowledge(
        tx: Writer, order_id: int, ack: AcknowledgePayload, now: datetime
    ) -> None:
        # The first acknowledgement's time is kept; the store reference follows the latest.
        # An error acknowledgement also stops the offer: the shop saw the order, and a person
        # decides (unacknowledge) whether it is offered again. Offering it on would duplicate.
        await tx.execute(
            "UPDATE orders SET acknowledged_at = coalesce(acknowledged_at, ?), "
            "store_reference = coalesce(?, store_reference), acknowledgment_status = ?, "
            "acknowledgment_message = ?, updated_at = ? WHERE id = ?",
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
    async def _find_order(tx: Writer, store_id: int, request: OperationRequest) -> OrderView | None:
        params: list[object]
        if request.order_id is not None and not 0 < request.order_id < 2**63:
            return None  # no row can have it
        if request.order_id is not None:
            where, params = "o.id = ?", [request.order_id]
        else:
            where = "o.reference = ? AND c.name = ? COLLATE NOCASE"
            params = [request.reference, request.channel]
        row = await tx.fetchone(
            "SELECT o.id, o.reference, o.status, o.fulfilled_by, c.name AS channel, "
            "c.require_tracking FROM orders o JOIN channels c ON c.id = o.channel_id "
            f"WHERE {where} AND o.store_id = ?",
            [*params, store_id],
        )
        if row is None:
            return None
        items = await tx.fetchall(
            "SELECT id, quantity FROM order_items WHERE order_id = ?", (row["id"],)
        )
        return OrderView(
            id=row["id"],
            reference=row["reference"],
            channel=row["channel"],
            status=OrderStatus(row["status"]),
            fulfilled_by=FulfilledBy(row["fulfilled_by"]),
            require_tracking=bool(row["require_tracking"]),
            items={item["id"]: item["quantity"] for item in items},
        )

    @staticmethod
    async def _prior(tx: Writer, order_id: int) -> list[PriorOperation]:
        rows = await tx.fetchall(
            "SELECT id, ticket_id, kind, state, payload FROM operations WHERE order_id = ? "
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
    async def _channel_id(tx: Writer, order_id: int) -> int:
        row = await tx.fetchone("SELECT channel_id FROM orders WHERE id = ?", (order_id,))
        assert row is not None
        return int(row[0])

    async def batch(self, store_id: int, batch_id: str) -> list[Ticket]:
        """The tickets of one batch, in request order; empty if unknown or another store's."""
        rows = await self.db.fetchall(
            _SELECT_TICKET + "JOIN batch_tickets b ON b.operation_id = p.id "
            "JOIN batches s ON s.id = b.batch_id "
            "WHERE b.batch_id = ? AND s.store_id = ? ORDER BY b.position",
            (batch_id, store_id),
        )
        return [_ticket(row, batch_id) for row in rows]

    async def ticket(self, store_id: int, ticket_id: str) -> Ticket | None:
        """One ticket; None if unknown or another store's."""
        row = await self.db.fetchone(
            _SELECT_TICKET + "WHERE p.ticket_id = ? AND p.store_id = ?", (ticket_id, store_id)
        )
        return _ticket(row) if row else None

    async def tickets(
        self,
        store_id: int,
        *,
        states: Sequence[TicketState] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[Ticket]]:
        """A page of a store's tickets, newest first, and how many there are in all."""
        where, params = "p.store_id = ?", list[object]([store_id])
        if states:
            where += f" AND p.state IN ({','.join('?' * len(states))})"
            params.extend(s.value for s in states)
        total = await self.db.fetchone(f"SELECT count(*) FROM operations p WHERE {where}", params)
        rows = await self.db.fetchall(
            _SELECT_TICKET + f"WHERE {where} ORDER BY p.id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return int(total[0]) if total else 0, [_ticket(row) for row in rows]

    async def shipments(self, order_id: int) -> list[Ticket]:
        """The order's shipments: its ship operations that have not failed."""
        rows = await self.db.fetchall(
            _SELECT_TICKET + "WHERE p.order_id = ? AND p.kind = 'ship' "
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
