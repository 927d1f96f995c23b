"""The eBay connector, call by call: OAuth, exact requests out, orders and errors back."""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from sfd.config import ChannelConfig, Duration
from sfd.connectors.base import (
    AuthFailed,
    OrderPage,
    RefundRequest,
    Rejected,
    ShipmentRequest,
    Transient,
)
from sfd.connectors.ebay import EbayConnector, fulfillment_id
from sfd.connectors.settings import EbaySettings
from sfd.daemon.loops import Poller
from sfd.domain import OrderStatus
from sfd.storage import Storage
from tests.connectors.conftest import sent

BASE = "https://api.ebay.test"
TOKEN_URL = "https://auth.ebay.test/identity/v1/oauth2/token"
CLIENT_ID = "MoebelHa-sfd-PRD-1a2b3c4d5-6e7f8a9b"
SECRET = "PRD-5ecret-0f1e2d3c4b5a"
REFRESH = "v^1.1#i^1#r^1#p^3#f^0#I^3#t^Ul4xMF8xOkZBQkM="
ACCESS = "v^1.1#i^1#p^3#r^0#I^3#f^0#t^H4sIAAAAccess1"
ACCESS_2 = "v^1.1#i^1#p^3#r^0#I^3#f^0#t^H4sIAAAAccess2"
SCOPE = "https://api.ebay.com/oauth/api_scope/sell.fulfillment"
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
ORDER_ID = "12-34567-89012"
ORDERS = re.compile(r"^https://api\.ebay\.test/sell/fulfillment/v1/order(\?.*)?$")
SETTINGS = EbaySettings(
    client_id=CLIENT_ID,
    client_secret=SECRET,
    refresh_token=REFRESH,
    base_url=BASE + "/",
    token_url=TOKEN_URL,
)


def order_url(order_id: str = ORDER_ID, tail: str = "") -> re.Pattern[str]:
    path = f"/sell/fulfillment/v1/order/{re.escape(order_id)}{tail}"
    return re.compile(rf"^https://api\.ebay\.test{path}$")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def eur(value: str) -> dict[str, str]:
    return {"value": value, "currency": "EUR"}


def ebay_order(
    order_id: str = ORDER_ID,
    *,
    payment: str = "PAID",
    fulfillment: str = "NOT_STARTED",
    cancel: str = "NONE_REQUESTED",
    **changes: Any,
) -> dict[str, Any]:
    """A getOrders order as eBay writes it: a German buyer, two line items, one without SKU."""
    ship_to = {
        "fullName": "Anna Schmidt",
        "companyName": "Atelier Schmidt GmbH",
        "contactAddress": {
            "addressLine1": "Hauptstraße 12",
            "addressLine2": "Hinterhaus, 3. OG",
            "city": "Berlin",
            "stateOrProvince": "Berlin",
            "postalCode": "10115",
            "countryCode": "DE",
        },
        "primaryPhone": {"phoneNumber": "+49 30 1234567"},
        "email": "3f9a1c7b2e@members.ebay.de",
    }
    order: dict[str, Any] = {
        "orderId": order_id,
        "legacyOrderId": "256012345678-2912345678001",
        "creationDate": "2026-11-27T18:42:10.000Z",
        "lastModifiedDate": "2026-11-28T07:15:33.482Z",
        "orderFulfillmentStatus": fulfillment,
        "orderPaymentStatus": payment,
        "sellerId": "moebelhaus_mitte",
        "buyer": {
            "username": "anna.s_berlin",
            "taxAddress": {
                "city": "Berlin",
                "stateOrProvince": "Berlin",
                "postalCode": "10115",
                "countryCode": "DE",
            },
            "buyerRegistrationAddress": {
                "fullName": "Anna Maria Schmidt",
                "contactAddress": {
                    "addressLine1": "Invalidenstraße 44",
                    "city": "Berlin",
                    "postalCode": "10115",
                    "countryCode": "DE",
                },
                "primaryPhone": {"phoneNumber": "+49 30 1234567"},
                "secondaryPhone": {"phoneNumber": "+49 171 7654321"},
                "email": "3f9a1c7b2e@members.ebay.de",
            },
        },
        "pricingSummary": {
            "priceSubtotal": eur("72.47"),
            "deliveryCost": eur("4.99"),
            "total": eur("77.46"),
        },
        "cancelStatus": {"cancelState": cancel, "cancelRequests": []},
        "paymentSummary": {
            "totalDueSeller": eur("77.46"),
            "refunds": [],
            "payments": [
                {
                    "paymentMethod": "EBAY",
                    "paymentReferenceId": "4B1C2D3E4F",
                    "paymentDate": "2026-11-27T18:42:31.000Z",
                    "amount": eur("77.46"),
                    "paymentStatus": "PAID",
                }
            ],
        },
        "fulfillmentHrefs": [],
        "fulfillmentStartInstructions": [
            {
                "fulfillmentInstructionsType": "SHIP_TO",
                "minEstimatedDeliveryDate": "2026-12-01T08:00:00.000Z",
                "maxEstimatedDeliveryDate": "2026-12-03T08:00:00.000Z",
                "ebaySupportedFulfillment": False,
                "shippingStep": {
                    "shipTo": ship_to,
                    "shippingCarrierCode": "DHL",
                    "shippingServiceCode": "DE_DHLPaket",
                },
            }
        ],
        "salesRecordReference": "4711",
        "totalFeeBasisAmount": eur("77.46"),
        "totalMarketplaceFee": eur("9.62"),
        "lineItems": [
            {
                "lineItemId": "10012345678901",
                "legacyItemId": "256012345678",
                "legacyVariationId": "555012345678",
                "sku": "TASSE-BLAU-300",
                "title": "Kaffeetasse Steingut blau 300 ml",
                "lineItemCost": eur("59.97"),
                "quantity": 3,
                "soldFormat": "FIXED_PRICE",
                "listingMarketplaceId": "EBAY_DE",
                "purchaseMarketplaceId": "EBAY_DE",
                "lineItemFulfillmentStatus": "NOT_STARTED",
                "total": eur("64.96"),
                "deliveryCost": {"shippingCost": eur("4.99")},
                "appliedPromotions": [],
                "taxes": [],
                "ebayCollectAndRemitTaxes": [
                    {"taxType": "VAT", "amount": eur("9.58"), "collectionMethod": "NET"}
                ],
                "properties": {"buyerProtection": True},
                "lineItemFulfillmentInstructions": {
                    "minEstimatedDeliveryDate": "2026-12-01T08:00:00.000Z",
                    "maxEstimatedDeliveryDate": "2026-12-03T08:00:00.000Z",
                    "shipByDate": "2026-12-01T22:59:59.000Z",
                    "guaranteedDelivery": False,
                },
                "refunds": [],
            },
            {
                "lineItemId": "10012345678902",
                "legacyItemId": "256087654321",
                "title": "Untersetzer Kork 4er-Set",
                "lineItemCost": eur("12.50"),
                "quantity": 1,
                "soldFormat": "FIXED_PRICE",
                "lineItemFulfillmentStatus": "NOT_STARTED",
                "total": eur("12.50"),
                "deliveryCost": {"shippingCost": eur("0.00")},
                "appliedPromotions": [],
                "taxes": [{"taxType": "VAT", "amount": eur("2.00")}],
                "lineItemFulfillmentInstructions": {
                    "shipByDate": "2026-11-30T22:59:59.000Z",
                    "guaranteedDelivery": False,
                },
                "refunds": [],
            },
        ],
    }
    order.update(changes)
    return order


