"""Amazon's Selling Partner API, Orders v0: list orders and their items, confirm shipments.

Calls carry a Login with Amazon (LWA) access token in `x-amz-access-token`, traded for the seller's
refresh token and cached for its hour of life; SP-API stopped requiring AWS SigV4 signatures in
2023. Amounts arrive as decimal strings and stay exact Decimals.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import aiohttp
import msgspec
from aiolimiter import AsyncLimiter
from yarl import URL

from sfd.clock import to_api, utcnow
from sfd.connectors.base import (
    AuthFailed,
    OrderPage,
    RefundRequest,
    Rejected,
    ShipmentReceipt,
    ShipmentRequest,
    SkippedOrder,
    Transient,
)
from sfd.connectors.http import Answer, HttpClient, HttpConnector, segment
from sfd.connectors.parsing import (
    MalformedOrder,
    Quantity,
    finite,
    malformed,
    parse_moment,
    reference_or_position,
    utc,
)
from sfd.connectors.settings import AmazonSettings
from sfd.domain import Address, FulfilledBy, MarketplaceOrder, OrderItem, OrderStatus

if TYPE_CHECKING:
    from sfd.connectors.base import MarketplaceConnector

ORDERS_PATH: Final = "/orders/v0/orders"
#: getOrders serves at most 100 orders a page (MaxResultsPerPage 1-100).
PAGE_SIZE: Final = 100
#: An access token is renewed this long before LWA says it expires.
TOKEN_MARGIN: Final = timedelta(seconds=60)
#: LastUpdatedBefore must be at least two minutes before Amazon's now: ten seconds more keep a
#: clock running slightly ahead of Amazon's from an InvalidInput on every poll.
LISTING_DELAY: Final = timedelta(minutes=2, seconds=10)
#: How far back the first pass looks, when there is no cursor yet.
FIRST_PASS_LOOKBACK: Final = timedelta(days=30)

# The usage plans of the Orders v0 reference, as leaky buckets. AsyncLimiter(max_rate, period)
# holds at most `max_rate` acquisitions (the burst) and drains `max_rate / period` per second
# (the restore rate), so a burst B with a rate of R per second is AsyncLimiter(B, B / R).
#: getOrders: 0.0167 requests per second (one a minute), burst 20.
LISTING_BURST: Final = 20
LISTING_PERIOD: Final = 1200.0
#: getOrderItems and getOrder: 0.5 requests per second, burst 30.
ITEMS_BURST: Final = 30
ITEMS_PERIOD: Final = 60.0

#: Order statuses of orders not paid yet: not imported.
UNRELEASED_STATUSES: Final = frozenset({"Pending", "PendingAvailability"})
#: Order statuses of orders whose every item has shipped.
SHIPPED_STATUSES: Final = frozenset({"Shipped", "InvoiceUnconfirmed"})
#: Amazon order status → sfd status, for released orders.
STATUS_BY_ORDER_STATUS: Final[Mapping[str, OrderStatus]] = {
    "Unshipped": OrderStatus.WAITING_SHIPMENT,
    "PartiallyShipped": OrderStatus.PARTIALLY_SHIPPED,
    "Shipped": OrderStatus.SHIPPED,
    # Every item has shipped; only the seller's invoice confirmation is missing.
    "InvoiceUnconfirmed": OrderStatus.SHIPPED,
    "Canceled": OrderStatus.CANCELLED,
    # Amazon will never fulfil it (Multi-Channel Fulfillment orders only): as final as a
    # cancellation, and an order imported earlier must close rather than wait forever.
    "Unfulfillable": OrderStatus.CANCELLED,
}

# Amazon's carrier codes (the CarrierCode list of the feeds' amzn-base.xsd). Any other carrier is
# sent as "Other" with its name.
CARRIER_CODES: Final = (
    "USPS", "UPS", "UPSMI", "FedEx", "DHL", "Fastway", "GLS", "GO!", "Hermes Logistik Gruppe",
    "Royal Mail", "Parcelforce", "City Link", "TNT", "Target", "SagawaExpress", "NipponExpress",
    "YamatoTransport", "DHL Global Mail", "UPS Mail Innovations", "FedEx SmartPost", "OSM",
    "OnTrac", "Streamlite", "Newgistics", "Canada Post", "Blue Package", "Chronopost",
    "Deutsche Post", "DPD", "La Poste", "Parcelnet", "Poste Italiane", "SDA", "Smartmail",
    "FEDEX_JP", "JP_EXPRESS", "NITTSU", "SAGAWA", "YAMATO", "BlueDart", "AFL/Fedex", "Aramex",
    "India Post", "Professional", "DTDC", "Overnite Express", "First Flight", "Delhivery",
    "Lasership", "Yodel",
)  # fmt: skip

#: The currency of each marketplace, for an order Amazon sends without OrderTotal (cancelled).
CURRENCY_BY_MARKETPLACE: Final[Mapping[str, str]] = {
    "A13V1IB3VIYZZH": "EUR",  # France
    "A1PA6795UKMFR9": "EUR",  # Germany
    "APJ6JRA9NG5V4": "EUR",  # Italy
    "A1RKKUPIHCS9HS": "EUR",  # Spain
    "A1805IZSGTT6HS": "EUR",  # Netherlands
    "AMEN7PMS3EDWL": "EUR",  # Belgium
    "A28R8C7NBKEWEA": "EUR",  # Ireland
    "A1F83G8C2ARO7P": "GBP",  # United Kingdom
    "A2NODRKZP88ZB9": "SEK",  # Sweden
    "A1C3SOZRARQ6R3": "PLN",  # Poland
    "A33AVAJ2PDY3EV": "TRY",  # Turkey
    "ATVPDKIKX0DER": "USD",  # United States
    "A2EUQ1WTGCTBG2": "CAD",  # Canada
    "A1AM78C64UM0Y8": "MXN",  # Mexico
}

NO_ACCEPTANCE: Final = (
    "Amazon has no acceptance step: an order is released once paid, and it arrives accepted"
)
NO_REFUND: Final = (
    "Amazon Orders v0 has no refund call; refunds go through Seller Central or the Feeds API"
)
NO_DELIVERY: Final = (
    "Amazon Orders v0 has no delivery confirmation: Amazon learns of the delivery from the "
    "carrier's tracking"
)
NO_CANCELLATION: Final = (
    "Amazon's Orders API has no seller cancellation: cancel the order in Seller Central "
    "(or with an order acknowledgement feed)"
)


# -- wire shapes --------------------------------------------------------------------------------
#
# Field names are Amazon's own (PascalCase), so msgspec reports a bad field by its wire name.


class _OrdersPage(msgspec.Struct):
    Orders: list[msgspec.Raw]
    NextToken: str | None = None


class _OrdersAnswer(msgspec.Struct):
    payload: _OrdersPage


class _ItemsPage(msgspec.Struct):
    OrderItems: list[msgspec.Raw]
    NextToken: str | None = None


class _ItemsAnswer(msgspec.Struct):
    payload: _ItemsPage


class _OrderBrief(msgspec.Struct):
    """What ship and order_status need of one order."""

    AmazonOrderId: str
    OrderStatus: str
    MarketplaceId: str | None = None


class _OrderAnswer(msgspec.Struct):
    payload: _OrderBrief


class _Token(msgspec.Struct):
    access_token: str
    expires_in: float = 3600.0


class _LwaError(msgspec.Struct):
    error: str | None = None
    error_description: str | None = None


class _Error(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _Errors(msgspec.Struct):
    errors: list[_Error] | None = None


class _Money(msgspec.Struct):
    CurrencyCode: str | None = None
    Amount: Decimal | None = None


class _Address(msgspec.Struct):
    Name: str | None = None
    CompanyName: str | None = None
    AddressLine1: str | None = None
    AddressLine2: str | None = None
    AddressLine3: str | None = None
    City: str | None = None
    County: str | None = None
    District: str | None = None
    StateOrRegion: str | None = None
    PostalCode: str | None = None
    CountryCode: str | None = None
    Phone: str | None = None


class _TaxClassification(msgspec.Struct):
    Name: str | None = None
    Value: str | None = None


class _BuyerTaxInfo(msgspec.Struct):
    CompanyLegalName: str | None = None
    TaxingRegion: str | None = None
    TaxClassifications: list[_TaxClassification] | None = None


class _BuyerInfo(msgspec.Struct):
    BuyerEmail: str | None = None
    BuyerName: str | None = None
    BuyerTaxInfo: _BuyerTaxInfo | None = None
    PurchaseOrderNumber: str | None = None


class _BuyerTaxInformation(msgspec.Struct):
    BuyerLegalCompanyName: str | None = None
    BuyerTaxRegistrationId: str | None = None


class _Order(msgspec.Struct):
    AmazonOrderId: str
    PurchaseDate: datetime
    LastUpdateDate: datetime
    OrderStatus: str
    FulfillmentChannel: str | None = None
    SalesChannel: str | None = None
    ShipServiceLevel: str | None = None
    ShipmentServiceLevelCategory: str | None = None
    OrderTotal: _Money | None = None
    PaymentMethod: str | None = None
    PaymentMethodDetails: list[str] | None = None
    MarketplaceId: str | None = None
    OrderType: str | None = None
    SellerOrderId: str | None = None
    EarliestShipDate: datetime | None = None
    LatestShipDate: datetime | None = None
    EarliestDeliveryDate: datetime | None = None
    LatestDeliveryDate: datetime | None = None
    IsBusinessOrder: bool | None = None
    IsPrime: bool | None = None
    IsPremiumOrder: bool | None = None
    IsReplacementOrder: bool | None = None
    ReplacedOrderId: str | None = None
    IsISPU: bool | None = None
    IsAccessPointOrder: bool | None = None
    ShippingAddress: _Address | None = None
    BuyerInfo: _BuyerInfo | None = None
    BuyerTaxInformation: _BuyerTaxInformation | None = None


class _Item(msgspec.Struct):
    OrderItemId: str
    QuantityOrdered: Quantity
    SellerSKU: str | None = None
    ASIN: str | None = None
    Title: str | None = None
    QuantityShipped: Quantity | None = None
    ItemPrice: _Money | None = None
    ItemTax: _Money | None = None
    ShippingPrice: _Money | None = None
    ShippingTax: _Money | None = None
    ShippingDiscount: _Money | None = None
    PromotionDiscount: _Money | None = None
    IsGift: str | None = None
    ConditionId: str | None = None
    IossNumber: str | None = None


class _Head(msgspec.Struct):
    """What can be learnt from an order before, or without, reading all of it."""

    AmazonOrderId: Any = None
    OrderStatus: Any = None
    LastUpdateDate: Any = None
    FulfillmentChannel: Any = None


_ORDER_DECODER: Final = msgspec.json.Decoder(_Order)
_ITEM_DECODER: Final = msgspec.json.Decoder(_Item)
_HEAD_DECODER: Final = msgspec.json.Decoder(_Head)


class AmazonConnector(HttpConnector):
    """One seller's Amazon account, through SP-API Orders v0, for its marketplaces."""

    # getOrders restores one request a minute: polling faster only drains its burst of 20.
    min_poll_interval: float | None = 60.0
    # The getOrders reference documents no order for its results.
    pages_sorted_by_update: bool = False

    def __init__(
        self,
        settings: AmazonSettings,
        *,
        name: str = "amazon",
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        items_max_rate: float = ITEMS_BURST,
        items_time_period: float = ITEMS_PERIOD,
    ) -> None:
        self.name = name
        self._settings = settings
        self._endpoint = settings.endpoint.strip().rstrip("/")
        self._http = HttpClient(
            "Amazon",
            secrets=lambda: (settings.client_secret, settings.refresh_token, self._token),
            session=session,
            timeout=timeout,
            # Without Retry-After, the rate Amazon states tells when a request is restored.
            retry_after_fallback=lambda headers: _restore_interval(
                headers.get("x-amzn-RateLimit-Limit")
            ),
        )
        self._clock = clock
        self._token: str | None = None
        self._token_expires_at: datetime | None = None
        self._token_lock = asyncio.Lock()
        self._listing_limiter = AsyncLimiter(LISTING_BURST, LISTING_PERIOD)
        # getOrderItems: burst 30, then 0.5 a second, shared by every call of this connector.
        self._items_limiter = AsyncLimiter(items_max_rate, items_time_period)
        self._order_limiter = AsyncLimiter(ITEMS_BURST, ITEMS_PERIOD)

    # -- the connector protocol ---------------------------------------------------------------

    async def fetch_orders(self, since: datetime | None) -> AsyncIterator[OrderPage]:
        """Yield the orders changed since `since`, one page per getOrders call."""
        now = self._clock()
        before = now - LISTING_DELAY
        after = since if since is not None else now - FIRST_PASS_LOOKBACK
        if utc(after) >= before:
            return  # nothing Amazon may be asked about yet
        marketplaces = ",".join(self._settings.marketplace_ids)
        channels = "MFN,AFN" if self._settings.import_afn else "MFN"
        first: dict[str, str] = {
            "MarketplaceIds": marketplaces,
            "LastUpdatedAfter": format_date(after),
            "LastUpdatedBefore": format_date(before),
            "FulfillmentChannels": channels,
            "MaxResultsPerPage": str(PAGE_SIZE),
        }
        seen: dict[str, datetime] = {}
        tokens: set[str] = set()
        params = first
        position = 0
        page_number = 1
        while True:
            op = f"getOrders page {page_number}"
            body = await self._call(
                "GET", ORDERS_PATH, op, params=params, limiter=self._listing_limiter
            )
            listing = self._http.decode(body, _OrdersAnswer, op).payload
            page = OrderPage(orders=[])
            for raw in listing.Orders:
                await self._read_into(page, position, bytes(raw), seen)
                position += 1
            yield page
            token = listing.NextToken
            if not token:
                return
            if token in tokens:
                raise Transient(f"Amazon {op}: the same NextToken came back twice")
            tokens.add(token)
            # With a NextToken Amazon wants the token alone, beside the required MarketplaceIds.
            params = {"MarketplaceIds": marketplaces, "NextToken": token}
            page_number += 1

    async def accept(self, reference: str) -> None:
        """Amazon has no acceptance step."""
        raise Rejected(NO_ACCEPTANCE)

    async def refuse(self, reference: str) -> None:
        """Amazon has no acceptance step."""
        raise Rejected(NO_ACCEPTANCE)

    async def ship(self, reference: str, shipment: ShipmentRequest) -> ShipmentReceipt:
        """Confirm a package (confirmShipment); an order Amazon shows shipped succeeds.

        confirmShipment requires carrierCode and trackingNumber and takes one package: without
        either it cannot be sent; of several tracking numbers the first is sent.
        """
        carrier = shipment.carrier.strip()
        if not carrier:
            raise Rejected("Amazon needs the carrier to confirm a shipment (carrierCode)")
        if not shipment.tracking_numbers:
            raise Rejected("Amazon needs a tracking number to confirm a shipment (trackingNumber)")
        tracking, *others = shipment.tracking_numbers
        lines = _requested_lines(shipment.items)
        receipt = ShipmentReceipt(
            carrier=carrier_code(carrier),
            tracking_numbers=(tracking,),
            not_forwarded=tuple(others),
            notes=("Amazon's confirmShipment takes one tracking number",) if others else (),
        )
        order = await self._read_order(reference, f"getOrder {reference} before confirmShipment")
        if order.OrderStatus in SHIPPED_STATUSES:
            return receipt  # shipped already, by us on an earlier try or by someone else
        if order.OrderStatus == "Canceled":
            raise Rejected(f"Amazon order {reference} is cancelled: it cannot be shipped")
        if order.OrderStatus in UNRELEASED_STATUSES:
            raise Rejected(f"Amazon order {reference} is {order.OrderStatus}: not paid yet")
        marketplace = order.MarketplaceId or self._only_marketplace()
        if marketplace is None:
            raise Rejected(f"Amazon order {reference} does not name its marketplace")
        if lines is None:
            lines = await self._unshipped_lines(reference)
            if not lines:
                return receipt  # every item shipped already
        code = receipt.carrier
        package: dict[str, Any] = {
            "packageReferenceId": package_reference(reference, tracking, lines),
            "carrierCode": code,
        }
        if code == "Other":
            package["carrierName"] = carrier
        package["trackingNumber"] = tracking
        package["shipDate"] = format_date(self._clock())
        package["orderItems"] = [{"orderItemId": i, "quantity": q} for i, q in lines]
        body = {"marketplaceId": marketplace, "packageDetail": package}
        path = f"{ORDERS_PATH}/{segment(reference)}/shipmentConfirmation"
        try:
            await self._call("POST", path, f"confirmShipment {reference}", body=body)
        except Rejected:
            # Amazon documents no "already shipped" error: after a refusal (or a repeat of a
            # confirmation whose answer was lost) only the order's status decides.
            again = await self._read_order(reference, f"getOrder {reference} after a refusal")
            if again.OrderStatus in SHIPPED_STATUSES:
                return receipt
            raise
        return receipt

    async def cancel(self, reference: str) -> None:
        """Orders v0 has no seller cancellation."""
        raise Rejected(NO_CANCELLATION)

    async def refund(self, reference: str, refund: RefundRequest) -> None:
        """Orders v0 has no refund call."""
        raise Rejected(NO_REFUND)

    async def deliver(self, reference: str) -> None:
        """Orders v0 has no delivery confirmation."""
        raise Rejected(NO_DELIVERY)

    async def order_status(self, reference: str) -> OrderStatus | None:
        """The order's status on Amazon now, or None while it is not paid."""
        order = await self._read_order(reference, f"getOrder {reference}")
        if order.OrderStatus in UNRELEASED_STATUSES:
            return None
        status = STATUS_BY_ORDER_STATUS.get(order.OrderStatus)
        if status is None:
            raise Rejected(f"Amazon order {reference} has an unknown status {order.OrderStatus!r}")
        return status

    # -- orders -------------------------------------------------------------------------------

    async def _read_into(
        self, page: OrderPage, index: int, raw: bytes, seen: dict[str, datetime]
    ) -> None:
        """Normalize one order of a page into `page`, or record why it was skipped."""
        head = _head(raw)
        reference = reference_or_position(head.AmazonOrderId, index)
        updated_at = parse_moment(head.LastUpdateDate)
        if head.OrderStatus in UNRELEASED_STATUSES:
            return
        if head.FulfillmentChannel == "AFN" and not self._settings.import_afn:
            return
        if updated_at is not None and not reference.startswith("#"):
            # Pages may repeat an order: only a newer version of it is read again.
            known = seen.get(reference)
            if known is not None and known >= updated_at:
                return
            seen[reference] = updated_at
        try:
            order = _decode_order(raw)
            _check_order(order)  # before spending a getOrderItems call on it
            items = await self._order_items(order.AmazonOrderId)
            page.orders.append(normalize_order(order, raw, items))
        except MalformedOrder as exc:
            page.skipped.append(SkippedOrder(reference, str(exc), updated_at))
        except Rejected as exc:
            page.skipped.append(SkippedOrder(reference, f"OrderItems: {exc.message}", updated_at))

    async def _order_items(self, reference: str) -> list[bytes]:
        """Every item of an order (getOrderItems, following NextToken), as Amazon wrote it."""
        path = f"{ORDERS_PATH}/{segment(reference)}/orderItems"
        items: list[bytes] = []
        params: dict[str, str] | None = None
        while True:
            op = f"getOrderItems {reference}"
            body = await self._call("GET", path, op, params=params, limiter=self._items_limiter)
            answer = self._http.decode(body, _ItemsAnswer, op).payload
            items.extend(bytes(item) for item in answer.OrderItems)
            if not answer.NextToken:
                return items
            params = {"NextToken": answer.NextToken}

    async def _unshipped_lines(self, reference: str) -> list[tuple[str, int]]:
        """Each item of the order with the quantity still to ship."""
        lines: list[tuple[str, int]] = []
        for position, raw in enumerate(await self._order_items(reference)):
            try:
                item = _decode_item(raw, position)
            except MalformedOrder as exc:
                raise Rejected(f"Amazon order {reference} has an unreadable item: {exc}") from None
            remaining = item.QuantityOrdered - (item.QuantityShipped or 0)
            if remaining > 0:
                lines.append((item.OrderItemId, remaining))
        return lines

    async def _read_order(self, reference: str, op: str) -> _OrderBrief:
        path = f"{ORDERS_PATH}/{segment(reference)}"
        body = await self._call("GET", path, op, limiter=self._order_limiter)
        return self._http.decode(body, _OrderAnswer, op).payload

    def _only_marketplace(self) -> str | None:
        ids = self._settings.marketplace_ids
        return ids[0] if len(ids) == 1 else None

    # -- Login with Amazon --------------------------------------------------------------------

    async def _access_token(self) -> str:
        """A valid access token: the cached one, or a new one from LWA."""
        async with self._token_lock:
            now = self._clock()
            if (
                self._token is not None
                and self._token_expires_at is not None
                and now < self._token_expires_at
            ):
                return self._token
            token = await self._new_token()
            self._token = token.access_token
            self._token_expires_at = now + timedelta(seconds=token.expires_in) - TOKEN_MARGIN
            return self._token

    def _forget_token(self, token: str) -> None:
        if self._token == token:
            self._token = None
            self._token_expires_at = None

    async def _new_token(self) -> _Token:
        settings = self._settings
        form = {
            "grant_type": "refresh_token",
            "refresh_token": settings.refresh_token,
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
        }
        op = "LWA token"
        headers = {"Accept": "application/json"}
        answer = await self._http.send(
            "POST", settings.token_url, op=op, headers=headers, form=form
        )
        status = answer.status
        if 200 <= status < 300:
            token = self._http.decode(answer.body, _Token, op)
            if not token.access_token or not math.isfinite(token.expires_in):
                raise Transient(f"Amazon {op}: unexpected answer (no usable access_token)")
            return token
        self._http.fail_common(answer, op)
        try:
            error = msgspec.json.decode(answer.body, type=_LwaError)
        except msgspec.MsgspecError:
            error = _LwaError()
        reason = error.error or f"HTTP {status}"
        if error.error_description:
            reason += f" ({error.error_description})"
        raise AuthFailed(f"Amazon LWA refused the credentials: {self._http.scrub(reason)}")

    # -- HTTP ---------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        op: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        limiter: AsyncLimiter | None = None,
    ) -> bytes:
        """Send one SP-API request and return the body of a 2xx answer; map every failure.

        A 403 (an expired or revoked access token) gets one new token and one more try.
        """
        url = build_url(self._endpoint, path, params)
        answer: Answer | None = None
        for attempt in (1, 2):
            token = await self._access_token()
            if limiter is not None:
                await limiter.acquire()
            headers = {
                "x-amz-access-token": token,
                "Accept": "application/json",
                "User-Agent": "sfd (Language=Python)",
            }
            answer = await self._http.send(method, url, op=op, headers=headers, body=body)
            if answer.status == 403 and attempt == 1:
                self._forget_token(token)
                continue
            break
        assert answer is not None
        if 200 <= answer.status < 300:
            return answer.body
        self._http.fail_common(answer, op)
        if answer.status in (401, 403):
            detail = _error_message(answer.body)
            suffix = f": {self._http.scrub(detail)}" if detail else ""
            raise AuthFailed(f"Amazon {op}: HTTP {answer.status}, access refused{suffix}")
        raise Rejected(self._http.rejection(answer, _error_message(answer.body)))


