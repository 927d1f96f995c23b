"""Amazon's Selling Partner API: Orders v2026-01-01 to read orders, v0 to confirm shipments.

One `searchOrders` call brings a page of up to 100 orders with their items, buyer, recipient,
proceeds, fulfilment, packages and tax data (`includedData`): no call per order. Personal data
follows the application's roles (no Restricted Data Token); an order whose address Amazon
withheld is stored as it came, and flagged. `getOrder` answers the confirmation reads and the
"already shipped" check. `confirmShipment` stays on Orders v0, which Amazon has not deprecated.

Calls carry a Login with Amazon (LWA) access token in `x-amz-access-token`, traded for the seller's
refresh token and cached for its hour of life; SP-API stopped requiring AWS SigV4 signatures in
2023. Amounts arrive as decimal strings and stay exact Decimals.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, Final, Unpack
from urllib.parse import quote

import anyio
import msgspec
from aiolimiter import AsyncLimiter
from yarl import URL

from sfd.connectors import amazon_feeds as feeds
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
from sfd.connectors.http import (
    Answer,
    ConnectorOptions,
    MarketplaceHttp,
    segment,
    unless_done,
)
from sfd.connectors.oauth import RefreshTokenGrant, oauth_error
from sfd.connectors.parsing import (
    MalformedOrder,
    Quantity,
    finite,
    format_date,
    head,
    malformed,
    parse_moment,
    reference_or_position,
    requested_lines,
    utc,
)
from sfd.connectors.settings import AmazonSettings
from sfd.domain import (
    MISSING_PERSONAL_DATA,
    Address,
    FulfilledBy,
    MarketplaceOrder,
    OrderItem,
    OrderStatus,
    Shipment,
)
from sfd.domain.carriers import CarrierMatch, MarketplaceCarrier, match_carrier
from sfd.domain.clock import to_api
from sfd.domain.documents import Document

if TYPE_CHECKING:
    from sfd.connectors.base import MarketplaceConnector

#: searchOrders; getOrder is ORDERS_PATH/{orderId}.
ORDERS_PATH: Final = "/orders/2026-01-01/orders"
#: confirmShipment is on Orders v0 (not deprecated): V0_ORDERS_PATH/{orderId}/shipmentConfirmation.
V0_ORDERS_PATH: Final = "/orders/v0/orders"
#: searchOrders serves at most 100 orders a page (maxResultsPerPage 1-100).
PAGE_SIZE: Final = 100
#: The datasets a page brings with each order: everything the order's mapping reads.
INCLUDED_DATA: Final = ("BUYER", "RECIPIENT", "FULFILLMENT", "PROCEEDS", "PACKAGES", "TAX")
#: getOrder for a status or a shipment needs the fulfilment (status, quantities shipped) only.
ORDER_CHECK_DATA: Final = ("FULFILLMENT",)
#: lastUpdatedBefore must be at least two minutes before Amazon's now: ten seconds more keep a
#: clock running slightly ahead of Amazon's from an InvalidInput on every poll.
LISTING_DELAY: Final = timedelta(minutes=2, seconds=10)
#: How far back the first pass looks, when there is no cursor yet.
FIRST_PASS_LOOKBACK: Final = timedelta(days=30)

# The usage plans of the Orders v2026-01-01 model, as leaky buckets. AsyncLimiter(max_rate,
# period) holds at most `max_rate` acquisitions (the burst) and drains `max_rate / period` per
# second (the restore rate), so a burst B with a rate of R per second is AsyncLimiter(B, B / R).
#: searchOrders: 0.0056 requests per second (one every three minutes), burst 20.
SEARCH_RATE: Final = 0.0056
SEARCH_BURST: Final = 20
#: getOrder: 0.5 requests per second, burst 30.
ORDER_RATE: Final = 0.5
ORDER_BURST: Final = 30
#: confirmShipment (Orders v0): 2 requests per second, burst 10.
CONFIRM_RATE: Final = 2.0
CONFIRM_BURST: Final = 10
#: The Feeds API 2021-06-30's plans (invoices): createFeedDocument 0.5/s burst 15, createFeed
#: 0.0083/s burst 15, getFeed 2/s burst 15, getFeedDocument 0.0222/s burst 10.
FEED_DOCUMENT_PLAN: Final = (15, 0.5)
CREATE_FEED_PLAN: Final = (15, 0.0083)
GET_FEED_PLAN: Final = (15, 2.0)
GET_FEED_DOCUMENT_PLAN: Final = (10, 0.0222)

#: Fulfilment statuses of orders not paid yet: not imported.
UNRELEASED_STATUSES: Final = frozenset({"PENDING", "PENDING_AVAILABILITY"})
#: Fulfilment statuses of orders whose every item has shipped.
SHIPPED_STATUSES: Final = frozenset({"SHIPPED"})
#: Amazon fulfilment status → sfd status, for released orders.
STATUS_BY_FULFILLMENT: Final[Mapping[str, OrderStatus]] = {
    "UNSHIPPED": OrderStatus.WAITING_SHIPMENT,
    "PARTIALLY_SHIPPED": OrderStatus.PARTIALLY_SHIPPED,
    "SHIPPED": OrderStatus.SHIPPED,
    "CANCELLED": OrderStatus.CANCELLED,
    # Amazon will never fulfil it (Multi-Channel Fulfillment orders only): as final as a
    # cancellation, and an order imported earlier must close rather than wait forever.
    "UNFULFILLABLE": OrderStatus.CANCELLED,
}
#: Statuses in which Amazon shows a merchant-fulfilled order's address to an application with
#: the Direct-to-Consumer Shipping role: without it there, the role is missing.
ADDRESS_STATUSES: Final = frozenset({"UNSHIPPED", "PARTIALLY_SHIPPED"})
#: What the order page and `sfd orders show` say of an order Amazon sent without its address.
MISSING_ADDRESS: Final = (
    "Amazon sent this order without the buyer's name, street, postcode or phone: the "
    "application lacks the Direct-to-Consumer Shipping (Restricted) role. Add the role to the "
    "app in Seller Central (Develop Apps) and re-authorise it; the next change Amazon makes to "
    "the order brings the address"
)

# Amazon's carrier codes: the CarrierCode values of confirmShipment (Amazon's carrier code list,
# the same as the feeds' amzn-base.xsd CarrierCode), the European carriers included. A code is
# sent exactly as written here; any other carrier goes as "Other" with its name (carrierName).
#: Amazon's code → the common carrier it is (sfd.domain.carriers), where it is one.
CARRIER_TABLE: Final[Mapping[str, str | None]] = {
    # Europe
    "Colissimo": "colissimo", "Chronopost": "chronopost", "Mondial Relay": "mondial_relay",
    "Relais Colis": "relais_colis", "Colis Prive": "colis_prive", "La Poste": "la_poste",
    "DPD": "dpd", "GLS": "gls", "DHL": "dhl", "DHL Express": "dhl", "DHL eCommerce": "dhl",
    "Deutsche Post": "deutsche_post", "Hermes": None, "Hermes Logistik Gruppe": None,
    "PostNL": "postnl", "Bpost": "bpost", "Poste Italiane": "poste_italiane", "SDA": None,
    "BRT": None, "Correos": "correos", "Correos Express": None, "SEUR": None, "Nacex": None,
    "TNT": "tnt", "Royal Mail": "royal_mail", "Parcelforce": None, "Yodel": None, "Evri": None,
    "Asendia": None, "GEODIS": None, "Fastway": None, "City Link": None, "Parcelnet": None,
    # Worldwide
    "UPS": "ups", "UPSMI": None, "UPS Mail Innovations": None, "FedEx": "fedex",
    "FedEx SmartPost": None, "USPS": None, "DHL Global Mail": None, "OnTrac": None,
    "Lasership": None, "Newgistics": None, "Streamlite": None, "OSM": None, "Canada Post": None,
    "Blue Package": None, "Target": None, "Smartmail": None, "Overnite Express": None,
    "GO!": None, "SagawaExpress": None, "NipponExpress": None, "YamatoTransport": None,
    "FEDEX_JP": None, "JP_EXPRESS": None, "NITTSU": None, "SAGAWA": None, "YAMATO": None,
    "BlueDart": None, "AFL/Fedex": None, "Aramex": None, "India Post": None,
    "Professional": None, "DTDC": None, "First Flight": None, "Delhivery": None,
    "Other": None,
}  # fmt: skip
#: The carriers confirmShipment takes, as sfd.domain.carriers matches them.
CARRIERS: Final = tuple(
    MarketplaceCarrier(code, code, carrier) for code, carrier in CARRIER_TABLE.items()
)
#: The code for a carrier Amazon does not list; carrierName then carries its name.
OTHER_CARRIER: Final = "Other"

#: The currency of each marketplace, for an order Amazon sends without any amount (cancelled).
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
    "Amazon's Orders API has no refund call; refunds go through Seller Central or the Feeds API"
)
NO_DELIVERY: Final = (
    "Amazon's Orders API has no delivery confirmation: Amazon learns of the delivery from the "
    "carrier's tracking"
)
NO_CANCELLATION: Final = (
    "Amazon's Orders API has no seller cancellation: cancel the order in Seller Central "
    "(or with an order acknowledgement feed)"
)


# -- wire shapes --------------------------------------------------------------------------------
#
# Field names are Amazon's own (camelCase), so msgspec reports a bad field by its wire name.


class _Pagination(msgspec.Struct):
    nextToken: str | None = None


class _SearchAnswer(msgspec.Struct):
    orders: list[msgspec.Raw]
    pagination: _Pagination | None = None


class _Money(msgspec.Struct):
    amount: Decimal
    currencyCode: str


class _Window(msgspec.Struct):
    earliestDateTime: datetime | None = None
    latestDateTime: datetime | None = None


class _Fulfillment(msgspec.Struct):
    fulfillmentStatus: str
    fulfilledBy: str | None = None
    fulfillmentServiceLevel: str | None = None
    shipByWindow: _Window | None = None
    deliverByWindow: _Window | None = None


class _SalesChannel(msgspec.Struct):
    channelName: str
    marketplaceId: str | None = None
    marketplaceName: str | None = None


class _CheckItemFulfillment(msgspec.Struct):
    quantityFulfilled: Quantity | None = None
    quantityUnfulfilled: Quantity | None = None


class _CheckItem(msgspec.Struct):
    orderItemId: str
    quantityOrdered: Quantity
    fulfillment: _CheckItemFulfillment | None = None


class _OrderCheck(msgspec.Struct):
    """What ship and order_status need of one order (getOrder with FULFILLMENT)."""

    orderId: str
    salesChannel: _SalesChannel
    orderItems: list[_CheckItem]
    fulfillment: _Fulfillment | None = None


class _OrderCheckAnswer(msgspec.Struct):
    order: _OrderCheck


class _Error(msgspec.Struct):
    code: str | None = None
    message: str | None = None
    details: str | None = None


class _Errors(msgspec.Struct):
    errors: list[_Error] | None = None


class _Alias(msgspec.Struct):
    aliasId: str
    aliasType: str


class _Associated(msgspec.Struct):
    orderId: str | None = None
    associationType: str | None = None


class _Buyer(msgspec.Struct):
    buyerName: str | None = None
    buyerEmail: str | None = None
    buyerCompanyName: str | None = None
    buyerPurchaseOrderNumber: str | None = None


class _CustomerAddress(msgspec.Struct):
    name: str | None = None
    companyName: str | None = None
    addressLine1: str | None = None
    addressLine2: str | None = None
    addressLine3: str | None = None
    city: str | None = None
    districtOrCounty: str | None = None
    stateOrRegion: str | None = None
    municipality: str | None = None
    postalCode: str | None = None
    countryCode: str | None = None
    phone: str | None = None
    addressType: str | None = None


class _DeliveryPreference(msgspec.Struct):
    dropOffLocation: str | None = None
    addressInstruction: str | None = None
    deliveryCapabilities: list[str] | None = None


class _Recipient(msgspec.Struct):
    deliveryAddress: _CustomerAddress | None = None
    deliveryPreference: _DeliveryPreference | None = None


class _Breakdown(msgspec.Struct):
    type: str
    subtotal: _Money


class _OrderProceeds(msgspec.Struct):
    grandTotal: _Money | None = None
    breakdowns: list[_Breakdown] | None = None


class _TaxRegistration(msgspec.Struct):
    entityType: str | None = None
    legalName: str | None = None
    taxRegistrationType: str | None = None
    taxRegistrationNumber: str | None = None


class _TaxInvoicing(msgspec.Struct):
    buyerInvoicePreference: str | None = None


class _OrderTax(msgspec.Struct):
    taxRegistrations: list[_TaxRegistration] | None = None
    taxInvoicing: _TaxInvoicing | None = None


class _Condition(msgspec.Struct):
    conditionType: str | None = None
    conditionSubtype: str | None = None


class _ItemPrice(msgspec.Struct):
    unitPrice: _Money | None = None
    priceDesignation: str | None = None


class _Product(msgspec.Struct):
    asin: str | None = None
    title: str | None = None
    sellerSku: str | None = None
    condition: _Condition | None = None
    price: _ItemPrice | None = None


class _DetailedBreakdown(msgspec.Struct):
    subtype: str | None = None
    value: _Money | None = None


class _ItemBreakdown(msgspec.Struct):
    type: str
    subtotal: _Money
    detailedBreakdowns: list[_DetailedBreakdown] | None = None


class _ItemProceeds(msgspec.Struct):
    proceedsTotal: _Money | None = None
    breakdowns: list[_ItemBreakdown] | None = None


class _GiftOption(msgspec.Struct):
    giftWrapLevel: str | None = None


class _Packing(msgspec.Struct):
    giftOption: _GiftOption | None = None


class _International(msgspec.Struct):
    iossNumber: str | None = None


class _ItemShipping(msgspec.Struct):
    internationalShipping: _International | None = None


class _ItemFulfillment(msgspec.Struct):
    quantityFulfilled: Quantity | None = None
    quantityUnfulfilled: Quantity | None = None
    packing: _Packing | None = None
    shipping: _ItemShipping | None = None


class _Item(msgspec.Struct):
    orderItemId: str
    quantityOrdered: Quantity
    product: _Product
    proceeds: _ItemProceeds | None = None
    fulfillment: _ItemFulfillment | None = None


class _PackageStatus(msgspec.Struct):
    status: str


class _PackageItem(msgspec.Struct):
    orderItemId: str
    quantity: Quantity


class _Package(msgspec.Struct):
    packageReferenceId: str
    createdTime: datetime | None = None
    shipTime: datetime | None = None
    packageStatus: _PackageStatus | None = None
    carrier: str | None = None
    shippingService: str | None = None
    trackingNumber: str | None = None
    packageItems: list[_PackageItem] | None = None


class _Order(msgspec.Struct):
    orderId: str
    createdTime: datetime
    lastUpdatedTime: datetime
    salesChannel: _SalesChannel
    orderItems: list[_Item]
    fulfillment: _Fulfillment
    orderAliases: list[_Alias] | None = None
    programs: list[str] | None = None
    associatedOrders: list[_Associated] | None = None
    buyer: _Buyer | None = None
    recipient: _Recipient | None = None
    proceeds: _OrderProceeds | None = None
    tax: _OrderTax | None = None
    packages: list[_Package] | None = None


class _Head(msgspec.Struct):
    """What can be learnt from an order before, or without, reading all of it."""

    orderId: Any = None
    lastUpdatedTime: Any = None
    fulfillment: Any = None


_ORDER_DECODER: Final = msgspec.json.Decoder(_Order)
_HEAD_DECODER: Final = msgspec.json.Decoder(_Head)


class AmazonConnector(MarketplaceHttp[AmazonSettings]):
    """One seller's Amazon account, through SP-API Orders v2026-01-01, for its marketplaces.

    The searchOrders model documents no order for its results (pages not sorted by update).
    """

    label = "Amazon"
    default_name = "amazon"
    # searchOrders restores one request every three minutes: polling faster drains its burst.
    min_poll_interval: float | None = 180.0

    def __init__(
        self,
        settings: AmazonSettings,
        *,
        feed_poll: float = 30.0,
        feed_wait: float = 1800.0,
        **options: Unpack[ConnectorOptions],
    ) -> None:
        #: How often, and how long, an invoice feed's processing is awaited (seconds).
        self.feed_poll = feed_poll
        self.feed_wait = feed_wait
        super().__init__(settings, **options)

    def _open(self) -> None:
        settings = self._settings
        self._endpoint = settings.endpoint.strip().rstrip("/")
        self._lwa = RefreshTokenGrant(
            self._http,
            settings.token_url,
            op="LWA token",
            form={
                "grant_type": "refresh_token",
                "refresh_token": settings.refresh_token,
                "client_id": settings.client_id,
                "client_secret": settings.client_secret,
            },
            headers={"Accept": "application/json"},
            refused=self._lwa_refused,
            empty="Amazon LWA token: unexpected answer (no usable access_token)",
            clock=self._clock,
        )
        # One bucket per operation, shared by every call of this connector.
        self._search_limiter = _bucket(SEARCH_BURST, SEARCH_RATE)
        self._order_limiter = _bucket(ORDER_BURST, ORDER_RATE)
        self._confirm_limiter = _bucket(CONFIRM_BURST, CONFIRM_RATE)
        self._feed_document_limiter = _bucket(*FEED_DOCUMENT_PLAN)
        self._create_feed_limiter = _bucket(*CREATE_FEED_PLAN)
        self._get_feed_limiter = _bucket(*GET_FEED_PLAN)
        self._get_feed_document_limiter = _bucket(*GET_FEED_DOCUMENT_PLAN)

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._settings.client_secret, self._settings.refresh_token, self._lwa.current)

    def _service_error(self, body: bytes) -> str | None:
        return _error_message(body)

    # -- the connector protocol ---------------------------------------------------------------

    async def fetch_orders(self, since: datetime | None) -> AsyncIterator[OrderPage]:
        """Yield the orders changed since `since`, one page per searchOrders call.

        A pagination token lives 24 hours: one Amazon refuses sends the pass back to its first
        page, from the same cursor, once; orders already yielded are not yielded again.
        """
        now = self._clock()
        before = now - LISTING_DELAY
        after = since if since is not None else now - FIRST_PASS_LOOKBACK
        if utc(after) >= before:
            return  # nothing Amazon may be asked about yet
        first = self._search_params(after, before)
        seen: dict[str, datetime] = {}
        tokens: set[str] = set()
        token: str | None = None
        restarted = False
        position = 0
        page_number = 1
        while True:
            op = f"searchOrders page {page_number}"
            params = first if token is None else {**first, "paginationToken": token}
            answer = await self._call_answer(
                "GET", ORDERS_PATH, op, self._search_limiter, params=params
            )
            if token is not None and answer.status == 400 and not restarted:
                # The token expired (24 h) or Amazon no longer knows it: start the pass again.
                restarted = True
                token = None
                page_number = 1
                continue
            body = self._checked(answer, op)
            listing = self._http.decode(body, _SearchAnswer, op)
            page = OrderPage(orders=[])
            for raw in listing.orders:
                self._read_into(page, position, bytes(raw), seen)
                position += 1
            yield page
            token = listing.pagination.nextToken if listing.pagination else None
            if not token:
                return
            if token in tokens:
                raise Transient(f"Amazon {op}: the same nextToken came back twice")
            tokens.add(token)
            page_number += 1

    def _search_params(self, after: datetime, before: datetime) -> dict[str, str]:
        """searchOrders' query: arrays comma-separated (the model's default `csv` format)."""
        params = {
            "lastUpdatedAfter": format_date(after),
            "lastUpdatedBefore": format_date(before),
            "marketplaceIds": ",".join(self._settings.marketplace_ids),
        }
        if not self._settings.import_afn:
            params["fulfilledBy"] = "MERCHANT"
        params["maxResultsPerPage"] = str(PAGE_SIZE)
        params["includedData"] = ",".join(INCLUDED_DATA)
        return params

    async def accept(self, reference: str) -> None:
        """Amazon has no acceptance step."""
        raise Rejected(NO_ACCEPTANCE)

    async def refuse(self, reference: str) -> None:
        """Amazon has no acceptance step."""
        raise Rejected(NO_ACCEPTANCE)

    async def ship(self, reference: str, shipment: ShipmentRequest) -> ShipmentReceipt:
        """Confirm a package (v0 confirmShipment); an order Amazon shows shipped succeeds.

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
        matched = match_carrier(carrier, CARRIERS, shipment.carriers)
        notes = ["Amazon's confirmShipment takes one tracking number"] if others else []
        if matched.code is None:
            notes.append(f'carrier "{carrier}" has no Amazon code: sent as Other with its name')
        receipt = ShipmentReceipt(
            carrier=matched.code or OTHER_CARRIER,
            tracking_numbers=(tracking,),
            not_forwarded=tuple(others),
            notes=tuple(notes),
            carrier_match=matched,
        )
        order = await self._read_order(reference, f"getOrder {reference} before confirmShipment")
        status = _check_status(order)
        if status in SHIPPED_STATUSES:
            return receipt  # shipped already, by us on an earlier try or by someone else
        if status in ("CANCELLED", "UNFULFILLABLE"):
            raise Rejected(f"Amazon order {reference} is cancelled: it cannot be shipped")
        if status in UNRELEASED_STATUSES:
            raise Rejected(f"Amazon order {reference} is {status}: not paid yet")
        marketplace = order.salesChannel.marketplaceId or self._only_marketplace()
        if marketplace is None:
            raise Rejected(f"Amazon order {reference} does not name its marketplace")
        if lines is None:
            lines = _unshipped_lines(order)
            if not lines:
                return receipt  # every item shipped already
        body = confirmation_body(marketplace, reference, matched, tracking, lines, self._clock())
        path = f"{V0_ORDERS_PATH}/{segment(reference)}/shipmentConfirmation"
        op = f"confirmShipment {reference}"

        async def shipped() -> bool:
            again = await self._read_order(reference, f"getOrder {reference} after a refusal")
            return _check_status(again) in SHIPPED_STATUSES

        send = self._call("POST", path, op, self._confirm_limiter, body=body)
        await unless_done(send, shipped)
        return receipt

    async def cancel(self, reference: str) -> None:
        """The Orders API has no seller cancellation."""
        raise Rejected(NO_CANCELLATION)

    async def refund(self, reference: str, refund: RefundRequest) -> None:
        """The Orders API has no refund call."""
        raise Rejected(NO_REFUND)

    async def deliver(self, reference: str) -> None:
        """The Orders API has no delivery confirmation."""
        raise Rejected(NO_DELIVERY)

    async def carrier_catalogue(self) -> list[MarketplaceCarrier]:
        """The carrier codes confirmShipment takes (Amazon's documented list: no call)."""
        return list(CARRIERS)

    async def upload_document(self, reference: str, document: Document) -> None:
        """Send an invoice as an UPLOAD_VAT_INVOICE feed; its processing report confirms it.

        createFeedDocument, the file to the presigned URL, createFeed with the order id,
        invoice number and document type; then getFeed until DONE, and the report's errors
        refuse it."""
        marketplace = (
            self._only_marketplace()
            or (
                await self._read_order(reference, f"getOrder {reference} before an invoice")
            ).salesChannel.marketplaceId
        )
        if not marketplace:
            raise Rejected(f"Amazon order {reference} names no marketplace for its invoice")
        op = f"createFeedDocument for the invoice of {reference}"
        body = await self._call(
            "POST", f"{feeds.FEEDS_PATH}/documents", op, self._feed_document_limiter,
            body={"contentType": document.content_type},
        )  # fmt: skip
        target = self._http.decode(body, feeds.FeedDocumentAnswer, op)
        op = f"upload of the invoice of {reference}"
        answer = await self._http.send(
            "PUT", URL(target.url, encoded=True), op=op,
            headers={"Content-Type": document.content_type}, form=document.content,
        )  # fmt: skip
        if not 200 <= answer.status < 300:
            self._http.fail_common(answer, op)
            raise Rejected(self._http.rejection(answer, None, op=op))
        op = f"createFeed UPLOAD_VAT_INVOICE for {reference}"
        spec = feeds.vat_invoice_feed(
            reference, marketplace, target.feedDocumentId, feeds.invoice_number(document)
        )
        body = await self._call(
            "POST", f"{feeds.FEEDS_PATH}/feeds", op, self._create_feed_limiter, body=spec
        )
        feed_id = self._http.decode(body, feeds.FeedAnswer, op).feedId
        await self._feed_result(reference, feed_id)

    async def _feed_result(self, reference: str, feed_id: str) -> None:
        """Wait for the feed to be processed, and refuse what its report refuses."""
        op = f"getFeed {feed_id} (invoice of {reference})"
        waited = 0.0
        while True:
            path = f"{feeds.FEEDS_PATH}/feeds/{segment(feed_id)}"
            body = await self._call("GET", path, op, self._get_feed_limiter)
            feed = self._http.decode(body, feeds.Feed, op)
            if feed.processingStatus == feeds.DONE:
                break
            if feed.processingStatus in feeds.FAILED_STATES:
                raise Rejected(
                    f"Amazon {op}: the feed ended {feed.processingStatus}; "
                    "the invoice was not taken"
                )
            if waited >= self.feed_wait:
                raise Transient(f"Amazon {op}: still {feed.processingStatus} after {waited:g} s")
            await anyio.sleep(self.feed_poll)
            waited += self.feed_poll
        if feed.resultFeedDocumentId is None:
            return
        op = f"getFeedDocument {feed.resultFeedDocumentId} (report for {reference})"
        path = f"{feeds.FEEDS_PATH}/documents/{segment(feed.resultFeedDocumentId)}"
        body = await self._call("GET", path, op, self._get_feed_document_limiter)
        report = self._http.decode(body, feeds.FeedDocumentAnswer, op)
        answer = await self._http.send("GET", URL(report.url, encoded=True), op=op, headers={})
        if not 200 <= answer.status < 300:
            self._http.fail_common(answer, op)
            raise Rejected(self._http.rejection(answer, None, op=op))
        try:
            errors = feeds.report_errors(answer.body, report.compressionAlgorithm)
        except (ValueError, OSError, msgspec.DecodeError) as exc:
            raise Transient(f"Amazon {op}: unreadable processing report ({exc})") from None
        if errors:
            raise Rejected(f"Amazon refused the invoice of {reference}: " + "; ".join(errors))

    async def order_status(self, reference: str) -> OrderStatus | None:
        """The order's status on Amazon now (getOrder), or None while it is not paid."""
        status = _check_status(await self._read_order(reference, f"getOrder {reference}"))
        if status in UNRELEASED_STATUSES:
            return None
        found = STATUS_BY_FULFILLMENT.get(status)
        if found is None:
            raise Rejected(f"Amazon order {reference} has an unknown status {status!r}")
        return found

    # -- orders -------------------------------------------------------------------------------

    def _read_into(
        self, page: OrderPage, index: int, raw: bytes, seen: dict[str, datetime]
    ) -> None:
        """Normalize one order of a page into `page`, or record why it was skipped."""
        found = head(_HEAD_DECODER, raw) or _Head()
        reference = reference_or_position(found.orderId, index)
        updated_at = parse_moment(found.lastUpdatedTime)
        fulfillment = found.fulfillment if isinstance(found.fulfillment, dict) else {}
        if fulfillment.get("fulfillmentStatus") in UNRELEASED_STATUSES:
            return
        if fulfillment.get("fulfilledBy") == "AMAZON" and not self._settings.import_afn:
            return
        if updated_at is not None and not reference.startswith("#"):
            # Pages (and a pass started again) may repeat an order: only a newer version counts.
            known = seen.get(reference)
            if known is not None and known >= updated_at:
                return
            seen[reference] = updated_at
        try:
            page.orders.append(normalize_order(_decode_order(raw), raw))
        except MalformedOrder as exc:
            page.skipped.append(SkippedOrder(reference, str(exc), updated_at))

    async def _read_order(self, reference: str, op: str) -> _OrderCheck:
        path = f"{ORDERS_PATH}/{segment(reference)}"
        params = {"includedData": ",".join(ORDER_CHECK_DATA)}
        body = await self._call("GET", path, op, self._order_limiter, params=params)
        return self._http.decode(body, _OrderCheckAnswer, op).order

    def _only_marketplace(self) -> str | None:
        ids = self._settings.marketplace_ids
        return ids[0] if len(ids) == 1 else None

    # -- Login with Amazon --------------------------------------------------------------------

    def _lwa_refused(self, answer: Answer) -> AuthFailed:
        error, description = oauth_error(answer.body)
        reason = error or f"HTTP {answer.status}"
        if description:
            reason += f" ({description})"
        return AuthFailed(f"Amazon LWA refused the credentials: {self._http.scrub(reason)}")

    # -- HTTP ---------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        op: str,
        limiter: AsyncLimiter,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> bytes:
        """Send one SP-API request and return the body of a 2xx answer; map every failure."""
        answer = await self._call_answer(method, path, op, limiter, params=params, body=body)
        return self._checked(answer, op)

    async def _call_answer(
        self,
        method: str,
        path: str,
        op: str,
        limiter: AsyncLimiter,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Answer:
        """Send one SP-API request through its operation's bucket (`limiter`) and return the
        answer; a 429 raises.

        A 403 (an expired or revoked access token) gets one new token and one more try. The
        rate Amazon states in `x-amzn-RateLimit-Limit` retunes the operation's bucket.
        """
        url = build_url(self._endpoint, path, params)
        answer = await self._lwa.send(
            method,
            url,
            op=op,
            headers=_api_headers,
            refused_with=403,
            body=body,
            before=limiter.acquire,
        )
        stated = _rate(answer.headers.get("x-amzn-RateLimit-Limit"))
        if stated is not None:
            retune(limiter, stated)
        if answer.status == 429:
            rate = stated or limiter.max_rate / limiter.time_period
            # Without Retry-After, the restore rate tells when one request is back.
            self._http.fail_common(answer, op, lambda _: round(1 / rate, 3) if rate else None)
        return answer

    def _checked(self, answer: Answer, op: str) -> bytes:
        """The body of a 2xx answer; every other status mapped to its connector error."""
        return self._http.ok(answer, op, refused="access refused").body


def _api_headers(token: str) -> dict[str, str]:
    return {
        "x-amz-access-token": token,
        "Accept": "application/json",
        "User-Agent": "sfd (Language=Python)",
    }


# -- reading orders -------------------------------------------------------------------------


def _decode_order(raw: bytes) -> _Order:
    try:
        return _ORDER_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise malformed(exc, lower_unlocated=True) from None
    except msgspec.DecodeError as exc:
        raise MalformedOrder("order", f"not JSON ({exc})") from None


def _check_order(order: _Order) -> OrderStatus:
    """The sfd status of a released order; MalformedOrder for what typing let through."""
    status = STATUS_BY_FULFILLMENT.get(order.fulfillment.fulfillmentStatus)
    if status is None:
        raise MalformedOrder(
            "fulfillment.fulfillmentStatus",
            f"unknown status {order.fulfillment.fulfillmentStatus!r}",
        )
    if not order.orderId.strip():
        raise MalformedOrder("orderId", "empty")
    proceeds = order.proceeds or _OrderProceeds()
    if proceeds.grandTotal is not None:
        finite(proceeds.grandTotal.amount, "proceeds.grandTotal.amount")
    for n, part in enumerate(proceeds.breakdowns or ()):
        finite(part.subtotal.amount, f"proceeds.breakdowns[{n}].subtotal.amount")
    return status


def normalize_order(order: _Order, raw: bytes) -> MarketplaceOrder:
    """One released Amazon order with its items, normalized; MalformedOrder names a bad field."""
    status = _check_order(order)
    items = tuple(_item(line, f"orderItems[{n}]") for n, line in enumerate(order.orderItems))
    product_amount = sum((_line_amount(line) for line in order.orderItems), Decimal(0))
    shipping_amount = sum((_item_part(line, "SHIPPING") for line in order.orderItems), Decimal(0))
    proceeds = order.proceeds or _OrderProceeds()
    total = proceeds.grandTotal.amount if proceeds.grandTotal is not None else None
    if total is None:
        # Amazon may send a cancelled order without proceeds.
        total = product_amount + shipping_amount
    buyer = order.buyer or _Buyer()
    recipient = order.recipient or _Recipient()
    shipping_address = _address(recipient.deliveryAddress, buyer)
    fulfillment = order.fulfillment
    afn = fulfillment.fulfilledBy == "AMAZON"
    fields = _order_fields(order, buyer, recipient)
    if (
        not afn
        and fulfillment.fulfillmentStatus in ADDRESS_STATUSES
        and not (shipping_address.street and shipping_address.postal_code)
    ):
        fields[MISSING_PERSONAL_DATA] = MISSING_ADDRESS
    ship_by = fulfillment.shipByWindow.latestDateTime if fulfillment.shipByWindow else None
    return MarketplaceOrder(
        reference=order.orderId,
        status=status,
        created_at=utc(order.createdTime),
        updated_at=utc(order.lastUpdatedTime),
        currency=_currency(order),
        product_amount=product_amount,
        shipping_amount=shipping_amount,
        total_amount=total,
        raw=raw,
        # As Shoppingfeed shows Amazon orders: who fulfils it.
        payment_method="AFN" if afn else "MFN",
        shipping_method=fulfillment.fulfillmentServiceLevel or "",
        latest_ship_date=utc(ship_by) if ship_by else None,
        fulfilled_by=FulfilledBy.CHANNEL if afn else FulfilledBy.STORE,
        billing_address=_billing_address(shipping_address, buyer, _buyer_tax(order)),
        shipping_address=shipping_address,
        items=items,
        shipment=_shipment(order.packages),
        additional_fields=fields,
    )


def _currency(order: _Order) -> str:
    proceeds = order.proceeds or _OrderProceeds()
    if proceeds.grandTotal is not None and proceeds.grandTotal.currencyCode:
        return proceeds.grandTotal.currencyCode
    for line in order.orderItems:
        for money in (_unit_money(line), *(b.subtotal for b in _breakdowns(line))):
            if money is not None and money.currencyCode:
                return money.currencyCode
    currency = CURRENCY_BY_MARKETPLACE.get(order.salesChannel.marketplaceId or "")
    if currency is None:
        raise MalformedOrder("proceeds.grandTotal.currencyCode", "missing")
    return currency


def _breakdowns(line: _Item) -> list[_ItemBreakdown]:
    return list(line.proceeds.breakdowns or ()) if line.proceeds is not None else []


def _item_part(line: _Item, kind: str) -> Decimal:
    """The sum of a line's proceeds of one kind (ITEM, SHIPPING, TAX, DISCOUNT...)."""
    return sum((b.subtotal.amount for b in _breakdowns(line) if b.type == kind), Decimal(0))


def _has_part(line: _Item, kind: str) -> bool:
    return any(b.type == kind for b in _breakdowns(line))


def _unit_money(line: _Item) -> _Money | None:
    price = line.product.price
    return price.unitPrice if price is not None else None


def _line_amount(line: _Item) -> Decimal:
    """What the line's units cost together: its ITEM proceeds, else unit price times quantity."""
    if _has_part(line, "ITEM"):
        return _item_part(line, "ITEM")
    unit = _unit_money(line)
    return unit.amount * line.quantityOrdered if unit is not None else Decimal(0)


def _item(line: _Item, path: str) -> OrderItem:
    for n, part in enumerate(_breakdowns(line)):
        finite(part.subtotal.amount, f"{path}.proceeds.breakdowns[{n}].subtotal.amount")
    unit = _unit_money(line)
    if unit is not None:
        finite(unit.amount, f"{path}.product.price.unitPrice.amount")
    if not line.orderItemId.strip():
        raise MalformedOrder(f"{path}.orderItemId", "empty")
    sku = (line.product.sellerSku or "").strip()
    if not sku:
        raise MalformedOrder(f"{path}.product.sellerSku", "missing")
    # The unit price as listed, exact; else the line's ITEM proceeds shared out.
    price = (
        unit.amount if unit is not None else unit_price(_line_amount(line), line.quantityOrdered)
    )
    fulfillment = line.fulfillment
    packing = fulfillment.packing if fulfillment is not None else None
    shipping = fulfillment.shipping if fulfillment is not None else None
    international = shipping.internationalShipping if shipping is not None else None
    condition = line.product.condition
    extra: dict[str, Any] = {
        "asin": line.product.asin,
        "quantity_shipped": fulfillment.quantityFulfilled if fulfillment is not None else None,
        "shipping_price": _part_text(line, "SHIPPING"),
        "promotion_discount": _part_text(line, "DISCOUNT"),
        "gift_wrap_price": _part_text(line, "GIFT_WRAP"),
        "is_gift": (packing.giftOption is not None) if packing is not None else None,
        "condition": condition.conditionType if condition is not None else None,
        "price_designation": line.product.price.priceDesignation if line.product.price else None,
        "ioss_number": international.iossNumber if international is not None else None,
    }
    return OrderItem(
        reference=sku,
        channel_reference=line.orderItemId,
        quantity=line.quantityOrdered,
        price=price,
        name=line.product.title or "",
        tax_amount=_item_part(line, "TAX"),
        additional_fields={k: v for k, v in extra.items() if v not in (None, "")},
    )


def _part_text(line: _Item, kind: str) -> str | None:
    return str(_item_part(line, kind)) if _has_part(line, kind) else None


def unit_price(line_total: Decimal, quantity: int) -> Decimal:
    """The unit price of a line whose amount is the price of every unit together.

    A division that does not fall on the cent is rounded half up to the precision of the line
    total, and to cents at least (10.00 for 3 → 3.33).
    """
    if quantity <= 1:
        return line_total
    exponent = line_total.as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return (line_total / quantity).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)


