"""The one narrow interface every marketplace connector speaks, and its four kinds of failure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypedDict, Unpack, runtime_checkable

from sfd.domain import MarketplaceOrder, OrderStatus
from sfd.domain.carriers import CarrierMatch, MarketplaceCarrier
from sfd.domain.documents import Document
from sfd.domain.rules import tracking_numbers


class Where(TypedDict, total=False):
    """Which request failed, and how it was answered (see ConnectorError)."""

    method: str | None
    url: str | None
    status: int | None


class ConnectorError(Exception):
    """A marketplace call that did not succeed.

    `method`, `url` (its secrets masked) and `status` say which request failed and how the
    service answered (None: no answer), set by the HTTP client where the call fails; `str()` is
    the message tickets and logs show.
    """

    def __init__(
        self,
        message: str = "",
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status = status


class AuthFailed(ConnectorError):
    """Credentials are wrong, missing or expired: polling stops until they are fixed."""


class RateLimited(ConnectorError):
    """The marketplace asked us to slow down."""

    def __init__(
        self, message: str, retry_after: float | None = None, **where: Unpack[Where]
    ) -> None:
        super().__init__(message, **where)
        self.retry_after = retry_after


class Transient(ConnectorError):
    """A 5xx, a timeout or a connection error: worth trying again later."""


class Rejected(ConnectorError):
    """The marketplace refused this request; its message is kept."""

    def __init__(self, message: str, **where: Unpack[Where]) -> None:
        super().__init__(message, **where)
        self.message = message


@dataclass(frozen=True)
class SkippedOrder:
    """An order in a page that could not be read: named, with the reason, never silently lost."""

    reference: str
    reason: str
    updated_at: datetime | None = None


@dataclass(frozen=True)
class OrderPage:
    """One page of orders changed since a cursor."""

    orders: list[MarketplaceOrder]
    skipped: list[SkippedOrder] = field(default_factory=list)


@dataclass(frozen=True)
class ShipmentRequest:
    """Everything the shop said of a shipment, sent once; any field may be empty."""

    carrier: str = ""
    tracking_number: str = ""
    """The field as given: it may hold several numbers (`tracking_numbers`)."""
    tracking_link: str = ""
    items: dict[str, int] | None = None
    """Channel line reference → quantity, for a partial shipment; None ships everything."""
    tracking_numbers: tuple[str, ...] = ()
    """The numbers in `tracking_number`, one per package; read from it when not given."""
    carriers: Mapping[str, str] = field(default_factory=dict)
    """The channel's `[channels.carriers]` table: shop carrier name → marketplace code."""

    def __post_init__(self) -> None:
        if not self.tracking_numbers and self.tracking_number.strip():
            object.__setattr__(self, "tracking_numbers", tracking_numbers(self.tracking_number))


@dataclass(frozen=True)
class ShipmentReceipt:
    """What a connector sent of a shipment, and what it could not, for the order's events."""

    carrier: str = ""
    """The carrier as sent (the marketplace's code where it has one); empty if none was."""
    tracking_numbers: tuple[str, ...] = ()
    """The tracking numbers the marketplace was given."""
    not_forwarded: tuple[str, ...] = ()
    """Tracking numbers the shop gave that the marketplace was not sent."""
    notes: tuple[str, ...] = ()
    """Why something was not sent, one sentence each (e.g. "Mirakl takes one number")."""
    carrier_match: CarrierMatch | None = None
    """How the shop's carrier name became the code sent: config, automatic or unmapped."""


@dataclass(frozen=True)
class RefundRequest:
    """A refund to the customer, sent once."""

    shipping: bool = True
    """Whether the shipping costs of the refunded lines are refunded too."""
    items: dict[str, int] | None = None
    """Merchant SKU (the order item's reference) → quantity; None refunds every line in full.
    Each connector reads the order and matches the SKUs to its own lines."""


class MarketplaceConnector(Protocol):
    """What sfd asks of a marketplace."""

    name: str
    min_poll_interval: float | None
    """The marketplace's recommended shortest poll interval, in seconds."""
    pages_sorted_by_update: bool
    """Whether pages come oldest change first, so the cursor may move after each page.
    When not (Mirakl lists by creation date), it moves only after a complete pass."""

    def fetch_orders(self, since: datetime | None) -> AsyncIterator[OrderPage]:
        """Yield the orders changed since `since`, page by page, oldest change first."""
        ...

    async def accept(self, reference: str) -> None:
        """Accept an order waiting for the store's acceptance."""

    async def refuse(self, reference: str) -> None:
        """Refuse an order waiting for the store's acceptance."""

    async def ship(self, reference: str, shipment: ShipmentRequest) -> ShipmentReceipt:
        """Report a shipment; a repeat the marketplace calls "already shipped" succeeds.

        Sends what the marketplace accepts of the shipment as given, and says what it left out.
        """

    async def cancel(self, reference: str) -> None:
        """Cancel an order that has not shipped."""

    async def refund(self, reference: str, refund: RefundRequest) -> None:
        """Refund the customer for some or all of an order's lines."""

    async def deliver(self, reference: str) -> None:
        """Report that the order reached the customer."""

    async def upload_document(self, reference: str, document: Document) -> None:
        """Attach a document (an invoice) to the order; a marketplace without the call refuses."""

    async def order_status(self, reference: str) -> OrderStatus | None:
        """The order's status as the marketplace sees it now, or None if it is not released."""

    async def aclose(self) -> None:
        """Release the connector's HTTP session."""


@runtime_checkable
class CarrierLister(Protocol):
    """A connector that can list its marketplace's carriers (optional: Mirakl's SH21)."""

    name: str

    async def carriers(self) -> list[str]:
        """The marketplace's carrier names, as a shop would show them; cached by the connector."""
        ...


@runtime_checkable
class CarrierCatalogue(Protocol):
    """A connector that knows its marketplace's carrier codes (Mirakl SH21, Amazon, eBay)."""

    name: str

    async def carrier_catalogue(self) -> list[MarketplaceCarrier]:
        """The codes the marketplace takes, with their labels; cached by the connector."""
        ...
