"""The Amazon SP-API connector, call by call: exact requests out, orders and errors back.

Orders are read with Orders API v2026-01-01 (searchOrders, getOrder); shipments are confirmed
with Orders v0 confirmShipment. Every request a test makes the connector send is checked against
Amazon's published model (tests/fixtures/specs) when the test ends.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from sfd.connectors.amazon import (
    AmazonConnector,
    build_url,
    carrier_code,
    package_reference,
    unit_price,
)
from sfd.connectors.base import (
    AuthFailed,
    OrderPage,
    RateLimited,
    RefundRequest,
    Rejected,
    ShipmentRequest,
    Transient,
)
from sfd.connectors.settings import AmazonSettings
from sfd.domain import MISSING_PERSONAL_DATA, FulfilledBy, OrderStatus, Shipment
from tests.connectors.amazon_model import check_request
from tests.connectors.conftest import sent

ENDPOINT = "https://sellingpartnerapi-eu.amazon.com"
TOKEN_URL = "https://api.amazon.com/auth/o2/token"
CLIENT_ID = "amzn1.application-oa2-client.4f1e0c2b9a7d4e6f8a1b2c3d4e5f6a7b"
CLIENT_SECRET = "amzn1.oa2-cs.v1.5ecre7c0ffee5ecre7c0ffee5ecre7c0ffee5ecre7c0ffee5ecre7"
REFRESH = "Atzr|IwEBIRefreshTokenSecretValue-0123456789abcdefghijklmnop"
ACCESS = "Atza|IwEBIAccessTokenNumberOne-0123456789"
FRANCE = "A13V1IB3VIYZZH"
GERMANY = "A1PA6795UKMFR9"
ORDER_ID = "405-1234567-8901234"

SEARCH = re.compile(r"^https://sellingpartnerapi-eu\.amazon\.com/orders/2026-01-01/orders(\?.*)?$")
ORDER = re.compile(
    r"^https://sellingpartnerapi-eu\.amazon\.com/orders/2026-01-01/orders/[^/?]+(\?.*)?$"
)
CONFIRM = re.compile(
    r"^https://sellingpartnerapi-eu\.amazon\.com/orders/v0/orders/[^/?]+/shipmentConfirmation$"
)
INCLUDED = "BUYER,RECIPIENT,FULFILLMENT,PROCEEDS,PACKAGES,TAX"

NOW = datetime(2026, 11, 29, 12, 0, 0, 500_000, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings(**changes: Any) -> AmazonSettings:
    values: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH,
        "marketplace_ids": [FRANCE],
    }
    values.update(changes)
    return AmazonSettings(**values)


def eur(amount: str) -> dict[str, str]:
    return {"amount": amount, "currencyCode": "EUR"}


def breakdowns(item: str, shipping: str, tax: str) -> list[dict[str, Any]]:
    """The proceeds' breakdown: items, shipping and tax, in euros."""
    return [
        {"type": "ITEM", "subtotal": eur(item)},
        {"type": "SHIPPING", "subtotal": eur(shipping)},
        {"type": "TAX", "subtotal": eur(tax)},
    ]


def order_items() -> list[dict[str, Any]]:
    """Two lines: two linen cushion covers, three candles (10.00 for the three)."""
    return [
        {
            "orderItemId": "62410391658171",
            "quantityOrdered": 2,
            "product": {
                "asin": "B0CX4RT7QZ",
                "title": "Housse de coussin en lin lavé 45 x 45 cm, terracotta",
                "sellerSku": "HOUSSE-LIN-45",
                "condition": {"conditionType": "NEW", "conditionSubtype": "NEW"},
                "price": {"unitPrice": eur("19.99"), "priceDesignation": "BUSINESS_PRICE"},
            },
            "proceeds": {
                "proceedsTotal": eur("44.88"),
                "breakdowns": breakdowns("39.98", "4.90", "7.48"),
            },
            "fulfillment": {"quantityFulfilled": 0, "quantityUnfulfilled": 2},
        },
        {
            "orderItemId": "62410391658172",
            "quantityOrdered": 3,
            "product": {
                "asin": "B0D2LK8H1M",
                "title": "Bougie parfumée cèdre",
                "sellerSku": "BOUGIE-CEDRE",
                "price": {"unitPrice": eur("3.34")},
            },
            "proceeds": {
                "proceedsTotal": eur("10.00"),
                "breakdowns": [
                    {"type": "ITEM", "subtotal": eur("10.00")},
                    {"type": "TAX", "subtotal": eur("1.67")},
                ],
            },
            "fulfillment": {"quantityFulfilled": 0, "quantityUnfulfilled": 3},
        },
    ]


