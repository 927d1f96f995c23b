"""Which requested operations the circuit accepts: pure decisions, the same for every source.

The API, the legacy /ws, the CLI, the order page and auto-accept all ask here, so an order
page click and a shop module's request are held to exactly the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from sfd.domain import FulfilledBy, OperationKind, OrderStatus, TicketState, reached
from sfd.domain.documents import Document

K = OperationKind
S = OrderStatus

#: The longest carrier, tracking number or link a marketplace is sent; longer is a mistake.
MAX_FIELD = 255
MAX_LINK = 1024
#: The longest tracking number field: it may hold several numbers (see `tracking_numbers`).
MAX_TRACKING = 1024

#: What separates several tracking numbers given in one field: WooCommerce's Shipment
#: Tracking plugin joins a shipment's numbers with commas; people use semicolons or spaces.
_TRACKING_SEPARATORS = re.compile(r"[,;\s]+")


def tracking_numbers(text: str) -> tuple[str, ...]:
    """The tracking numbers in one field, in order, each once; empty for a blank field."""
    numbers: dict[str, None] = {}
    for number in _TRACKING_SEPARATORS.split(text):
        if number:
            numbers.setdefault(number, None)
    return tuple(numbers)


class ShipPayload(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A shipment as reported: sent to the marketplace once, with whatever the shop knows.

    Any of carrier, tracking number and link may be empty: the marketplace decides, unless the
    channel sets `require_tracking`. `tracking_number` is kept as given, several numbers and
    all (see `tracking_numbers`)."""

    carrier: str = ""
    tracking_number: str = ""
    tracking_link: str = ""
    items: tuple[tuple[int, int], ...] = ()
    """(order item id, quantity) for a partial shipment; empty ships the whole order."""
    return_carrier: str | None = None
    return_tracking_number: str | None = None
    warehouse_id: str | None = None