# -- reading orders -------------------------------------------------------------------------


def _head(raw: bytes) -> _Head:
    try:
        return _HEAD_DECODER.decode(raw)
    except msgspec.MsgspecError:
        return _Head()


def _decode_order(raw: bytes) -> _Order:
    try:
        return _ORDER_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise malformed(exc, lower_unlocated=True) from None
    except msgspec.DecodeError as exc:
        raise MalformedOrder("order", f"not JSON ({exc})") from None


def _decode_item(raw: bytes, position: int) -> _Item:
    prefix = f"OrderItems[{position}]"
    try:
        return _ITEM_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise malformed(exc, prefix, lower_unlocated=True) from None
    except msgspec.DecodeError as exc:
        raise MalformedOrder(prefix, f"not JSON ({exc})") from None


def _check_order(order: _Order) -> OrderStatus:
    """The sfd status of a released order; MalformedOrder for what typing let through."""
    status = STATUS_BY_ORDER_STATUS.get(order.OrderStatus)
    if status is None:
        raise MalformedOrder("OrderStatus", f"unknown status {order.OrderStatus!r}")
    if not order.AmazonOrderId.strip():
        raise MalformedOrder("AmazonOrderId", "empty")
    if order.OrderTotal is not None:
        finite(order.OrderTotal.Amount, "OrderTotal.Amount")
    return status