def small_order(order_id: str) -> dict[str, Any]:
    """A minimal valid order, so that pages of 200 stay quick."""
    return {
        "orderId": order_id,
        "creationDate": "2026-11-27T18:42:10.000Z",
        "lastModifiedDate": "2026-11-28T07:15:33.482Z",
        "orderFulfillmentStatus": "NOT_STARTED",
        "orderPaymentStatus": "PAID",
        "pricingSummary": {"total": eur("10.00")},
        "lineItems": [],
    }


def listing(
    *orders: dict[str, Any] | str, total: int | None = None, next_page: str | None = None
) -> str:
    """A getOrders body; an order given as text is sent byte for byte."""
    texts = [o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in orders]
    head: dict[str, Any] = {"href": f"{BASE}/sell/fulfillment/v1/order", "limit": 200}
    head["total"] = len(orders) if total is None else total
    if next_page is not None:
        head["next"] = next_page
    return json.dumps(head)[:-1] + ', "orders": [' + ", ".join(texts) + "]}"


def grant(http: aioresponses, access: str = ACCESS, expires_in: int = 7200) -> None:
    """One answer of eBay's token endpoint to a refresh token grant."""
    http.post(
        TOKEN_URL,
        payload={
            "access_token": access,
            "expires_in": expires_in,
            "token_type": "User Access Token",
        },
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def connector(clock: Clock) -> AsyncIterator[EbayConnector]:
    ebay = EbayConnector(SETTINGS, clock=clock)
    yield ebay
    await ebay.aclose()


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> list[URL]:
    """Every URL exactly as handed to aiohttp, before aioresponses normalizes it."""
    urls: list[URL] = []
    original: Callable[..., Any] = aiohttp.ClientSession.request

    def request(self: aiohttp.ClientSession, method: str, url: URL, **kwargs: Any) -> Any:
        urls.append(url)
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "request", request)
    return urls


async def pages(connector: EbayConnector, since: datetime | None = None) -> list[OrderPage]:
    return [page async for page in connector.fetch_orders(since)]


# -- OAuth ------------------------------------------------------------------------------------


async def test_the_token_comes_from_a_refresh_token_grant_with_basic_auth(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(ORDERS, body=listing())

    await pages(connector)

    [(_, url, kwargs)] = sent(http, "POST")
    assert str(url) == TOKEN_URL
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert kwargs["headers"]["Authorization"] == f"Basic {basic}"
    assert kwargs["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert kwargs["data"] == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "scope": SCOPE,
    }
    assert kwargs["allow_redirects"] is False
    [(_, _, listed)] = sent(http, "GET")
    assert listed["headers"]["Authorization"] == f"Bearer {ACCESS}"
    assert listed["headers"]["Accept"] == "application/json"


async def test_the_token_is_kept_until_a_minute_before_it_expires(
    http: aioresponses, connector: EbayConnector, clock: Clock
) -> None:
    grant(http, ACCESS, expires_in=7200)
    grant(http, ACCESS_2, expires_in=7200)
    http.get(ORDERS, body=listing(), repeat=True)

    await pages(connector)
    clock.advance(7200 - 61)
    await pages(connector)
    assert len(sent(http, "POST")) == 1

    clock.advance(1)
    await pages(connector)

    assert len(sent(http, "POST")) == 2
    bearers = [kwargs["headers"]["Authorization"] for _, _, kwargs in sent(http, "GET")]
    assert bearers == [f"Bearer {ACCESS}", f"Bearer {ACCESS}", f"Bearer {ACCESS_2}"]


async def test_a_401_renews_the_token_and_retries_once(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http, ACCESS)
    grant(http, ACCESS_2)
    http.get(ORDERS, status=401, payload={"errors": [{"errorId": 1001, "message": "Invalid"}]})
    http.get(ORDERS, body=listing(small_order("1")))

    [page] = await pages(connector)

    assert [o.reference for o in page.orders] == ["1"]
    bearers = [kwargs["headers"]["Authorization"] for _, _, kwargs in sent(http, "GET")]
    assert bearers == [f"Bearer {ACCESS}", f"Bearer {ACCESS_2}"]


async def test_a_second_401_fails_auth(http: aioresponses, connector: EbayConnector) -> None:
    grant(http, ACCESS)
    grant(http, ACCESS_2)
    http.get(ORDERS, status=401, body="", repeat=True)

    with pytest.raises(AuthFailed, match="HTTP 401"):
        await pages(connector)

    assert len(sent(http, "POST")) == 2
    assert len(sent(http, "GET")) == 2


async def test_a_403_fails_auth_without_a_retry(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    body = {
        "errors": [
            {
                "errorId": 1100,
                "domain": "ACCESS",
                "category": "REQUEST",
                "message": "Access denied",
                "longMessage": "Insufficient permissions to fulfill the request.",
            }
        ]
    }
    http.get(ORDERS, status=403, payload=body)

    with pytest.raises(AuthFailed) as caught:
        await pages(connector)

    assert str(caught.value) == (
        "eBay getOrders (offset 0): HTTP 403, the access token was refused: "
        "Access denied (eBay error 1100)"
    )
    assert len(sent(http, "POST")) == 1
    assert len(sent(http, "GET")) == 1


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {
                "error": "invalid_grant",
                "error_description": "the provided authorization refresh token is invalid or "
                "was issued to another client",
            },
            "HTTP 400 invalid_grant: the provided authorization refresh token is invalid",
        ),
        (
            401,
            {"error": "invalid_client", "error_description": "client authentication failed"},
            "HTTP 401 invalid_client: client authentication failed",
        ),
    ],
)
async def test_a_refused_refresh_token_fails_auth_without_secrets(
    http: aioresponses,
    connector: EbayConnector,
    status: int,
    body: dict[str, str],
    expected: str,
) -> None:
    http.post(TOKEN_URL, status=status, payload=body)

    with pytest.raises(AuthFailed) as caught:
        await pages(connector)

    message = str(caught.value)
    assert expected in message
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    for secret in (SECRET, REFRESH, basic):
        assert secret not in message
    assert sent(http, "GET") == []


