"""The order circuit's vocabulary: statuses, transitions, operations, tickets and order shapes."""

from __future__ import annotations

from datetime import datetime
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
    S.PARTIALLY_REFUNDED: frozenset({S.REFUNDED}),
    S.REFUSED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REFUNDED: frozenset(),
}

#: Statuses after which an order is never offered to the shop again.
CLOSED_STATUSES = frozenset({S.SHIPPED, S.CANCELLED, S.REFUNDED, S.REFUSED})


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