def normalize_order(order: _Order, raw: bytes, item_raws: list[bytes]) -> MarketplaceOrder:
    """One released Amazon order with its items, normalized; MalformedOrder names a bad field."""
    status = _check_order(order)
    lines = [_decode_item(item, n) for n, item in enumerate(item_raws)]
    items = tuple(_item(line, f"OrderItems[{n}]") for n, line in enumerate(lines))
    product_amount = sum((_amount(line.ItemPrice) for line in lines), Decimal(0))
    shipping_amount = sum((_amount(line.ShippingPrice) for line in lines), Decimal(0))
    total = order.OrderTotal.Amount if order.OrderTotal is not None else None
    if total is None:
        # Amazon drops OrderTotal from cancelled orders.
        total = product_amount + shipping_amount
    currency = _currency(order, lines)
    buyer = order.BuyerInfo or _BuyerInfo()
    shipping_address = _address(order.ShippingAddress, buyer.BuyerEmail or "")
    afn = order.FulfillmentChannel == "AFN"
    return MarketplaceOrder(
        reference=order.AmazonOrderId,
        status=status,
        created_at=utc(order.PurchaseDate),
        updated_at=utc(order.LastUpdateDate),
        currency=currency,
        product_amount=product_amount,
        shipping_amount=shipping_amount,
        total_amount=total,
        raw=b'{"order": ' + raw + b', "items": [' + b", ".join(item_raws) + b"]}",
        payment_method=order.PaymentMethod or "",
        shipping_method=order.ShipServiceLevel or "",
        latest_ship_date=utc(order.LatestShipDate) if order.LatestShipDate else None,
        fulfilled_by=FulfilledBy.CHANNEL if afn else FulfilledBy.STORE,
        billing_address=_billing_address(shipping_address, buyer),
        shipping_address=shipping_address,
        items=items,
        additional_fields=_order_fields(order, buyer),
    )