async def test_a_token_endpoint_echoing_a_secret_is_scrubbed(
    http: aioresponses, connector: EbayConnector
) -> None:
    http.post(TOKEN_URL, status=400, payload={"error": "invalid_grant", "token": REFRESH})

    with pytest.raises(AuthFailed) as caught:
        await pages(connector)

    assert REFRESH not in str(caught.value)


async def test_a_token_endpoint_outage_is_transient(
    http: aioresponses, connector: EbayConnector
) -> None:
    http.post(TOKEN_URL, status=503, body="Service Unavailable")

    with pytest.raises(Transient, match="OAuth refresh token grant: HTTP 503"):
        await pages(connector)


# -- listing (getOrders) ----------------------------------------------------------------------


async def test_listing_filters_on_last_modification_percent_encoded(
    http: aioresponses, connector: EbayConnector, wire: list[URL]
) -> None:
    grant(http)
    http.get(ORDERS, body=listing())
    since = datetime(2026, 11, 28, 7, 15, 33, 482_999, tzinfo=timezone(timedelta(hours=1)))

    await pages(connector, since)

    # Exactly as eBay documents it: `[` and `]` as %5B and %5D, the colons as they are.
    assert str(wire[-1]) == (
        "https://api.ebay.test/sell/fulfillment/v1/order"
        "?filter=lastmodifieddate:%5B2026-11-28T06:15:33.482Z..%5D&limit=200&offset=0"
    )
    [(method, url, kwargs)] = sent(http, "GET")
    assert method == "GET"
    assert url.path == "/sell/fulfillment/v1/order"
    assert "filter=lastmodifieddate:%5B2026-11-28T06:15:33.482Z..%5D" in url.raw_query_string
    assert dict(url.query) == {
        "filter": "lastmodifieddate:[2026-11-28T06:15:33.482Z..]",
        "limit": "200",
        "offset": "0",
    }
    assert kwargs["allow_redirects"] is False


@pytest.mark.parametrize(
    ("since", "start"),
    [
        # No bound at all (the poller always gives one): as far back as getOrders reaches.
        (None, "2026-08-31T11:00:00.000Z"),
        # eBay's date filters only reach 90 days back: an older cursor comes forward.
        (NOW - timedelta(days=200), "2026-08-31T11:00:00.000Z"),
        # A cursor ahead of our clock never asks for the future.
        (NOW + timedelta(minutes=5), "2026-11-29T10:00:00.000Z"),
    ],
)
async def test_listing_start_dates(
    http: aioresponses, connector: EbayConnector, since: datetime | None, start: str
) -> None:
    grant(http)
    http.get(ORDERS, body=listing())

    await pages(connector, since)

    [(_, url, _)] = sent(http, "GET")
    assert url.query["filter"] == f"lastmodifieddate:[{start}..]"


async def test_a_first_poll_asks_only_for_the_channels_import_since(
    http: aioresponses, connector: EbayConnector, clock: Clock, storage: Storage
) -> None:
    """The poller, with no cursor yet, bounds eBay's filter by `import_since`, not 30 days."""
    grant(http)
    http.get(ORDERS, body=listing(ebay_order()))
    channel = ChannelConfig(
        name="ebay-de", store=2, connector="ebay", import_since=Duration.parse("7d")
    )
    channel_id = (await storage.channels.channel_ids())["ebay-de"]
    assert await storage.channels.cursor(channel_id) is None
    poller = Poller(channel, channel_id, storage, connector, clock)

    await poller.tick()

    [(_, url, _)] = sent(http, "GET")
    assert url.query["filter"] == "lastmodifieddate:[2026-11-22T10:00:00.000Z..]"
    assert poller.status.detail["created"] == 1
    # The next poll follows the cursor the first one left, no longer `import_since`.
    assert await storage.channels.cursor(channel_id) is not None


async def test_listing_follows_offsets_until_total(
    http: aioresponses, connector: EbayConnector
) -> None:
    chunks = {
        "0": [small_order(f"A-{n}") for n in range(200)],
        "200": [small_order(f"A-{n}") for n in range(200, 400)],
        "400": [small_order(f"A-{n}") for n in range(400, 450)],
    }
    offsets: list[str] = []

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        offsets.append(url.query["offset"])
        assert url.query["limit"] == "200"
        more = f"{BASE}/sell/fulfillment/v1/order?limit=200&offset=x"
        return CallbackResult(body=listing(*chunks[url.query["offset"]], total=450, next_page=more))

    grant(http)
    http.get(ORDERS, callback=answer, repeat=True)

    result = await pages(connector)

    assert offsets == ["0", "200", "400"]
    assert [len(p.orders) for p in result] == [200, 200, 50]
    assert [o.reference for p in result for o in p.orders] == [f"A-{n}" for n in range(450)]


async def test_listing_without_total_follows_next(
    http: aioresponses, connector: EbayConnector
) -> None:
    first = json.loads(listing(small_order("1"), next_page=f"{BASE}/x?offset=1"))
    del first["total"]
    last = json.loads(listing(small_order("2")))
    del last["total"]
    grant(http)
    http.get(ORDERS, payload=first)
    http.get(ORDERS, payload=last)

    result = await pages(connector)

    assert [o.reference for p in result for o in p.orders] == ["1", "2"]
    assert [url.query["offset"] for _, url, _ in sent(http, "GET")] == ["0", "1"]