def amazon_order(
    order_id: str = ORDER_ID, status: str = "UNSHIPPED", **changes: Any
) -> dict[str, Any]:
    """A searchOrders order as Amazon.fr writes it: an Amazon Business buyer, shipped by the
    seller, with every dataset sfd asks for."""
    order: dict[str, Any] = {
        "orderId": order_id,
        "orderAliases": [{"aliasId": "CMD-2026-0042", "aliasType": "SELLER_ORDER_ID"}],
        "createdTime": "2026-11-28T09:15:02Z",
        "lastUpdatedTime": "2026-11-29T10:30:45Z",
        "programs": ["AMAZON_BUSINESS", "PRIME"],
        "salesChannel": {
            "channelName": "AMAZON",
            "marketplaceId": FRANCE,
            "marketplaceName": "Amazon.fr",
        },
        "buyer": {
            "buyerName": "Claire Martin",
            "buyerEmail": "k2x9mq7vbn3r5t@marketplace.amazon.fr",
            "buyerCompanyName": "Atelier Dubois SARL",
            "buyerPurchaseOrderNumber": "PO-2026-118",
        },
        "recipient": {
            "deliveryAddress": {
                "name": "Camille Dubois",
                "companyName": "Atelier Dubois SARL",
                "addressLine1": "12 rue de la République",
                "addressLine2": "Bâtiment B",
                "city": "Lyon",
                "stateOrRegion": "Rhône",
                "postalCode": "69002",
                "countryCode": "fr",
                "phone": "+33 4 72 00 00 00",
                "addressType": "COMMERCIAL",
            },
            "deliveryPreference": {"addressInstruction": "Accueil, 2e étage"},
        },
        "proceeds": {
            "grandTotal": eur("54.88"),
            "breakdowns": breakdowns("49.98", "4.90", "9.15"),
        },
        "tax": {
            "taxRegistrations": [
                {
                    "entityType": "BUYER",
                    "legalName": "Atelier Dubois SARL",
                    "taxRegistrationType": "VAT",
                    "taxRegistrationNumber": "FR40123456789",
                }
            ]
        },
        "fulfillment": {
            "fulfillmentStatus": status,
            "fulfilledBy": "MERCHANT",
            "fulfillmentServiceLevel": "STANDARD",
            "shipByWindow": {
                "earliestDateTime": "2026-11-28T23:00:00Z",
                "latestDateTime": "2026-12-01T22:59:59Z",
            },
            "deliverByWindow": {
                "earliestDateTime": "2026-12-02T23:00:00Z",
                "latestDateTime": "2026-12-04T22:59:59Z",
            },
        },
        "orderItems": order_items(),
    }
    order.update(changes)
    return order


def listing(*orders: dict[str, Any] | str, next_token: str | None = None) -> str:
    """A searchOrders body; an order given as text is sent byte for byte."""
    texts = [o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in orders]
    token = f', "pagination": {{"nextToken": {json.dumps(next_token)}}}' if next_token else ""
    return (
        '{"orders": [' + ", ".join(texts) + "]"
        f', "lastUpdatedBefore": "2026-11-29T11:57:50Z"{token}}}'
    )


def order_answer(status: str = "UNSHIPPED", **changes: Any) -> dict[str, Any]:
    return {"order": amazon_order(status=status, **changes)}


def grant(http: aioresponses, access: str = ACCESS, *, repeat: bool = True) -> None:
    http.post(
        TOKEN_URL,
        payload={
            "access_token": access,
            "refresh_token": REFRESH,
            "token_type": "bearer",
            "expires_in": 3600,
        },
        repeat=repeat,
    )


def token_calls(http: aioresponses) -> list[dict[str, Any]]:
    return [kwargs for _, url, kwargs in sent(http, "POST") if str(url) == TOKEN_URL]


def calls_to(http: aioresponses, pattern: re.Pattern[str]) -> list[tuple[URL, dict[str, Any]]]:
    return [(url, kwargs) for _, url, kwargs in sent(http) if pattern.match(str(url))]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(autouse=True)
def requests_fit_the_model(http: aioresponses, clock: FakeClock) -> Iterator[None]:
    """When each test ends, every SP-API request it made is checked against Amazon's model."""
    yield
    for method, url, kwargs in sent(http):
        if str(url).startswith(ENDPOINT):
            check_request(method, url, kwargs.get("json"), now=clock.now)


@pytest.fixture
async def connector(http: aioresponses, clock: FakeClock) -> AsyncIterator[AmazonConnector]:
    grant(http)
    amazon = AmazonConnector(settings(), clock=clock)
    yield amazon
    await amazon.aclose()


@pytest.fixture
async def bare(clock: FakeClock) -> AsyncIterator[AmazonConnector]:
    """A connector whose LWA answers each test sets itself."""
    amazon = AmazonConnector(settings(), clock=clock)
    yield amazon
    await amazon.aclose()


async def pages(connector: AmazonConnector, since: datetime | None = None) -> list[OrderPage]:
    return [page async for page in connector.fetch_orders(since)]


async def one_order(http: aioresponses, connector: AmazonConnector, order: dict[str, Any]) -> Any:
    http.get(SEARCH, body=listing(order))
    [page] = await pages(connector, NOW - timedelta(hours=1))
    assert page.skipped == []
    [normalized] = page.orders
    return normalized


# -- Login with Amazon ------------------------------------------------------------------------


async def test_the_access_token_comes_from_lwa_with_the_refresh_token_form(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer())

    await connector.order_status(ORDER_ID)

    [lwa] = token_calls(http)
    assert lwa["data"] == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert lwa["allow_redirects"] is False
    [(url, kwargs)] = calls_to(http, ORDER)
    assert url.path == f"/orders/2026-01-01/orders/{ORDER_ID}"
    assert dict(url.query) == {"includedData": "FULFILLMENT"}
    headers = kwargs["headers"]
    assert headers["x-amz-access-token"] == ACCESS
    assert headers["Accept"] == "application/json"
    assert "Authorization" not in headers
    assert REFRESH not in json.dumps(headers) + str(url)
    assert CLIENT_SECRET not in json.dumps(headers) + str(url)
    assert kwargs["allow_redirects"] is False


