"""Shopify's Admin GraphQL API, for push mode: create orders, read back fulfilments and cancels.

Auth is a custom app's Admin API access token in `X-Shopify-Access-Token`, which only TLS may
carry (plain http is accepted for 127.0.0.1 and localhost, checked with the settings). Calls
are limited by query cost in a leaky bucket: each answer's `extensions.cost.throttleStatus`
tells how full it is, so the connector waits before a call the bucket cannot pay yet, and a
`THROTTLED` answer is RateLimited with the wait it implies. A create is never resent blindly:
the push loop searches by `sourceIdentifier` first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, TypeVar, Unpack

import msgspec

from sfd.connectors.base import AuthFailed, ConnectorError, RateLimited, Rejected, Transient
from sfd.connectors.http import Answer, excerpt
from sfd.connectors.parsing import parse_moment, utc
from sfd.connectors.settings import ShopifySettings
from sfd.connectors.shop import (
    CreateUncertain,
    PushOrder,
    ShopHttpConnector,
    ShopOptions,
    ShopOrder,
    ShopStatus,
    ShopTracking,
)
from sfd.domain import Address
from sfd.domain.clock import to_iso

#: Orders per page of a read-back (a page's cost grows with it).
PAGE_SIZE: Final = 20
#: How many pages of recent orders `find_order` reads when the search found nothing.
FIND_PAGES: Final = 10
#: The tag on every order sfd creates; the read-back reads only those.
TAG: Final = "sfd"
#: The longest the connector waits for the bucket before a call; past it, RateLimited.
MAX_THROTTLE_WAIT: Final = 10.0

#: Custom attributes sfd writes on every order it creates.
ATTR_MARKETPLACE: Final = "sfd_marketplace"
ATTR_REFERENCE: Final = "sfd_marketplace_reference"
ATTR_ORDER_ID: Final = "sfd_order_id"
ATTR_SHIP_BY: Final = "sfd_ship_by"
ATTR_RELAY: Final = "sfd_relay_point_id"
ATTR_VAT: Final = "sfd_buyer_vat_number"
#: The buyer's email when `customer_emails` is off: an attribute, which Shopify never mails.
ATTR_BUYER_EMAIL: Final = "sfd_buyer_email"

VARIANT_QUERY: Final = """query SfdVariantBySku($query: String!) {
  productVariants(first: 10, query: $query) {
    nodes { id sku }
  }
}"""

CREATE_MUTATION: Final = """mutation SfdOrderCreate(\
$order: OrderCreateOrderInput!, $options: OrderCreateOptionsInput) {
  orderCreate(order: $order, options: $options) {
    order { id name }
    userErrors { field message code }
  }
}"""

#: What sfd reads of an order; a page of the read-back reads no fulfilment lines, to stay
#: cheap enough for a page of PAGE_SIZE under Shopify's 1,000-point ceiling on one query.
_ORDER_FIELDS: Final = """id
    name
    updatedAt
    cancelledAt
    displayFulfillmentStatus
    sourceName
    sourceIdentifier
    customAttributes { key value }
    shippingLine { title }
    fulfillments(first: 5) {
      status
      createdAt
      trackingInfo(first: 5) { company number url }"""

ORDERS_QUERY: Final = f"""query SfdOrders($query: String!, $first: Int!, $after: String) {{
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{
    {_ORDER_FIELDS}
    }}
    }}
  }}
}}"""

#: One order with the lines of each fulfilment: read for an order shipped in part.
ORDER_QUERY: Final = f"""query SfdOrder($id: ID!) {{
  order(id: $id) {{
    {_ORDER_FIELDS}
      fulfillmentLineItems(first: 50) {{ nodes {{ quantity lineItem {{ sku }} }} }}
    }}
  }}
}}"""

_T = TypeVar("_T")
_ORDER_GID: Final = "gid://shopify/Order/"


# -- answers -----------------------------------------------------------------------------------


class _ErrorExtensions(msgspec.Struct):
    code: str = ""


class _GqlError(msgspec.Struct):
    message: str = ""
    extensions: _ErrorExtensions | None = None


class _ThrottleStatus(msgspec.Struct):
    maximumAvailable: float
    currentlyAvailable: float
    restoreRate: float


class _Cost(msgspec.Struct):
    requestedQueryCost: float | None = None
    actualQueryCost: float | None = None
    throttleStatus: _ThrottleStatus | None = None


class _Extensions(msgspec.Struct):
    cost: _Cost | None = None


class _Envelope(msgspec.Struct):
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    """Kept raw until the errors are read; `null` when the query did not run."""
    errors: list[_GqlError] | None = None
    extensions: _Extensions | None = None


class _Variant(msgspec.Struct):
    id: str
    sku: str | None = None


class _Variants(msgspec.Struct):
    nodes: list[_Variant]


class _VariantsData(msgspec.Struct):
    productVariants: _Variants


class _UserError(msgspec.Struct):
    message: str
    field: list[str] | None = None
    code: str | None = None


class _CreatedOrder(msgspec.Struct):
    id: str
    name: str = ""


class _CreateResult(msgspec.Struct):
    userErrors: list[_UserError]
    order: _CreatedOrder | None = None


class _CreateData(msgspec.Struct):
    orderCreate: _CreateResult | None


class _Attribute(msgspec.Struct):
    key: str
    value: str | None = None


class _ShippingLine(msgspec.Struct):
    title: str = ""


class _Tracking(msgspec.Struct):
    company: str | None = None
    number: str | None = None
    url: str | None = None


class _LineItem(msgspec.Struct):
    sku: str | None = None


class _FulfilledLine(msgspec.Struct):
    quantity: int
    lineItem: _LineItem


class _FulfilledLines(msgspec.Struct):
    nodes: list[_FulfilledLine]


class _Fulfillment(msgspec.Struct):
    status: str
    createdAt: str
    trackingInfo: list[_Tracking]
    fulfillmentLineItems: _FulfilledLines | None = None
    """Read only for one order at a time (ORDER_QUERY)."""


class _Order(msgspec.Struct):
    id: str
    updatedAt: str
    name: str = ""
    cancelledAt: str | None = None
    displayFulfillmentStatus: str = ""
    sourceName: str | None = None
    sourceIdentifier: str | None = None
    customAttributes: list[_Attribute] = msgspec.field(default_factory=list)
    shippingLine: _ShippingLine | None = None
    fulfillments: list[_Fulfillment] = msgspec.field(default_factory=list)

    def attribute(self, key: str) -> str:
        for entry in self.customAttributes:
            if entry.key == key and entry.value is not None:
                return entry.value
        return ""


class _PageInfo(msgspec.Struct):
    hasNextPage: bool
    endCursor: str | None = None


class _Orders(msgspec.Struct):
    pageInfo: _PageInfo
    nodes: list[_Order]


class _OrdersData(msgspec.Struct):
    orders: _Orders


class _OrderData(msgspec.Struct):
    order: _Order | None


# -- the bucket --------------------------------------------------------------------------------


@dataclass
class CostBucket:
    """What the shop last said of its leaky bucket: points available, and how fast they return."""

    available: float = 0.0
    maximum: float = 0.0
    restore_rate: float = 0.0
    at: float = 0.0
    known: bool = False

    def update(self, status: _ThrottleStatus, now: float) -> None:
        self.available = status.currentlyAvailable
        self.maximum = status.maximumAvailable
        self.restore_rate = status.restoreRate
        self.at = now
        self.known = True

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until the bucket holds `cost` points; 0 if it does or nothing is known."""
        if not self.known or self.restore_rate <= 0:
            return 0.0
        available = min(self.maximum, self.available + self.restore_rate * (now - self.at))
        cost = min(cost, self.maximum)
        return max(0.0, (cost - available) / self.restore_rate)