async def test_listing_stops_on_an_empty_page(http: aioresponses, connector: EbayConnector) -> None:
    grant(http)
    http.get(ORDERS, body=listing(total=7, next_page=f"{BASE}/x"))

    result = await pages(connector)

    assert len(result) == 1
    assert len(sent(http, "GET")) == 1


async def test_listing_normalizes_a_german_order(
    http: aioresponses, connector: EbayConnector
) -> None:
    text = json.dumps(ebay_order(), ensure_ascii=False, indent=1)
    grant(http)
    http.get(ORDERS, body=listing(text))

    [page] = await pages(connector)

    assert page.skipped == []
    [order] = page.orders
    assert order.reference == ORDER_ID
    assert order.status is OrderStatus.WAITING_SHIPMENT
    assert order.created_at == datetime(2026, 11, 27, 18, 42, 10, tzinfo=UTC)
    assert order.updated_at == datetime(2026, 11, 28, 7, 15, 33, 482_000, tzinfo=UTC)
    # The earliest ship-by date of the line items.
    assert order.latest_ship_date == datetime(2026, 11, 30, 22, 59, 59, tzinfo=UTC)
    assert order.currency == "EUR"
    assert order.product_amount == Decimal("72.47")
    assert order.shipping_amount == Decimal("4.99")
    assert order.total_amount == Decimal("77.46")
    assert order.payment_method == "EBAY"
    assert order.shipping_method == "DE_DHLPaket"
    assert order.raw == text.encode()
    assert order.shipment is None

    shipping = order.shipping_address
    assert (shipping.first_name, shipping.last_name) == ("Anna", "Schmidt")
    assert shipping.company == "Atelier Schmidt GmbH"
    assert (shipping.street, shipping.street2) == ("Hauptstraße 12", "Hinterhaus, 3. OG")
    assert (shipping.postal_code, shipping.city, shipping.province, shipping.country) == (
        "10115",
        "Berlin",
        "Berlin",
        "DE",
    )
    assert shipping.phone == "+49 30 1234567"
    assert shipping.email == "3f9a1c7b2e@members.ebay.de"
    billing = order.billing_address
    assert (billing.first_name, billing.last_name) == ("Anna", "Maria Schmidt")
    assert billing.street == "Invalidenstraße 44"
    assert (billing.phone, billing.mobile_phone) == ("+49 30 1234567", "+49 171 7654321")
    assert billing.email == "3f9a1c7b2e@members.ebay.de"

    cup, coasters = order.items
    assert cup.reference == "TASSE-BLAU-300"
    assert cup.channel_reference == "10012345678901"
    assert cup.quantity == 3
    assert cup.price == Decimal("19.99")  # the line total 59.97 over 3, exactly
    assert cup.name == "Kaffeetasse Steingut blau 300 ml"
    assert cup.status == "NOT_STARTED"
    assert cup.tax_amount == Decimal("9.58")
    assert cup.additional_fields == {
        "line_total": "59.97",
        "shipping_cost": "4.99",
        "legacy_item_id": "256012345678",
        "legacy_variation_id": "555012345678",
        "ebay_collect_and_remit_tax": "9.58",
        "ebay_collect_and_remit_taxes": [{"tax_type": "VAT", "amount": "9.58"}],
    }
    # No SKU: the listing's item id stands in.
    assert coasters.reference == "256087654321"
    assert coasters.price == Decimal("12.50")
    assert coasters.tax_amount == Decimal("2.00")
    assert all(type(i.price) is Decimal for i in order.items)

    assert order.additional_fields == {
        "order_payment_status": "PAID",
        "order_fulfillment_status": "NOT_STARTED",
        "cancel_state": "NONE_REQUESTED",
        "legacy_order_id": "256012345678-2912345678001",
        "sales_record_reference": "4711",
        "seller_id": "moebelhaus_mitte",
        "buyer_username": "anna.s_berlin",
        "fulfillment_instructions_type": "SHIP_TO",
        "shipping_carrier_code": "DHL",
        "marketplace_fee": "9.62",
        "buyer_tax_address": {
            "city": "Berlin",
            "province": "Berlin",
            "postal_code": "10115",
            "country": "DE",
        },
    }


async def test_without_registration_address_billing_is_the_shipping_address(
    http: aioresponses, connector: EbayConnector
) -> None:
    order = ebay_order()
    del order["buyer"]["buyerRegistrationAddress"]
    # eBay masks a buyer's email after 14 days.
    order["fulfillmentStartInstructions"][0]["shippingStep"]["shipTo"]["email"] = "Invalid Request"
    grant(http)
    http.get(ORDERS, body=listing(order))

    [page] = await pages(connector)

    [normalized] = page.orders
    assert normalized.billing_address == normalized.shipping_address
    assert normalized.shipping_address.email == ""


async def test_amounts_stay_exact_decimals(http: aioresponses, connector: EbayConnector) -> None:
    order = ebay_order()
    order["lineItems"][0]["lineItemCost"] = eur("0.30")
    order["lineItems"][0]["quantity"] = 3
    order["pricingSummary"] = {"deliveryCost": eur("0.2"), "total": eur("13.00")}
    grant(http)
    http.get(ORDERS, body=listing(order))

    [page] = await pages(connector)

    [normalized] = page.orders
    assert normalized.items[0].price == Decimal("0.1")
    assert normalized.shipping_amount == Decimal("0.2")
    # No priceSubtotal: the line totals add up, exactly.
    assert normalized.product_amount == Decimal("12.80")


REFUND = [{"refundId": "5012345678", "refundStatus": "REFUNDED", "amount": eur("77.46")}]