async def test_the_token_is_cached_until_a_minute_before_it_expires(
    http: aioresponses, bare: AmazonConnector, clock: FakeClock
) -> None:
    grant(http, "Atza|first", repeat=False)
    grant(http, "Atza|second", repeat=False)
    http.get(ORDER, payload=order_answer(), repeat=True)

    for _ in range(3):
        await bare.order_status(ORDER_ID)
    clock.now = NOW + timedelta(seconds=3539)
    await bare.order_status(ORDER_ID)
    assert len(token_calls(http)) == 1

    clock.now = NOW + timedelta(seconds=3540)
    await bare.order_status(ORDER_ID)

    assert len(token_calls(http)) == 2
    used = [kwargs["headers"]["x-amz-access-token"] for _, kwargs in calls_to(http, ORDER)]
    assert used == ["Atza|first"] * 4 + ["Atza|second"]


async def test_concurrent_calls_share_one_token_request(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer(), repeat=True)

    await asyncio.gather(*(connector.order_status(ORDER_ID) for _ in range(5)))

    assert len(token_calls(http)) == 1


@pytest.mark.parametrize(("status", "error"), [(400, "invalid_grant"), (401, "invalid_client")])
async def test_refused_lwa_credentials_fail_auth_without_secrets(
    http: aioresponses, bare: AmazonConnector, status: int, error: str
) -> None:
    http.post(
        TOKEN_URL,
        status=status,
        payload={
            "error": error,
            "error_description": f"The request has an invalid parameter: {REFRESH}",
        },
    )

    with pytest.raises(AuthFailed) as caught:
        await bare.order_status(ORDER_ID)

    message = str(caught.value)
    assert message.startswith(f"Amazon LWA refused the credentials: {error}")
    assert REFRESH not in message
    assert CLIENT_SECRET not in message
    assert calls_to(http, ORDER) == []


async def test_an_expired_token_is_renewed_once_on_403(
    http: aioresponses, bare: AmazonConnector
) -> None:
    grant(http, "Atza|stale", repeat=False)
    grant(http, "Atza|fresh", repeat=False)
    expired = {"errors": [{"code": "Unauthorized", "message": "The access token has expired."}]}
    http.get(ORDER, status=403, payload=expired)
    http.get(ORDER, payload=order_answer("SHIPPED"))

    assert await bare.order_status(ORDER_ID) is OrderStatus.SHIPPED

    used = [kwargs["headers"]["x-amz-access-token"] for _, kwargs in calls_to(http, ORDER)]
    assert used == ["Atza|stale", "Atza|fresh"]


async def test_a_second_403_fails_auth(http: aioresponses, connector: AmazonConnector) -> None:
    denied = {
        "errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied."}]
    }
    http.get(ORDER, status=403, payload=denied, repeat=True)

    with pytest.raises(AuthFailed) as caught:
        await connector.order_status(ORDER_ID)

    assert "HTTP 403" in str(caught.value)
    assert "Access to requested resource is denied. (Unauthorized)" in str(caught.value)
    assert ACCESS not in str(caught.value)
    assert len(calls_to(http, ORDER)) == 2


# -- searchOrders: the request ----------------------------------------------------------------


