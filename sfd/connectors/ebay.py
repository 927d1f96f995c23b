"""eBay's Sell Fulfillment API v1: list orders (getOrders), read one (getOrder), ship
(createShippingFulfillment), behind an OAuth user access token minted from a refresh token.

Amounts come as decimal strings and are read as exact Decimals, never binary floats.
eBay has no acceptance step, and cancellations belong to the Post-Order API, which sfd does not
speak: accept, refuse and cancel are refused with a message saying so.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import msgspec
from yarl import URL

from sfd.connectors.base import (
    AuthFailed,
    ConnectorError,
    OrderPage,
    RefundRequest,
    Rejected,
    ShipmentReceipt,
    ShipmentRequest,
)
from sfd.connectors.http import Answer, MarketplaceHttp, segment, unless_done
from sfd.connectors.oauth import RefreshTokenGrant, oauth_reason
from sfd.connectors.parsing import (
    MalformedOrder,
    PageReader,
    Quantity,
    address,
    head,
    malformed,
    requested_lines,
    skipper,
    utc,
)
from sfd.connectors.settings import EbaySettings
from sfd.domain import Address, MarketplaceOrder, OrderItem, OrderStatus
from sfd.domain.carriers import MarketplaceCarrier, match_carrier
from sfd.domain.documents import Document

if TYPE_CHECKING:
    from sfd.connectors.base import MarketplaceConnector

#: The one OAuth scope sfd needs: read orders and create shipping fulfillments. The refresh token
#: must have been granted it (a refresh may ask for the same scopes or fewer, never more).
SCOPE: Final = "https://api.ebay.com/oauth/api_scope/sell.fulfillment"
ORDERS_PATH: Final = "/sell/fulfillment/v1/order"
#: Orders a getOrders page asks for (eBay's default is 50, its maximum 1000).
PAGE_SIZE: Final = 200
#: getOrders' date filters only reach the last 90 days (error 30830 past that): an older cursor
#: is brought forward to just inside that window, with an hour's margin for clock skew.
MAX_LOOKBACK: Final = timedelta(days=90) - timedelta(hours=1)
#: The refresh-token grant, as messages name it.
GRANT: Final = "OAuth refresh token grant"

# Order status, from three eBay fields (the spec names the enums; developer.ebay.com lists them):
# - orderPaymentStatus (OrderPaymentStatusEnum): PAID, PENDING, FAILED, FULLY_REFUNDED,
#   PARTIALLY_REFUNDED. PENDING and FAILED mean the buyer has not paid: not imported. eBay also
#   uses them for a refund that is pending or failed; then the order has refunds listed in
#   paymentSummary.refunds, the buyer did pay, and the order keeps its fulfillment status.
# - cancelStatus.cancelState (CancelStateEnum): NONE_REQUESTED, IN_PROGRESS (a buyer asked to
#   cancel; nothing decided yet, so no status change), CANCELED. A cancelled order is cancelled
#   whatever its payment says (a paid order eBay cancels is usually FULLY_REFUNDED as well).
# - orderFulfillmentStatus (OrderFulfillmentStatus): NOT_STARTED, IN_PROGRESS (some line items
#   shipped, multi-line orders only), FULFILLED (every line item assigned to a fulfillment).
# A full or partial refund outranks fulfillment: it is the later, and final, fact about the order.
UNPAID_PAYMENT_STATES: Final = frozenset({"PENDING", "FAILED"})
PAYMENT_STATES: Final = frozenset(
    {"PAID", "PENDING", "FAILED", "FULLY_REFUNDED", "PARTIALLY_REFUNDED"}
)
STATUS_BY_FULFILLMENT: Final[Mapping[str, OrderStatus]] = {
    "NOT_STARTED": OrderStatus.WAITING_SHIPMENT,
    "IN_PROGRESS": OrderStatus.PARTIALLY_SHIPPED,
    "FULFILLED": OrderStatus.SHIPPED,
}

NO_ACCEPTANCE: Final = (
    "eBay has no acceptance step: a paid eBay order is ready to ship, there is nothing to "
    "accept or refuse"
)
NO_DELIVERY: Final = (
    "eBay has no delivery confirmation from the seller: eBay learns of the delivery from the "
    "carrier's tracking"
)
#: The order line status sfd gives an eBay line refunded in full (eBay's own
#: lineItemFulfillmentStatus has no such value): see `domain.CLOSED_LINE_STATUSES`.
REFUNDED_LINE: Final = "REFUNDED"

#: ReasonForRefundEnum value sent with issueRefund: sfd is not told why a refund is made.
REFUND_REASON: Final = "OTHER"
REFUND_COMMENT: Final = "Refund issued by the seller"
REFUND_SCOPE: Final = (
    "eBay refused issueRefund's access: it needs the sell.finances OAuth scope, which sfd's "
    "token (sell.fulfillment) does not carry; issue the refund in eBay Seller Hub"
)
CANCEL_UNSUPPORTED: Final = (
    "eBay cancellations go through the Post-Order API (cancellation requests), which sfd does "
    "not support: cancel the order in eBay Seller Hub"
)

# shippingCarrierCode takes the Trading API's ShippingCarrierCodeType values (the Fulfillment
# spec points there; GeteBayDetails ShippingCarrierDetails lists them): the European and major
# carriers below. A carrier eBay has no value for goes as "Other", its name in the order's event.
#: eBay's code → the common carrier it is (sfd.domain.carriers); None: recognised by its name.
CARRIER_TABLE: Final[Mapping[str, str | None]] = {
    "Colissimo": "colissimo", "ColiposteDomestic": "la_poste", "ColiposteInternational": None,
    "Chronopost": "chronopost", "MondialRelay": "mondial_relay", "ColisPrive": "colis_prive",
    "DPD": "dpd", "GLS": "gls", "UPS": "ups", "FedEx": "fedex", "TNT": "tnt", "DHL": "dhl",
    "DHLGlobalMail": None, "DeutschePost": "deutsche_post", "Hermes": None, "iLoxx": None,
    "RoyalMail": "royal_mail", "Parcelforce": None, "Yodel": None, "PostNL": "postnl",
    "BPost": "bpost", "BELGIANPOST": None, "Correos": "correos", "Chronoexpres": None,
    "Seur": None, "Nacex": None, "ASM": None, "PosteItaliane": "poste_italiane",
    "Bartolini": None, "SDA": None, "AnPost": None, "USPS": None, "CanadaPost": None,
    "AustraliaPost": None, "Other": None,
}  # fmt: skip
#: The carriers shippingCarrierCode takes, as sfd.domain.carriers matches them.
CARRIERS: Final = tuple(
    MarketplaceCarrier(code, code, carrier) for code, carrier in CARRIER_TABLE.items()
)
#: ShippingCarrierCodeType's value for a carrier eBay does not list.
OTHER_CARRIER: Final = "Other"


class _Listing(msgspec.Struct):
    """getOrders' answer, each order kept as the exact bytes eBay sent."""

    orders: list[msgspec.Raw] = msgspec.field(default_factory=list)
    total: int | None = None
    next: str | None = None