@pytest.mark.parametrize(
    ("payment", "fulfillment", "cancel", "refunds", "status"),
    [
        ("PAID", "NOT_STARTED", "NONE_REQUESTED", [], OrderStatus.WAITING_SHIPMENT),
        ("PAID", "IN_PROGRESS", "NONE_REQUESTED", [], OrderStatus.PARTIALLY_SHIPPED),
        ("PAID", "FULFILLED", "NONE_REQUESTED", [], OrderStatus.SHIPPED),
        # A buyer's cancellation request changes nothing until it is decided.
        ("PAID", "NOT_STARTED", "IN_PROGRESS", [], OrderStatus.WAITING_SHIPMENT),
        ("FULLY_REFUNDED", "NOT_STARTED", "CANCELED", REFUND, OrderStatus.CANCELLED),
        ("PAID", "NOT_STARTED", "CANCELED", [], OrderStatus.CANCELLED),
        ("FULLY_REFUNDED", "FULFILLED", "NONE_REQUESTED", REFUND, OrderStatus.REFUNDED),
        (
            "PARTIALLY_REFUNDED",
            "FULFILLED",
            "NONE_REQUESTED",
            REFUND,
            OrderStatus.PARTIALLY_REFUNDED,
        ),
        # PENDING with a refund listed is a refund under way: the buyer did pay.
        ("PENDING", "FULFILLED", "NONE_REQUESTED", REFUND, OrderStatus.SHIPPED),
    ],
)
async def test_order_states_map_to_statuses(
    http: aioresponses,
    connector: EbayConnector,
    payment: str,
    fulfillment: str,
    cancel: str,
    refunds: list[dict[str, Any]],
    status: OrderStatus,
) -> None:
    order = ebay_order(payment=payment, fulfillment=fulfillment, cancel=cancel)
    order["paymentSummary"]["refunds"] = refunds
    grant(http)
    http.get(ORDERS, body=listing(order))

    [page] = await pages(connector)

    assert [o.status for o in page.orders] == [status]


async def test_unpaid_orders_are_not_imported_nor_skipped(
    http: aioresponses, connector: EbayConnector
) -> None:
    orders = [
        ebay_order("1", payment="PENDING"),
        ebay_order("2", payment="FAILED"),
        # Not paid and incomplete: still silently left for later, not reported.
        {"orderId": "3", "orderPaymentStatus": "PENDING", "pricingSummary": "?"},
        ebay_order("4"),
    ]
    grant(http)
    http.get(ORDERS, body=listing(*orders))

    [page] = await pages(connector)

    assert [o.reference for o in page.orders] == ["4"]
    assert page.skipped == []


_DELETE = object()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(order: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = order
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            _set("lineItems.0.lineItemCost.value", "zwölf"),
            "lineItems[0].lineItemCost.value: invalid decimal string",
        ),
        (_set("pricingSummary.total", _DELETE), "pricingSummary.total: missing"),
        (
            _set("lineItems.0.quantity", "drei"),
            "lineItems[0].quantity: expected `int`, got `str`",
        ),
        (
            _set("orderFulfillmentStatus", "TELEPORTED"),
            "orderFulfillmentStatus: unknown status 'TELEPORTED'",
        ),
        (
            _set("orderPaymentStatus", "BARTERED"),
            "orderPaymentStatus: unknown status 'BARTERED'",
        ),
        (
            _set("lineItems.1.legacyItemId", _DELETE),
            "lineItems[1].sku: missing, and no legacyItemId either",
        ),
        (
            _set("pricingSummary.deliveryCost.currency", "USD"),
            "pricingSummary.deliveryCost.currency: 'USD' differs from the order's 'EUR'",
        ),
        (
            _set("lineItems.1.taxes.0.amount.value", "NaN"),
            "lineItems[1].taxes[0].amount.value: expected a finite amount, got NaN",
        ),
    ],
)
async def test_a_malformed_order_is_skipped_naming_the_field(
    http: aioresponses,
    connector: EbayConnector,
    change: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    broken = ebay_order("2")
    change(broken)
    grant(http)
    http.get(ORDERS, body=listing(ebay_order("1"), broken, ebay_order("3")))

    [page] = await pages(connector)

    assert [o.reference for o in page.orders] == ["1", "3"]
    [skipped] = page.skipped
    assert skipped.reference == "2"
    assert skipped.reason == reason
    assert skipped.updated_at == datetime(2026, 11, 28, 7, 15, 33, 482_000, tzinfo=UTC)


async def test_an_order_without_id_is_skipped_by_its_position(
    http: aioresponses, connector: EbayConnector
) -> None:
    nameless = ebay_order()
    del nameless["orderId"]
    grant(http)
    http.get(ORDERS, body=listing(ebay_order("1"), nameless, "null"))

    [page] = await pages(connector)

    assert [o.reference for o in page.orders] == ["1"]
    first, second = page.skipped
    assert (first.reference, first.reason) == ("#1", "orderId: missing")
    assert (second.reference, second.updated_at) == ("#2", None)
    assert second.reason == "order: Expected `object`, got `null`"


async def test_a_skipped_order_without_a_readable_date_has_none(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(ORDERS, body=listing(ebay_order("1", lastModifiedDate="28.11.2026")))

    [page] = await pages(connector)

    [skipped] = page.skipped
    assert skipped.reason == "lastModifiedDate: invalid RFC3339 encoded datetime"
    assert skipped.updated_at is None


# -- no acceptance, no cancellation -----------------------------------------------------------


async def test_accept_refuse_and_cancel_are_refused_without_a_call(
    http: aioresponses, connector: EbayConnector
) -> None:
    for operation in (connector.accept, connector.refuse):
        with pytest.raises(Rejected, match="eBay has no acceptance step"):
            await operation(ORDER_ID)
    with pytest.raises(Rejected) as caught:
        await connector.cancel(ORDER_ID)

    assert "Post-Order API" in caught.value.message
    assert sent(http) == []


# -- refund (issueRefund) and delivery --------------------------------------------------------

ISSUE_REFUND = order_url(tail="/issue_refund")


async def test_a_full_refund_issues_the_order_total_at_order_level(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), payload=ebay_order(fulfillment="FULFILLED"))
    http.post(ISSUE_REFUND, payload={"refundId": "5R1", "refundStatus": "PENDING"})

    await connector.refund(ORDER_ID, RefundRequest())

    [(_, url, kwargs)] = [c for c in sent(http, "POST") if c[1].path.endswith("/issue_refund")]
    assert url.path == f"/sell/fulfillment/v1/order/{ORDER_ID}/issue_refund"
    assert kwargs["headers"]["Authorization"] == f"Bearer {ACCESS}"
    assert kwargs["json"] == {
        "reasonForRefund": "OTHER",
        "comment": "Refund issued by the seller",
        "orderLevelRefundAmount": eur("77.46"),
    }


async def test_a_partial_refund_names_the_line_items_of_the_skus(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), payload=ebay_order(fulfillment="FULFILLED"))
    http.post(ISSUE_REFUND, payload={"refundId": "5R1"})

    await connector.refund(
        ORDER_ID, RefundRequest(shipping=False, items={"TASSE-BLAU-300": 1, "256087654321": 1})
    )

    [(_, _, kwargs)] = [c for c in sent(http, "POST") if c[1].path.endswith("/issue_refund")]
    assert kwargs["json"]["refundItems"] == [
        {"lineItemId": "10012345678901", "refundAmount": eur("19.99")},
        {"lineItemId": "10012345678902", "refundAmount": eur("12.50")},
    ]
    assert "orderLevelRefundAmount" not in kwargs["json"]