async def test_search_asks_the_window_the_filters_and_the_datasets(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(SEARCH, body=listing())
    since = datetime(2026, 11, 29, 11, 0, 0, 999_000, tzinfo=timezone(timedelta(hours=1)))

    assert await pages(connector, since) == [OrderPage(orders=[])]

    [(url, kwargs)] = calls_to(http, SEARCH)
    assert url.path == "/orders/2026-01-01/orders"
    assert dict(url.query) == {
        "lastUpdatedAfter": "2026-11-29T10:00:00Z",
        "lastUpdatedBefore": "2026-11-29T11:57:50Z",
        "marketplaceIds": FRANCE,
        "fulfilledBy": "MERCHANT",
        "maxResultsPerPage": "100",
        "includedData": INCLUDED,
    }
    assert "createdAfter" not in url.query
    assert kwargs["headers"]["x-amz-access-token"] == ACCESS


async def test_the_first_pass_looks_thirty_days_back(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(SEARCH, body=listing())

    await pages(connector, None)

    [(url, _)] = calls_to(http, SEARCH)
    assert url.query["lastUpdatedAfter"] == "2026-10-30T12:00:00Z"


async def test_a_cursor_younger_than_two_minutes_asks_nothing(
    http: aioresponses, connector: AmazonConnector
) -> None:
    assert await pages(connector, NOW - timedelta(seconds=90)) == []
    assert sent(http) == []


async def test_several_marketplaces_and_afn_are_asked_together(
    http: aioresponses, clock: FakeClock
) -> None:
    grant(http)
    http.get(SEARCH, body=listing())
    amazon = AmazonConnector(
        settings(marketplace_ids=[FRANCE, GERMANY], import_afn=True), clock=clock
    )
    try:
        await pages(amazon, NOW - timedelta(hours=1))
    finally:
        await amazon.aclose()

    [(url, _)] = calls_to(http, SEARCH)
    assert url.query["marketplaceIds"] == f"{FRANCE},{GERMANY}"
    assert "fulfilledBy" not in url.query  # both Amazon and the merchant


def test_query_values_are_percent_encoded_in_full() -> None:
    url = build_url(ENDPOINT, "/orders/2026-01-01/orders", {"paginationToken": "a+b/c=="})
    assert str(url).endswith("?paginationToken=a%2Bb%2Fc%3D%3D")
    assert url.query["paginationToken"] == "a+b/c=="


async def test_pages_follow_next_token_with_plus_slash_and_equals_intact(
    http: aioresponses, connector: AmazonConnector
) -> None:
    token = "Ab+cD/ef==" + "x" * 20 + "+/="
    http.get(SEARCH, body=listing(amazon_order("405-0000001-0000001"), next_token=token))
    http.get(SEARCH, body=listing(amazon_order("405-0000002-0000002")))

    got = await pages(connector, NOW - timedelta(hours=1))

    assert [[o.reference for o in p.orders] for p in got] == [
        ["405-0000001-0000001"],
        ["405-0000002-0000002"],
    ]
    (first, _), (second, _) = calls_to(http, SEARCH)
    assert "paginationToken" not in first.query
    assert second.query["paginationToken"] == token
    # The same query comes back beside the token: the model requires its window on every call.
    assert {k: v for k, v in second.query.items() if k != "paginationToken"} == dict(first.query)


async def test_an_expired_pagination_token_starts_the_pass_again_from_the_cursor(
    http: aioresponses, connector: AmazonConnector
) -> None:
    since = NOW - timedelta(hours=1)
    one, two = amazon_order("405-0000001-0000001"), amazon_order("405-0000002-0000002")
    expired = {"errors": [{"code": "InvalidInput", "message": "Invalid paginationToken."}]}
    http.get(SEARCH, body=listing(one, next_token="tok+1="))
    http.get(SEARCH, status=400, payload=expired)
    http.get(SEARCH, body=listing(one, next_token="tok+2="))
    http.get(SEARCH, body=listing(two))

    got = await pages(connector, since)

    # The first order is not handed over twice; the second arrives after the restart.
    assert [[o.reference for o in p.orders] for p in got] == [
        ["405-0000001-0000001"],
        [],
        ["405-0000002-0000002"],
    ]
    calls = [url for url, _ in calls_to(http, SEARCH)]
    tokens = sorted(str(u.query.get("paginationToken")) for u in calls)
    assert tokens == ["None", "None", "tok+1=", "tok+2="]
    assert {u.query["lastUpdatedAfter"] for u in calls} == {"2026-11-29T11:00:00Z"}


async def test_a_second_refused_token_in_one_pass_is_rejected(
    http: aioresponses, connector: AmazonConnector
) -> None:
    expired = {"errors": [{"code": "InvalidInput", "message": "Invalid paginationToken."}]}
    http.get(SEARCH, body=listing(amazon_order(), next_token="a"), repeat=False)
    http.get(SEARCH, status=400, payload=expired)
    http.get(SEARCH, body=listing(amazon_order(), next_token="b"))
    http.get(SEARCH, status=400, payload=expired)

    with pytest.raises(Rejected, match=r"Invalid paginationToken\. \(InvalidInput\)"):
        await pages(connector, NOW - timedelta(hours=1))


async def test_a_looping_next_token_stops_the_pass(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(SEARCH, body=listing(next_token="same"), repeat=True)

    with pytest.raises(Transient, match="the same nextToken came back twice"):
        await pages(connector, NOW - timedelta(hours=1))


# -- rate limits ------------------------------------------------------------------------------


def test_the_buckets_are_the_models_usage_plans() -> None:
    amazon = AmazonConnector(settings())
    search, order = amazon._search_limiter, amazon._order_limiter
    assert search.max_rate == 20  # the burst
    assert search.max_rate / search.time_period == pytest.approx(0.0056)
    assert order.max_rate == 30
    assert order.max_rate / order.time_period == pytest.approx(0.5)
    assert amazon.min_poll_interval == 180.0
    assert amazon.pages_sorted_by_update is False


async def test_the_stated_rate_limit_retunes_the_bucket(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(SEARCH, body=listing(), headers={"x-amzn-RateLimit-Limit": "0.0167"})

    await pages(connector, NOW - timedelta(hours=1))

    limiter = connector._search_limiter
    assert limiter.max_rate == 20
    assert limiter.max_rate / limiter.time_period == pytest.approx(0.0167)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-amzn-RateLimit-Limit": "0.0167"}, 59.88),
        ({"Retry-After": "7", "x-amzn-RateLimit-Limit": "0.5"}, 7.0),
        # Without a hint, the usage plan's own restore rate: one request in 178.6 s.
        ({}, 178.571),
    ],
)
async def test_429_is_rate_limited_with_a_hint(
    http: aioresponses,
    connector: AmazonConnector,
    headers: dict[str, str],
    expected: float,
) -> None:
    http.get(
        SEARCH,
        status=429,
        headers=headers,
        payload={"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota"}]},
    )

    with pytest.raises(RateLimited) as caught:
        await pages(connector, NOW - timedelta(hours=1))

    assert caught.value.retry_after == expected
    assert "HTTP 429" in str(caught.value)


# -- mapping ----------------------------------------------------------------------------------