def _currency(order: _Order, lines: list[_Item]) -> str:
    if order.OrderTotal is not None and order.OrderTotal.CurrencyCode:
        return order.OrderTotal.CurrencyCode
    for line in lines:
        if line.ItemPrice is not None and line.ItemPrice.CurrencyCode:
            return line.ItemPrice.CurrencyCode
    currency = CURRENCY_BY_MARKETPLACE.get(order.MarketplaceId or "")
    if currency is None:
        raise MalformedOrder("OrderTotal.CurrencyCode", "missing")
    return currency


def _item(line: _Item, path: str) -> OrderItem:
    for name in ("ItemPrice", "ItemTax", "ShippingPrice", "ShippingTax", "ShippingDiscount"):
        money = getattr(line, name)
        if money is not None:
            finite(money.Amount, f"{path}.{name}.Amount")
    if line.PromotionDiscount is not None:
        finite(line.PromotionDiscount.Amount, f"{path}.PromotionDiscount.Amount")
    if not line.OrderItemId.strip():
        raise MalformedOrder(f"{path}.OrderItemId", "empty")
    if not (line.SellerSKU or "").strip():
        raise MalformedOrder(f"{path}.SellerSKU", "missing")
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {
        "asin": line.ASIN,
        "quantity_shipped": line.QuantityShipped,
        "shipping_price": _text(line.ShippingPrice),
        "shipping_tax": _text(line.ShippingTax),
        "shipping_discount": _text(line.ShippingDiscount),
        "promotion_discount": _text(line.PromotionDiscount),
        "is_gift": line.IsGift,
        "condition": line.ConditionId,
        "ioss_number": line.IossNumber,
    }
    fields.update((key, value) for key, value in extra.items() if value not in (None, ""))
    return OrderItem(
        reference=line.SellerSKU or "",
        channel_reference=line.OrderItemId,
        quantity=line.QuantityOrdered,
        price=unit_price(_amount(line.ItemPrice), line.QuantityOrdered),
        name=line.Title or "",
        tax_amount=_amount(line.ItemTax),
        additional_fields=fields,
    )