class AcknowledgePayload(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The shop took the order (`success`) or failed to (`error`, with its message)."""

    status: str = "success"
    store_reference: str | None = None
    message: str = ""
    acknowledged_at: datetime | None = None


class ReasonPayload(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Accept, refuse, cancel, deliver and unacknowledge carry at most a reason."""

    reason: str = ""


class RefundPayload(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A refund: the shipping costs or not, and which products in which quantity."""

    shipping: bool = True
    products: tuple[tuple[str, int], ...] = ()


class DocumentPayload(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A document to attach to the order; its bytes are stored apart (storage's documents)."""

    type: str = "invoice"
    sha256: str
    file_name: str
    content_type: str
    size: int


Payload = ShipPayload | AcknowledgePayload | ReasonPayload | RefundPayload | DocumentPayload


def document_payload(document: Document) -> DocumentPayload:
    """The outbox payload of a checked document: everything but its bytes."""
    return DocumentPayload(
        type=document.type,
        sha256=document.sha256,
        file_name=document.file_name,
        content_type=document.content_type,
        size=document.size,
    )


PAYLOAD_TYPES: dict[OperationKind, type[Payload]] = {
    K.SHIP: ShipPayload,
    K.ACKNOWLEDGE: AcknowledgePayload,
    K.REFUND: RefundPayload,
    K.ACCEPT: ReasonPayload,
    K.REFUSE: ReasonPayload,
    K.CANCEL: ReasonPayload,
    K.DELIVER: ReasonPayload,
    K.UNACKNOWLEDGE: ReasonPayload,
    K.UPLOAD_DOCUMENT: DocumentPayload,
}


@dataclass(frozen=True)
class OrderView:
    """What the rules need to know of an order."""

    id: int
    reference: str
    channel: str
    status: OrderStatus
    fulfilled_by: FulfilledBy
    require_tracking: bool
    items: dict[int, int]
    """Order item id → quantity ordered."""
    closed_items: frozenset[int] = frozenset()
    """Order item ids the marketplace shows refunded, cancelled or refused: not to ship."""
    payment_pending: bool = False
    """Accepted, the buyer's payment not yet taken: nothing ships before the marketplace
    releases the order."""


@dataclass(frozen=True)
class PriorOperation:
    """An operation already requested on the same order."""

    id: int
    ticket_id: str
    kind: OperationKind
    state: TicketState
    payload: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """Schedule it, settle it at once, refuse it with a reason, or point at an older ticket.

    `payload` is what to record and send when the rules normalised the request (a link that is
    not http(s) dropped, every line at full quantity made a whole shipment), and `warnings`
    say what was changed, for the order's events."""

    state: TicketState
    reason: str = ""
    reuse: PriorOperation | None = None
    payload: Payload | None = None
    warnings: tuple[str, ...] = ()


LIVE = frozenset({TicketState.SCHEDULED, TicketState.RUNNING, TicketState.SUCCEED})
_ACCEPTABLE = frozenset({S.WAITING_STORE_ACCEPTANCE})
_CANCELLABLE = frozenset({S.CREATED, S.WAITING_STORE_ACCEPTANCE, S.WAITING_SHIPMENT})
#: A partially refunded order ships what is left: its lines not refunded (see `closed_items`).
SHIPPABLE = frozenset({S.WAITING_SHIPMENT, S.PARTIALLY_SHIPPED, S.PARTIALLY_REFUNDED})
_REFUNDABLE = frozenset({S.WAITING_SHIPMENT, S.PARTIALLY_SHIPPED, S.SHIPPED, S.PARTIALLY_REFUNDED})
_DELIVERABLE = frozenset({S.SHIPPED, S.PARTIALLY_SHIPPED})
_ALLOWED_FROM: dict[OperationKind, frozenset[OrderStatus]] = {
    K.ACCEPT: _ACCEPTABLE,
    K.REFUSE: _ACCEPTABLE,
    K.CANCEL: _CANCELLABLE,
    K.SHIP: SHIPPABLE,
    K.REFUND: _REFUNDABLE,
    K.DELIVER: _DELIVERABLE,
}


#: The statuses that show the marketplace applied an operation; any status beyond one of them
#: (`domain.reached`) does too: `shipped` confirms an acceptance, `refunded` a shipment.
CONFIRMED_BY: dict[OperationKind, frozenset[OrderStatus]] = {
    K.ACCEPT: frozenset({S.WAITING_SHIPMENT}),
    K.REFUSE: frozenset({S.REFUSED}),
    K.CANCEL: frozenset({S.CANCELLED}),
    K.SHIP: frozenset({S.PARTIALLY_SHIPPED, S.SHIPPED}),
    K.REFUND: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
}


def confirmed_by_answer(kind: OperationKind, status: OrderStatus) -> bool:
    """Whether the marketplace's taking the operation is its confirmation.

    A partially refunded order stays `partially_refunded` once its other lines ship (eBay
    keeps the refund in the order's status), so no status read could confirm the shipment:
    the marketplace's answer to it does.
    """
    if kind == K.UPLOAD_DOCUMENT:
        # No order status shows a document: the marketplace's taking it (Amazon: its feed's
        # processing report) is the confirmation.
        return True
    return kind == K.SHIP and status == S.PARTIALLY_REFUNDED


def confirms(kind: OperationKind, status: OrderStatus) -> bool:
    """Whether a marketplace status shows an operation of this kind applied."""
    return any(reached(status, expected) for expected in CONFIRMED_BY.get(kind, ()))


def _as_stored(payload: Payload) -> Any:
    """The payload as a prior operation holds it (read back from JSON: lists, not tuples)."""
    return msgspec.json.decode(msgspec.json.encode(payload))


def _refuse(reason: str) -> Decision:
    return Decision(TicketState.FAILED, reason)


def decide(
    kind: OperationKind, order: OrderView | None, payload: Payload, prior: list[PriorOperation]
) -> Decision:
    """Decide what becomes of one requested operation on one order."""
    if order is None:
        return _refuse("order not found")
    if kind in (K.ACKNOWLEDGE, K.UNACKNOWLEDGE):
        return Decision(TicketState.SUCCEED)
    warnings: tuple[str, ...] = ()
    asked = _as_stored(payload)
    if isinstance(payload, ShipPayload):
        payload, warnings = normalise_ship(order, payload)
    encoded = _as_stored(payload)
    # A repeat is matched on what was recorded: the normalised payload, or the request as it
    # was before the rules normalised anything.
    same = [
        p for p in prior if p.kind == kind and p.state in LIVE and p.payload in (encoded, asked)
    ]
    if isinstance(payload, DocumentPayload):
        # The same file for the same order is the same document, whatever it is called now.
        same = [
            p
            for p in prior
            if p.kind == kind
            and p.state in LIVE
            and p.payload.get("sha256") == payload.sha256
            and p.payload.get("type", "invoice") == payload.type
        ]
        if same:
            return Decision(same[0].state, reuse=same[0])
        return Decision(TicketState.SCHEDULED)
    if same:
        # A repeat of a request already taken: the same ticket answers it, nothing is resent.
        return Decision(same[0].state, reuse=same[0])
    allowed = _ALLOWED_FROM[kind]
    if order.status not in allowed:
        return _refuse(
            f"order {order.reference} is {order.status.value}; {kind.value} needs "
            f"{' or '.join(sorted(s.value for s in allowed))}"
        )
    pending = [
        p
        for p in prior
        if p.state in (TicketState.SCHEDULED, TicketState.RUNNING)
        and p.kind in (K.ACCEPT, K.REFUSE, K.CANCEL)
    ]
    if kind in (K.ACCEPT, K.REFUSE, K.CANCEL) and pending:
        return _refuse(
            f"order {order.reference} already has a pending {pending[0].kind.value} "
            f"(ticket {pending[0].ticket_id})"
        )
    if kind == K.SHIP:
        assert isinstance(payload, ShipPayload)
        decision = _lines_to_ship(order, payload) or _decide_ship(order, payload, prior)
        if decision.state != TicketState.SCHEDULED:
            return decision
        return Decision(decision.state, payload=payload, warnings=warnings)
    return Decision(TicketState.SCHEDULED)


def _lines_to_ship(order: OrderView, ship: ShipPayload) -> Decision | None:
    """Refuse a shipment of nothing: before payment, of a refunded line, or of no line left."""
    if order.payment_pending:
        return _refuse(
            f"order {order.reference} is waiting for the buyer's payment; it ships once "
            f"{order.channel} releases it"
        )
    for item_id, _ in ship.items:
        if item_id in order.closed_items:
            return _refuse(
                f"item {item_id} of order {order.reference} is refunded or cancelled; "
                "nothing of it is left to ship"
            )
    if order.items and not set(order.items) - order.closed_items:
        return _refuse(f"every line of order {order.reference} is refunded or cancelled")
    return None


def normalise_ship(order: OrderView, ship: ShipPayload) -> tuple[ShipPayload, tuple[str, ...]]:
    """The shipment to record and send, and what was changed on the way.

    A link that is not http(s) is dropped (the shipment still goes). Items that list every
    line at its full quantity are a whole shipment: every connector then ships the whole
    order the marketplace's way, where some (Mirakl) cannot send a partial one.
    """
    warnings: list[str] = []
    link = ship.tracking_link.strip()
    if link and not link.lower().startswith(("https://", "http://")):
        shown = link if len(link) <= 60 else link[:57] + "..."
        warnings.append(
            f"trackingLink {shown!r} is not an http(s):// URL: dropped, the shipment is "
            "sent without it"
        )
        ship = msgspec.structs.replace(ship, tracking_link="")
    # Refunded or cancelled lines are not left to ship: the rest, whole, is the whole order.
    every_line = {
        item: qty for item, qty in order.items.items() if qty > 0 and item not in order.closed_items
    }
    if ship.items and len(ship.items) == len(every_line) and dict(ship.items) == every_line:
        ship = msgspec.structs.replace(ship, items=())
    return ship, tuple(warnings)


def _decide_ship(order: OrderView, ship: ShipPayload, prior: list[PriorOperation]) -> Decision:
    if order.fulfilled_by == FulfilledBy.CHANNEL:
        return _refuse(f"order {order.reference} is shipped by the marketplace itself")
    numbers = tracking_numbers(ship.tracking_number)
    if order.require_tracking and not ship.carrier.strip():
        return _refuse(f"channel {order.channel} requires a carrier")
    if order.require_tracking and not numbers:
        return _refuse(f"channel {order.channel} requires a tracking number")
    for name, value, limit in (
        ("carrier", ship.carrier, MAX_FIELD),
        ("trackingNumber", ship.tracking_number, MAX_TRACKING),
        ("trackingLink", ship.tracking_link, MAX_LINK),
    ):
        if len(value) > limit:
            return _refuse(f"{name} is {len(value)} characters long; at most {limit}")
    for number in numbers:
        if len(number) > MAX_FIELD:
            return _refuse(
                f"trackingNumber: {number[:20]}... is {len(number)} characters long; "
                f"at most {MAX_FIELD}"
            )
    shipments = [p for p in prior if p.kind == K.SHIP and p.state in LIVE]
    if not ship.items:
        if shipments:
            return _refuse(
                f"order {order.reference} already has a shipment "
                f"(ticket {shipments[0].ticket_id}); a shipment is sent only once"
            )
        return Decision(TicketState.SCHEDULED)
    shipped: dict[int, int] = {}
    for p in shipments:
        lines = p.payload.get("items") or []
        if not lines:
            return _refuse(
                f"order {order.reference} was shipped whole "
                f"(ticket {p.ticket_id}); a shipment is sent only once"
            )
        for item_id, quantity in lines:
            shipped[item_id] = shipped.get(item_id, 0) + quantity
    seen: set[int] = set()
    for item_id, quantity in ship.items:
        if item_id not in order.items:
            return _refuse(f"item {item_id} is not a line of order {order.reference}")
        if item_id in seen:
            return _refuse(f"item {item_id} is listed twice")
        seen.add(item_id)
        left = order.items[item_id] - shipped.get(item_id, 0)
        if quantity < 1 or quantity > left:
            return _refuse(
                f"item {item_id}: quantity {quantity} is not between 1 and the {left} left to ship"
            )
    return Decision(TicketState.SCHEDULED)