async def test_a_business_order_maps_every_field(
    http: aioresponses, connector: AmazonConnector
) -> None:
    text = json.dumps(amazon_order(), ensure_ascii=False, indent=1)

    order = await one_order(http, connector, text)  # type: ignore[arg-type]

    assert order.reference == ORDER_ID
    assert order.status is OrderStatus.WAITING_SHIPMENT
    assert order.created_at == datetime(2026, 11, 28, 9, 15, 2, tzinfo=UTC)
    assert order.updated_at == datetime(2026, 11, 29, 10, 30, 45, tzinfo=UTC)
    assert order.latest_ship_date == datetime(2026, 12, 1, 22, 59, 59, tzinfo=UTC)
    assert order.payment_method == "MFN"
    assert order.shipping_method == "STANDARD"
    assert order.fulfilled_by is FulfilledBy.STORE
    assert order.shipment is None
    assert order.raw == text.encode()  # Amazon's own bytes, kept for diagnosis

    shipping = order.shipping_address
    assert (shipping.first_name, shipping.last_name) == ("", "Camille Dubois")
    assert shipping.company == "Atelier Dubois SARL"
    assert (shipping.street, shipping.street2) == ("12 rue de la République", "Bâtiment B")
    assert (shipping.postal_code, shipping.city, shipping.province) == ("69002", "Lyon", "Rhône")
    assert (shipping.country, shipping.phone) == ("FR", "+33 4 72 00 00 00")
    assert shipping.email == "k2x9mq7vbn3r5t@marketplace.amazon.fr"
    billing = order.billing_address
    assert (billing.last_name, billing.company) == ("Claire Martin", "Atelier Dubois SARL")
    assert billing.street == "12 rue de la République"

    assert order.additional_fields == {
        "marketplace_id": FRANCE,
        "sales_channel": "Amazon.fr",
        "order_status": "UNSHIPPED",
        "fulfillment_channel": "MFN",
        "seller_order_id": "CMD-2026-0042",
        "ship_service_level": "STANDARD",
        "earliest_ship_date": "2026-11-28T23:00:00+00:00",
        "earliest_delivery_date": "2026-12-02T23:00:00+00:00",
        "latest_delivery_date": "2026-12-04T22:59:59+00:00",
        "programs": ["AMAZON_BUSINESS", "PRIME"],
        "is_business_order": True,
        "is_prime": True,
        "is_premium_order": False,
        "is_ispu": False,
        "is_replacement_order": False,
        "purchase_order_number": "PO-2026-118",
        "address_type": "COMMERCIAL",
        "delivery_instructions": "Accueil, 2e étage",
        "company_legal_name": "Atelier Dubois SARL",
        "vat_number": "FR40123456789",
        "tax_registration_type": "VAT",
    }


async def test_money_is_exact_in_euros(http: aioresponses, connector: AmazonConnector) -> None:
    order = await one_order(http, connector, amazon_order())

    assert order.currency == "EUR"
    assert order.product_amount == Decimal("49.98")
    assert order.shipping_amount == Decimal("4.90")
    assert order.total_amount == Decimal("54.88")
    assert all(
        type(a) is Decimal
        for a in (order.product_amount, order.shipping_amount, order.total_amount)
    )
    housse, bougies = order.items
    assert (housse.reference, housse.channel_reference) == ("HOUSSE-LIN-45", "62410391658171")
    assert housse.quantity == 2
    assert str(housse.price) == "19.99"  # the unit price as listed, not a division
    assert housse.tax_amount == Decimal("7.48")
    assert housse.name == "Housse de coussin en lin lavé 45 x 45 cm, terracotta"
    assert housse.additional_fields == {
        "asin": "B0CX4RT7QZ",
        "quantity_shipped": 0,
        "shipping_price": "4.90",
        "condition": "NEW",
        "price_designation": "BUSINESS_PRICE",
    }
    assert (bougies.quantity, str(bougies.price), bougies.tax_amount) == (
        3,
        "3.34",
        Decimal("1.67"),
    )


async def test_a_line_without_unit_price_shares_its_item_proceeds_to_the_cent(
    http: aioresponses, connector: AmazonConnector
) -> None:
    raw = amazon_order()
    del raw["orderItems"][1]["product"]["price"]

    order = await one_order(http, connector, raw)

    assert str(order.items[1].price) == "3.33"


@pytest.mark.parametrize(
    ("total", "quantity", "unit"),
    [("39.98", 2, "19.99"), ("10.00", 3, "3.33"), ("20.00", 3, "6.67"), ("12.345", 2, "6.173")],
)
def test_unit_prices_are_exact_and_rounded_to_the_cent(
    total: str, quantity: int, unit: str
) -> None:
    assert str(unit_price(Decimal(total), quantity)) == unit


async def test_a_relay_point_delivery_keeps_the_points_address_and_says_so(
    http: aioresponses, connector: AmazonConnector
) -> None:
    raw = amazon_order(
        programs=[],
        buyer={"buyerName": "Léa Petit", "buyerEmail": "x7@marketplace.amazon.fr"},
        recipient={
            "deliveryAddress": {
                "name": "Léa Petit",
                "companyName": "Amazon Locker - Cassiopée",
                "addressLine1": "Centre commercial Part-Dieu",
                "addressLine2": "17 rue du Docteur Bouchut",
                "city": "Lyon",
                "postalCode": "69003",
                "countryCode": "FR",
                "addressType": "PICKUP_POINT",
            },
            "deliveryPreference": {
                "dropOffLocation": "Locker",
                "deliveryCapabilities": ["HAS_ACCESS_POINT"],
            },
        },
    )
    del raw["tax"]

    order = await one_order(http, connector, raw)

    shipping = order.shipping_address
    assert shipping.last_name == "Léa Petit"
    assert shipping.company == "Amazon Locker - Cassiopée"
    assert (shipping.street, shipping.postal_code) == ("Centre commercial Part-Dieu", "69003")
    fields = order.additional_fields
    assert fields["address_type"] == "PICKUP_POINT"
    assert fields["is_access_point_order"] is True
    assert fields["drop_off_location"] == "Locker"
    assert fields["delivery_capabilities"] == ["HAS_ACCESS_POINT"]
    assert fields["is_business_order"] is False
    assert "vat_number" not in fields
    assert MISSING_PERSONAL_DATA not in fields