def unit_price(line_total: Decimal, quantity: int) -> Decimal:
    """The unit price of a line whose ItemPrice is the price of every unit together.

    A division that does not fall on the cent is rounded half up to the precision of the line
    total, and to cents at least (10.00 for 3 → 3.33).
    """
    if quantity <= 1:
        return line_total
    exponent = line_total.as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return (line_total / quantity).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)


def _amount(money: _Money | None) -> Decimal:
    if money is None or money.Amount is None:
        return Decimal(0)
    return money.Amount


def _text(money: _Money | None) -> str | None:
    return str(money.Amount) if money is not None and money.Amount is not None else None


def _address(found: _Address | None, email: str) -> Address:
    """Amazon's shipping address; restricted fields (name, street, phone) need an RDT and may be
    missing: what is there is kept. Amazon gives one name: it goes whole into last_name."""
    if found is None:
        return Address(email=email)
    return Address(
        last_name=found.Name or "",
        company=found.CompanyName or "",
        street=found.AddressLine1 or "",
        street2=found.AddressLine2 or "",
        other=found.AddressLine3 or "",
        postal_code=found.PostalCode or "",
        city=found.City or "",
        province=found.StateOrRegion or found.County or found.District or "",
        country=(found.CountryCode or "").strip().upper(),
        phone=found.Phone or "",
        email=email,
    )


