"""The order circuit's vocabulary: statuses, transitions, operations, tickets and order shapes."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import msgspec


class OrderStatus(StrEnum):
    """An order's status, in Shoppingfeed's vocabulary so shop modules understand it."""

    CREATED = "created"
    WAITING_STORE_ACCEPTANCE = "waiting_store_acceptance"
    REFUSED = "refused"
    WAITING_SHIPMENT = "waiting_shipment"
    SHIPPED = "shipped"
    PARTIALLY_SHIPPED = "partially_shipped"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


S = OrderStatus

#: Which status may follow which. A status is never followed by itself: that is no change.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.CREATED: frozenset({S.WAITING_STORE_ACCEPTANCE, S.WAITING_SHIPMENT, S.REFUSED, S.CANCELLED}),
    S.WAITING_STORE_ACCEPTANCE: frozenset({S.WAITING_SHIPMENT, S.REFUSED, S.CANCELLED}),
    S.WAITING_SHIPMENT: frozenset(
        {S.SHIPPED, S.PARTIALLY_SHIPPED, S.CANCELLED, S.REFUNDED, S.PARTIALLY_REFUNDED}
    ),
    S.PARTIALLY_SHIPPED: frozenset({S.SHIPPED, S.CANCELLED, S.REFUNDED, S.PARTIALLY_REFUNDED}),
    S.SHIPPED: frozenset({S.REFUNDED, S.PARTIALLY_REFUNDED}),
    # A line refunded before shipping leaves the others to ship.
    S.PARTIALLY_REFUNDED: frozenset({S.SHIPPED, S.PARTIALLY_SHIPPED, S.REFUNDED}),
    S.REFUSED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REFUNDED: frozenset(),
}

#: Statuses after which an order is never offered to the shop again.
CLOSED_STATUSES = frozenset({S.SHIPPED, S.CANCELLED, S.REFUNDED, S.REFUSED})
#: The orders the merchant still has to ship (in the order the partial indexes spell them).
TO_SHIP_STATUSES = (S.WAITING_SHIPMENT, S.PARTIALLY_SHIPPED)
#: How long after its last change an unacknowledged order is still offered to the shop.
OFFER_WINDOW = timedelta(days=7)


class InvalidTransition(Exception):
    """A status change the circuit does not allow."""

    def __init__(self, order: str, from_status: OrderStatus, to_status: OrderStatus) -> None:
        self.order = order
        self.from_status = from_status
        self.to_status = to_status
        super().__init__(f"order {order}: cannot go from {from_status.value} to {to_status.value}")


def check_transition(order: str, from_status: OrderStatus, to_status: OrderStatus) -> None:
    """Raise InvalidTransition unless `to_status` may follow `from_status`."""
    if to_status not in TRANSITIONS[from_status]:
        raise InvalidTransition(order, from_status, to_status)


# The marketplace's status is the truth: a status it reports is applied even when the table
# above has no direct step for it (an order accepted and shipped in the marketplace's back
# office between two polls). The table still says which steps were skipped, for the trail.


def path_between(
    from_status: OrderStatus, to_status: OrderStatus
) -> tuple[OrderStatus, ...] | None:
    """The shortest way through TRANSITIONS, both ends included; None if there is none."""
    if from_status == to_status:
        return (from_status,)
    came_from: dict[OrderStatus, OrderStatus] = {from_status: from_status}
    frontier = [from_status]
    while frontier:
        following = []
        for status in frontier:
            # Statuses in declaration order, so the path chosen never depends on set order.
            for step in (s for s in OrderStatus if s in TRANSITIONS[status]):
                if step in came_from:
                    continue
                came_from[step] = status
                if step == to_status:
                    path = [step]
                    while path[-1] != from_status:
                        path.append(came_from[path[-1]])
                    return tuple(reversed(path))
                following.append(step)
        frontier = following
    return None


def skipped_steps(
    from_status: OrderStatus, to_status: OrderStatus
) -> tuple[OrderStatus, ...] | None:
    """The statuses a marketplace's change jumped over; None for a change no path leads to."""
    path = path_between(from_status, to_status)
    return None if path is None else path[1:-1]


def describe_change(from_status: OrderStatus, to_status: OrderStatus) -> str:
    """How a marketplace's change departs from the table: "" for an ordinary step.

    "waiting_store_acceptance → shipped, skipping waiting_shipment", or, for a change no
    path leads to, "refunded → shipped, a change the transition table has no path for".
    """
    skipped = skipped_steps(from_status, to_status)
    change = f"{from_status.value} → {to_status.value}"
    if skipped is None:
        return f"{change}, a change the transition table has no path for"
    if not skipped:
        return ""
    return f"{change}, skipping {', '.join(s.value for s in skipped)}"