async def test_a_multi_item_partially_shipped_order_carries_its_package(
    http: aioresponses, connector: AmazonConnector
) -> None:
    raw = amazon_order(status="PARTIALLY_SHIPPED")
    raw["orderItems"][0]["fulfillment"] = {"quantityFulfilled": 2, "quantityUnfulfilled": 0}
    raw["packages"] = [
        {
            "packageReferenceId": "1",
            "createdTime": "2026-11-28T15:00:00Z",
            "packageStatus": {"status": "CANCELLED"},
            "carrier": "UPS",
            "trackingNumber": "1Z0",
        },
        {
            "packageReferenceId": "2",
            "createdTime": "2026-11-29T08:00:00Z",
            "shipTime": "2026-11-29T09:00:00Z",
            "packageStatus": {"status": "IN_TRANSIT"},
            "carrier": "Colissimo",
            "trackingNumber": "6A12345678901",
            "packageItems": [{"orderItemId": "62410391658171", "quantity": 2}],
        },
    ]

    order = await one_order(http, connector, raw)

    assert order.status is OrderStatus.PARTIALLY_SHIPPED
    assert len(order.items) == 2
    assert order.items[0].additional_fields["quantity_shipped"] == 2
    assert order.items[1].additional_fields["quantity_shipped"] == 0
    assert order.shipment == Shipment(carrier="Colissimo", tracking_number="6A12345678901")
    assert order.additional_fields["packages"][1] == {
        "package_reference_id": "2",
        "status": "IN_TRANSIT",
        "carrier": "Colissimo",
        "tracking_number": "6A12345678901",
        "ship_time": "2026-11-29T09:00:00+00:00",
        "items": {"62410391658171": 2},
    }


async def test_a_cancelled_order_without_proceeds_adds_up_its_lines(
    http: aioresponses, connector: AmazonConnector
) -> None:
    raw = amazon_order(status="CANCELLED")
    del raw["proceeds"]
    for line in raw["orderItems"]:
        del line["proceeds"], line["product"]["price"]

    order = await one_order(http, connector, raw)

    assert order.status is OrderStatus.CANCELLED
    assert order.currency == "EUR"  # the French marketplace's
    assert order.total_amount == Decimal(0)
    assert MISSING_PERSONAL_DATA not in order.additional_fields


async def test_an_order_without_the_recipient_role_is_stored_and_flagged(
    http: aioresponses, connector: AmazonConnector
) -> None:
    # Without Direct-to-Consumer Shipping, Amazon leaves out name, street, postcode and phone.
    raw = amazon_order(
        buyer={"buyerCompanyName": "Atelier Dubois SARL"},
        recipient={"deliveryAddress": {"city": "Lyon", "countryCode": "FR"}},
    )

    order = await one_order(http, connector, raw)

    assert order.shipping_address.city == "Lyon"
    assert order.shipping_address.street == ""
    assert order.shipping_address.email == ""
    flag = order.additional_fields[MISSING_PERSONAL_DATA]
    assert "Direct-to-Consumer Shipping (Restricted)" in flag
    assert "Lyon" not in flag  # the flag names the role, never the buyer's data


@pytest.mark.parametrize(
    ("amazon_status", "status"),
    [
        ("UNSHIPPED", OrderStatus.WAITING_SHIPMENT),
        ("PARTIALLY_SHIPPED", OrderStatus.PARTIALLY_SHIPPED),
        ("SHIPPED", OrderStatus.SHIPPED),
        ("CANCELLED", OrderStatus.CANCELLED),
        ("UNFULFILLABLE", OrderStatus.CANCELLED),
    ],
)
async def test_fulfillment_statuses_map_to_statuses(
    http: aioresponses, connector: AmazonConnector, amazon_status: str, status: OrderStatus
) -> None:
    order = await one_order(http, connector, amazon_order(status=amazon_status))
    assert order.status is status