async def test_an_order_ebay_shows_refunded_is_not_refunded_again(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    order = ebay_order(fulfillment="FULFILLED")
    order["paymentSummary"]["refunds"] = [{"refundId": "5R1", "refundStatus": "PENDING"}]
    http.get(order_url(), payload=order)

    await connector.refund(ORDER_ID, RefundRequest())

    assert not [c for c in sent(http, "POST") if c[1].path.endswith("/issue_refund")]


async def test_a_refund_without_the_finances_scope_is_rejected_not_an_auth_failure(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), payload=ebay_order(fulfillment="FULFILLED"))
    http.post(ISSUE_REFUND, status=403, payload={"errors": [{"message": "Insufficient scope"}]})

    with pytest.raises(Rejected, match=r"sell\.finances"):
        await connector.refund(ORDER_ID, RefundRequest())


async def test_deliver_is_refused_without_a_call(
    http: aioresponses, connector: EbayConnector
) -> None:
    with pytest.raises(Rejected, match="no delivery confirmation"):
        await connector.deliver(ORDER_ID)
    assert sent(http) == []


# -- ship (createShippingFulfillment) ---------------------------------------------------------

FULFILLMENTS = order_url(tail="/shipping_fulfillment")
LOCATION = f"{BASE}/sell/fulfillment/v1/order/{ORDER_ID}/shipping_fulfillment/00340434161234567890"


async def test_a_full_shipment_ships_every_line_item_with_its_quantity(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), payload=ebay_order())
    http.post(FULFILLMENTS, status=201, headers={"Location": LOCATION}, body="")

    await connector.ship(
        ORDER_ID, ShipmentRequest(carrier="DHL", tracking_number="00340434161234567890")
    )

    [(_, read, _)] = sent(http, "GET")
    assert read.path == f"/sell/fulfillment/v1/order/{ORDER_ID}"
    [(_, url, kwargs)] = [c for c in sent(http, "POST") if str(c[1]) != TOKEN_URL]
    assert url.path == f"/sell/fulfillment/v1/order/{ORDER_ID}/shipping_fulfillment"
    assert kwargs["headers"]["Authorization"] == f"Bearer {ACCESS}"
    assert kwargs["json"] == {
        "lineItems": [
            {"lineItemId": "10012345678901", "quantity": 3},
            {"lineItemId": "10012345678902", "quantity": 1},
        ],
        "shippedDate": "2026-11-29T10:00:00.000Z",
        "shippingCarrierCode": "DHL",
        "trackingNumber": "00340434161234567890",
    }
    assert connector.last_fulfillment_id == "00340434161234567890"


#: eBay's answer to a fulfillment it will not take, without saying why.
INVALID_INPUT = {"errors": [{"errorId": 32600, "message": "Invalid input data"}]}


def first_line_fulfilled() -> dict[str, Any]:
    """The order in progress: its first line fulfilled, its second not yet."""
    order = ebay_order(fulfillment="IN_PROGRESS")
    order["lineItems"][0]["lineItemFulfillmentStatus"] = "FULFILLED"
    return order


def partially_refunded() -> dict[str, Any]:
    """An order whose first line was refunded in full before anything shipped."""
    order = ebay_order(payment="PARTIALLY_REFUNDED")
    order["lineItems"][0]["refunds"] = [
        {"amount": eur("64.96"), "refundDate": "2026-11-28T07:15:00.000Z", "refundId": "5R1"}
    ]
    # A goodwill refund of part of the second line's price leaves it to ship.
    order["lineItems"][1]["refunds"] = [{"amount": eur("2.00"), "refundId": "5R2"}]
    return order


async def test_a_partially_refunded_order_reads_its_refunded_line_as_refunded(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(ORDERS, body=listing(json.dumps(partially_refunded())))

    [page] = await pages(connector)

    [order] = page.orders
    assert order.status is OrderStatus.PARTIALLY_REFUNDED
    assert [(i.channel_reference, i.status) for i in order.items] == [
        ("10012345678901", "REFUNDED"),
        ("10012345678902", "NOT_STARTED"),
    ]


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(first_line_fulfilled(), id="leaving-out-a-line-shipped-already"),
        pytest.param(partially_refunded(), id="leaving-out-a-line-refunded"),
    ],
)
async def test_a_full_shipment_ships_only_the_lines_left(
    http: aioresponses, connector: EbayConnector, order: dict[str, Any]
) -> None:
    grant(http)
    http.get(order_url(), payload=order)
    http.post(FULFILLMENTS, status=201, headers={"Location": LOCATION})

    await connector.ship(ORDER_ID, ShipmentRequest(carrier="DHL", tracking_number="0034"))

    [(_, _, kwargs)] = [c for c in sent(http, "POST") if str(c[1]) != TOKEN_URL]
    assert kwargs["json"]["lineItems"] == [{"lineItemId": "10012345678902", "quantity": 1}]


def lines_left_fulfilled() -> dict[str, Any]:
    """The partially refunded order once the line left to ship is fulfilled."""
    shipped = partially_refunded()
    shipped["lineItems"][1]["lineItemFulfillmentStatus"] = "FULFILLED"
    return shipped


