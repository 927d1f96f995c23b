"""One contract adapter per connector: all the shared suite needs to know of it.

A new connector gets every case of `tests/contract/` by adding one adapter to ADAPTERS.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NotRequired, TypedDict, Unpack

from aioresponses import aioresponses

from sfd.connectors.amazon import AmazonConnector
from sfd.connectors.base import ShipmentRequest
from sfd.connectors.ebay import EbayConnector
from sfd.connectors.mirakl import MiraklConnector
from sfd.connectors.prestashop import PrestaShopConnector
from sfd.connectors.settings import (
    MiraklSettings,
    PrestaShopSettings,
    ShopifySettings,
    WooCommerceSettings,
)
from sfd.connectors.shop import PushLine, PushOrder, Retry
from sfd.connectors.shopify import ATTR_MARKETPLACE, ATTR_REFERENCE, ShopifyConnector
from sfd.connectors.woocommerce import META_MARKETPLACE, META_REFERENCE, WooCommerceConnector
from sfd.domain import Address
from tests.connectors import test_amazon as amazon
from tests.connectors import test_ebay as ebay
from tests.connectors import test_mirakl as mirakl

Connector = (
    MiraklConnector
    | AmazonConnector
    | EbayConnector
    | WooCommerceConnector
    | PrestaShopConnector
    | ShopifyConnector
)


@dataclass(frozen=True)
class Adapter:
    """How the suite drives one connector.

    `make(session)` builds it against its test base URL; `auth` answers its token grant, if
    any; `list_url` matches its list call and `read` drains it, returning (references read,
    skipped reasons); `page` is one list answer (orders, is it the last); `order`/`malformed`
    are a valid order body and a malformed one with the field it must be named by;
    `ship`/`already` send the idempotent write and answer it as "already done"; `secret` is a
    credential that must never show.
    """

    name: str
    make: Callable[..., Connector]
    auth: Callable[[aioresponses], None]
    list_url: re.Pattern[str]
    read: Callable[[Any], Awaitable[tuple[list[str], list[str]]]]
    page: Callable[[list[dict[str, Any]], bool], dict[str, Any]]
    order: Callable[[str], dict[str, Any]]
    malformed: tuple[dict[str, Any], str]
    ship: Callable[[Any], Awaitable[Any]]
    already: Callable[[aioresponses], None]
    secret: str
    first_page_size: int = 1
    skips_malformed: bool = True
    """Whether a malformed order is skipped alone (marketplaces), or its page refused (shops)."""
    list_method: str = "GET"
    """The list call's method: GraphQL APIs (Shopify) read with POST."""


def _no_auth(http: aioresponses) -> None:
    """Connectors authenticated by a static key need no token."""


async def _marketplace_read(connector: Any) -> tuple[list[str], list[str]]:
    references: list[str] = []
    skipped: list[str] = []
    async for page in connector.fetch_orders(None):
        references += [o.reference for o in page.orders]
        skipped += [s.reason for s in page.skipped]
    return references, skipped


# -- Mirakl ------------------------------------------------------------------------------------


def _mirakl_page(orders: list[dict[str, Any]], last: bool) -> dict[str, Any]:
    total = len(orders) if last else len(orders) + 1
    return {"body": mirakl.listing(*orders, total=total)}


async def _mirakl_ship(connector: Any) -> Any:
    return await connector.ship("7001-A", ShipmentRequest(tracking_number=""))


def _mirakl_already(http: aioresponses) -> None:
    refusal = {"status": 400, "message": "The order 7001-A is not in SHIPPING state"}
    http.put(mirakl.put_url("7001-A", "ship"), status=400, payload=refusal)
    http.get(mirakl.ORDERS, body=mirakl.listing(mirakl.mirakl_order(state="SHIPPED")))


MIRAKL = Adapter(
    name="mirakl",
    make=lambda session=None: MiraklConnector(
        MiraklSettings(base_url=mirakl.BASE, api_key=mirakl.KEY), session=session
    ),
    auth=_no_auth,
    list_url=mirakl.ORDERS,
    read=_marketplace_read,
    page=_mirakl_page,
    order=mirakl.small_order,
    malformed=(mirakl.small_order("2-A") | {"price": "ten"}, "price"),
    ship=_mirakl_ship,
    already=_mirakl_already,
    secret=mirakl.KEY,
    first_page_size=100,
)