#: Why an invoice upload to eBay fails: its APIs take no documents for an order.
NO_INVOICE_UPLOAD = (
    "eBay has no API call to attach an invoice to an order (the Sell Fulfillment API takes "
    "none); give the buyer the invoice through eBay's messages or your own e-mail"
)


class EbayConnector(MarketplaceHttp[EbaySettings]):
    """One eBay seller account, through the Sell Fulfillment API.

    eBay documents getOrders as sorted by creation date by default, and offers no sort by last
    modification: the cursor may only move after a complete pass (pages not sorted by update).
    """

    label = "eBay"
    default_name = "ebay"
    # One listing call a minute per channel keeps far inside eBay's daily call limits, and the
    # access token (valid two hours) is minted a dozen times a day at most.
    min_poll_interval: float | None = 60.0

    def _open(self) -> None:
        settings = self._settings
        # A base URL copied with the API's path still on it keeps working.
        self._base = settings.base_url.strip().rstrip("/").removesuffix("/sell/fulfillment/v1")
        self._token_url = URL(settings.token_url.strip())
        credentials = f"{settings.client_id}:{settings.client_secret}".encode()
        self._basic = base64.b64encode(credentials).decode("ascii")
        self._oauth = RefreshTokenGrant(
            self._http,
            self._token_url,
            op=GRANT,
            form={
                "grant_type": "refresh_token",
                "refresh_token": settings.refresh_token,
                "scope": SCOPE,
            },
            headers={
                "Authorization": f"Basic {self._basic}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            refused=self._grant_refused,
            empty=f"eBay {GRANT}: the answer has an empty access_token",
            clock=self._clock,
        )
        #: The id of the last shipping fulfillment eBay created, from its Location header.
        self.last_fulfillment_id: str | None = None

    # -- the connector protocol -------------------------------------------------------------

    async def fetch_orders(self, since: datetime | None) -> AsyncIterator[OrderPage]:
        """Yield the orders modified since `since` (getOrders, lastmodifieddate filter)."""
        start = self._start(since)
        offset = 0
        while True:
            op = f"getOrders (offset {offset})"
            answer = await self._call("GET", self.orders_url(start, offset), op)
            listing = self._http.decode(answer.body, _Listing, op)
            yield _PAGES.read(op, listing.orders, offset)
            count = len(listing.orders)
            offset += count
            if count == 0:
                return
            # Orders only ever enter the filtered set (a modification moves lastModifiedDate
            # forward), so offsets may show an order twice during a pass but never skip one.
            if listing.total is not None:
                if offset >= listing.total:
                    return
            elif listing.next is None:
                return

    async def accept(self, reference: str) -> None:
        """eBay has no acceptance step: refused."""
        raise Rejected(NO_ACCEPTANCE)

    async def refuse(self, reference: str) -> None:
        """eBay has no acceptance step: refused."""
        raise Rejected(NO_ACCEPTANCE)

    async def ship(self, reference: str, shipment: ShipmentRequest) -> ShipmentReceipt:
        """Create one shipping fulfillment per package; a shipment eBay shows done succeeds.

        A full shipment reads the order and ships every line item not fulfilled yet nor
        refunded (a partially refunded order ships what is left), each with its quantity; a
        partial one ships `shipment.items` (lineItemId → quantity). eBay takes
        the carrier and the tracking number together or not at all: with only one of them the
        fulfillment is created without either, and the receipt says what was left out.
        Several tracking numbers are several packages: one fulfillment each, with the same
        lines (eBay's API has one call per package); a later package eBay does not take is
        named in the receipt rather than failing a shipment eBay already has.
        """
        carrier = shipment.carrier.strip()
        numbers = shipment.tracking_numbers
        notes: tuple[str, ...] = ()
        if numbers and not carrier:
            notes = ("eBay takes a tracking number only with its carrier (shippingCarrierCode)",)
        elif carrier and not numbers:
            notes = ("eBay takes the carrier only with a tracking number: it was not sent",)
        packages: tuple[str, ...] = numbers if carrier and numbers else ()
        matched = match_carrier(carrier, CARRIERS, shipment.carriers) if packages else None
        code = (matched.code or OTHER_CARRIER) if matched is not None else ""
        if matched is not None and matched.code is None:
            notes += (f'carrier "{carrier}" has no eBay code: sent as {OTHER_CARRIER}',)
        receipt = ShipmentReceipt(
            carrier=code,
            tracking_numbers=packages,
            not_forwarded=() if packages else numbers,
            notes=notes,
            carrier_match=matched,
        )
        if shipment.items is not None:
            lines = _requested_lines(shipment.items)
        else:
            order = await self._ship_view(reference, f"getOrder {reference} before shipping")
            if order.order_fulfillment_status == "FULFILLED":
                return receipt
            lines = [
                (line.line_item_id, line.quantity)
                for line in order.line_items
                if line.line_item_fulfillment_status != "FULFILLED"
                and line.quantity > 0
                and not _refunded(line)
            ]
            if not lines:
                return receipt
        body: dict[str, Any] = {
            "lineItems": [{"lineItemId": i, "quantity": q} for i, q in lines],
            "shippedDate": format_timestamp(self._clock()),
        }
        if packages:
            body["shippingCarrierCode"] = code
            body["trackingNumber"] = packages[0]
        path = f"{ORDERS_PATH}/{segment(reference)}/shipping_fulfillment"
        op = f"createShippingFulfillment {reference}"

        async def shipped() -> bool:
            try:
                view = await self._ship_view(reference, f"getOrder {reference} after a refusal")
            except Rejected:
                return False
            return _shipped_already(view, shipment.items)

        answer = await unless_done(self._call("POST", self._url(path), op, body=body), shipped)
        if answer is None:
            return receipt
        self.last_fulfillment_id = fulfillment_id(answer.headers.get("Location"))
        return await self._more_packages(reference, path, body, receipt)

    async def _more_packages(
        self, reference: str, path: str, first: dict[str, Any], receipt: ShipmentReceipt
    ) -> ShipmentReceipt:
        """The second and later packages: eBay has the shipment already, so a package it does
        not take is reported in the receipt, not retried (the shipment must not fail now)."""
        sent = list(receipt.tracking_numbers[:1])
        missed: list[str] = []
        notes = list(receipt.notes)
        for number in receipt.tracking_numbers[1:]:
            op = f"createShippingFulfillment {reference} (package {number})"
            try:
                body = first | {"trackingNumber": number}
                await self._call("POST", self._url(path), op, body=body)
            except ConnectorError as exc:
                missed.append(number)
                notes.append(f"package {number}: {exc}")
            else:
                sent.append(number)
        if not missed:
            return receipt
        return ShipmentReceipt(
            carrier=receipt.carrier,
            tracking_numbers=tuple(sent),
            not_forwarded=receipt.not_forwarded + tuple(missed),
            notes=tuple(notes),
            carrier_match=receipt.carrier_match,
        )

    async def cancel(self, reference: str) -> None:
        """Not supported: eBay cancellations belong to the Post-Order API."""
        raise Rejected(CANCEL_UNSUPPORTED)

    async def refund(self, reference: str, refund: RefundRequest) -> None:
        """Issue a refund (issueRefund): the whole order, or the line items whose SKU is named.

        The amounts come from the order (getOrder): the lines' cost in proportion to the
        quantity, plus their delivery cost when `refund.shipping`. A refund eBay shows already
        (paymentSummary.refunds) is not issued again.
        """
        op = f"getOrder {reference} before issueRefund"
        path = f"{ORDERS_PATH}/{segment(reference)}"
        try:
            answer = await self._call("GET", self._url(path), op)
        except _NotFound as exc:
            raise Rejected(exc.message) from None
        order = self._http.decode(answer.body, _RefundView, op)
        if order.payment_summary is not None and order.payment_summary.refunds:
            return  # refunded already, by us on an earlier try or by someone else
        body = refund_body(reference, order, refund)
        try:
            await self._call(
                "POST", self._url(f"{path}/issue_refund"), f"issueRefund {reference}", body=body
            )
        except AuthFailed:
            raise Rejected(REFUND_SCOPE) from None

    async def deliver(self, reference: str) -> None:
        """The Sell Fulfillment API has no delivery confirmation: refused."""
        raise Rejected(NO_DELIVERY)

    async def carrier_catalogue(self) -> list[MarketplaceCarrier]:
        """The ShippingCarrierCodeType values sfd sends (no call: the list is documented)."""
        return list(CARRIERS)

    async def upload_document(self, reference: str, document: Document) -> None:
        """The Sell Fulfillment API has no call to attach an invoice: refused."""
        raise Rejected(NO_INVOICE_UPLOAD)

    async def order_status(self, reference: str) -> OrderStatus | None:
        """The order's status on eBay now, or None when it is unpaid or eBay has no such order."""
        op = f"getOrder {reference}"
        path = f"{ORDERS_PATH}/{segment(reference)}"
        try:
            answer = await self._call("GET", self._url(path), op)
        except _NotFound:
            return None
        view = self._http.decode(answer.body, _StatusView, op)
        try:
            return status_of(
                view.order_payment_status,
                view.order_fulfillment_status,
                view.cancel_status.cancel_state if view.cancel_status else None,
                _has_refunds(view.payment_summary),
            )
        except MalformedOrder as exc:
            raise Rejected(f"eBay order {reference}: {exc}") from None

    # -- URLs -----------------------------------------------------------------------------

    def orders_url(self, start: datetime, offset: int) -> URL:
        """The getOrders URL, the filter percent-encoded as eBay requires (`[` `]` as %5B %5D)."""
        query = (
            f"filter=lastmodifieddate:%5B{format_timestamp(start)}..%5D"
            f"&limit={PAGE_SIZE}&offset={offset}"
        )
        return self._url(ORDERS_PATH, query)

    def _url(self, path: str, query: str = "") -> URL:
        return URL(f"{self._base}{path}" + (f"?{query}" if query else ""), encoded=True)

    def _start(self, since: datetime | None) -> datetime:
        now = self._clock()
        if since is None:
            # The poller always gives a bound (the channel's `import_since` on a first poll);
            # without one, as far back as getOrders reaches.
            return now - MAX_LOOKBACK
        since = utc(since)
        return min(max(since, now - MAX_LOOKBACK), now)

    # -- orders read for shipping ---------------------------------------------------------

    async def _ship_view(self, reference: str, op: str) -> _ShipView:
        path = f"{ORDERS_PATH}/{segment(reference)}"
        try:
            answer = await self._call("GET", self._url(path), op)
        except _NotFound as exc:
            raise Rejected(exc.message) from None
        return self._http.decode(answer.body, _ShipView, op)

    # -- OAuth ----------------------------------------------------------------------------

    def _grant_refused(self, answer: Answer) -> ConnectorError:
        if answer.status in (400, 401, 403):
            # invalid_grant (refresh token expired or revoked), invalid_client (wrong client id
            # or secret), invalid_scope: only new credentials help.
            reason = oauth_reason(answer.body)
            failed = AuthFailed(self._http.scrub(f"eBay {GRANT}: HTTP {answer.status} {reason}"))
            return self._http.error(failed, answer)
        return self._http.refusal(answer, GRANT, with_op=True)

    # -- HTTP -----------------------------------------------------------------------------

    async def _call(self, method: str, url: URL, op: str, *, body: Any = None) -> Answer:
        """Send one API request with the access token and return a 2xx answer; map failures.

        A 401 may only mean the token expired early: it is renewed, and the call sent once more.
        """
        answer = await self._oauth.send(
            method, url, op=op, headers=_bearer, refused_with=401, body=body
        )
        if answer.status == 404:
            raise self._http.refusal(answer, op, with_op=True, kind=_NotFound)
        return self._http.ok(answer, op, refused="the access token was refused", with_op=True)

    def _service_error(self, body: bytes) -> str | None:
        return _error_message(body)

    def _secrets(self) -> list[str]:
        """What no message may show: the credentials, and the access token of the moment."""
        secrets = [self._settings.client_secret, self._settings.refresh_token, self._basic]
        if self._oauth.current is not None:
            secrets.append(self._oauth.current)
        return secrets


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


class _NotFound(Rejected):
    """A 404: eBay has no such order."""


# -- reading orders -----------------------------------------------------------------------
#
# Each order is decoded on its own into typed structs named as eBay names its fields (camelCase
# on the wire): a field of the wrong type or a missing required field fails that order alone,
# and the reason names the field by its path in eBay's JSON.


class _Camel(msgspec.Struct, rename="camel"):
    pass


class _Amount(_Camel):
    value: Decimal
    currency: str | None = None


class _Phone(_Camel):
    phone_number: str | None = None


class _ContactAddress(_Camel):
    """An address, its fields named as sfd's Address (eBay's own names in `name`)."""

    street: str | None = msgspec.field(default=None, name="addressLine1")
    street2: str | None = msgspec.field(default=None, name="addressLine2")
    city: str | None = None
    province: str | None = msgspec.field(default=None, name="stateOrProvince")
    postal_code: str | None = None
    country_code: str | None = None
    other: str | None = msgspec.field(default=None, name="county")


class _Contact(_Camel):
    full_name: str | None = None
    company_name: str | None = None
    contact_address: _ContactAddress | None = None
    primary_phone: _Phone | None = None
    secondary_phone: _Phone | None = None
    email: str | None = None


class _TaxAddress(_Camel):
    city: str | None = None
    state_or_province: str | None = None
    postal_code: str | None = None
    country_code: str | None = None


class _Buyer(_Camel):
    username: str | None = None
    tax_address: _TaxAddress | None = None
    buyer_registration_address: _Contact | None = None


class _ShippingStep(_Camel):
    ship_to: _Contact | None = None
    shipping_service_code: str | None = None
    shipping_carrier_code: str | None = None
    ship_to_reference_id: str | None = None


class _StartInstruction(_Camel):
    shipping_step: _ShippingStep | None = None
    fulfillment_instructions_type: str | None = None
    ebay_supported_fulfillment: bool | None = None


class _Tax(_Camel):
    amount: _Amount | None = None
    tax_type: str | None = None


class _LineInstructions(_Camel):
    ship_by_date: datetime | None = None


class _DeliveryCost(_Camel):
    shipping_cost: _Amount | None = None


class _LineRefund(_Camel):
    amount: _Amount | None = None


class _Line(_Camel):
    line_item_id: str
    quantity: Quantity
    line_item_cost: _Amount
    refunds: list[_LineRefund] | None = None
    sku: str | None = None
    legacy_item_id: str | None = None
    legacy_variation_id: str | None = None
    title: str | None = None
    line_item_fulfillment_status: str | None = None
    taxes: list[_Tax] | None = None
    ebay_collect_and_remit_taxes: list[_Tax] | None = None
    line_item_fulfillment_instructions: _LineInstructions | None = None
    delivery_cost: _DeliveryCost | None = None
    discounted_line_item_cost: _Amount | None = None


class _Pricing(_Camel):
    total: _Amount
    price_subtotal: _Amount | None = None
    delivery_cost: _Amount | None = None
    price_discount_subtotal: _Amount | None = None
    delivery_discount: _Amount | None = None
    tax: _Amount | None = None
    adjustment: _Amount | None = None
    fee: _Amount | None = None


class _CancelStatus(_Camel):
    cancel_state: str | None = None


class _Payment(_Camel):
    payment_method: str | None = None
    payment_status: str | None = None


class _PaymentSummary(_Camel):
    payments: list[_Payment] | None = None
    refunds: list[Any] | None = None


class _Order(_Camel):
    order_id: str
    creation_date: datetime
    last_modified_date: datetime
    order_payment_status: str
    order_fulfillment_status: str
    pricing_summary: _Pricing
    line_items: list[_Line]
    cancel_status: _CancelStatus | None = None
    payment_summary: _PaymentSummary | None = None
    buyer: _Buyer | None = None
    fulfillment_start_instructions: list[_StartInstruction] | None = None
    legacy_order_id: str | None = None
    sales_record_reference: str | None = None
    seller_id: str | None = None
    buyer_checkout_notes: str | None = None
    ebay_collect_and_remit_tax: bool | None = None
    total_marketplace_fee: _Amount | None = None


class _StatusView(_Camel):
    """What getOrder must give for order_status."""

    order_payment_status: str
    order_fulfillment_status: str | None = None
    cancel_status: _CancelStatus | None = None
    payment_summary: _PaymentSummary | None = None


class _ShipLine(_Camel):
    line_item_id: str
    quantity: int
    line_item_fulfillment_status: str | None = None
    line_item_cost: _Amount | None = None
    discounted_line_item_cost: _Amount | None = None
    refunds: list[_LineRefund] | None = None


class _ShipView(_Camel):
    """What getOrder must give to ship."""

    line_items: list[_ShipLine]
    order_fulfillment_status: str | None = None


class _RefundView(_Camel):
    """What getOrder must give to refund."""

    pricing_summary: _Pricing
    line_items: list[_Line]
    payment_summary: _PaymentSummary | None = None


class _Head(msgspec.Struct, rename="camel"):
    """What can still be learnt from an order that does not decode."""

    order_id: Any = None
    order_payment_status: Any = None
    last_modified_date: Any = None
    payment_summary: Any = None


_ORDER_DECODER: Final = msgspec.json.Decoder(_Order)
_HEAD_DECODER: Final = msgspec.json.Decoder(_Head)


def status_of(
    payment: str, fulfillment: str | None, cancel_state: str | None, refunds: bool
) -> OrderStatus | None:
    """The sfd status of an eBay order, or None while the buyer has not paid (see above)."""
    if payment not in PAYMENT_STATES:
        raise MalformedOrder("orderPaymentStatus", f"unknown status {payment!r}")
    if payment in UNPAID_PAYMENT_STATES and not refunds:
        return None
    if cancel_state == "CANCELED":
        return OrderStatus.CANCELLED
    if payment == "FULLY_REFUNDED":
        return OrderStatus.REFUNDED
    if payment == "PARTIALLY_REFUNDED":
        return OrderStatus.PARTIALLY_REFUNDED
    status = STATUS_BY_FULFILLMENT.get(fulfillment or "")
    if status is None:
        raise MalformedOrder("orderFulfillmentStatus", f"unknown status {fulfillment!r}")
    return status


def _has_refunds(summary: _PaymentSummary | None) -> bool:
    return bool(summary is not None and summary.refunds)


_skipped: Final = skipper(_HEAD_DECODER, "order_id", "last_modified_date")


def _unpaid(head: _Head | None) -> bool:
    """Whether an order that does not decode is, as far as can be read, not paid yet."""
    if head is None or head.order_payment_status not in UNPAID_PAYMENT_STATES:
        return False
    summary = head.payment_summary
    return not (isinstance(summary, dict) and summary.get("refunds"))


def parse_order(raw: bytes) -> MarketplaceOrder | None:
    """Normalize one eBay order from its JSON; None for an order not paid yet.

    Raise MalformedOrder, naming the field, when the order cannot be read.
    """
    try:
        data = _ORDER_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        if _unpaid(head(_HEAD_DECODER, raw)):
            return None
        raise malformed(exc) from None
    except msgspec.DecodeError as exc:
        raise MalformedOrder("order", f"not JSON ({exc})") from None
    cancel_state = data.cancel_status.cancel_state if data.cancel_status else None
    status = status_of(
        data.order_payment_status,
        data.order_fulfillment_status,
        cancel_state,
        _has_refunds(data.payment_summary),
    )
    if status is None:
        return None
    if not data.order_id.strip():
        raise MalformedOrder("orderId", "empty")
    pricing = data.pricing_summary
    currency = (pricing.total.currency or "").strip()
    if not currency:
        raise MalformedOrder("pricingSummary.total.currency", "missing")
    total = _money(pricing.total, "pricingSummary.total", currency)
    items = tuple(_item(line, f"lineItems[{n}]") for n, line in enumerate(data.line_items))
    if pricing.price_subtotal is not None:
        product_amount = _money(pricing.price_subtotal, "pricingSummary.priceSubtotal", currency)
    else:
        product_amount = sum((line.line_item_cost.value for line in data.line_items), Decimal(0))
    shipping_amount = (
        _money(pricing.delivery_cost, "pricingSummary.deliveryCost", currency)
        if pricing.delivery_cost is not None
        else Decimal(0)
    )
    instructions = data.fulfillment_start_instructions
    # An array, but eBay fills only its first entry for now.
    instruction = instructions[0] if instructions else None
    step = instruction.shipping_step if instruction is not None else None
    shipping = _address(step.ship_to if step is not None else None)
    buyer = data.buyer or _Buyer()
    registered = buyer.buyer_registration_address
    # eBay gives no billing address; the buyer's registration address, when eBay shares it,
    # comes closest, else the shipping address stands in.
    billing = _address(registered) if registered is not None else shipping
    ship_by = [
        utc(line.line_item_fulfillment_instructions.ship_by_date)
        for line in data.line_items
        if line.line_item_fulfillment_instructions is not None
        and line.line_item_fulfillment_instructions.ship_by_date is not None
    ]
    payments = (data.payment_summary.payments if data.payment_summary else None) or []
    payment_method = next((p.payment_method for p in payments if p.payment_method), "")
    return MarketplaceOrder(
        reference=data.order_id,
        status=status,
        created_at=utc(data.creation_date),
        updated_at=utc(data.last_modified_date),
        currency=currency,
        product_amount=product_amount,
        shipping_amount=shipping_amount,
        total_amount=total,
        raw=raw,
        payment_method=payment_method,
        shipping_method=(step.shipping_service_code or "") if step is not None else "",
        latest_ship_date=min(ship_by) if ship_by else None,
        billing_address=billing,
        shipping_address=shipping,
        items=items,
        additional_fields=_order_fields(data, cancel_state, instruction, buyer),
    )


_PAGES: Final = PageReader("eBay", PAGE_SIZE, parse_order, _skipped)


def _money(amount: _Amount, path: str, currency: str | None = None) -> Decimal:
    if not amount.value.is_finite():
        raise MalformedOrder(f"{path}.value", f"expected a finite amount, got {amount.value}")
    if currency is not None and amount.currency and amount.currency != currency:
        raise MalformedOrder(
            f"{path}.currency", f"{amount.currency!r} differs from the order's {currency!r}"
        )
    return amount.value


def _item(line: _Line, path: str) -> OrderItem:
    if not line.line_item_id.strip():
        raise MalformedOrder(f"{path}.lineItemId", "empty")
    reference = (line.sku or "").strip() or (line.legacy_item_id or "").strip()
    if not reference:
        raise MalformedOrder(f"{path}.sku", "missing, and no legacyItemId either")
    line_total = _money(line.line_item_cost, f"{path}.lineItemCost")
    # lineItemCost is the unit price times the quantity, before discounts.
    unit = line_total / line.quantity if line.quantity else line_total
    taxes = _tax_total(line.taxes, f"{path}.taxes")
    remitted = _tax_total(line.ebay_collect_and_remit_taxes, f"{path}.ebayCollectAndRemitTaxes")
    fields: dict[str, Any] = {"line_total": str(line_total)}
    if line.discounted_line_item_cost is not None:
        discounted = _money(line.discounted_line_item_cost, f"{path}.discountedLineItemCost")
        fields["discounted_line_total"] = str(discounted)
    shipping_cost = line.delivery_cost.shipping_cost if line.delivery_cost else None
    if shipping_cost is not None:
        cost = _money(shipping_cost, f"{path}.deliveryCost.shippingCost")
        fields["shipping_cost"] = str(cost)
    if line.legacy_item_id:
        fields["legacy_item_id"] = line.legacy_item_id
    if line.legacy_variation_id:
        fields["legacy_variation_id"] = line.legacy_variation_id
    if line.ebay_collect_and_remit_taxes:
        fields["ebay_collect_and_remit_tax"] = str(remitted)
        fields["ebay_collect_and_remit_taxes"] = [
            {"tax_type": t.tax_type or "", "amount": str(t.amount.value if t.amount else 0)}
            for t in line.ebay_collect_and_remit_taxes
        ]
    return OrderItem(
        reference=reference,
        channel_reference=line.line_item_id,
        quantity=line.quantity,
        price=unit,
        name=line.title or "",
        # A line refunded in full has nothing left to ship, whatever its fulfillment says.
        status=REFUNDED_LINE if _refunded(line) else line.line_item_fulfillment_status or "",
        # eBay may list a collect-and-remit tax in `taxes` too, with the same amount: the two
        # are alternatives, never added up.
        tax_amount=taxes if line.taxes else remitted,
        additional_fields=fields,
    )


def _tax_total(taxes: list[_Tax] | None, path: str) -> Decimal:
    total = Decimal(0)
    for n, tax in enumerate(taxes or ()):
        if tax.amount is not None:
            total += _money(tax.amount, f"{path}[{n}].amount")
    return total


def _split_name(full_name: str) -> tuple[str, str]:
    """eBay gives one full name: the first word as first name, the rest as last name."""
    parts = full_name.split(maxsplit=1)
    if len(parts) == 2:
        return parts[0], parts[1]
    return "", full_name.strip()


def _email(value: str | None) -> str:
    # eBay masks a buyer's email after 14 days with text such as "Invalid Request".
    value = (value or "").strip()
    return value if "@" in value else ""


def _address(contact: _Contact | None) -> Address:
    if contact is None:
        return Address()
    first, last = _split_name(contact.full_name or "")
    place = contact.contact_address or _ContactAddress()
    primary, secondary = contact.primary_phone, contact.secondary_phone
    return address(
        place,
        first_name=first,
        last_name=last,
        company=contact.company_name or "",
        country=(place.country_code or "").upper(),
        phone=(primary.phone_number or "") if primary else "",
        mobile_phone=(secondary.phone_number or "") if secondary else "",
        email=_email(contact.email),
    )


def _order_fields(
    data: _Order,
    cancel_state: str | None,
    instruction: _StartInstruction | None,
    buyer: _Buyer,
) -> dict[str, Any]:
    pricing = data.pricing_summary
    step = instruction.shipping_step if instruction is not None else None
    fields: dict[str, Any] = {
        "order_payment_status": data.order_payment_status,
        "order_fulfillment_status": data.order_fulfillment_status,
        "cancel_state": cancel_state,
        "legacy_order_id": data.legacy_order_id,
        "sales_record_reference": data.sales_record_reference,
        "seller_id": data.seller_id,
        "buyer_username": buyer.username,
        "buyer_checkout_notes": data.buyer_checkout_notes,
        "fulfillment_instructions_type": instruction.fulfillment_instructions_type
        if instruction is not None
        else None,
        "shipping_carrier_code": step.shipping_carrier_code if step is not None else None,
        "ship_to_reference_id": step.ship_to_reference_id if step is not None else None,
    }
    fields = {key: value for key, value in fields.items() if value}
    amounts = {
        "price_discount": (pricing.price_discount_subtotal, "priceDiscountSubtotal"),
        "delivery_discount": (pricing.delivery_discount, "deliveryDiscount"),
        "tax": (pricing.tax, "tax"),
        "adjustment": (pricing.adjustment, "adjustment"),
        "fee": (pricing.fee, "fee"),
    }
    for key, (amount, name) in amounts.items():
        if amount is not None:
            fields[key] = str(_money(amount, f"pricingSummary.{name}"))
    if data.total_marketplace_fee is not None:
        fields["marketplace_fee"] = str(_money(data.total_marketplace_fee, "totalMarketplaceFee"))
    if data.ebay_collect_and_remit_tax:
        fields["ebay_collect_and_remit_tax"] = True
    if instruction is not None and instruction.ebay_supported_fulfillment:
        fields["ebay_supported_fulfillment"] = True
    tax_address = buyer.tax_address
    if tax_address is not None:
        place = {
            "city": tax_address.city,
            "province": tax_address.state_or_province,
            "postal_code": tax_address.postal_code,
            "country": tax_address.country_code,
        }
        fields["buyer_tax_address"] = {key: value for key, value in place.items() if value}
    return fields


# -- refund helpers -----------------------------------------------------------------------


def refund_body(reference: str, order: _RefundView, refund: RefundRequest) -> dict[str, Any]:
    """issueRefund's body: orderLevelRefundAmount for all of it, refundItems for some lines."""
    currency = (order.pricing_summary.total.currency or "").strip()
    if not currency:
        raise Rejected(f"eBay order {reference} has no currency in pricingSummary.total")
    body: dict[str, Any] = {"reasonForRefund": REFUND_REASON, "comment": REFUND_COMMENT}
    if refund.items is None and refund.shipping:
        body["orderLevelRefundAmount"] = _simple(order.pricing_summary.total.value, currency)
        return body
    wanted = dict(refund.items) if refund.items is not None else None
    items: list[dict[str, Any]] = []
    for line in order.line_items:
        sku = (line.sku or "").strip() or (line.legacy_item_id or "").strip()
        if line.quantity <= 0:
            continue
        quantity = line.quantity if wanted is None else min(wanted.get(sku, 0), line.quantity)
        if quantity <= 0:
            continue
        if wanted is not None:
            wanted[sku] -= quantity
        cost = line.discounted_line_item_cost or line.line_item_cost
        amount = cost.value * quantity / line.quantity
        shipping = line.delivery_cost.shipping_cost if line.delivery_cost else None
        if refund.shipping and shipping is not None:
            amount += shipping.value * quantity / line.quantity
        items.append({"lineItemId": line.line_item_id, "refundAmount": _simple(amount, currency)})
    if wanted is not None:
        left = sorted(sku for sku, quantity in wanted.items() if quantity > 0)
        if left:
            raise Rejected(f"eBay order {reference} has too few line items with SKU {left}")
    if not items:
        raise Rejected(f"eBay order {reference}: nothing to refund")
    body["refundItems"] = items
    return body


def _simple(amount: Decimal, currency: str) -> dict[str, str]:
    """A SimpleAmount: the value as a string, to the cent."""
    return {"value": str(amount.quantize(Decimal("0.01"), ROUND_HALF_UP)), "currency": currency}


# -- shipping helpers ---------------------------------------------------------------------


def _requested_lines(items: dict[str, int]) -> list[tuple[str, int]]:
    return requested_lines(
        items,
        empty="a partial shipment names no eBay line item",
        blank="a partial shipment names an empty eBay line item id",
        bad=lambda line_id, quantity: (
            f"eBay line item {line_id}: quantity {quantity!r} is not positive"
        ),
    )


def _shipped_already(order: _ShipView, items: dict[str, int] | None) -> bool:
    """Whether eBay shows done what was asked: the whole order (its lines not refunded), or
    every line named."""
    if order.order_fulfillment_status == "FULFILLED":
        return True
    fulfilled = {
        line.line_item_id
        for line in order.line_items
        if line.line_item_fulfillment_status == "FULFILLED"
    }
    if items is None:
        wanted = [line.line_item_id for line in order.line_items if not _refunded(line)]
        return bool(wanted) and all(line_id in fulfilled for line_id in wanted)
    return all(line_id in fulfilled for line_id in items)


def _refunded(line: _Line | _ShipLine) -> bool:
    """Whether a line's refunds (lineItems.refunds) cover what the buyer paid for it.

    A refund of part of a line's price (a goodwill gesture) leaves the line to ship; eBay
    does not say how many units a refund covers, so a line is refunded whole or not at all.
    """
    if not line.refunds:
        return False
    paid = line.discounted_line_item_cost or line.line_item_cost
    refunded = sum((r.amount.value for r in line.refunds if r.amount is not None), Decimal(0))
    return paid is None or refunded >= paid.value


def fulfillment_id(location: str | None) -> str | None:
    """The fulfillment id at the end of createShippingFulfillment's Location header."""
    if not location:
        return None
    path = urlsplit(location.strip()).path.rstrip("/")
    head, _, last = path.rpartition("/")
    return last if last and head.endswith("/shipping_fulfillment") else None


# -- wire helpers -------------------------------------------------------------------------


def format_timestamp(moment: datetime) -> str:
    """A time as eBay writes it: UTC, milliseconds, `Z` (2026-11-29T10:00:00.250Z).

    Sub-milliseconds are cut, never rounded up, so no change is ever missed.
    """
    moment = utc(moment)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _error_message(body: bytes) -> str | None:
    """eBay's first error, `{"errors": [{"errorId": 32100, "message": "..."}]}`, if any."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None
    first = errors[0]
    message = first.get("message") or first.get("longMessage")
    if not isinstance(message, str) or not message.strip():
        return None
    error_id = first.get("errorId")
    suffix = f" (eBay error {error_id})" if isinstance(error_id, int | str) and error_id else ""
    return message.strip() + suffix


if TYPE_CHECKING:
    _conforms: type[MarketplaceConnector] = EbayConnector