@pytest.mark.parametrize(
    ("before", "refusal", "after"),
    [
        pytest.param(
            partially_refunded(),
            {"status": 400, "payload": {"errors": [{"message": "Invalid line"}]}},
            lines_left_fulfilled(),
            id="the-lines-left-are-fulfilled",
        ),
        pytest.param(
            ebay_order(),
            {
                "status": 409,
                "payload": INVALID_INPUT,
            },
            ebay_order(fulfillment="FULFILLED"),
            id="the-order-was-fulfilled-meanwhile",
        ),
    ],
)
async def test_a_refused_full_shipment_of_an_order_found_fulfilled_succeeds(
    http: aioresponses,
    connector: EbayConnector,
    before: dict[str, Any],
    refusal: dict[str, Any],
    after: dict[str, Any],
) -> None:
    """eBay refuses the fulfillment; the order read again shows nothing left to ship."""
    grant(http)
    http.get(order_url(), payload=before)
    http.post(FULFILLMENTS, **refusal)
    http.get(order_url(), payload=after)

    await connector.ship(ORDER_ID, ShipmentRequest(carrier="DHL", tracking_number="0034"))

    assert len(sent(http, "GET")) == 2


async def test_a_full_shipment_of_an_order_fulfilled_already_sends_nothing(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), payload=ebay_order(fulfillment="FULFILLED"))

    await connector.ship(ORDER_ID, ShipmentRequest(carrier="DHL", tracking_number="0034"))

    assert [c for c in sent(http, "POST") if str(c[1]) != TOKEN_URL] == []


async def test_a_partial_shipment_ships_the_items_named(
    http: aioresponses, connector: EbayConnector, clock: Clock
) -> None:
    clock.now = datetime(2026, 11, 29, 14, 3, 7, 123_456, tzinfo=UTC)
    grant(http)
    http.post(FULFILLMENTS, status=201, headers={"Location": LOCATION + "/"})

    await connector.ship(
        ORDER_ID,
        ShipmentRequest(carrier="Hermes", tracking_number="H1001", items={"10012345678901": 2}),
    )

    assert sent(http, "GET") == []
    [(_, _, kwargs)] = [c for c in sent(http, "POST") if str(c[1]) != TOKEN_URL]
    assert kwargs["json"] == {
        "lineItems": [{"lineItemId": "10012345678901", "quantity": 2}],
        "shippedDate": "2026-11-29T14:03:07.123Z",
        "shippingCarrierCode": "Hermes",
        "trackingNumber": "H1001",
    }
    assert connector.last_fulfillment_id == "00340434161234567890"


async def test_a_carrier_without_tracking_number_is_not_sent(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.post(FULFILLMENTS, status=201, headers={"Location": LOCATION})

    receipt = await connector.ship(
        ORDER_ID, ShipmentRequest(carrier="DHL", items={"10012345678902": 1})
    )

    [(_, _, kwargs)] = [c for c in sent(http, "POST") if str(c[1]) != TOKEN_URL]
    assert kwargs["json"] == {
        "lineItems": [{"lineItemId": "10012345678902", "quantity": 1}],
        "shippedDate": "2026-11-29T10:00:00.000Z",
    }
    assert receipt.carrier == "" and receipt.tracking_numbers == ()
    assert receipt.notes == ("eBay takes the carrier only with a tracking number: it was not sent",)


async def test_a_tracking_number_without_carrier_ships_without_either(
    http: aioresponses, connector: EbayConnector
) -> None:
    """eBay's trackingNumber and shippingCarrierCode go together or not at all: the shipment
    still reaches eBay, and the receipt names the number left out."""
    grant(http)
    http.post(FULFILLMENTS, status=201, headers={"Location": LOCATION})

    receipt = await connector.ship(
        ORDER_ID, ShipmentRequest(tracking_number="0034", items={"10012345678902": 1})
    )

    [(_, _, kwargs)] = [c for c in sent(http, "POST") if str(c[1]) != TOKEN_URL]
    assert "trackingNumber" not in kwargs["json"]
    assert "shippingCarrierCode" not in kwargs["json"]
    assert receipt.tracking_numbers == () and receipt.not_forwarded == ("0034",)
    assert "only with its carrier" in receipt.notes[0]


async def test_several_tracking_numbers_make_one_fulfillment_per_package(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), payload=ebay_order())
    for _ in range(3):
        http.post(FULFILLMENTS, status=201, headers={"Location": LOCATION})

    receipt = await connector.ship(
        ORDER_ID, ShipmentRequest(carrier="DHL", tracking_number="0034, 0035;0036")
    )

    bodies = [kw["json"] for _, url, kw in sent(http, "POST") if str(url) != TOKEN_URL]
    assert [b["trackingNumber"] for b in bodies] == ["0034", "0035", "0036"]
    assert {b["shippingCarrierCode"] for b in bodies} == {"DHL"}
    lines = [
        {"lineItemId": "10012345678901", "quantity": 3},
        {"lineItemId": "10012345678902", "quantity": 1},
    ]
    assert all(b["lineItems"] == lines for b in bodies)
    assert len(sent(http, "GET")) == 1  # the lines are read once, for every package
    assert receipt.carrier == "DHL"
    assert receipt.tracking_numbers == ("0034", "0035", "0036")
    assert receipt.not_forwarded == ()


async def test_a_later_package_ebay_refuses_is_named_not_failed(
    http: aioresponses, connector: EbayConnector
) -> None:
    """eBay has the shipment once the first package is taken: a refused second package must
    not fail it (a retry would find the order fulfilled); the receipt names the number."""
    grant(http)
    http.post(FULFILLMENTS, status=201, headers={"Location": LOCATION})
    http.post(
        FULFILLMENTS,
        status=400,
        payload={"errors": [{"errorId": 32100, "message": "Invalid tracking number."}]},
    )

    receipt = await connector.ship(
        ORDER_ID,
        ShipmentRequest(carrier="DHL", tracking_number="0034 BAD", items={"10012345678902": 1}),
    )

    assert receipt.tracking_numbers == ("0034",)
    assert receipt.not_forwarded == ("BAD",)
    assert "package BAD" in receipt.notes[0] and "Invalid tracking number" in receipt.notes[0]


@pytest.mark.parametrize(
    ("shipment", "message"),
    [
        (ShipmentRequest(carrier="DHL", tracking_number="1", items={}), "names no eBay line"),
        (
            ShipmentRequest(carrier="DHL", tracking_number="1", items={"10012345678901": 0}),
            "quantity 0 is not positive",
        ),
    ],
)
async def test_a_shipment_ebay_cannot_take_is_refused_without_a_call(
    http: aioresponses, connector: EbayConnector, shipment: ShipmentRequest, message: str
) -> None:
    with pytest.raises(Rejected, match=message):
        await connector.ship(ORDER_ID, shipment)

    assert sent(http) == []