def _address(found: _CustomerAddress | None, buyer: _Buyer) -> Address:
    """The delivery address (recipient.deliveryAddress) with the buyer's email.

    Name, street, postcode and phone come only with the Direct-to-Consumer Shipping role: what
    Amazon sends is kept. Amazon gives one name: it goes whole into last_name.
    """
    email = buyer.buyerEmail or ""
    if found is None:
        return Address(email=email, company=buyer.buyerCompanyName or "")
    return Address(
        last_name=found.name or "",
        company=found.companyName or buyer.buyerCompanyName or "",
        street=found.addressLine1 or "",
        street2=found.addressLine2 or "",
        other=found.addressLine3 or "",
        postal_code=found.postalCode or "",
        city=found.city or "",
        province=(found.stateOrRegion or found.districtOrCounty or found.municipality or ""),
        country=(found.countryCode or "").strip().upper(),
        phone=found.phone or "",
        email=email,
    )


def _buyer_tax(order: _Order) -> _TaxRegistration | None:
    """The buyer's own tax registration (a business order's VAT number), if Amazon sent one."""
    registrations = order.tax.taxRegistrations if order.tax is not None else None
    for registration in registrations or ():
        if registration.entityType == "BUYER" and registration.taxRegistrationNumber:
            return registration
    return None