#: The way forward an order walks: each status is beyond every one before it.
FORWARD: tuple[OrderStatus, ...] = (
    S.CREATED,
    S.WAITING_STORE_ACCEPTANCE,
    S.WAITING_SHIPMENT,
    S.PARTIALLY_SHIPPED,
    S.SHIPPED,
    S.REFUNDED,
)
_RANK = {status: rank for rank, status in enumerate(FORWARD)}
#: Statuses off the forward line, and how far along it each proves the order went: a partial
#: refund needs an accepted order, but says nothing of its shipment (eBay refunds a line
#: before the others ship). Refused and cancelled prove nothing beyond themselves.
_PROVES: dict[OrderStatus, OrderStatus] = {S.PARTIALLY_REFUNDED: S.WAITING_SHIPMENT}
#: What is beyond a status off the forward line.
_AFTER: dict[OrderStatus, frozenset[OrderStatus]] = {S.PARTIALLY_REFUNDED: frozenset({S.REFUNDED})}


def reached(reported: OrderStatus, expected: OrderStatus) -> bool:
    """Whether an order the marketplace reports as `reported` got to `expected` or beyond.

    `shipped` has got past `waiting_shipment` (so it confirms an acceptance); `refunded` past
    `shipped`; `partially_refunded` past `waiting_shipment` but not past `partially_shipped`;
    `cancelled` and `refused` past nothing but themselves.
    """
    if reported == expected:
        return True
    if expected in _RANK:
        proven = _PROVES.get(reported, reported)
        return proven in _RANK and _RANK[proven] >= _RANK[expected]
    return reported in _AFTER.get(expected, frozenset())


#: Order line statuses (any case; each marketplace spells its own) of lines with nothing left
#: to ship: refunded, cancelled or refused. Every other line of a shippable order ships.
CLOSED_LINE_STATUSES = frozenset({"refunded", "cancelled", "canceled", "refused"})


def line_open(status: str) -> bool:
    """Whether an order line, by the status its marketplace reports, is still to ship."""
    return status.strip().lower() not in CLOSED_LINE_STATUSES


class EventSource(StrEnum):
    """Who made a change happen."""

    MARKETPLACE = "marketplace"
    API = "api"
    CLI = "cli"
    PAGE = "page"
    AUTO = "auto"
    SHOP = "shop"


class OperationKind(StrEnum):
    """What an operation asks of the marketplace, or of sfd itself."""

    ACCEPT = "accept"
    REFUSE = "refuse"
    SHIP = "ship"
    CANCEL = "cancel"
    REFUND = "refund"
    DELIVER = "deliver"
    ACKNOWLEDGE = "acknowledge"
    UNACKNOWLEDGE = "unacknowledge"
    UPLOAD_DOCUMENT = "upload_document"


#: Operations that sfd settles itself, without calling the marketplace.
LOCAL_OPERATIONS = frozenset({OperationKind.ACKNOWLEDGE, OperationKind.UNACKNOWLEDGE})


class TicketState(StrEnum):
    """The state of an operation's ticket, in Shoppingfeed's vocabulary."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEED = "succeed"
    FAILED = "failed"
    CANCELED = "canceled"


FINISHED_TICKET_STATES = frozenset({TicketState.SUCCEED, TicketState.FAILED, TicketState.CANCELED})


class FulfilledBy(StrEnum):
    """Who ships the order: the merchant's store, or the marketplace itself (AFN, FBA...)."""

    STORE = "store"
    CHANNEL = "channel"


class Address(msgspec.Struct, kw_only=True, frozen=True):
    """A postal address with the contact details that go with it."""

    first_name: str = ""
    last_name: str = ""
    company: str = ""
    street: str = ""
    street2: str = ""
    other: str = ""
    postal_code: str = ""
    city: str = ""
    province: str = ""
    country: str = ""
    phone: str = ""
    mobile_phone: str = ""
    email: str = ""
    relay_id: str = ""


class OrderItem(msgspec.Struct, kw_only=True, frozen=True):
    """One order line. Amounts are exact decimals in the order's currency."""

    reference: str
    """The merchant's SKU."""
    channel_reference: str
    """The marketplace's id for this line."""
    quantity: int
    price: Decimal
    """Unit price, taxes included."""
    name: str = ""
    status: str = ""
    commission: Decimal = Decimal(0)
    tax_amount: Decimal = Decimal(0)
    ecotax_amount: Decimal = Decimal(0)
    image: str = ""
    additional_fields: dict[str, Any] = msgspec.field(default_factory=dict)