async def test_unpaid_orders_are_not_imported(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(
        SEARCH,
        body=listing(
            amazon_order("405-0000001-0000001", status="PENDING"),
            amazon_order("405-0000002-0000002", status="PENDING_AVAILABILITY"),
            amazon_order("405-0000003-0000003"),
        ),
    )

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert [o.reference for o in page.orders] == ["405-0000003-0000003"]
    assert page.skipped == []
    assert calls_to(http, ORDER) == []  # no call per order


async def test_afn_orders_are_left_out_unless_asked(http: aioresponses, clock: FakeClock) -> None:
    grant(http)
    afn = amazon_order(status="SHIPPED")
    afn["fulfillment"]["fulfilledBy"] = "AMAZON"
    http.get(SEARCH, body=listing(afn), repeat=True)
    for import_afn, expected in ((False, []), (True, [FulfilledBy.CHANNEL])):
        amazon = AmazonConnector(settings(import_afn=import_afn), clock=clock)
        try:
            [page] = await pages(amazon, NOW - timedelta(hours=1))
        finally:
            await amazon.aclose()
        assert [o.fulfilled_by for o in page.orders] == expected
    assert page.orders[0].payment_method == "AFN"


async def test_a_malformed_order_is_skipped_by_field_and_the_page_goes_on(
    http: aioresponses, connector: AmazonConnector
) -> None:
    bad = amazon_order("405-0000001-0000001")
    bad["orderItems"][1]["product"]["sellerSku"] = ""
    worse = amazon_order("405-0000002-0000002")
    worse["proceeds"]["grandTotal"]["amount"] = "abc"
    http.get(
        SEARCH,
        body=listing(bad, worse, '{"lastUpdatedTime": "2026-11-29T10:00:00Z"}', amazon_order()),
    )

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert [o.reference for o in page.orders] == [ORDER_ID]
    reasons = {s.reference: s.reason for s in page.skipped}
    assert reasons["405-0000001-0000001"] == "orderItems[1].product.sellerSku: missing"
    assert reasons["405-0000002-0000002"].startswith("proceeds.grandTotal.amount:")
    assert reasons["#2"] == "orderId: missing"
    assert page.skipped[0].updated_at == datetime(2026, 11, 29, 10, 30, 45, tzinfo=UTC)


async def test_an_order_repeated_across_pages_is_handed_over_only_when_newer(
    http: aioresponses, connector: AmazonConnector
) -> None:
    newer = amazon_order(status="SHIPPED", lastUpdatedTime="2026-11-29T11:00:00Z")
    http.get(SEARCH, body=listing(amazon_order(), next_token="n1"))
    http.get(SEARCH, body=listing(amazon_order(), newer))

    got = await pages(connector, NOW - timedelta(hours=1))

    assert [[o.status for o in p.orders] for p in got] == [
        [OrderStatus.WAITING_SHIPMENT],
        [OrderStatus.SHIPPED],
    ]


# -- ship (v0 confirmShipment) ----------------------------------------------------------------


async def test_a_full_shipment_confirms_every_unshipped_item(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer())
    http.post(CONFIRM, status=204)

    await connector.ship(
        ORDER_ID, ShipmentRequest(carrier="Transports Martin", tracking_number="6A1")
    )

    [(order_url, _)] = calls_to(http, ORDER)
    assert order_url.query["includedData"] == "FULFILLMENT"
    [(url, kwargs)] = calls_to(http, CONFIRM)
    assert url.path == f"/orders/v0/orders/{ORDER_ID}/shipmentConfirmation"
    lines = [("62410391658171", 2), ("62410391658172", 3)]
    assert kwargs["json"] == {
        "marketplaceId": FRANCE,
        "packageDetail": {
            "packageReferenceId": package_reference(ORDER_ID, "6A1", lines),
            "carrierCode": "Other",
            "carrierName": "Transports Martin",
            "trackingNumber": "6A1",
            "shipDate": "2026-11-29T12:00:00Z",
            "orderItems": [
                {"orderItemId": "62410391658171", "quantity": 2},
                {"orderItemId": "62410391658172", "quantity": 3},
            ],
        },
    }
    assert isinstance(kwargs["json"]["packageDetail"]["packageReferenceId"], str)


async def test_a_partial_shipment_confirms_only_its_items(
    http: aioresponses, connector: AmazonConnector
) -> None:
    channel = {"channelName": "AMAZON", "marketplaceId": GERMANY}
    http.get(ORDER, payload=order_answer(salesChannel=channel))
    http.post(CONFIRM, status=204)

    await connector.ship(
        ORDER_ID,
        ShipmentRequest(carrier="chronopost", tracking_number="XY1", items={"62410391658172": 2}),
    )

    [(_, kwargs)] = calls_to(http, CONFIRM)
    detail = kwargs["json"]["packageDetail"]
    assert kwargs["json"]["marketplaceId"] == GERMANY
    assert (detail["carrierCode"], "carrierName" in detail) == ("Chronopost", False)
    assert detail["orderItems"] == [{"orderItemId": "62410391658172", "quantity": 2}]


async def test_a_full_shipment_after_a_partial_one_sends_what_is_left(
    http: aioresponses, connector: AmazonConnector
) -> None:
    raw = amazon_order(status="PARTIALLY_SHIPPED")
    raw["orderItems"][0]["fulfillment"] = {"quantityFulfilled": 2, "quantityUnfulfilled": 0}
    raw["orderItems"][1]["fulfillment"] = {"quantityFulfilled": 1}
    http.get(ORDER, payload={"order": raw})
    http.post(CONFIRM, status=204)

    await connector.ship(ORDER_ID, ShipmentRequest(carrier="UPS", tracking_number="1Z999AA1"))

    [(_, kwargs)] = calls_to(http, CONFIRM)
    assert kwargs["json"]["packageDetail"]["carrierCode"] == "UPS"
    assert kwargs["json"]["packageDetail"]["orderItems"] == [
        {"orderItemId": "62410391658172", "quantity": 2}
    ]


def test_package_references_are_positive_numbers_stable_per_package() -> None:
    one = package_reference(ORDER_ID, "6A1", [("62410391658171", 1)])
    assert one == package_reference(ORDER_ID, "6A1", [("62410391658171", 1)])
    assert one.isdigit() and int(one) > 0
    assert one != package_reference(ORDER_ID, "6A2", [("62410391658171", 1)])


@pytest.mark.parametrize(
    ("carrier", "code"),
    [
        ("DHL", "DHL"),
        ("dpd", "DPD"),
        ("Royal-Mail", "Royal Mail"),
        ("Mondial Relay", "Mondial Relay"),
        ("Mondial-Relay Point Relais", "Mondial Relay"),
        ("Transports Martin", "Other"),
    ],
)
def test_carriers_map_to_amazon_codes(carrier: str, code: str) -> None:
    assert carrier_code(carrier) == code


#: A whole shipment with one UPS package.
UPS_1Z = ShipmentRequest(carrier="UPS", tracking_number="1Z")


async def test_an_order_amazon_shows_shipped_succeeds_without_a_confirmation(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer("SHIPPED"))

    await connector.ship(ORDER_ID, UPS_1Z)

    assert calls_to(http, CONFIRM) == []


@pytest.mark.parametrize("status", ["CANCELLED", "PENDING"])
async def test_a_cancelled_or_unpaid_order_cannot_ship(
    http: aioresponses, connector: AmazonConnector, status: str
) -> None:
    http.get(ORDER, payload=order_answer(status))

    with pytest.raises(Rejected, match=f"Amazon order {ORDER_ID} is"):
        await connector.ship(ORDER_ID, UPS_1Z)

    assert calls_to(http, CONFIRM) == []


async def test_a_refused_confirmation_of_an_order_shipped_meanwhile_succeeds(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer())
    http.post(CONFIRM, status=400, payload={"errors": [{"code": "InvalidInput", "message": "x"}]})
    http.get(ORDER, payload=order_answer("SHIPPED"))

    await connector.ship(ORDER_ID, UPS_1Z)

    assert len(calls_to(http, ORDER)) == 2


async def test_a_refused_confirmation_keeps_amazons_message(
    http: aioresponses, connector: AmazonConnector
) -> None:
    refusal = {
        "errors": [{"code": "InvalidInput", "message": "Invalid carrier", "details": "carrierCode"}]
    }
    http.get(ORDER, payload=order_answer(), repeat=True)
    http.post(CONFIRM, status=400, payload=refusal)

    with pytest.raises(Rejected) as caught:
        await connector.ship(ORDER_ID, UPS_1Z)

    assert caught.value.message == "Invalid carrier: carrierCode (InvalidInput)"


async def test_several_tracking_numbers_confirm_the_first_and_name_the_others(
    http: aioresponses, connector: AmazonConnector
) -> None:
    """confirmShipment takes one package: the other numbers are in the receipt."""
    http.get(ORDER, payload=order_answer())
    http.post(CONFIRM, status=204)

    receipt = await connector.ship(
        ORDER_ID,
        ShipmentRequest(carrier="DHL", tracking_number="JD01; JD02", items={"62410391658172": 2}),
    )

    [(_, kwargs)] = calls_to(http, CONFIRM)
    assert kwargs["json"]["packageDetail"]["trackingNumber"] == "JD01"
    assert receipt.carrier == kwargs["json"]["packageDetail"]["carrierCode"]
    assert (receipt.tracking_numbers, receipt.not_forwarded) == (("JD01",), ("JD02",))
    assert receipt.notes == ("Amazon's confirmShipment takes one tracking number",)


async def test_an_incomplete_shipment_is_rejected_without_any_call(
    http: aioresponses, connector: AmazonConnector
) -> None:
    with pytest.raises(Rejected, match="tracking number"):
        await connector.ship(ORDER_ID, ShipmentRequest(carrier="UPS"))
    with pytest.raises(Rejected, match="carrier"):
        await connector.ship(ORDER_ID, ShipmentRequest(carrier=" ", tracking_number="1Z"))
    assert sent(http) == []


async def test_the_steps_amazon_has_not_are_rejected_without_a_call(
    http: aioresponses, connector: AmazonConnector
) -> None:
    for call in (
        connector.accept(ORDER_ID),
        connector.refuse(ORDER_ID),
        connector.cancel(ORDER_ID),
        connector.refund(ORDER_ID, RefundRequest()),
        connector.deliver(ORDER_ID),
    ):
        with pytest.raises(Rejected):
            await call
    assert sent(http) == []


# -- order_status (getOrder) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amazon_status", "status"),
    [
        ("UNSHIPPED", OrderStatus.WAITING_SHIPMENT),
        ("SHIPPED", OrderStatus.SHIPPED),
        ("CANCELLED", OrderStatus.CANCELLED),
        ("PENDING", None),
    ],
)
async def test_order_status_reads_one_order(
    http: aioresponses,
    connector: AmazonConnector,
    amazon_status: str,
    status: OrderStatus | None,
) -> None:
    http.get(ORDER, payload=order_answer(amazon_status))

    assert await connector.order_status(ORDER_ID) == status


