"""The Amazon SP-API connector, call by call: exact requests out, orders and errors back."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import aiohttp
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
from sfd.domain import FulfilledBy, OrderStatus
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

LIST = re.compile(r"^https://sellingpartnerapi-eu\.amazon\.com/orders/v0/orders(\?.*)?$")
ORDER = re.compile(r"^https://sellingpartnerapi-eu\.amazon\.com/orders/v0/orders/[^/?]+(\?.*)?$")
ITEMS = re.compile(
    r"^https://sellingpartnerapi-eu\.amazon\.com/orders/v0/orders/(?P<id>[^/?]+)/orderItems"
    r"(\?.*)?$"
)
CONFIRM = re.compile(
    r"^https://sellingpartnerapi-eu\.amazon\.com/orders/v0/orders/[^/?]+/shipmentConfirmation$"
)

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


def amazon_order(
    order_id: str = ORDER_ID, status: str = "Unshipped", **changes: Any
) -> dict[str, Any]:
    """A getOrders order as Amazon.fr writes it: a business buyer, shipped by the seller."""
    order: dict[str, Any] = {
        "AmazonOrderId": order_id,
        "PurchaseDate": "2026-11-28T09:15:02Z",
        "LastUpdateDate": "2026-11-29T10:30:45Z",
        "OrderStatus": status,
        "FulfillmentChannel": "MFN",
        "SalesChannel": "Amazon.fr",
        "ShipServiceLevel": "Std FR Dom_1",
        "OrderTotal": {"CurrencyCode": "EUR", "Amount": "54.88"},
        "NumberOfItemsShipped": 0,
        "NumberOfItemsUnshipped": 5,
        "PaymentMethod": "Other",
        "PaymentMethodDetails": ["Standard"],
        "IsReplacementOrder": False,
        "MarketplaceId": FRANCE,
        "ShipmentServiceLevelCategory": "Standard",
        "OrderType": "StandardOrder",
        "EarliestShipDate": "2026-11-28T23:00:00Z",
        "LatestShipDate": "2026-12-01T22:59:59Z",
        "EarliestDeliveryDate": "2026-12-02T23:00:00Z",
        "LatestDeliveryDate": "2026-12-04T22:59:59Z",
        "IsBusinessOrder": True,
        "IsPrime": False,
        "IsPremiumOrder": False,
        "IsGlobalExpressEnabled": False,
        "IsSoldByAB": False,
        "IsIBA": False,
        "IsISPU": False,
        "IsAccessPointOrder": False,
        "ShippingAddress": {
            "Name": "Camille Dubois",
            "CompanyName": "Atelier Dubois SARL",
            "AddressLine1": "12 rue de la République",
            "AddressLine2": "Bâtiment B",
            "City": "Lyon",
            "StateOrRegion": "Rhône",
            "PostalCode": "69002",
            "CountryCode": "FR",
            "Phone": "+33 4 72 00 00 00",
            "AddressType": "Commercial",
        },
        "BuyerInfo": {
            "BuyerEmail": "k2x9mq7vbn3r5t@marketplace.amazon.fr",
            "BuyerName": "Claire Martin",
            "BuyerTaxInfo": {
                "CompanyLegalName": "Atelier Dubois SARL",
                "TaxingRegion": "FR",
                "TaxClassifications": [{"Name": "VATNumber", "Value": "FR40123456789"}],
            },
            "PurchaseOrderNumber": "PO-2026-118",
        },
        "AutomatedShippingSettings": {"HasAutomatedShippingSettings": False},
        "ElectronicInvoiceStatus": "NotRequired",
    }
    order.update(changes)
    return order


def order_items(order_id: str = ORDER_ID) -> list[dict[str, Any]]:
    """getOrderItems for `amazon_order`: two lines, one of three candles."""
    return [
        {
            "ASIN": "B0CX4RT7QZ",
            "OrderItemId": "62410391658171",
            "SellerSKU": "HOUSSE-LIN-45",
            "Title": "Housse de coussin en lin lavé 45 x 45 cm, terracotta",
            "QuantityOrdered": 2,
            "QuantityShipped": 0,
            "ProductInfo": {"NumberOfItems": "1"},
            "ItemPrice": {"CurrencyCode": "EUR", "Amount": "39.98"},
            "ItemTax": {"CurrencyCode": "EUR", "Amount": "6.66"},
            "ShippingPrice": {"CurrencyCode": "EUR", "Amount": "4.90"},
            "ShippingTax": {"CurrencyCode": "EUR", "Amount": "0.82"},
            "ShippingDiscount": {"CurrencyCode": "EUR", "Amount": "0.00"},
            "PromotionDiscount": {"CurrencyCode": "EUR", "Amount": "0.00"},
            "IsGift": "false",
            "ConditionId": "New",
            "ConditionSubtypeId": "New",
            "IsTransparency": False,
            "SerialNumberRequired": False,
            "BuyerRequestedCancel": {"IsBuyerRequestedCancel": "false", "BuyerCancelReason": ""},
        },
        {
            "ASIN": "B0D2LK8H1M",
            "OrderItemId": "62410391658172",
            "SellerSKU": "BOUGIE-CEDRE",
            "Title": "Bougie parfumée cèdre",
            "QuantityOrdered": 3,
            "QuantityShipped": 0,
            "ItemPrice": {"CurrencyCode": "EUR", "Amount": "10.00"},
            "ItemTax": {"CurrencyCode": "EUR", "Amount": "1.67"},
            "ShippingPrice": {"CurrencyCode": "EUR", "Amount": "0.00"},
            "IsGift": "false",
            "ConditionId": "New",
        },
    ]


def listing(*orders: dict[str, Any] | str, next_token: str | None = None) -> str:
    """A getOrders body; an order given as text is sent byte for byte."""
    texts = [o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in orders]
    token = f', "NextToken": {json.dumps(next_token)}' if next_token else ""
    return (
        '{"payload": {"Orders": [' + ", ".join(texts) + "]"
        f', "LastUpdatedBefore": "2026-11-29T11:57:50Z"{token}}}}}'
    )


def items_answer(
    order_id: str = ORDER_ID,
    items: list[dict[str, Any]] | None = None,
    next_token: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "AmazonOrderId": order_id,
        "OrderItems": order_items(order_id) if items is None else items,
    }
    if next_token:
        payload["NextToken"] = next_token
    return {"payload": payload}


def order_answer(status: str = "Unshipped", **changes: Any) -> dict[str, Any]:
    return {"payload": amazon_order(status=status, **changes)}


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


def serve_items(
    http: aioresponses, by_order: dict[str, list[dict[str, Any]]] | None = None
) -> None:
    """Answer getOrderItems for any order: its own lines if given, else `order_items`."""

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        order_id = url.path.split("/")[-2]
        items = (by_order or {}).get(order_id, order_items(order_id))
        return CallbackResult(payload=items_answer(order_id, items))

    http.get(ITEMS, callback=answer, repeat=True)


def token_calls(http: aioresponses) -> list[dict[str, Any]]:
    return [kwargs for _, url, kwargs in sent(http, "POST") if str(url) == TOKEN_URL]


def calls_to(http: aioresponses, pattern: re.Pattern[str]) -> list[tuple[URL, dict[str, Any]]]:
    return [(url, kwargs) for _, url, kwargs in sent(http) if pattern.match(str(url))]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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
    assert url.path == f"/orders/v0/orders/{ORDER_ID}"
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


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "invalid_grant"),
        (401, "invalid_client"),
    ],
)
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


async def test_an_lwa_outage_is_transient(http: aioresponses, bare: AmazonConnector) -> None:
    http.post(TOKEN_URL, status=503, body="Service Unavailable")

    with pytest.raises(Transient, match="LWA token: HTTP 503"):
        await bare.order_status(ORDER_ID)


async def test_an_expired_token_is_renewed_once_on_403(
    http: aioresponses, bare: AmazonConnector
) -> None:
    grant(http, "Atza|stale", repeat=False)
    grant(http, "Atza|fresh", repeat=False)
    expired = {"errors": [{"code": "Unauthorized", "message": "The access token has expired."}]}
    http.get(ORDER, status=403, payload=expired)
    http.get(ORDER, payload=order_answer("Shipped"))

    assert await bare.order_status(ORDER_ID) is OrderStatus.SHIPPED

    assert len(token_calls(http)) == 2
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
    assert len(token_calls(http)) == 2


async def test_a_401_fails_auth_at_once(http: aioresponses, connector: AmazonConnector) -> None:
    http.get(ORDER, status=401, payload={"errors": [{"code": "Unauthorized", "message": "No"}]})

    with pytest.raises(AuthFailed, match="HTTP 401"):
        await connector.order_status(ORDER_ID)

    assert len(calls_to(http, ORDER)) == 1


# -- listing (getOrders) ----------------------------------------------------------------------


async def test_listing_sends_the_window_in_utc_and_the_filters(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(LIST, body=listing())
    since = datetime(2026, 11, 29, 11, 0, 0, 999_000, tzinfo=timezone(timedelta(hours=1)))

    assert await pages(connector, since) == [OrderPage(orders=[])]

    [(url, kwargs)] = calls_to(http, LIST)
    assert url.path == "/orders/v0/orders"
    assert dict(url.query) == {
        "MarketplaceIds": FRANCE,
        "LastUpdatedAfter": "2026-11-29T10:00:00Z",
        "LastUpdatedBefore": "2026-11-29T11:57:50Z",
        "FulfillmentChannels": "MFN",
        "MaxResultsPerPage": "100",
    }
    before = datetime.fromisoformat(url.query["LastUpdatedBefore"])
    assert before <= NOW - timedelta(minutes=2)
    assert kwargs["headers"]["x-amz-access-token"] == ACCESS
    assert kwargs["allow_redirects"] is False


async def test_the_first_pass_looks_thirty_days_back(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(LIST, body=listing())

    await pages(connector, None)

    [(url, _)] = calls_to(http, LIST)
    assert url.query["LastUpdatedAfter"] == "2026-10-30T12:00:00Z"


async def test_a_cursor_younger_than_two_minutes_asks_nothing(
    http: aioresponses, connector: AmazonConnector
) -> None:
    assert await pages(connector, NOW - timedelta(seconds=90)) == []
    assert sent(http) == []


async def test_several_marketplaces_and_afn_are_asked_together(
    http: aioresponses, clock: FakeClock
) -> None:
    grant(http)
    http.get(LIST, body=listing())
    amazon = AmazonConnector(
        settings(marketplace_ids=[FRANCE, GERMANY], import_afn=True), clock=clock
    )
    try:
        await pages(amazon, NOW - timedelta(hours=1))
    finally:
        await amazon.aclose()

    [(url, _)] = calls_to(http, LIST)
    assert url.query["MarketplaceIds"] == f"{FRANCE},{GERMANY}"
    assert url.query["FulfillmentChannels"] == "MFN,AFN"


def test_query_values_are_percent_encoded_in_full() -> None:
    url = build_url(
        ENDPOINT,
        "/orders/v0/orders",
        {"MarketplaceIds": f"{FRANCE},{GERMANY}", "NextToken": "a+b/c=="},
    )

    assert url.raw_query_string == (
        f"MarketplaceIds={FRANCE}%2C{GERMANY}&NextToken=a%2Bb%2Fc%3D%3D"
    )
    assert url.query["NextToken"] == "a+b/c=="


async def test_listing_follows_next_token_alone_with_the_marketplaces(
    http: aioresponses, connector: AmazonConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "Lw7Zd9+kQp/XBbZ3lMh2qQ=="
    http.get(LIST, body=listing(amazon_order("405-0000001-0000001"), next_token=token))
    http.get(LIST, body=listing(amazon_order("405-0000002-0000002")))
    serve_items(http)
    urls: list[Any] = []
    request = aiohttp.ClientSession.request

    def spy(self: aiohttp.ClientSession, method: str, url: Any, **kwargs: Any) -> Any:
        urls.append(url)
        return request(self, method, url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "request", spy)

    result = await pages(connector, NOW - timedelta(hours=1))

    assert [[o.reference for o in p.orders] for p in result] == [
        ["405-0000001-0000001"],
        ["405-0000002-0000002"],
    ]
    first, second = calls_to(http, LIST)
    assert "NextToken" not in first[0].query
    assert dict(second[0].query) == {"MarketplaceIds": FRANCE, "NextToken": token}
    [wire] = [u for u in urls if isinstance(u, URL) and "NextToken" in u.query]
    assert (
        wire.raw_query_string
        == f"MarketplaceIds={FRANCE}&NextToken=Lw7Zd9%2BkQp%2FXBbZ3lMh2qQ%3D%3D"
    )


async def test_an_order_repeated_across_pages_is_read_again_only_when_newer(
    http: aioresponses, connector: AmazonConnector
) -> None:
    a, b, c = "405-0000001-0000001", "405-0000002-0000002", "405-0000003-0000003"
    newer = "2026-11-29T11:05:00Z"
    http.get(LIST, body=listing(amazon_order(a), amazon_order(b), next_token="page2"))
    http.get(
        LIST,
        body=listing(
            amazon_order(a),
            amazon_order(c),
            amazon_order(b, status="Shipped", LastUpdateDate=newer),
            amazon_order(b),
        ),
    )
    serve_items(http)

    first, second = await pages(connector, NOW - timedelta(days=1))

    assert [o.reference for o in first.orders] == [a, b]
    assert [(o.reference, o.status) for o in second.orders] == [
        (c, OrderStatus.WAITING_SHIPMENT),
        (b, OrderStatus.SHIPPED),
    ]
    assert second.skipped == []
    item_calls = [url.path.split("/")[-2] for url, _ in calls_to(http, ITEMS)]
    assert sorted(item_calls) == [a, b, b, c]


async def test_a_looping_next_token_stops_the_pass(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(LIST, body=listing(next_token="same"), repeat=True)

    with pytest.raises(Transient, match="same NextToken came back twice"):
        await pages(connector, NOW - timedelta(hours=1))


# -- items (getOrderItems) --------------------------------------------------------------------


async def test_items_follow_their_next_token(
    http: aioresponses, connector: AmazonConnector
) -> None:
    first, second = order_items()
    http.get(LIST, body=listing(amazon_order()))
    http.get(ITEMS, payload=items_answer(items=[first], next_token="items+2/=="))
    http.get(ITEMS, payload=items_answer(items=[second]))

    [page] = await pages(connector, NOW - timedelta(hours=1))

    [order] = page.orders
    assert [i.reference for i in order.items] == ["HOUSSE-LIN-45", "BOUGIE-CEDRE"]
    one, two = calls_to(http, ITEMS)
    assert one[0].path == f"/orders/v0/orders/{ORDER_ID}/orderItems"
    assert dict(one[0].query) == {}
    assert dict(two[0].query) == {"NextToken": "items+2/=="}
    assert two[1]["headers"]["x-amz-access-token"] == ACCESS


async def test_items_calls_beyond_the_burst_wait_for_the_bucket(
    http: aioresponses, clock: FakeClock
) -> None:
    # A bucket of 2 refilled at 10 a second: the third and fourth calls wait 0.1 s each.
    grant(http)
    ids = [f"405-000000{n}-000000{n}" for n in range(1, 5)]
    http.get(LIST, body=listing(*(amazon_order(i) for i in ids)))
    loop = asyncio.get_running_loop()
    times: list[float] = []

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        times.append(loop.time())
        order_id = url.path.split("/")[-2]
        return CallbackResult(payload=items_answer(order_id))

    http.get(ITEMS, callback=answer, repeat=True)
    amazon = AmazonConnector(settings(), clock=clock, items_max_rate=2, items_time_period=0.2)
    try:
        [page] = await pages(amazon, NOW - timedelta(hours=1))
    finally:
        await amazon.aclose()

    assert len(page.orders) == 4
    waits = [t - times[0] for t in times]
    assert waits[1] < 0.05
    assert waits[2] >= 0.08
    assert waits[3] >= 0.17
    assert waits[3] < 1.0


def test_the_default_items_bucket_is_amazons_usage_plan() -> None:
    amazon = AmazonConnector(settings())
    limiter = amazon._items_limiter
    assert limiter.max_rate == 30  # the burst
    assert limiter.max_rate / limiter.time_period == 0.5  # the restore rate, per second


# -- normalization ----------------------------------------------------------------------------


async def test_listing_normalizes_every_field(
    http: aioresponses, connector: AmazonConnector
) -> None:
    text = json.dumps(amazon_order(), ensure_ascii=False, indent=1)
    items_text = json.dumps(items_answer(), ensure_ascii=False)
    http.get(LIST, body=listing(text))
    http.get(ITEMS, body=items_text)

    [page] = await pages(connector, NOW - timedelta(hours=1))

    [order] = page.orders
    assert page.skipped == []
    assert order.reference == ORDER_ID
    assert order.status is OrderStatus.WAITING_SHIPMENT
    assert order.created_at == datetime(2026, 11, 28, 9, 15, 2, tzinfo=UTC)
    assert order.updated_at == datetime(2026, 11, 29, 10, 30, 45, tzinfo=UTC)
    assert order.latest_ship_date == datetime(2026, 12, 1, 22, 59, 59, tzinfo=UTC)
    assert order.currency == "EUR"
    assert order.product_amount == Decimal("49.98")
    assert order.shipping_amount == Decimal("4.90")
    assert order.total_amount == Decimal("54.88")
    assert all(
        type(a) is Decimal
        for a in (order.product_amount, order.shipping_amount, order.total_amount)
    )
    assert order.payment_method == "Other"
    assert order.shipping_method == "Std FR Dom_1"
    assert order.fulfilled_by is FulfilledBy.STORE
    assert order.shipment is None
    assert not order.is_test
    raw = json.loads(order.raw)
    assert raw == {"order": amazon_order(), "items": order_items()}
    assert order.raw.startswith(b'{"order": ' + text.encode())

    shipping = order.shipping_address
    assert (shipping.first_name, shipping.last_name) == ("", "Camille Dubois")
    assert shipping.company == "Atelier Dubois SARL"
    assert (shipping.street, shipping.street2) == ("12 rue de la République", "Bâtiment B")
    assert (shipping.postal_code, shipping.city, shipping.province) == ("69002", "Lyon", "Rhône")
    assert (shipping.country, shipping.phone) == ("FR", "+33 4 72 00 00 00")
    assert shipping.email == "k2x9mq7vbn3r5t@marketplace.amazon.fr"
    billing = order.billing_address
    assert billing.last_name == "Claire Martin"
    assert billing.street == "12 rue de la République"
    assert billing.email == "k2x9mq7vbn3r5t@marketplace.amazon.fr"

    housse, bougies = order.items
    assert housse.reference == "HOUSSE-LIN-45"
    assert housse.channel_reference == "62410391658171"
    assert housse.quantity == 2
    assert housse.price == Decimal("19.99")
    assert housse.tax_amount == Decimal("6.66")
    assert housse.name == "Housse de coussin en lin lavé 45 x 45 cm, terracotta"
    assert housse.additional_fields == {
        "asin": "B0CX4RT7QZ",
        "quantity_shipped": 0,
        "shipping_price": "4.90",
        "shipping_tax": "0.82",
        "shipping_discount": "0.00",
        "promotion_discount": "0.00",
        "is_gift": "false",
        "condition": "New",
    }
    assert bougies.quantity == 3
    assert bougies.price == Decimal("3.33")
    assert bougies.tax_amount == Decimal("1.67")

    assert order.additional_fields == {
        "marketplace_id": FRANCE,
        "sales_channel": "Amazon.fr",
        "order_status": "Unshipped",
        "fulfillment_channel": "MFN",
        "order_type": "StandardOrder",
        "ship_service_level": "Std FR Dom_1",
        "shipment_service_level_category": "Standard",
        "earliest_ship_date": "2026-11-28T23:00:00+00:00",
        "earliest_delivery_date": "2026-12-02T23:00:00+00:00",
        "latest_delivery_date": "2026-12-04T22:59:59+00:00",
        "payment_method_details": ["Standard"],
        "is_business_order": True,
        "is_prime": False,
        "is_premium_order": False,
        "is_replacement_order": False,
        "is_ispu": False,
        "is_access_point_order": False,
        "purchase_order_number": "PO-2026-118",
        "company_legal_name": "Atelier Dubois SARL",
        "taxing_region": "FR",
        "tax_classifications": {"VATNumber": "FR40123456789"},
        "vat_number": "FR40123456789",
    }


@pytest.mark.parametrize(
    ("total", "quantity", "unit"),
    [
        ("39.98", 2, "19.99"),
        ("10.00", 3, "3.33"),
        ("20.00", 3, "6.67"),
        ("0.10", 1, "0.10"),
        ("1000", 3, "333.33"),
        ("12.345", 2, "6.173"),
        ("5.00", 0, "5.00"),
    ],
)
def test_unit_prices_are_exact_and_rounded_to_the_cent(
    total: str, quantity: int, unit: str
) -> None:
    price = unit_price(Decimal(total), quantity)
    assert price == Decimal(unit)
    assert str(price) == unit


async def test_a_restricted_order_keeps_what_amazon_shows(
    http: aioresponses, connector: AmazonConnector
) -> None:
    # Without a Restricted Data Token, Amazon leaves out name, street and phone.
    order = amazon_order(
        ShippingAddress={"City": "Lyon", "PostalCode": "69002", "CountryCode": "FR"},
        BuyerInfo={"BuyerEmail": "k2x9mq7vbn3r5t@marketplace.amazon.fr"},
        IsBusinessOrder=False,
    )
    http.get(LIST, body=listing(order))
    serve_items(http)

    [page] = await pages(connector, NOW - timedelta(hours=1))

    [normalized] = page.orders
    assert normalized.shipping_address.city == "Lyon"
    assert normalized.shipping_address.last_name == ""
    assert normalized.billing_address == normalized.shipping_address
    assert "vat_number" not in normalized.additional_fields


async def test_a_cancelled_order_without_total_adds_up_its_lines(
    http: aioresponses, connector: AmazonConnector
) -> None:
    order = amazon_order(status="Canceled")
    del order["OrderTotal"]
    lines = [dict(order_items()[0], QuantityOrdered=0, ItemPrice=None, ShippingPrice=None)]
    del lines[0]["ItemPrice"], lines[0]["ShippingPrice"]
    http.get(LIST, body=listing(order))
    serve_items(http, {ORDER_ID: lines})

    [page] = await pages(connector, NOW - timedelta(hours=1))

    [normalized] = page.orders
    assert normalized.status is OrderStatus.CANCELLED
    assert normalized.currency == "EUR"  # the French marketplace's
    assert normalized.total_amount == Decimal(0)
    assert normalized.items[0].price == Decimal(0)


@pytest.mark.parametrize(
    ("amazon_status", "status"),
    [
        ("Unshipped", OrderStatus.WAITING_SHIPMENT),
        ("PartiallyShipped", OrderStatus.PARTIALLY_SHIPPED),
        ("Shipped", OrderStatus.SHIPPED),
        ("InvoiceUnconfirmed", OrderStatus.SHIPPED),
        ("Canceled", OrderStatus.CANCELLED),
        ("Unfulfillable", OrderStatus.CANCELLED),
    ],
)
async def test_order_statuses_map_to_statuses(
    http: aioresponses, connector: AmazonConnector, amazon_status: str, status: OrderStatus
) -> None:
    http.get(LIST, body=listing(amazon_order(status=amazon_status)))
    serve_items(http)

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert [o.status for o in page.orders] == [status]


@pytest.mark.parametrize("unpaid", ["Pending", "PendingAvailability"])
async def test_unpaid_orders_are_not_imported_nor_their_items_read(
    http: aioresponses, connector: AmazonConnector, unpaid: str
) -> None:
    pending = amazon_order("405-0000009-0000009", status=unpaid)
    del pending["OrderTotal"], pending["ShippingAddress"]
    http.get(LIST, body=listing(pending, amazon_order()))
    serve_items(http)

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert [o.reference for o in page.orders] == [ORDER_ID]
    assert page.skipped == []
    assert [url.path.split("/")[-2] for url, _ in calls_to(http, ITEMS)] == [ORDER_ID]


async def test_afn_orders_are_left_out_by_default(
    http: aioresponses, connector: AmazonConnector
) -> None:
    afn = amazon_order("405-0000008-0000008", FulfillmentChannel="AFN")
    http.get(LIST, body=listing(afn, amazon_order()))
    serve_items(http)

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert [o.reference for o in page.orders] == [ORDER_ID]
    assert page.skipped == []
    assert len(calls_to(http, ITEMS)) == 1


async def test_afn_orders_are_imported_as_fulfilled_by_the_channel_when_asked(
    http: aioresponses, clock: FakeClock
) -> None:
    grant(http)
    afn = amazon_order(status="Shipped", FulfillmentChannel="AFN")
    http.get(LIST, body=listing(afn))
    serve_items(http)
    amazon = AmazonConnector(settings(import_afn=True), clock=clock)
    try:
        [page] = await pages(amazon, NOW - timedelta(hours=1))
    finally:
        await amazon.aclose()

    [order] = page.orders
    assert order.fulfilled_by is FulfilledBy.CHANNEL
    assert order.status is OrderStatus.SHIPPED


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"OrderTotal": {"CurrencyCode": "EUR", "Amount": "douze"}},
            "OrderTotal.Amount: invalid decimal string",
        ),
        ({"PurchaseDate": "hier"}, "PurchaseDate: invalid RFC3339 encoded datetime"),
        ({"IsPrime": "non"}, "IsPrime: expected `bool | null`, got `str`"),
        (
            {"ShippingAddress": "12 rue de la Paix"},
            "ShippingAddress: expected `object | null`, got `str`",
        ),
        ({"OrderStatus": "Lost"}, "OrderStatus: unknown status 'Lost'"),
        ({"OrderTotal": {"CurrencyCode": "EUR", "Amount": "NaN"}}, "OrderTotal.Amount: expected"),
    ],
)
async def test_a_malformed_order_is_skipped_and_the_page_goes_on(
    http: aioresponses, connector: AmazonConnector, changes: dict[str, Any], reason: str
) -> None:
    bad = amazon_order("405-0000002-0000002", **changes)
    http.get(
        LIST,
        body=listing(amazon_order("405-0000001-0000001"), bad, amazon_order("405-0000003-0000003")),
    )
    serve_items(http)

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert [o.reference for o in page.orders] == ["405-0000001-0000001", "405-0000003-0000003"]
    [skipped] = page.skipped
    assert skipped.reference == "405-0000002-0000002"
    assert skipped.reason.startswith(reason)
    assert skipped.updated_at == datetime(2026, 11, 29, 10, 30, 45, tzinfo=UTC)
    assert "405-0000002-0000002" not in [
        url.path.split("/")[-2] for url, _ in calls_to(http, ITEMS)
    ]


async def test_an_order_without_id_is_skipped_by_its_position(
    http: aioresponses, connector: AmazonConnector
) -> None:
    nameless = amazon_order()
    del nameless["AmazonOrderId"]
    http.get(LIST, body=listing(amazon_order("405-0000001-0000001"), nameless, "null"))
    serve_items(http)

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert [(s.reference, s.reason) for s in page.skipped] == [
        ("#1", "AmazonOrderId: missing"),
        ("#2", "order: expected `object`, got `null`"),
    ]
    assert page.skipped[0].updated_at == datetime(2026, 11, 29, 10, 30, 45, tzinfo=UTC)
    assert page.skipped[1].updated_at is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"QuantityOrdered": "deux"}, "OrderItems[1].QuantityOrdered: expected `int`, got `str`"),
        ({"QuantityOrdered": -1}, "OrderItems[1].QuantityOrdered: expected `int` >= 0"),
        ({"SellerSKU": None}, "OrderItems[1].SellerSKU: missing"),
        ({"ItemPrice": {"Amount": "dix"}}, "OrderItems[1].ItemPrice.Amount: invalid decimal"),
    ],
)
async def test_a_bad_item_skips_its_order_naming_the_item_and_field(
    http: aioresponses, connector: AmazonConnector, change: dict[str, Any], reason: str
) -> None:
    first, second = order_items()
    http.get(LIST, body=listing(amazon_order()))
    serve_items(http, {ORDER_ID: [first, dict(second, **change)]})

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert page.orders == []
    [skipped] = page.skipped
    assert skipped.reference == ORDER_ID
    assert skipped.reason.startswith(reason)


async def test_an_order_whose_items_amazon_refuses_is_skipped(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(LIST, body=listing(amazon_order("405-0000001-0000001"), amazon_order()))
    http.get(ITEMS, payload=items_answer("405-0000001-0000001"))
    http.get(
        ITEMS,
        status=404,
        payload={"errors": [{"code": "NotFound", "message": "Order not found"}]},
    )

    [page] = await pages(connector, NOW - timedelta(hours=1))

    assert [o.reference for o in page.orders] == ["405-0000001-0000001"]
    [skipped] = page.skipped
    assert (skipped.reference, skipped.reason) == (
        ORDER_ID,
        "OrderItems: Order not found (NotFound)",
    )


# -- ship (confirmShipment) -------------------------------------------------------------------


async def test_a_full_shipment_confirms_every_item_of_the_order(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer())
    http.get(ITEMS, payload=items_answer())
    http.post(CONFIRM, status=204)

    await connector.ship(
        ORDER_ID,
        ShipmentRequest(
            carrier="Colissimo",
            tracking_number="6A12345678901",
            tracking_link="https://www.laposte.fr/outils/suivre-vos-envois?code=6A12345678901",
        ),
    )

    [(url, kwargs)] = calls_to(http, CONFIRM)
    assert url.path == f"/orders/v0/orders/{ORDER_ID}/shipmentConfirmation"
    assert kwargs["headers"]["x-amz-access-token"] == ACCESS
    lines = [("62410391658171", 2), ("62410391658172", 3)]
    assert kwargs["json"] == {
        "marketplaceId": FRANCE,
        "packageDetail": {
            "packageReferenceId": package_reference(ORDER_ID, "6A12345678901", lines),
            "carrierCode": "Other",
            "carrierName": "Colissimo",
            "trackingNumber": "6A12345678901",
            "shipDate": "2026-11-29T12:00:00Z",
            "orderItems": [
                {"orderItemId": "62410391658171", "quantity": 2},
                {"orderItemId": "62410391658172", "quantity": 3},
            ],
        },
    }


async def test_a_partial_shipment_confirms_only_its_items(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer(MarketplaceId=GERMANY))
    http.post(CONFIRM, status=204)

    await connector.ship(
        ORDER_ID,
        ShipmentRequest(
            carrier="chronopost", tracking_number="XY123456789FR", items={"62410391658172": 2}
        ),
    )

    assert calls_to(http, ITEMS) == []
    [(_, kwargs)] = calls_to(http, CONFIRM)
    assert kwargs["json"] == {
        "marketplaceId": GERMANY,
        "packageDetail": {
            "packageReferenceId": package_reference(
                ORDER_ID, "XY123456789FR", [("62410391658172", 2)]
            ),
            "carrierCode": "Chronopost",
            "trackingNumber": "XY123456789FR",
            "shipDate": "2026-11-29T12:00:00Z",
            "orderItems": [{"orderItemId": "62410391658172", "quantity": 2}],
        },
    }


async def test_a_full_shipment_after_a_partial_one_sends_what_is_left(
    http: aioresponses, connector: AmazonConnector
) -> None:
    first, second = order_items()
    http.get(ORDER, payload=order_answer("PartiallyShipped"))
    http.get(
        ITEMS,
        payload=items_answer(
            items=[dict(first, QuantityShipped=2), dict(second, QuantityShipped=1)]
        ),
    )
    http.post(CONFIRM, status=204)

    await connector.ship(ORDER_ID, ShipmentRequest(carrier="UPS", tracking_number="1Z999AA1"))

    [(_, kwargs)] = calls_to(http, CONFIRM)
    assert kwargs["json"]["packageDetail"]["carrierCode"] == "UPS"
    assert "carrierName" not in kwargs["json"]["packageDetail"]
    assert kwargs["json"]["packageDetail"]["orderItems"] == [
        {"orderItemId": "62410391658172", "quantity": 2}
    ]


def test_package_references_are_positive_numbers_stable_per_package() -> None:
    one = package_reference(ORDER_ID, "6A1", [("62410391658171", 1)])
    again = package_reference(ORDER_ID, "6A1", [("62410391658171", 1)])
    other = package_reference(ORDER_ID, "6A2", [("62410391658172", 3)])

    assert one == again
    assert one != other
    assert one.isdigit()
    assert int(one) > 0


@pytest.mark.parametrize(
    ("carrier", "code"),
    [
        ("Chronopost", "Chronopost"),
        ("royal mail", "Royal Mail"),
        ("FEDEX", "FedEx"),
        ("La-Poste", "La Poste"),
        ("Colissimo", "Other"),
        ("Transports Martin", "Other"),
    ],
)
def test_carriers_map_to_amazon_codes(carrier: str, code: str) -> None:
    assert carrier_code(carrier) == code


async def test_shipping_an_order_amazon_shows_shipped_succeeds_without_a_call(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer("Shipped"))

    await connector.ship(ORDER_ID, ShipmentRequest(carrier="DPD", tracking_number="0987"))

    assert calls_to(http, CONFIRM) == []


async def test_a_refused_confirmation_of_an_order_shipped_meanwhile_succeeds(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer("Unshipped"))
    http.get(ITEMS, payload=items_answer())
    http.post(
        CONFIRM,
        status=400,
        payload={"errors": [{"code": "InvalidInput", "message": "Order is already shipped"}]},
    )
    http.get(ORDER, payload=order_answer("Shipped"))

    await connector.ship(ORDER_ID, ShipmentRequest(carrier="DPD", tracking_number="0987"))

    assert len(calls_to(http, ORDER)) == 2


async def test_a_refused_confirmation_keeps_amazons_message(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer("Unshipped"), repeat=True)
    http.post(
        CONFIRM,
        status=400,
        payload={
            "errors": [
                {
                    "code": "InvalidInput",
                    "message": "OrderItemId is invalid, please obtain the value through the "
                    "getOrderItems API",
                    "details": "",
                }
            ]
        },
    )

    with pytest.raises(Rejected) as caught:
        await connector.ship(
            ORDER_ID, ShipmentRequest(carrier="DPD", tracking_number="0987", items={"999": 1})
        )

    assert caught.value.message == (
        "OrderItemId is invalid, please obtain the value through the getOrderItems API "
        "(InvalidInput)"
    )


async def test_a_cancelled_order_cannot_ship(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, payload=order_answer("Canceled"))

    with pytest.raises(Rejected, match="cancelled"):
        await connector.ship(ORDER_ID, ShipmentRequest(carrier="DPD", tracking_number="0987"))

    assert calls_to(http, CONFIRM) == []


@pytest.mark.parametrize(
    ("shipment", "message"),
    [
        (ShipmentRequest(carrier="DPD"), "needs a tracking number"),
        (ShipmentRequest(carrier=" ", tracking_number="0987"), "needs the carrier"),
        (ShipmentRequest(carrier="DPD", tracking_number="0987", items={}), "at least one item"),
        (
            ShipmentRequest(carrier="DPD", tracking_number="0987", items={"62410391658171": 0}),
            "positive whole number",
        ),
    ],
)
async def test_an_incomplete_shipment_is_rejected_without_any_call(
    http: aioresponses, connector: AmazonConnector, shipment: ShipmentRequest, message: str
) -> None:
    with pytest.raises(Rejected, match=message):
        await connector.ship(ORDER_ID, shipment)

    assert sent(http) == []


async def test_several_tracking_numbers_confirm_the_first_and_name_the_others(
    http: aioresponses, connector: AmazonConnector
) -> None:
    """confirmShipment takes one package: the other numbers are in the receipt."""
    http.get(ORDER, payload=order_answer(MarketplaceId=GERMANY))
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


# -- no acceptance, no cancellation; status -----------------------------------------------------


@pytest.mark.parametrize("verb", ["accept", "refuse"])
async def test_there_is_no_acceptance_step(
    http: aioresponses, connector: AmazonConnector, verb: str
) -> None:
    with pytest.raises(Rejected) as caught:
        await getattr(connector, verb)(ORDER_ID)

    assert caught.value.message.startswith("Amazon has no acceptance step")
    assert sent(http) == []


async def test_cancel_is_rejected_pointing_to_seller_central(
    http: aioresponses, connector: AmazonConnector
) -> None:
    with pytest.raises(Rejected, match="Seller Central"):
        await connector.cancel(ORDER_ID)

    assert sent(http) == []


async def test_refund_and_deliver_are_rejected_without_a_call(
    http: aioresponses, connector: AmazonConnector
) -> None:
    with pytest.raises(Rejected, match="Orders v0 has no refund call"):
        await connector.refund(ORDER_ID, RefundRequest())
    with pytest.raises(Rejected, match="no delivery confirmation"):
        await connector.deliver(ORDER_ID)

    assert sent(http) == []


@pytest.mark.parametrize(
    ("amazon_status", "status"),
    [
        ("Unshipped", OrderStatus.WAITING_SHIPMENT),
        ("PartiallyShipped", OrderStatus.PARTIALLY_SHIPPED),
        ("InvoiceUnconfirmed", OrderStatus.SHIPPED),
        ("Canceled", OrderStatus.CANCELLED),
        ("Pending", None),
        ("PendingAvailability", None),
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
    [(url, _)] = calls_to(http, ORDER)
    assert url.path == f"/orders/v0/orders/{ORDER_ID}"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"x-amzn-RateLimit-Limit": "0.5"}, 2.0),
        ({"x-amzn-RateLimit-Limit": "0.0167"}, 59.88),
        ({"Retry-After": "7", "x-amzn-RateLimit-Limit": "0.5"}, 7.0),
        ({}, None),
    ],
)
async def test_429_is_rate_limited_with_a_hint(
    http: aioresponses,
    connector: AmazonConnector,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    http.get(
        LIST,
        status=429,
        headers=headers,
        payload={"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota"}]},
    )

    with pytest.raises(RateLimited) as caught:
        await pages(connector, NOW - timedelta(hours=1))

    assert caught.value.retry_after == expected


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(
    http: aioresponses, connector: AmazonConnector, status: int
) -> None:
    http.get(LIST, status=status, body="<html>Service Unavailable</html>")

    with pytest.raises(Transient, match=f"HTTP {status}"):
        await pages(connector, NOW - timedelta(hours=1))


async def test_a_timeout_is_transient(http: aioresponses, connector: AmazonConnector) -> None:
    http.get(LIST, exception=TimeoutError())

    with pytest.raises(Transient, match="no answer within 30 s"):
        await pages(connector, NOW - timedelta(hours=1))


async def test_a_connection_error_is_transient(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, exception=aiohttp.ClientConnectionError("Connection reset by peer"))

    with pytest.raises(Transient, match="ClientConnectionError"):
        await connector.order_status(ORDER_ID)


async def test_an_html_page_with_200_is_transient(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(
        LIST, status=200, body="<!DOCTYPE html><html>Maintenance</html>", content_type="text/html"
    )

    with pytest.raises(Transient, match="not JSON: <!DOCTYPE html>"):
        await pages(connector, NOW - timedelta(hours=1))


async def test_json_of_the_wrong_shape_is_transient(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(LIST, payload={"payload": {"Orders": {"405": {}}}})

    with pytest.raises(Transient, match="unexpected answer"):
        await pages(connector, NOW - timedelta(hours=1))


async def test_a_client_error_without_json_shows_status_and_excerpt(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(ORDER, status=404, body="<html>\n  Not   Found\n</html>")

    with pytest.raises(Rejected) as caught:
        await connector.order_status(ORDER_ID)

    assert caught.value.message == "HTTP 404: <html> Not Found </html>"


async def test_a_redirect_is_refused_not_followed(
    http: aioresponses, connector: AmazonConnector
) -> None:
    http.get(LIST, status=302, headers={"Location": "https://signin.elsewhere.test/ap"})

    with pytest.raises(Transient, match=r"redirect to signin\.elsewhere\.test refused"):
        await pages(connector, NOW - timedelta(hours=1))

    assert len(calls_to(http, LIST)) == 1


# -- session ----------------------------------------------------------------------------------


async def test_a_session_given_is_used_and_left_open(http: aioresponses) -> None:
    grant(http)
    http.get(ORDER, payload=order_answer())
    async with aiohttp.ClientSession() as session:
        amazon = AmazonConnector(settings(), session=session)
        await amazon.order_status(ORDER_ID)
        await amazon.aclose()

        assert not session.closed


async def test_the_connector_closes_the_session_it_opened(http: aioresponses) -> None:
    grant(http)
    http.get(ORDER, payload=order_answer())
    amazon = AmazonConnector(settings(), name="amazon-eu")
    await amazon.order_status(ORDER_ID)
    session = amazon._session
    assert session is not None

    await amazon.aclose()

    assert session.closed
    assert amazon.name == "amazon-eu"
    assert amazon.min_poll_interval == 60.0
    assert amazon.pages_sorted_by_update is False