# -- Amazon ------------------------------------------------------------------------------------


def _amazon_page(orders: list[dict[str, Any]], last: bool) -> dict[str, Any]:
    return {"body": amazon.listing(*orders, next_token=None if last else "next-page")}


async def _amazon_ship(connector: Any) -> Any:
    request = ShipmentRequest(carrier="UPS", tracking_number="1Z")
    return await connector.ship(amazon.ORDER_ID, request)


def _amazon_already(http: aioresponses) -> None:
    http.get(amazon.ORDER, payload=amazon.order_answer())
    http.post(amazon.CONFIRM, status=400, payload={"errors": [{"code": "InvalidInput"}]})
    http.get(amazon.ORDER, payload=amazon.order_answer("SHIPPED"))


def _amazon_malformed() -> tuple[dict[str, Any], str]:
    order = amazon.amazon_order("405-0000002-0000002")
    order["orderItems"][0]["quantityOrdered"] = "two"
    return order, "orderItems[0].quantityOrdered"


AMAZON = Adapter(
    name="amazon",
    make=lambda session=None: AmazonConnector(amazon.settings(), session=session),
    auth=lambda http: amazon.grant(http),
    list_url=amazon.SEARCH,
    read=_marketplace_read,
    page=_amazon_page,
    order=lambda ref: amazon.amazon_order(ref),
    malformed=_amazon_malformed(),
    ship=_amazon_ship,
    already=_amazon_already,
    secret=amazon.REFRESH,
)


# -- eBay --------------------------------------------------------------------------------------


def _ebay_page(orders: list[dict[str, Any]], last: bool) -> dict[str, Any]:
    return {"body": ebay.listing(*orders, total=None if last else len(orders) + 1)}


async def _ebay_ship(connector: Any) -> Any:
    request = ShipmentRequest(carrier="DHL", tracking_number="1", items={"10012345678901": 3})
    return await connector.ship(ebay.ORDER_ID, request)


def _ebay_already(http: aioresponses) -> None:
    order = ebay.ebay_order(fulfillment="IN_PROGRESS")
    order["lineItems"][0]["lineItemFulfillmentStatus"] = "FULFILLED"
    refusal = {"errors": [{"errorId": 32600, "message": "Invalid input data"}]}
    http.post(ebay.FULFILLMENTS, status=400, payload=refusal)
    http.get(ebay.order_url(), payload=order)


def _ebay_malformed() -> tuple[dict[str, Any], str]:
    order = ebay.small_order("2")
    order["pricingSummary"] = {"total": {"value": [], "currency": "EUR"}}
    return order, "pricingSummary.total.value"


EBAY = Adapter(
    name="ebay",
    make=lambda session=None: EbayConnector(ebay.SETTINGS, session=session),
    auth=lambda http: ebay.grant(http),
    list_url=ebay.ORDERS,
    read=_marketplace_read,
    page=_ebay_page,
    order=ebay.small_order,
    malformed=_ebay_malformed(),
    ship=_ebay_ship,
    already=_ebay_already,
    secret=ebay.SECRET,
)


# -- Shops ---------------------------------------------------------------------------------------


def push_order(reference: str = "R7") -> PushOrder:
    return PushOrder(
        order_id=7,
        marketplace="decathlon",
        reference=reference,
        currency="EUR",
        billing=Address(first_name="Léa", last_name="Martin"),
        shipping=Address(first_name="Léa", last_name="Martin"),
        lines=(PushLine(sku="SKU-1", name="Lampe", quantity=1, price=Decimal("9.90")),),
        shipping_method="Colissimo",
        shipping_amount=Decimal("0"),
    )


async def _shop_read(connector: Any) -> tuple[list[str], list[str]]:
    references: list[str] = []
    async for batch in connector.changed_orders(None):
        references += [o.marketplace_reference or o.shop_id for o in batch]
    return references, []


async def _find_pushed(connector: Any) -> Any:
    found = await connector.find_order(push_order("R7"), since=datetime(2026, 11, 29))
    assert found == "7", "a create already done is found by search, not made again"
    return found