async def test_a_refused_shipment_of_items_fulfilled_already_succeeds(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.post(FULFILLMENTS, status=400, payload=INVALID_INPUT)
    http.get(order_url(), payload=first_line_fulfilled())

    await connector.ship(
        ORDER_ID, ShipmentRequest(carrier="DHL", tracking_number="1", items={"10012345678901": 3})
    )

    assert len(sent(http, "GET")) == 1
    assert connector.last_fulfillment_id is None


async def test_a_refused_shipment_keeps_ebays_message(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.post(
        FULFILLMENTS,
        status=400,
        payload={
            "errors": [
                {
                    "errorId": 32300,
                    "domain": "API_FULFILLMENT",
                    "category": "REQUEST",
                    "message": "Invalid shipment tracking number or carrier",
                }
            ]
        },
    )
    http.get(order_url(), payload=ebay_order())

    with pytest.raises(Rejected) as caught:
        await connector.ship(
            ORDER_ID,
            ShipmentRequest(carrier="Brieftaube", tracking_number="1", items={"10012345678902": 1}),
        )

    assert caught.value.message == "Invalid shipment tracking number or carrier (eBay error 32300)"


async def test_shipping_an_order_ebay_does_not_know_is_rejected(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), status=404, body="")

    with pytest.raises(Rejected, match="HTTP 404"):
        await connector.ship(ORDER_ID, ShipmentRequest(carrier="DHL", tracking_number="1"))


async def test_a_refused_shipment_of_an_order_that_cannot_be_read_keeps_the_refusal(
    http: aioresponses, connector: EbayConnector
) -> None:
    invalid_order = {"errors": [{"errorId": 32100, "message": "Invalid order Id"}]}
    grant(http)
    http.post(FULFILLMENTS, status=400, payload=invalid_order)
    http.get(order_url(), status=404, body="")
    one_line = ShipmentRequest(carrier="DHL", tracking_number="1", items={"L1": 1})

    with pytest.raises(Rejected) as caught:
        await connector.ship(ORDER_ID, one_line)

    assert caught.value.message == "Invalid order Id (eBay error 32100)"


def test_the_fulfillment_id_is_the_last_segment_of_the_location() -> None:
    assert fulfillment_id(LOCATION) == "00340434161234567890"
    assert fulfillment_id("/sell/fulfillment/v1/order/1/shipping_fulfillment/999") == "999"
    assert fulfillment_id(f"{BASE}/sell/fulfillment/v1/order/1") is None
    assert fulfillment_id(None) is None


# -- order status (getOrder) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "status"),
    [
        (ebay_order(), OrderStatus.WAITING_SHIPMENT),
        (ebay_order(fulfillment="FULFILLED"), OrderStatus.SHIPPED),
        (ebay_order(payment="FULLY_REFUNDED", cancel="CANCELED"), OrderStatus.CANCELLED),
        (ebay_order(payment="PENDING"), None),
        (ebay_order(payment="FAILED"), None),
    ],
)
async def test_order_status_reads_one_order(
    http: aioresponses,
    connector: EbayConnector,
    order: dict[str, Any],
    status: OrderStatus | None,
) -> None:
    grant(http)
    http.get(order_url(), payload=copy.deepcopy(order))

    assert await connector.order_status(ORDER_ID) == status
    [(_, url, kwargs)] = sent(http, "GET")
    assert url.path == f"/sell/fulfillment/v1/order/{ORDER_ID}"
    assert kwargs["headers"]["Authorization"] == f"Bearer {ACCESS}"


async def test_order_status_of_an_order_ebay_does_not_know_is_none(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), status=404, body="")

    assert await connector.order_status(ORDER_ID) is None


async def test_order_status_in_an_unknown_state_is_rejected(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(order_url(), payload=ebay_order(fulfillment="TELEPORTED"))

    with pytest.raises(Rejected, match="TELEPORTED"):
        await connector.order_status(ORDER_ID)


# -- errors -----------------------------------------------------------------------------------


async def test_a_client_error_is_rejected_with_ebays_message(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(
        ORDERS,
        status=400,
        payload={
            "errors": [
                {
                    "errorId": 30830,
                    "domain": "API_FULFILLMENT",
                    "category": "REQUEST",
                    "message": "Start date must be within 90 days of end date and current date.",
                }
            ]
        },
    )

    with pytest.raises(Rejected) as caught:
        await pages(connector)

    assert caught.value.message == (
        "Start date must be within 90 days of end date and current date. (eBay error 30830)"
    )


async def test_an_error_body_echoing_a_secret_is_scrubbed(
    http: aioresponses, connector: EbayConnector
) -> None:
    grant(http)
    http.get(ORDERS, status=500, body=f"upstream saw Bearer {ACCESS} and {REFRESH}")

    with pytest.raises(Transient) as caught:
        await pages(connector)

    assert ACCESS not in str(caught.value)
    assert REFRESH not in str(caught.value)


# -- session ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("carrier", "carriers", "code", "source"),
    [
        ("La Poste - Colissimo", {}, "Colissimo", "automatic"),
        ("mondialrelay", {}, "MondialRelay", "automatic"),
        ("Mon transporteur", {" mon TRANSPORTEUR ": "Hermes"}, "Hermes", "config"),
        ("Transports Martin", {}, "Other", "unmapped"),
    ],
)
async def test_the_carrier_goes_as_an_ebay_carrier_code(
    http: aioresponses,
    connector: EbayConnector,
    carrier: str,
    carriers: dict[str, str],
    code: str,
    source: str,
) -> None:
    grant(http)
    http.get(order_url(), payload=ebay_order())
    http.post(FULFILLMENTS, status=201, headers={"Location": LOCATION}, body="")

    receipt = await connector.ship(
        ORDER_ID, ShipmentRequest(carrier=carrier, tracking_number="6A1", carriers=carriers)
    )

    [(_, _, kwargs)] = [c for c in sent(http, "POST") if str(c[1]) != TOKEN_URL]
    assert kwargs["json"]["shippingCarrierCode"] == code
    assert receipt.carrier == code
    assert receipt.carrier_match is not None and receipt.carrier_match.source == source
    # An unknown carrier goes as Other, and its name stays in the order's event.
    assert any(carrier in note for note in receipt.notes) is (source == "unmapped")