def _billing_address(shipping: Address, buyer: _Buyer, tax: _TaxRegistration | None) -> Address:
    """Amazon gives no billing address: the delivery address, under the buyer's own name."""
    company = buyer.buyerCompanyName or (tax.legalName if tax is not None else None)
    return msgspec.structs.replace(
        shipping,
        last_name=buyer.buyerName or shipping.last_name,
        company=company or shipping.company,
    )


def _shipment(packages: list[_Package] | None) -> Shipment | None:
    """The newest package Amazon knows of, not cancelled: the order's shipment."""
    live = [
        p
        for p in packages or ()
        if p.packageStatus is None or p.packageStatus.status != "CANCELLED"
    ]
    if not live:
        return None
    newest = max(enumerate(live), key=lambda pair: (_package_time(pair[1]), pair[0]))[1]
    return Shipment(carrier=newest.carrier or "", tracking_number=newest.trackingNumber or "")


def _package_time(package: _Package) -> datetime:
    moment = package.shipTime or package.createdTime
    return utc(moment) if moment is not None else datetime.min.replace(tzinfo=UTC)


def _order_fields(order: _Order, buyer: _Buyer, recipient: _Recipient) -> dict[str, Any]:
    programs = order.programs or []
    fulfillment = order.fulfillment
    ship_by = fulfillment.shipByWindow or _Window()
    deliver_by = fulfillment.deliverByWindow or _Window()
    replaced = [
        a.orderId
        for a in order.associatedOrders or ()
        if a.associationType == "REPLACEMENT_ORIGINAL_ID" and a.orderId
    ]
    seller_ids = [a.aliasId for a in order.orderAliases or () if a.aliasType == "SELLER_ORDER_ID"]
    address = recipient.deliveryAddress or _CustomerAddress()
    preference = recipient.deliveryPreference or _DeliveryPreference()
    fields: dict[str, Any] = {
        "marketplace_id": order.salesChannel.marketplaceId,
        "sales_channel": order.salesChannel.marketplaceName,
        "order_status": fulfillment.fulfillmentStatus,
        "fulfillment_channel": "AFN" if fulfillment.fulfilledBy == "AMAZON" else "MFN",
        "seller_order_id": seller_ids[0] if seller_ids else None,
        "ship_service_level": fulfillment.fulfillmentServiceLevel,
        "earliest_ship_date": _when(ship_by.earliestDateTime),
        "earliest_delivery_date": _when(deliver_by.earliestDateTime),
        "latest_delivery_date": _when(deliver_by.latestDateTime),
        "programs": programs or None,
        "is_business_order": "AMAZON_BUSINESS" in programs,
        "is_prime": "PRIME" in programs,
        "is_premium_order": "PREMIUM" in programs,
        "is_ispu": "IN_STORE_PICK_UP" in programs,
        "is_replacement_order": bool(replaced),
        "replaced_order_id": replaced[0] if replaced else None,
        "purchase_order_number": buyer.buyerPurchaseOrderNumber,
        "address_type": address.addressType,
        # A parcel for a pickup point (an Amazon Locker or Counter, addressType PICKUP_POINT):
        # the delivery address is the point's own.
        "is_access_point_order": address.addressType == "PICKUP_POINT" or None,
        "drop_off_location": preference.dropOffLocation,
        "delivery_instructions": preference.addressInstruction,
        "delivery_capabilities": preference.deliveryCapabilities or None,
        "packages": [
            {
                "package_reference_id": p.packageReferenceId,
                "status": p.packageStatus.status if p.packageStatus else None,
                "carrier": p.carrier,
                "tracking_number": p.trackingNumber,
                "ship_time": _when(p.shipTime),
                "items": {i.orderItemId: i.quantity for i in p.packageItems or ()},
            }
            for p in order.packages or ()
        ]
        or None,
    }
    tax = _buyer_tax(order)
    if tax is not None:
        fields["company_legal_name"] = tax.legalName
        fields["vat_number"] = tax.taxRegistrationNumber
        fields["tax_registration_type"] = tax.taxRegistrationType
    invoicing = order.tax.taxInvoicing if order.tax is not None else None
    if invoicing is not None:
        fields["buyer_invoice_preference"] = invoicing.buyerInvoicePreference
    return {key: value for key, value in fields.items() if value not in (None, "")}