class Shipment(msgspec.Struct, kw_only=True, frozen=True):
    """What the marketplace knows of an order's shipment."""

    carrier: str = ""
    tracking_number: str = ""
    tracking_link: str = ""


#: The `additional_fields` key of an order the marketplace sent without personal data it should
#: have (a missing API role): its text says what is missing and how to fix it. The order page and
#: `sfd orders show` show it.
MISSING_PERSONAL_DATA = "missing_personal_data"


class MarketplaceOrder(msgspec.Struct, kw_only=True, frozen=True):
    """An order as a connector hands it over: normalized, with the raw payload beside it."""

    reference: str
    status: OrderStatus
    created_at: datetime
    updated_at: datetime
    """When the marketplace last changed the order: the import cursor follows it."""
    currency: str
    product_amount: Decimal
    shipping_amount: Decimal
    total_amount: Decimal
    raw: bytes
    """The marketplace's own JSON for this order, kept for diagnosis."""
    payment_method: str = ""
    shipping_method: str = ""
    latest_ship_date: datetime | None = None
    is_test: bool = False
    fulfilled_by: FulfilledBy = FulfilledBy.STORE
    billing_address: Address = Address()
    shipping_address: Address = Address()
    items: tuple[OrderItem, ...] = ()
    shipment: Shipment | None = None
    additional_fields: dict[str, Any] = msgspec.field(default_factory=dict)
    payment_pending: bool = False
    """Accepted, but the marketplace still waits for the buyer's payment (Mirakl WAITING_DEBIT):
    the status stays `waiting_shipment`, Shoppingfeed's word, and the order is not offered to
    the shop nor shippable until the marketplace releases it."""


class OrderEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One entry of an order's audit trail."""

    id: int
    at: datetime
    source: str
    kind: str
    from_status: str | None
    to_status: str | None
    message: str
    operation_id: int | None
    actor: str | None = None
    """Who: the token's name, the system user of the CLI, or the shop; None for sfd itself."""


class OrderIssue(msgspec.Struct, kw_only=True, frozen=True):
    """Something that went wrong with an order, as the shop is shown it."""

    type: str
    message: str
    occurred_at: datetime


class StoredItem(msgspec.Struct, kw_only=True, frozen=True):
    """An order line as stored."""

    id: int
    reference: str
    channel_reference: str
    name: str
    status: str
    quantity: int
    price: Decimal
    commission: Decimal
    tax_amount: Decimal
    ecotax_amount: Decimal
    image: str
    additional_fields: dict[str, Any]


class StoredOrder(msgspec.Struct, kw_only=True, frozen=True):
    """An order as sfd holds it."""

    id: int
    store_id: int
    channel_id: int
    channel: str
    reference: str
    status: OrderStatus
    store_reference: str | None
    acknowledged_at: datetime | None
    acknowledgment_status: str | None
    acknowledgment_message: str | None
    created_at: datetime
    updated_at: datetime
    marketplace_updated_at: datetime
    imported_at: datetime
    latest_ship_date: datetime | None
    is_test: bool
    fulfilled_by: str
    currency: str
    product_amount: Decimal
    shipping_amount: Decimal
    total_amount: Decimal
    payment_method: str
    shipping_method: str
    carrier: str
    tracking_number: str
    tracking_link: str
    additional_fields: dict[str, Any]
    payment_pending: bool = False
    """Accepted, waiting for the buyer's payment: see MarketplaceOrder.payment_pending."""
    billing_address: Address | None = None
    shipping_address: Address | None = None
    items: list[StoredItem] = msgspec.field(default_factory=list)
    events: list[OrderEvent] = msgspec.field(default_factory=list)
    errors: list[OrderIssue] = msgspec.field(default_factory=list)
    """What went wrong with the order: an error acknowledgement, a failed shipment."""


class Ticket(msgspec.Struct, kw_only=True, frozen=True):
    """An operation as its ticket shows it."""

    id: str
    operation_id: int
    batch_id: str
    store_id: int
    kind: OperationKind
    state: TicketState
    source: str
    order_id: int | None
    order_reference: str | None
    channel: str | None
    payload: dict[str, Any]
    reason: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    confirmed_at: datetime | None
    result: str | None = None
    """What a delivered operation sent (a shipment's carrier code and tracking numbers)."""