def throttle_wait(requested: float, available: float, restore_rate: float) -> float:
    """The wait a THROTTLED answer implies: the missing points at the restore rate."""
    if restore_rate <= 0:
        return 1.0
    return max(0.0, (requested - available) / restore_rate)


class ShopifyConnector(ShopHttpConnector[ShopifySettings]):
    """One Shopify shop."""

    label = "Shopify"

    def __init__(
        self,
        settings: ShopifySettings,
        *,
        page_size: int = PAGE_SIZE,
        **options: Unpack[ShopOptions],
    ) -> None:
        super().__init__(settings, **options)
        self.page_size = page_size
        base = settings.shop_url.strip().rstrip("/")
        self._url = f"{base}/admin/api/{settings.api_version}/graphql.json"
        self.bucket = CostBucket()
        self._costs: dict[str, float] = {}
        """Each operation's requested cost, as the shop last computed it."""
        self._variants: dict[str, str] = {}
        """SKU → variant GID, for SKUs found once."""

    def _secrets(self) -> tuple[str]:
        return (self._settings.access_token,)

    # -- create ---------------------------------------------------------------------------

    async def create_order(self, order: PushOrder) -> str:
        """Run orderCreate once (never retried here: the caller searches before a repeat)."""
        variables = await self.create_variables(order)
        try:
            data = await self._graphql(CREATE_MUTATION, variables, _CreateData, "create order")
        except Transient as exc:
            raise CreateUncertain(str(exc)) from None
        result = data.orderCreate
        if result is not None and result.userErrors:
            reasons = "; ".join(
                f"{'.'.join(e.field)}: {e.message}" if e.field else e.message
                for e in result.userErrors
            )
            raise Rejected(
                self._http.scrub(
                    f"Shopify refused order {order.reference} from {order.marketplace}: {reasons}"
                )
            )
        if result is None or result.order is None:
            raise CreateUncertain("Shopify create order: no order and no error in the answer")
        return _legacy_id(result.order.id)

    async def create_variables(self, order: PushOrder) -> dict[str, Any]:
        """orderCreate's variables: every SKU looked up first, so an unknown one creates nothing."""
        currency = order.currency
        lines = []
        for line in order.lines:
            lines.append(
                {
                    "variantId": await self._variant(line.sku, order),
                    "quantity": line.quantity,
                    # The marketplace's price, not the catalogue's: the buyer paid this.
                    "priceSet": _money_set(line.price, currency),
                }
            )
        total = sum((line.price * line.quantity for line in order.lines), order.shipping_amount)
        attributes = [
            {"key": ATTR_MARKETPLACE, "value": order.marketplace},
            {"key": ATTR_REFERENCE, "value": order.reference},
            {"key": ATTR_ORDER_ID, "value": str(order.order_id)},
        ]
        if order.latest_ship_date is not None:
            attributes.append({"key": ATTR_SHIP_BY, "value": to_iso(utc(order.latest_ship_date))})
        if order.relay_id:
            attributes.append({"key": ATTR_RELAY, "value": order.relay_id})
        if order.vat_number:
            attributes.append({"key": ATTR_VAT, "value": order.vat_number})
        payload: dict[str, Any] = {
            "currency": currency,
            "lineItems": lines,
            "shippingAddress": _address(order.shipping),
            "billingAddress": _address(order.billing),
            "shippingLines": [
                {
                    "title": order.shipping_method or order.marketplace,
                    "code": "sfd",
                    "source": order.marketplace,
                    "priceSet": _money_set(order.shipping_amount, currency),
                }
            ],
            "financialStatus": "PAID",
            "transactions": [
                {
                    "kind": "SALE",
                    "status": "SUCCESS",
                    "gateway": order.marketplace,
                    "amountSet": _money_set(total, currency),
                }
            ],
            "sourceName": order.marketplace,
            "sourceIdentifier": order.reference,
            "tags": [TAG, order.marketplace],
            "note": order.customer_note,
            "customAttributes": attributes,
        }
        email = order.billing.email or order.shipping.email
        if self._settings.customer_emails and email:
            payload["email"] = email
        elif email:
            # Marketplaces forbid writing to their buyers, and Shopify mails the order's
            # email: the address is kept where no email goes.
            attributes.append({"key": ATTR_BUYER_EMAIL, "value": email})
        return {
            "order": payload,
            "options": {
                "sendReceipt": False,
                "sendFulfillmentReceipt": False,
                "inventoryBehaviour": self._settings.inventory.upper(),
            },
        }

    async def _variant(self, sku: str, order: PushOrder) -> str:
        cached = self._variants.get(sku)
        if cached is not None:
            return cached
        data = await self._read(
            VARIANT_QUERY, {"query": f"sku:{_quoted(sku)}"}, _VariantsData, "find variant"
        )
        # The search matches loosely (prefixes, case): only the exact SKU counts.
        found = [v.id for v in data.productVariants.nodes if v.sku == sku]
        if not found:
            raise Rejected(
                f"Shopify has no product variant with SKU {sku!r} (order {order.reference} "
                f"from {order.marketplace})"
            )
        # Only found SKUs are kept: one added to the catalogue later is found on a retry.
        self._variants[sku] = found[0]
        return found[0]

    # -- find ------------------------------------------------------------------------------

    async def find_order(self, order: PushOrder, since: datetime | None = None) -> str | None:
        """Search by `sourceIdentifier`; then, as Shopify's search index may lag a moment
        behind a create, read the orders sfd created since the first attempt."""
        query = f"source_identifier:{_quoted(order.reference)}"
        async for page in self._orders(query, "search orders"):
            found = _match(page, order)
            if found is not None:
                return found
        if since is None:
            return None
        after = to_iso(utc(since) - timedelta(hours=1))
        query = f"tag:{TAG} created_at:>={_quoted(after)}"
        pages = 0
        async for page in self._orders(query, "list recent orders"):
            found = _match(page, order)
            pages += 1
            if found is not None or pages >= FIND_PAGES:
                return found
        return None

    # -- read back -------------------------------------------------------------------------

    async def changed_orders(self, since: datetime | None) -> AsyncIterator[list[ShopOrder]]:
        """sfd's orders updated after `since`, oldest change first (those neither shipped, in
        whole or part, nor cancelled come as OTHER: they move the cursor on)."""
        query = f"tag:{TAG}"
        if since is not None:
            query += f" updated_at:>{_quoted(to_iso(utc(since)))}"
        async for page in self._orders(query, "list changed orders"):
            yield [await self._detailed(o) for o in page]

    async def get_order(self, shop_id: str) -> ShopOrder | None:
        """One order with its fulfilments; None if the shop has no such order."""
        gid = shop_id if shop_id.startswith("gid://") else _ORDER_GID + shop_id
        data = await self._read(ORDER_QUERY, {"id": gid}, _OrderData, "read order")
        return _shop_order(data.order) if data.order is not None else None

    async def _detailed(self, order: _Order) -> ShopOrder:
        """An order of a page, read again with its fulfilments' lines if it shipped in part."""
        read = _shop_order(order)
        if read.status is not ShopStatus.PARTIALLY_SHIPPED:
            return read
        return await self.get_order(order.id) or read

    async def _orders(self, query: str, op: str) -> AsyncIterator[list[_Order]]:
        after: str | None = None
        while True:
            variables = {"query": query, "first": self.page_size, "after": after}
            data = await self._read(ORDERS_QUERY, variables, _OrdersData, op)
            orders = data.orders
            yield self._page(orders.nodes, self.page_size, op)
            if not orders.pageInfo.hasNextPage or not orders.pageInfo.endCursor:
                return
            after = orders.pageInfo.endCursor

    # -- GraphQL ---------------------------------------------------------------------------

    async def _read(self, document: str, variables: dict[str, Any], kind: type[_T], op: str) -> _T:
        """A query, retried with backoff on 5xx, timeouts and dropped connections."""
        return await self._retried(lambda: self._graphql(document, variables, kind, op))

    async def _graphql(
        self, document: str, variables: dict[str, Any], kind: type[_T], op: str
    ) -> _T:
        """One GraphQL call, after waiting for the bucket to hold what it will cost."""
        wait = self.bucket.wait_for(self._costs.get(op, 0.0), time.monotonic())
        if wait > MAX_THROTTLE_WAIT:
            raise RateLimited(
                f"Shopify {op}: the query cost bucket refills in {wait:.1f} s", round(wait, 3)
            )
        if wait > 0:
            await asyncio.sleep(wait)
        headers = {
            "X-Shopify-Access-Token": self._settings.access_token,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        body = {"query": document, "variables": variables}
        answer = await self._http.send("POST", self._url, op=op, headers=headers, body=body)
        if not 200 <= answer.status < 300:
            self._fail(answer, op)
        envelope = self._http.decode(answer.body, _Envelope, op)
        cost = envelope.extensions.cost if envelope.extensions else None
        if cost is not None:
            if cost.throttleStatus is not None:
                self.bucket.update(cost.throttleStatus, time.monotonic())
            if cost.requestedQueryCost is not None:
                self._costs[op] = cost.requestedQueryCost
        if envelope.errors:
            self._fail_errors(envelope.errors, cost, op)
        if bytes(envelope.data) in (b"", b"null"):
            raise Transient(f"Shopify {op}: an answer without data: {excerpt(answer.body)}")
        return self._http.decode(envelope.data, kind, op)

    def _fail(self, answer: Answer, op: str) -> None:
        self._http.fail_common(answer, op)
        message = _error_message(answer.body)
        if answer.status in (401, 403):
            why = f": {message}" if message else ""
            raise AuthFailed(
                self._http.scrub(
                    f"Shopify {op}: HTTP {answer.status}, the access token was refused{why}"
                )
            )
        # A 402 (shop frozen), 404 (no such shop), 423 (shop locked): the shop's state, not
        # the order's fault, so never a rejection of the order.
        raise ConnectorError(
            self._http.rejection(
                answer, f"Shopify {op}: HTTP {answer.status}: {message}" if message else None, op=op
            )
        )

    def _fail_errors(self, errors: list[_GqlError], cost: _Cost | None, op: str) -> None:
        codes = {e.extensions.code for e in errors if e.extensions is not None}
        text = self._http.scrub("; ".join(e.message for e in errors if e.message))
        if "THROTTLED" in codes:
            wait = 1.0
            if cost is not None and cost.throttleStatus is not None:
                status = cost.throttleStatus
                requested = cost.requestedQueryCost or self._costs.get(op, 0.0)
                wait = throttle_wait(requested, status.currentlyAvailable, status.restoreRate)
            raise RateLimited(f"Shopify {op}: throttled, retry after {wait:.2f} s", round(wait, 3))
        if "ACCESS_DENIED" in codes:
            raise AuthFailed(f"Shopify {op}: access denied (a missing API scope?): {text}")
        # The query did not run: a server error, or a document this api_version does not know.
        raise Transient(f"Shopify {op}: {text or 'errors without a message'}")


# -- reading -----------------------------------------------------------------------------------


def _shop_order(order: _Order) -> ShopOrder:
    modified = parse_moment(order.updatedAt)
    shipped: dict[str, int] = {}
    done = sorted(
        (f for f in order.fulfillments if f.status == "SUCCESS"), key=lambda f: f.createdAt
    )
    for fulfillment in done:
        lines = fulfillment.fulfillmentLineItems
        for line in lines.nodes if lines is not None else ():
            sku = line.lineItem.sku or ""
            shipped[sku] = shipped.get(sku, 0) + line.quantity
    if order.cancelledAt:
        status = ShopStatus.CANCELLED
    elif order.displayFulfillmentStatus == "FULFILLED":
        status = ShopStatus.COMPLETED
    elif order.displayFulfillmentStatus == "PARTIALLY_FULFILLED" and done:
        status = ShopStatus.PARTIALLY_SHIPPED
    else:
        status = ShopStatus.OTHER
    sfd_id = order.attribute(ATTR_ORDER_ID)
    return ShopOrder(
        shop_id=_legacy_id(order.id),
        status=status,
        modified_at=utc(modified) if modified else None,
        marketplace_reference=order.attribute(ATTR_REFERENCE) or order.sourceIdentifier or None,
        sfd_order_id=int(sfd_id) if sfd_id.isdigit() else None,
        tracking=_tracking(done),
        shipping_method=order.shippingLine.title if order.shippingLine else "",
        shipped=tuple(shipped.items()) if status is ShopStatus.PARTIALLY_SHIPPED else (),
    )


def _tracking(fulfillments: list[_Fulfillment]) -> ShopTracking | None:
    """The latest shipment's tracking: the one with a number, else the carrier alone."""
    for fulfillment in reversed(fulfillments):
        for info in fulfillment.trackingInfo:
            if info.number:
                return ShopTracking(
                    carrier=info.company or "",
                    tracking_number=info.number,
                    tracking_link=info.url or "",
                    shipped_on=_day(fulfillment.createdAt),
                )
    for fulfillment in reversed(fulfillments):
        for info in fulfillment.trackingInfo:
            if info.company:
                return ShopTracking(carrier=info.company, shipped_on=_day(fulfillment.createdAt))
    return None


def _match(orders: list[_Order], order: PushOrder) -> str | None:
    for candidate in orders:
        reference = candidate.attribute(ATTR_REFERENCE) or candidate.sourceIdentifier
        marketplace = candidate.attribute(ATTR_MARKETPLACE) or candidate.sourceName
        if reference == order.reference and marketplace == order.marketplace:
            return _legacy_id(candidate.id)
    return None


def _legacy_id(gid: str) -> str:
    """`gid://shopify/Order/123` as `123`, the id the merchant sees in the admin's address."""
    return gid.rsplit("/", 1)[-1]


def _day(value: str) -> date | None:
    moment = parse_moment(value)
    return moment.date() if moment else None


def _error_message(body: bytes) -> str:
    """Shopify's `{"errors": "..."}` (or a list of messages) on a non-2xx answer."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return ""
    errors = decoded.get("errors") if isinstance(decoded, dict) else None
    if isinstance(errors, str):
        return errors
    if isinstance(errors, list):
        return "; ".join(
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors
        )
    return ""


# -- writing -----------------------------------------------------------------------------------


def _quoted(value: str) -> str:
    """A value in Shopify's search syntax, quoted so spaces and colons stay inside it."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _money_set(amount: Decimal, currency: str) -> dict[str, Any]:
    return {"shopMoney": {"amount": f"{amount:f}", "currencyCode": currency}}


def _address(address: Address) -> dict[str, str]:
    """A MailingAddressInput; empty fields left out, as Shopify validates what it is given."""
    second = ", ".join(p for p in (address.street2, address.other) if p)
    province = address.province.strip()
    fields = {
        "firstName": address.first_name,
        "lastName": address.last_name,
        "company": address.company,
        "address1": address.street,
        "address2": second,
        "city": address.city,
        "zip": address.postal_code,
        "countryCode": address.country.upper(),
        # Shopify takes a province code (`CA`, `75`); a marketplace's full name has no place.
        "provinceCode": province if 0 < len(province) <= 3 else "",
        "phone": address.phone or address.mobile_phone,
    }
    return {k: v for k, v in fields.items() if v}