def _when(moment: datetime | None) -> str | None:
    return to_api(moment) if moment is not None else None


# -- shipments ------------------------------------------------------------------------------


def _requested_lines(items: dict[str, int] | None) -> list[tuple[str, int]] | None:
    if items is None:
        return None
    return requested_lines(
        items,
        empty="a partial shipment needs at least one item",
        blank="a partial shipment names an item without its OrderItemId",
        bad=lambda item_id, _: (
            f"item {item_id}: a quantity to ship must be a positive whole number"
        ),
    )


def _check_status(order: _OrderCheck) -> str:
    """The fulfilment status getOrder gave; an answer without one is Transient."""
    if order.fulfillment is None:
        raise Transient(f"Amazon getOrder {order.orderId}: no fulfillment in the answer")
    return order.fulfillment.fulfillmentStatus


def _unshipped_lines(order: _OrderCheck) -> list[tuple[str, int]]:
    """Each item of the order with the quantity still to ship."""
    lines: list[tuple[str, int]] = []
    for item in order.orderItems:
        done = item.fulfillment
        if done is not None and done.quantityUnfulfilled is not None:
            remaining = done.quantityUnfulfilled
        else:
            shipped = done.quantityFulfilled if done is not None else None
            remaining = item.quantityOrdered - (shipped or 0)
        if remaining > 0:
            lines.append((item.orderItemId, remaining))
    return lines