def _billing_address(shipping: Address, buyer: _BuyerInfo) -> Address:
    """Orders v0 has no billing address: the shipping address, under the buyer's own name."""
    tax = buyer.BuyerTaxInfo
    return msgspec.structs.replace(
        shipping,
        last_name=buyer.BuyerName or shipping.last_name,
        company=(tax.CompanyLegalName if tax is not None else None) or shipping.company,
    )


def _order_fields(order: _Order, buyer: _BuyerInfo) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "marketplace_id": order.MarketplaceId,
        "sales_channel": order.SalesChannel,
        "order_status": order.OrderStatus,
        "fulfillment_channel": order.FulfillmentChannel,
        "order_type": order.OrderType,
        "seller_order_id": order.SellerOrderId,
        "ship_service_level": order.ShipServiceLevel,
        "shipment_service_level_category": order.ShipmentServiceLevelCategory,
        "earliest_ship_date": to_api(order.EarliestShipDate) if order.EarliestShipDate else None,
        "earliest_delivery_date": (
            to_api(order.EarliestDeliveryDate) if order.EarliestDeliveryDate else None
        ),
        "latest_delivery_date": (
            to_api(order.LatestDeliveryDate) if order.LatestDeliveryDate else None
        ),
        "payment_method_details": order.PaymentMethodDetails or None,
        "is_business_order": order.IsBusinessOrder,
        "is_prime": order.IsPrime,
        "is_premium_order": order.IsPremiumOrder,
        "is_replacement_order": order.IsReplacementOrder,
        "replaced_order_id": order.ReplacedOrderId,
        "is_ispu": order.IsISPU,
        "is_access_point_order": order.IsAccessPointOrder,
        "purchase_order_number": buyer.PurchaseOrderNumber,
    }
    tax = buyer.BuyerTaxInfo
    if tax is not None:
        fields["company_legal_name"] = tax.CompanyLegalName
        fields["taxing_region"] = tax.TaxingRegion
        classifications = {
            c.Name: c.Value for c in tax.TaxClassifications or () if c.Name and c.Value
        }
        if classifications:
            fields["tax_classifications"] = classifications
            vat = [value for name, value in classifications.items() if "vat" in name.casefold()]
            fields["vat_number"] = vat[0] if vat else next(iter(classifications.values()))
    turkish = order.BuyerTaxInformation
    if turkish is not None:
        fields.setdefault("company_legal_name", turkish.BuyerLegalCompanyName)
        if turkish.BuyerTaxRegistrationId:
            fields["vat_number"] = turkish.BuyerTaxRegistrationId
    return {key: value for key, value in fields.items() if value not in (None, "")}