async def test_an_answer_without_fulfillment_is_transient(
    http: aioresponses, connector: AmazonConnector
) -> None:
    raw = amazon_order()
    del raw["fulfillment"]
    http.get(ORDER, payload={"order": raw})

    with pytest.raises(Transient, match="no fulfillment"):
        await connector.order_status(ORDER_ID)


# -- failures ---------------------------------------------------------------------------------


async def test_an_answer_of_the_wrong_shape_is_transient(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(SEARCH, payload={"payload": {"Orders": []}})  # v0's shape

    with pytest.raises(Transient, match="unexpected answer"):
        await pages(connector, NOW - timedelta(hours=1))


def test_the_fixture_order_fits_the_model() -> None:
    """The orders these tests feed the connector are valid v2026-01-01 orders."""
    from tests.connectors.amazon_model import check_schema, model

    spec = model("amazon-sp-api-orders-2026-01-01.json")
    order = copy.deepcopy(amazon_order())
    check_schema(spec, {"$ref": "#/definitions/SearchOrdersResponse"}, {"orders": [order]}, "$")
    check_schema(spec, {"$ref": "#/definitions/GetOrderResponse"}, order_answer(), "$")


_ = CallbackResult  # kept importable for tests that answer by callback


async def test_the_channels_carrier_table_decides_the_amazon_code(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer())
    http.post(CONFIRM, status=204)
    shipment = ShipmentRequest(
        carrier="Livraison express ", tracking_number="6A1", carriers={"livraison EXPRESS": "DHL"}
    )

    receipt = await connector.ship(ORDER_ID, shipment)

    [(_, kwargs)] = calls_to(http, CONFIRM)
    assert kwargs["json"]["packageDetail"]["carrierCode"] == "DHL"
    assert "carrierName" not in kwargs["json"]["packageDetail"]
    assert receipt.carrier_match is not None
    assert (receipt.carrier, receipt.carrier_match.source) == ("DHL", "config")