def confirmation_body(
    marketplace: str,
    reference: str,
    carrier: CarrierMatch,
    tracking: str,
    lines: list[tuple[str, int]],
    now: datetime,
) -> dict[str, Any]:
    """The v0 confirmShipment body for one package of `lines` (item id, quantity)."""
    code = carrier.code or OTHER_CARRIER
    package: dict[str, Any] = {
        "packageReferenceId": package_reference(reference, tracking, lines),
        "carrierCode": code,
    }
    if code == OTHER_CARRIER:
        package["carrierName"] = carrier.name
    package["trackingNumber"] = tracking
    package["shipDate"] = format_date(now)
    package["orderItems"] = [{"orderItemId": i, "quantity": q} for i, q in lines]
    return {"marketplaceId": marketplace, "packageDetail": package}


def carrier_code(carrier: str, mapping: Mapping[str, str] | None = None) -> str:
    """Amazon's code for `carrier` (the channel's table, else matched automatically), or Other."""
    return match_carrier(carrier, CARRIERS, mapping).code or OTHER_CARRIER


def package_reference(reference: str, tracking: str, lines: list[tuple[str, int]]) -> str:
    """A positive number naming this package within its order, the same on every retry.

    Amazon wants a positive numeric packageReferenceId, unique within the order: several partial
    shipments of one order must not share one.
    """
    key = "\n".join([reference, tracking, *(f"{i}\t{q}" for i, q in sorted(lines))])
    digest = hashlib.sha256(key.encode()).digest()
    return str(int.from_bytes(digest[:4], "big") % 999_999_999 + 1)