# -- shipments ------------------------------------------------------------------------------


def _requested_lines(items: dict[str, int] | None) -> list[tuple[str, int]] | None:
    if items is None:
        return None
    if not items:
        raise Rejected("a partial shipment needs at least one item")
    lines: list[tuple[str, int]] = []
    for item_id, quantity in items.items():
        if not item_id.strip():
            raise Rejected("a partial shipment names an item without its OrderItemId")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
            raise Rejected(f"item {item_id}: a quantity to ship must be a positive whole number")
        lines.append((item_id, quantity))
    return lines


def _carrier_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.casefold())


_CARRIER_BY_KEY: Final = {_carrier_key(code): code for code in CARRIER_CODES}


def carrier_code(carrier: str) -> str:
    """Amazon's code for `carrier` (matched ignoring case, spaces and punctuation), or "Other"."""
    return _CARRIER_BY_KEY.get(_carrier_key(carrier), "Other")


def package_reference(reference: str, tracking: str, lines: list[tuple[str, int]]) -> str:
    """A positive number naming this package within its order, the same on every retry.

    Amazon wants a positive numeric packageReferenceId, unique within the order: several partial
    shipments of one order must not share one.
    """
    key = "\n".join([reference, tracking, *(f"{i}\t{q}" for i, q in sorted(lines))])
    digest = hashlib.sha256(key.encode()).digest()
    return str(int.from_bytes(digest[:4], "big") % 999_999_999 + 1)