class ShopFields(TypedDict):
    """What differs from shop to shop in its Adapter."""

    name: str
    list_url: re.Pattern[str]
    read: Callable[[Any], Awaitable[tuple[list[str], list[str]]]]
    page: Callable[[list[dict[str, Any]], bool], dict[str, Any]]
    order: Callable[[str], dict[str, Any]]
    malformed: tuple[dict[str, Any], str]
    already: Callable[[aioresponses], None]
    secret: str
    first_page_size: NotRequired[int]
    list_method: NotRequired[str]


def shop_adapter(connector: Callable[..., Connector], **fields: Unpack[ShopFields]) -> Adapter:
    """A shop's adapter: its key needs no token, a malformed order refuses its whole page, and
    the idempotent write is finding the order pushed before. `connector(session=, retry=)` is
    built with one attempt a call: each failure is judged on its first, reads are not retried."""
    return Adapter(
        make=lambda session=None: connector(session=session, retry=Retry(attempts=1)),
        auth=_no_auth,
        ship=_find_pushed,
        skips_malformed=False,
        **fields,
    )


# -- WooCommerce ---------------------------------------------------------------------------------

WC_BASE = "https://shop.test"
WC_KEY = "ck_0123456789abcdef0123456789abcdef01234567"
WC_SECRET = "cs_fedcba9876543210fedcba9876543210fedcba98"
WC_ORDERS = re.compile(r"^https://shop\.test/wp-json/wc/v3/orders(\?.*)?$")
WC_PER_PAGE = 2


def wc_order(reference: str) -> dict[str, Any]:
    """A WooCommerce order sfd pushed, cancelled (so that reading it needs no tracking call)."""
    return {
        "id": int(re.sub(r"\D", "", reference) or 0),
        "status": "cancelled",
        "date_modified_gmt": "2026-11-29T10:30:00",
        "meta_data": [
            {"key": META_REFERENCE, "value": reference},
            {"key": META_MARKETPLACE, "value": "decathlon"},
        ],
    }


def _wc_page(orders: list[dict[str, Any]], last: bool) -> dict[str, Any]:
    # changed_orders reads completed orders, then cancelled ones: each status pages alone.
    return {"body": json.dumps(orders), "headers": {"X-WP-TotalPages": "1" if last else "9"}}


def _wc_already(http: aioresponses) -> None:
    http.get(WC_ORDERS, body=json.dumps([wc_order("R7")]))


WOOCOMMERCE = shop_adapter(
    functools.partial(
        WooCommerceConnector,
        WooCommerceSettings(base_url=WC_BASE, consumer_key=WC_KEY, consumer_secret=WC_SECRET),
        per_page=WC_PER_PAGE,
    ),
    name="woocommerce",
    list_url=WC_ORDERS,
    read=_shop_read,
    page=_wc_page,
    order=wc_order,
    malformed=(wc_order("R2") | {"id": "two"}, "id"),
    already=_wc_already,
    secret=WC_SECRET,
)


# -- PrestaShop ----------------------------------------------------------------------------------

PS_BASE = "https://ps.test"
PS_KEY = "PSKEY0123456789ABCDEFGHIJKLMNOPQ"
PS_ORDERS = re.compile(r"^https://ps\.test/api/orders\?.*$")
PS_PER_PAGE = 2


def ps_order(reference: str) -> dict[str, Any]:
    """A PrestaShop order in a listing (`display=[…]`), cancelled: no tracking is read."""
    return {
        "id": int(re.sub(r"\D", "", reference) or 0),
        "current_state": "6",
        "date_upd": "2026-11-29 10:30:00",
        "module": "ps_wirepayment",
        "id_carrier": "1",
    }


def _ps_page(orders: list[dict[str, Any]], last: bool) -> dict[str, Any]:
    # A page shorter than the page size is the last; PrestaShop 1.7 writes none as `[]`.
    assert last or len(orders) == PS_PER_PAGE
    return {"body": json.dumps({"orders": orders} if orders else [])}