# -- wire helpers ---------------------------------------------------------------------------


def build_url(endpoint: str, path: str, params: Mapping[str, str] | None = None) -> URL:
    """The URL of a call, each query value percent-encoded in full.

    A nextToken holds `+`, `/` and `=`: a `+` left bare would read as a space.
    """
    url = endpoint + path
    if params:
        url += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    return URL(url, encoded=True)


def _rate(limit: str | None) -> float | None:
    """x-amzn-RateLimit-Limit: the operation's restore rate, in requests per second."""
    if limit is None:
        return None
    try:
        rate = float(limit.strip())
    except ValueError:
        return None
    return rate if math.isfinite(rate) and rate > 0 else None


def _bucket(burst: int, rate: float) -> AsyncLimiter:
    """A leaky bucket holding `burst` requests and restoring `rate` of them a second."""
    return AsyncLimiter(burst, burst / rate)


def retune(limiter: AsyncLimiter, rate: float) -> None:
    """Make `limiter` restore `rate` requests a second, its burst and level kept.

    aiolimiter reads its rate from `_rate_per_sec`, computed once in its constructor: both are
    set, so the requests already in the bucket drain at the new rate.
    """
    if math.isclose(limiter.max_rate / limiter.time_period, rate):
        return
    limiter.time_period = limiter.max_rate / rate
    limiter._rate_per_sec = rate


def _error_message(body: bytes) -> str | None:
    """SP-API's own error (`{"errors": [{"code": ..., "message": ...}]}`) as `message (code)`."""
    try:
        data = msgspec.json.decode(body, type=_Errors)
    except msgspec.MsgspecError:
        return None
    texts: list[str] = []
    for error in data.errors or ():
        message = (error.message or "").strip()
        details = (error.details or "").strip()
        if details and details != message:
            message = f"{message}: {details}" if message else details
        code = (error.code or "").strip()
        if message and code:
            texts.append(f"{message} ({code})")
        elif message or code:
            texts.append(message or code)
    return "; ".join(texts) if texts else None


if TYPE_CHECKING:
    _conforms: type[MarketplaceConnector] = AmazonConnector