# -- wire helpers ---------------------------------------------------------------------------


def format_date(moment: datetime) -> str:
    """A time as SP-API reads it: UTC, whole seconds, `Z` (2026-11-29T10:00:00Z).

    Seconds are cut, never rounded up, so no change is ever missed.
    """
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_url(endpoint: str, path: str, params: Mapping[str, str] | None = None) -> URL:
    """The URL of a call, each query value percent-encoded in full.

    A NextToken holds `+`, `/` and `=`: a `+` left bare would read as a space.
    """
    url = endpoint + path
    if params:
        url += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    return URL(url, encoded=True)


def _restore_interval(limit: str | None) -> float | None:
    """x-amzn-RateLimit-Limit (requests per second) as the seconds one request takes back."""
    if limit is None:
        return None
    try:
        rate = float(limit.strip())
    except ValueError:
        return None
    if not math.isfinite(rate) or rate <= 0:
        return None
    return round(1 / rate, 3)


def _error_message(body: bytes) -> str | None:
    """SP-API's own error (`{"errors": [{"code": ..., "message": ...}]}`) as `message (code)`."""
    try:
        data = msgspec.json.decode(body, type=_Errors)
    except msgspec.MsgspecError:
        return None
    texts: list[str] = []
    for error in data.errors or ():
        message = (error.message or "").strip()
        code = (error.code or "").strip()
        if message and code:
            texts.append(f"{message} ({code})")
        elif message or code:
            texts.append(message or code)
    return "; ".join(texts) if texts else None


if TYPE_CHECKING:
    _conforms: type[MarketplaceConnector] = AmazonConnector