async def _ps_read(connector: Any) -> tuple[list[str], list[str]]:
    # The listing holds no marketplace reference: the test's references are `<id>-A`.
    references: list[str] = []
    async for batch in connector.changed_orders(None):
        references += [f"{o.shop_id}-A" for o in batch]
    return references, []


def _ps_already(http: aioresponses) -> None:
    from sfd.connectors.prestashop import order_message

    text = order_message(push_order("R7"))
    messages = {"messages": [{"id": 3, "id_cart": "5", "message": text}]}
    http.get(re.compile(r"^https://ps\.test/api/messages\?.*$"), body=json.dumps(messages))
    http.get(PS_ORDERS, body=json.dumps({"orders": [{"id": 7}]}))
    paid = {"order_histories": [{"id": 9, "id_order_state": "2"}]}
    http.get(re.compile(r"^https://ps\.test/api/order_histories\?.*$"), body=json.dumps(paid))


PRESTASHOP = shop_adapter(
    functools.partial(
        PrestaShopConnector,
        PrestaShopSettings(
            base_url=PS_BASE, api_key=PS_KEY, payment_module="ps_wirepayment", carrier_id=1
        ),
        per_page=PS_PER_PAGE,
    ),
    name="prestashop",
    list_url=PS_ORDERS,
    read=_ps_read,
    page=_ps_page,
    order=ps_order,
    malformed=(ps_order("2-A") | {"id": "two"}, "id"),
    already=_ps_already,
    secret=PS_KEY,
    first_page_size=PS_PER_PAGE,
)

# -- Shopify (Admin GraphQL) -------------------------------------------------------------------

SHOPIFY_URL = "https://shop.myshopify.test"
SHOPIFY_TOKEN = "shpat_0123456789abcdef0123456789abcdef"
SHOPIFY_GRAPHQL = re.compile(r"^https://shop\.myshopify\.test/admin/api/2026-01/graphql\.json$")


def shopify_order(reference: str) -> dict[str, Any]:
    """A Shopify order sfd pushed, cancelled (so that reading it needs no second query)."""
    number = int(re.sub(r"\D", "", reference) or 0)
    return {
        "id": f"gid://shopify/Order/{number}",
        "updatedAt": "2026-11-29T10:30:00Z",
        "cancelledAt": "2026-11-29T10:30:00Z",
        "displayFulfillmentStatus": "UNFULFILLED",
        "sourceName": "decathlon",
        "sourceIdentifier": reference,
        "customAttributes": [
            {"key": ATTR_REFERENCE, "value": reference},
            {"key": ATTR_MARKETPLACE, "value": "decathlon"},
        ],
        "fulfillments": [],
    }


def _shopify_answer(orders: list[dict[str, Any]], last: bool) -> str:
    cost = {
        "requestedQueryCost": 66,
        "actualQueryCost": 4,
        "throttleStatus": {
            "maximumAvailable": 2000.0,
            "currentlyAvailable": 1996.0,
            "restoreRate": 100.0,
        },
    }
    page = {"hasNextPage": not last, "endCursor": None if last else "next-page"}
    data = {"orders": {"pageInfo": page, "nodes": orders}}
    return json.dumps({"data": data, "extensions": {"cost": cost}})


def _shopify_page(orders: list[dict[str, Any]], last: bool) -> dict[str, Any]:
    return {"body": _shopify_answer(orders, last)}


def _shopify_already(http: aioresponses) -> None:
    http.post(SHOPIFY_GRAPHQL, body=_shopify_answer([shopify_order("R7")], True))


SHOPIFY = shop_adapter(
    functools.partial(
        ShopifyConnector,
        ShopifySettings(shop_url=SHOPIFY_URL, access_token=SHOPIFY_TOKEN),
        page_size=2,
    ),
    name="shopify",
    list_url=SHOPIFY_GRAPHQL,
    read=_shop_read,
    page=_shopify_page,
    order=shopify_order,
    malformed=(shopify_order("R2") | {"updatedAt": 7}, "updatedAt"),
    already=_shopify_already,
    secret=SHOPIFY_TOKEN,
    list_method="POST",
)

ADAPTERS = [MIRAKL, AMAZON, EBAY, WOOCOMMERCE, PRESTASHOP, SHOPIFY]
