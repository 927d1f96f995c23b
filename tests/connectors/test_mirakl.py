"""The Mirakl connector, call by call: exact requests out, normalized orders and errors back."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from sfd.connectors.base import (
    AuthFailed,
    OrderPage,
    RateLimited,
    RefundRequest,
    Rejected,
    ShipmentReceipt,
    ShipmentRequest,
    Transient,
)
from sfd.connectors.mirakl import MiraklConnector
from sfd.connectors.settings import MiraklSettings
from sfd.domain import OrderStatus
from tests.connectors.conftest import sent

BASE = "https://mirakl.test"
KEY = "c0ffee-api-key-5ecret"
ORDERS = re.compile(r"^https://mirakl\.test/api/orders(\?.*)?$")
CARRIERS = re.compile(r"^https://mirakl\.test/api/shipping/carriers(\?.*)?$")


def put_url(order_id: str, action: str) -> re.Pattern[str]:
    return re.compile(rf"^https://mirakl\.test/api/orders/{re.escape(order_id)}/{action}(\?.*)?$")


def mirakl_order(
    order_id: str = "7001-A", state: str = "SHIPPING", **changes: Any
) -> dict[str, Any]:
    """An OR11 order as Mirakl writes it: relay delivery, B2B buyer, two lines."""
    order: dict[str, Any] = {
        "order_id": order_id,
        "commercial_id": order_id.removesuffix("-A"),
        "order_state": state,
        "created_date": "2026-11-28T09:15:00Z",
        "last_updated_date": "2026-11-29T10:30:00.250Z",
        "shipping_deadline": "2026-12-02T23:59:59Z",
        "currency_iso_code": "EUR",
        "price": 39.98,
        "shipping_price": 4.9,
        "total_price": 44.88,
        "total_commission": 5.76,
        "payment_type": "CB",
        "payment_workflow": "PAY_ON_ACCEPTANCE",
        "channel": {"code": "FR", "label": "France"},
        "customer_notification_email": "k2x9@notifications.mirakl.test",
        "customer": {
            "customer_id": "C-981",
            "firstname": "Camille",
            "lastname": "Dubois",
            "billing_address": {
                "firstname": "Camille",
                "lastname": "Dubois",
                "company": "Atelier Dubois SARL",
                "street_1": "12 rue de la République",
                "street_2": "Bâtiment B",
                "zip_code": "69002",
                "city": "Lyon",
                "country": "France",
                "country_iso_code": "FRA",
                "phone": "0472000000",
                "phone_secondary": "0611223344",
            },
            "shipping_address": {
                "firstname": "Camille",
                "lastname": "Dubois",
                "company": "Tabac de la Gare",
                "street_1": "3 place de la Gare",
                "zip_code": "69003",
                "city": "Lyon",
                "country_iso_code": "FRA",
                "phone": "0611223344",
                "additional_info": "Point relais 020406",
            },
            "organization": {
                "name": "Atelier Dubois SARL",
                "tax_identification_number": "FR40123456789",
            },
        },
        "order_additional_fields": [
            {"code": "vat-number", "type": "STRING", "value": "FR40123456789"}
        ],
        "order_lines": [
            {
                "order_line_id": f"{order_id}-1",
                "order_line_state": state,
                "offer_sku": "SKU-0001",
                "product_title": "Housse de coussin en lin",
                "quantity": 2,
                "price_unit": 19.99,
                "price": 39.98,
                "shipping_price": 4.9,
                "total_commission": 5.76,
                "taxes": [{"code": "TVA", "amount": 6.66, "rate": 20}],
                "shipping_taxes": [{"code": "TVA", "amount": 0.82, "rate": 20}],
                "eco_contributions": [{"total_amount": 0.12}],
                "product_medias": [
                    {"media_url": "https://img.test/small.jpg", "type": "SMALL"},
                    {"media_url": "https://img.test/large.jpg", "type": "LARGE"},
                ],
            }
        ],
        "shipping_type_code": "RELAY",
        "shipping_type_label": "Livraison en point relais",
        "shipping_zone_code": "FR",
        "shipping_pudo_id": "020406",
        "shipping_carrier_code": None,
        "shipping_company": None,
        "shipping_tracking": None,
        "shipping_tracking_url": None,
    }
    order.update(changes)
    return order


def listing(*orders: dict[str, Any] | str, total: int | None = None) -> str:
    """An OR11 body; an order given as text is sent byte for byte."""
    texts = [o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in orders]
    count = len(orders) if total is None else total
    return '{"orders": [' + ", ".join(texts) + f'], "total_count": {count}}}'


@pytest.fixture
async def connector() -> AsyncIterator[MiraklConnector]:
    mirakl = MiraklConnector(MiraklSettings(base_url=BASE, api_key=KEY, shop_id="42"))
    yield mirakl
    await mirakl.aclose()


async def pages(connector: MiraklConnector, since: datetime | None = None) -> list[OrderPage]:
    return [page async for page in connector.fetch_orders(since)]


# -- listing (OR11) ---------------------------------------------------------------------------


async def test_listing_sends_the_update_date_in_utc_with_auth_and_shop(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, body=listing())
    since = datetime(2026, 11, 29, 11, 0, 0, 999_000, tzinfo=timezone(timedelta(hours=1)))

    await pages(connector, since)

    [(method, url, kwargs)] = sent(http)
    assert method == "GET"
    assert url.path == "/api/orders"
    assert dict(url.query) == {
        "start_update_date": "2026-11-29T10:00:00Z",
        "paginate": "true",
        "max": "100",
        "offset": "0",
        "order": "asc",
        "shop_id": "42",
    }
    # No "+" ever goes on the wire (it would read as a space); ":" travels as is.
    assert "start_update_date=2026-11-29T10:00:00Z" in url.raw_query_string
    assert kwargs["headers"]["Authorization"] == KEY
    assert kwargs["headers"]["Accept"] == "application/json"
    assert kwargs["allow_redirects"] is False


async def test_listing_from_the_beginning_has_no_update_date(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, body=listing())

    await pages(connector, None)

    [(_, url, _)] = sent(http)
    assert "start_update_date" not in url.query


async def test_listing_without_shop_id_sends_none(http: aioresponses) -> None:
    http.get(ORDERS, body=listing())
    mirakl = MiraklConnector(MiraklSettings(base_url=BASE + "/api/", api_key=KEY))
    try:
        await pages(mirakl)
    finally:
        await mirakl.aclose()

    [(_, url, _)] = sent(http)
    assert url.path == "/api/orders"
    assert "shop_id" not in url.query


def small_order(order_id: str) -> dict[str, Any]:
    """A minimal valid order: a page of 100 stays small enough for aioresponses."""
    dates = {"created_date": "2026-11-28T09:15:00Z", "last_updated_date": "2026-11-29T10:30:00Z"}
    money = {"currency_iso_code": "EUR", "price": 10, "shipping_price": 0, "total_price": 10}
    return {"order_id": order_id, "order_state": "SHIPPING", **dates, **money, "order_lines": []}


async def test_listing_follows_offsets_until_total_count(
    http: aioresponses, connector: MiraklConnector
) -> None:
    first = [small_order(f"{n}-A") for n in range(100)]
    second = [small_order(f"{n}-A") for n in range(100, 130)]
    offsets: list[str] = []

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        offsets.append(url.query["offset"])
        chunk = first if url.query["offset"] == "0" else second
        return CallbackResult(body=listing(*chunk, total=130))

    http.get(ORDERS, callback=answer, repeat=True)

    result = await pages(connector)

    assert offsets == ["0", "100"]
    assert [len(p.orders) for p in result] == [100, 30]
    references = [o.reference for p in result for o in p.orders]
    assert references == [f"{n}-A" for n in range(130)]


async def test_listing_stops_on_a_short_page(
    http: aioresponses, connector: MiraklConnector
) -> None:
    # total_count says more, but a page shorter than asked for is the last one.
    http.get(ORDERS, body=listing(mirakl_order(), total=500))

    result = await pages(connector)

    assert len(result) == 1
    assert len(sent(http)) == 1


async def test_listing_normalizes_every_field(
    http: aioresponses, connector: MiraklConnector
) -> None:
    text = json.dumps(mirakl_order(), ensure_ascii=False, indent=1)
    http.get(ORDERS, body=listing(text))

    [page] = await pages(connector)

    [order] = page.orders
    assert page.skipped == []
    assert order.reference == "7001-A"
    assert order.status is OrderStatus.WAITING_SHIPMENT
    assert order.created_at == datetime(2026, 11, 28, 9, 15, tzinfo=UTC)
    assert order.updated_at == datetime(2026, 11, 29, 10, 30, 0, 250_000, tzinfo=UTC)
    assert order.latest_ship_date == datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC)
    money = (order.currency, order.product_amount, order.shipping_amount, order.total_amount)
    assert money == ("EUR", Decimal("39.98"), Decimal("4.9"), Decimal("44.88"))
    assert (order.payment_method, order.shipping_method) == ("CB", "Livraison en point relais")
    assert order.raw == text.encode()
    assert order.shipment is None

    billing = order.billing_address
    assert (billing.first_name, billing.last_name, billing.company) == (
        "Camille",
        "Dubois",
        "Atelier Dubois SARL",
    )
    assert (billing.street, billing.street2) == ("12 rue de la République", "Bâtiment B")
    assert (billing.postal_code, billing.city, billing.country) == ("69002", "Lyon", "FR")
    assert (billing.phone, billing.mobile_phone) == ("0472000000", "0611223344")
    assert billing.email == "k2x9@notifications.mirakl.test"
    assert billing.relay_id == ""
    shipping = order.shipping_address
    assert shipping.company == "Tabac de la Gare"
    assert shipping.other == "Point relais 020406"
    assert shipping.relay_id == "020406"

    [item] = order.items
    assert item.reference == "SKU-0001"
    assert item.channel_reference == "7001-A-1"
    assert item.quantity == 2
    assert item.price == Decimal("19.99")
    assert item.name == "Housse de coussin en lin"
    assert item.status == "SHIPPING"
    assert item.commission == Decimal("5.76")
    assert item.tax_amount == Decimal("6.66")
    assert item.ecotax_amount == Decimal("0.12")
    assert item.image == "https://img.test/large.jpg"
    assert item.additional_fields == {"shipping_price": "4.9", "shipping_tax_amount": "0.82"}

    assert order.additional_fields == {
        "vat-number": "FR40123456789",
        "channel_code": "FR",
        "commercial_id": "7001",
        "shipping_type_code": "RELAY",
        "shipping_zone_code": "FR",
        "payment_workflow": "PAY_ON_ACCEPTANCE",
        "organization_name": "Atelier Dubois SARL",
        "vat_number": "FR40123456789",
        "order_state": "SHIPPING",
    }


async def test_amounts_stay_exact_decimals(http: aioresponses, connector: MiraklConnector) -> None:
    lines = [
        dict(
            mirakl_order()["order_lines"][0],
            order_line_id=f"L{n}",
            price=price,
            price_unit=price,
            quantity=1,
        )
        for n, price in enumerate((0.1, 0.2))
    ]
    order = mirakl_order(order_lines=lines, total_price=19.99, shipping_price=19.69)
    del order["price"]  # the product amount then adds up the lines
    http.get(ORDERS, body=listing(order))

    [page] = await pages(connector)

    [normalized] = page.orders
    assert normalized.total_amount == Decimal("19.99")
    assert normalized.shipping_amount == Decimal("19.69")
    assert normalized.product_amount == Decimal("0.3")  # never 0.30000000000000004
    assert [i.price for i in normalized.items] == [Decimal("0.1"), Decimal("0.2")]
    assert all(type(i.price) is Decimal for i in normalized.items)


async def test_shipped_order_carries_its_shipment(
    http: aioresponses, connector: MiraklConnector
) -> None:
    link = "https://www.laposte.fr/outils/suivre-vos-envois?code=6A12345678901"
    carrier = {"shipping_carrier_code": "COLISSIMO", "shipping_company": "Colissimo"}
    tracking = {"shipping_tracking": "6A12345678901", "shipping_tracking_url": link}
    http.get(ORDERS, body=listing(mirakl_order(state="SHIPPED", **carrier, **tracking)))

    [page] = await pages(connector)

    shipment = page.orders[0].shipment
    assert shipment is not None
    assert shipment.carrier == "COLISSIMO"
    assert shipment.tracking_number == "6A12345678901"
    assert shipment.tracking_link.endswith("code=6A12345678901")


#: Mirakl's order states (OR11), grouped by the status they map to.
STATES_BY_STATUS = {
    OrderStatus.WAITING_STORE_ACCEPTANCE: ("WAITING_ACCEPTANCE",),
    OrderStatus.WAITING_SHIPMENT: ("SHIPPING",),
    OrderStatus.SHIPPED: ("SHIPPED", "TO_COLLECT", "RECEIVED", "CLOSED"),
    OrderStatus.REFUSED: ("REFUSED",),
    OrderStatus.CANCELLED: ("CANCELED",),
    OrderStatus.REFUNDED: ("REFUNDED",),
}


@pytest.mark.parametrize(
    ("state", "status"),
    [(state, status) for status, states in STATES_BY_STATUS.items() for state in states],
)
async def test_order_states_map_to_statuses(
    http: aioresponses, connector: MiraklConnector, state: str, status: OrderStatus
) -> None:
    http.get(ORDERS, body=listing(mirakl_order(state=state)))

    [page] = await pages(connector)

    assert [o.status for o in page.orders] == [status]


async def test_an_unknown_state_skips_the_order_with_the_reason(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, body=listing(mirakl_order("1-A", state="TELEPORTED"), mirakl_order("2-A")))

    [page] = await pages(connector)

    assert [o.reference for o in page.orders] == ["2-A"]
    [skipped] = page.skipped
    assert skipped.reference == "1-A"
    assert "order_state" in skipped.reason
    assert "TELEPORTED" in skipped.reason


async def test_unreleased_orders_are_not_imported_and_unpaid_ones_wait_for_payment(
    http: aioresponses, connector: MiraklConnector
) -> None:
    unreleased = mirakl_order("1-A", state="STAGING")
    unpaid = [
        mirakl_order("2-A", state="WAITING_DEBIT"),
        mirakl_order("3-A", state="WAITING_DEBIT_PAYMENT"),
        # Not paid and incomplete: still silently left for later, not reported.
        {"order_id": "4-A", "order_state": "WAITING_DEBIT_PAYMENT", "total_price": "?"},
    ]
    http.get(ORDERS, body=listing(unreleased, *unpaid, mirakl_order("5-A")))

    [page] = await pages(connector)

    assert [(o.reference, o.status, o.payment_pending) for o in page.orders] == [
        ("2-A", OrderStatus.WAITING_SHIPMENT, True),
        ("3-A", OrderStatus.WAITING_SHIPMENT, True),
        ("5-A", OrderStatus.WAITING_SHIPMENT, False),
    ]
    assert page.skipped == []


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"total_price": "douze"}, "total_price", "invalid decimal"),
        ({"created_date": "yesterday"}, "created_date", "datetime"),
        ({"currency_iso_code": 978}, "currency_iso_code", "expected `str`, got `int`"),
        ({"shipping_price": None}, "shipping_price", "expected `decimal`, got `null`"),
        ({"order_lines": "none"}, "order_lines", "expected `array`"),
    ],
)
async def test_a_malformed_order_is_skipped_and_the_page_goes_on(
    http: aioresponses,
    connector: MiraklConnector,
    changes: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    http.get(
        ORDERS,
        body=listing(mirakl_order("1-A"), mirakl_order("2-A", **changes), mirakl_order("3-A")),
    )

    [page] = await pages(connector)

    assert [o.reference for o in page.orders] == ["1-A", "3-A"]
    [skipped] = page.skipped
    assert skipped.reference == "2-A"
    assert skipped.reason.startswith(f"{field}: ")
    assert problem in skipped.reason.lower()
    assert skipped.updated_at == datetime(2026, 11, 29, 10, 30, 0, 250_000, tzinfo=UTC)


async def test_a_bad_line_names_the_line_and_its_field(
    http: aioresponses, connector: MiraklConnector
) -> None:
    order = mirakl_order()
    order["order_lines"][0]["quantity"] = "two"
    http.get(ORDERS, body=listing(order))

    [page] = await pages(connector)

    [skipped] = page.skipped
    assert skipped.reason == "order_lines[0].quantity: expected `int`, got `str`"


async def test_an_order_without_id_is_skipped_by_its_position(
    http: aioresponses, connector: MiraklConnector
) -> None:
    nameless = mirakl_order()
    del nameless["order_id"]
    http.get(ORDERS, body=listing(mirakl_order("1-A"), nameless))

    [page] = await pages(connector)

    [skipped] = page.skipped
    assert skipped.reference == "#1"
    assert skipped.reason == "order_id: missing"
    assert skipped.updated_at == datetime(2026, 11, 29, 10, 30, 0, 250_000, tzinfo=UTC)


async def test_an_entry_that_is_not_an_order_is_skipped(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, body=listing(mirakl_order("1-A"), "null", mirakl_order("3-A")))

    [page] = await pages(connector)

    assert [o.reference for o in page.orders] == ["1-A", "3-A"]
    [skipped] = page.skipped
    assert (skipped.reference, skipped.updated_at) == ("#1", None)
    assert skipped.reason == "order: Expected `object`, got `null`"


async def test_a_skipped_order_without_a_readable_update_date_has_none(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, body=listing(mirakl_order("1-A", last_updated_date="29/11/2026")))

    [page] = await pages(connector)

    [skipped] = page.skipped
    assert skipped.reference == "1-A"
    assert skipped.reason == "last_updated_date: invalid RFC3339 encoded datetime"
    assert skipped.updated_at is None


# -- accept and refuse (OR21) -----------------------------------------------------------------


def two_line_order(state: str = "WAITING_ACCEPTANCE") -> dict[str, Any]:
    order = mirakl_order("7001-A", state=state)
    order["order_lines"].append(dict(order["order_lines"][0], order_line_id="7001-A-2"))
    return order


@pytest.mark.parametrize("accepted", [True, False])
async def test_accept_and_refuse_decide_every_line_of_the_order(
    http: aioresponses, connector: MiraklConnector, accepted: bool
) -> None:
    http.get(ORDERS, body=listing(two_line_order()))
    http.put(put_url("7001-A", "accept"), status=204)

    await (connector.accept("7001-A") if accepted else connector.refuse("7001-A"))

    [(_, read, _)] = sent(http, "GET")
    assert read.query["order_ids"] == "7001-A"
    assert read.query["shop_id"] == "42"
    [(_, url, kwargs)] = sent(http, "PUT")
    assert url.path == "/api/orders/7001-A/accept"
    assert url.query["shop_id"] == "42"
    assert kwargs["headers"]["Authorization"] == KEY
    assert kwargs["json"] == {
        "order_lines": [
            {"id": "7001-A-1", "accepted": accepted},
            {"id": "7001-A-2", "accepted": accepted},
        ]
    }


async def test_accepting_an_order_mirakl_does_not_know_is_rejected(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, body=listing())

    with pytest.raises(Rejected, match="no released order 7001-A"):
        await connector.accept("7001-A")


# -- ship (OR23 + OR24) -----------------------------------------------------------------------

OPERATOR_CARRIERS = {
    "carriers": [
        {"code": "CHRONO", "label": "Chronopost"},
        {
            "code": "COLISSIMO",
            "label": "Colissimo",
            "tracking_url": "https://laposte.test/{trackingId}",
        },
    ]
}


def expect_shipment(http: aioresponses, *, refused: str = "") -> None:
    """Mirakl answers the carrier list (SH21), OR23 and OR24 for 7001-A: OR24 refused with
    the message `refused` when one is given."""
    http.get(CARRIERS, payload=OPERATOR_CARRIERS)
    http.put(put_url("7001-A", "tracking"), status=204)
    if refused:
        http.put(put_url("7001-A", "ship"), status=400, payload={"status": 400, "message": refused})
    else:
        http.put(put_url("7001-A", "ship"), status=204)


async def test_ship_a_registered_carrier_by_its_code_then_confirm(
    http: aioresponses, connector: MiraklConnector
) -> None:
    expect_shipment(http)

    await connector.ship(
        "7001-A",
        ShipmentRequest(
            carrier="chronopost", tracking_number="XY123", tracking_link="https://x.test/XY123"
        ),
    )

    [(_, carriers_url, _)] = sent(http, "GET")
    assert carriers_url.path == "/api/shipping/carriers"
    tracking, ship = sorted(sent(http, "PUT"), key=lambda c: c[1].path.endswith("/ship"))
    assert tracking[1].path == "/api/orders/7001-A/tracking"
    assert tracking[2]["json"] == {"carrier_code": "CHRONO", "tracking_number": "XY123"}
    assert ship[1].path == "/api/orders/7001-A/ship"
    assert ship[1].query["shop_id"] == "42"
    assert ship[2]["json"] is None


async def test_ship_an_unregistered_carrier_by_name_and_tracking_url(
    http: aioresponses, connector: MiraklConnector
) -> None:
    expect_shipment(http)
    by_name = ShipmentRequest(
        carrier="Transports Martin",
        tracking_number="TM-77",
        tracking_link="https://martin.test/suivi/TM-77",
    )

    await connector.ship("7001-A", by_name)

    [(_, _, kwargs)] = [c for c in sent(http, "PUT") if c[1].path.endswith("/tracking")]
    assert kwargs["json"] == {
        "carrier_name": "Transports Martin",
        "carrier_url": "https://martin.test/suivi/TM-77",
        "tracking_number": "TM-77",
    }


async def test_the_carrier_list_is_read_once(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(CARRIERS, payload=OPERATOR_CARRIERS)
    http.put(re.compile(r"^https://mirakl\.test/api/orders/.*$"), status=204, repeat=True)

    for reference in ("1-A", "2-A", "3-A"):
        await connector.ship(reference, ShipmentRequest(carrier="COLISSIMO", tracking_number="6A1"))

    assert len(sent(http, "GET")) == 1
    assert len(sent(http, "PUT")) == 6


async def test_a_partial_shipment_is_rejected_without_any_call(
    http: aioresponses, connector: MiraklConnector
) -> None:
    partial = ShipmentRequest(carrier="Colissimo", tracking_number="6A1", items={"7001-A-1": 1})

    with pytest.raises(Rejected) as caught:
        await connector.ship("7001-A", partial)

    assert caught.value.message == (
        "Mirakl ships whole orders (OR24): a partial shipment cannot be sent; ship every line "
        "(list every line at its full quantity, or none)"
    )
    assert sent(http) == []


async def test_a_shipment_without_carrier_or_tracking_skips_or23_and_confirms(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.put(put_url("7001-A", "ship"), status=204)

    receipt = await connector.ship("7001-A", ShipmentRequest())

    [(_, url, _)] = sent(http, "PUT")
    assert url.path == "/api/orders/7001-A/ship"
    assert sent(http, "GET") == []  # no carrier to look up
    assert receipt == ShipmentReceipt()


async def test_a_tracking_number_without_carrier_is_not_sent_and_said_so(
    http: aioresponses, connector: MiraklConnector
) -> None:
    """OR23 needs a carrier code or name: without one, only OR24 goes, and the receipt names
    the number Mirakl was not given."""
    http.put(put_url("7001-A", "ship"), status=204)

    receipt = await connector.ship(
        "7001-A", ShipmentRequest(tracking_number="6A1", tracking_link="https://x.test/6A1")
    )

    assert [c[1].path for c in sent(http, "PUT")] == ["/api/orders/7001-A/ship"]
    assert receipt.not_forwarded == ("6A1",) and receipt.tracking_numbers == ()
    assert receipt.notes == (
        "Mirakl records a tracking number only with a carrier (OR23)",
        "the tracking link was not sent: Mirakl needs a carrier with it",
    )


async def test_several_tracking_numbers_send_the_first_and_name_the_others(
    http: aioresponses, connector: MiraklConnector
) -> None:
    expect_shipment(http)

    receipt = await connector.ship(
        "7001-A", ShipmentRequest(carrier="Colissimo", tracking_number="6A1,6A2; 6A3")
    )

    [(_, _, kwargs)] = [c for c in sent(http, "PUT") if c[1].path.endswith("/tracking")]
    assert kwargs["json"] == {"carrier_code": "COLISSIMO", "tracking_number": "6A1"}
    assert receipt.carrier == "COLISSIMO"
    assert receipt.tracking_numbers == ("6A1",)
    assert receipt.not_forwarded == ("6A2", "6A3")
    assert receipt.notes == ("Mirakl takes one tracking number per order (OR23)",)


async def test_shipping_again_after_the_order_shipped_succeeds(
    http: aioresponses, connector: MiraklConnector
) -> None:
    expect_shipment(http, refused="The order 7001-A is not in SHIPPING state")
    http.get(ORDERS, body=listing(mirakl_order(state="SHIPPED")))

    await connector.ship("7001-A", ShipmentRequest(carrier="Colissimo", tracking_number="6A1"))

    [(_, check, _)] = [c for c in sent(http, "GET") if c[1].path == "/api/orders"]
    assert check.query["order_ids"] == "7001-A"


async def test_a_refused_shipment_of_an_order_not_shipped_keeps_mirakls_message(
    http: aioresponses, connector: MiraklConnector
) -> None:
    expect_shipment(http, refused="Tracking number is mandatory for this carrier")
    http.get(ORDERS, body=listing(mirakl_order(state="SHIPPING")))

    with pytest.raises(Rejected) as caught:
        await connector.ship("7001-A", ShipmentRequest(carrier="Colissimo"))

    assert caught.value.message == "Tracking number is mandatory for this carrier"


# -- cancel (OR29) and status -----------------------------------------------------------------


async def test_cancel_puts_to_the_orders_cancel_path(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.put(put_url("7001-A", "cancel"), status=204)

    await connector.cancel("7001-A")

    [(_, url, kwargs)] = sent(http, "PUT")
    assert url.path == "/api/orders/7001-A/cancel"
    assert url.query["shop_id"] == "42"
    assert kwargs["json"] is None


async def test_cancelling_an_order_cancelled_already_succeeds(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.put(put_url("7001-A", "cancel"), status=400, payload={"message": "Cannot cancel"})
    http.get(ORDERS, body=listing(mirakl_order(state="CANCELED")))

    await connector.cancel("7001-A")


# -- refunds (OR28) and deliveries ---------------------------------------------------------------

REFUND = re.compile(r"^https://mirakl\.test/api/orders/refund(\?.*)?$")


def or28_line(
    quantity: int, amount: float, shipping: float, *, taxes: tuple[float, float]
) -> dict[str, Any]:
    """The OR28 refund of line 7001-A-1: `taxes` are its TVA on the items, then on shipping."""
    return {
        "order_line_id": "7001-A-1",
        "quantity": quantity,
        "amount": amount,
        "shipping_amount": shipping,
        "taxes": [{"code": "TVA", "amount": taxes[0]}],
        "shipping_taxes": [{"code": "TVA", "amount": taxes[1]}],
        "currency_iso_code": "EUR",
    }


async def test_a_full_refund_puts_every_line_with_its_amounts_to_or28(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, body=listing(mirakl_order(state="SHIPPED", order_tax_mode="TAX_INCLUDED")))
    http.put(REFUND, payload={"refunds": [{"order_line_id": "7001-A-1", "refund_id": "R1"}]})

    await connector.refund("7001-A", RefundRequest(shipping=True))

    [(_, url, kwargs)] = sent(http, "PUT")
    assert url.path == "/api/orders/refund"
    assert url.query["shop_id"] == "42"
    assert kwargs["json"] == {
        "order_tax_mode": "TAX_INCLUDED",
        "refunds": [or28_line(2, 39.98, 4.9, taxes=(6.66, 0.82))],
    }


async def test_a_partial_refund_by_sku_without_shipping_refunds_that_share(
    http: aioresponses,
) -> None:
    mirakl = MiraklConnector(
        MiraklSettings(base_url=BASE, api_key=KEY), refund_reason_code="REFUND-15"
    )
    http.get(ORDERS, body=listing(mirakl_order(state="SHIPPED")))
    http.put(REFUND, payload={"refunds": []})
    try:
        await mirakl.refund("7001-A", RefundRequest(shipping=False, items={"SKU-0001": 1}))
    finally:
        await mirakl.aclose()

    [(_, _, kwargs)] = sent(http, "PUT")
    assert kwargs["json"]["refunds"] == [
        or28_line(1, 19.99, 0.0, taxes=(3.33, 0.0)) | {"reason_code": "REFUND-15"}
    ]


def refunded_order() -> dict[str, Any]:
    """A shipped order whose first line is refunded already."""
    order = mirakl_order(state="SHIPPED")
    order["order_lines"][0]["refunds"] = [{"id": "R1", "quantity": 2, "amount": 39.98}]
    return order


#: What is done already succeeds, what cannot be done is rejected: neither writes to Mirakl.
NO_WRITE: list[Any] = [
    pytest.param(
        two_line_order(state="SHIPPING"),
        lambda c: c.accept("7001-A"),
        None,
        id="accepting-an-order-accepted-already-succeeds",
    ),
    pytest.param(
        two_line_order(state="REFUSED"),
        lambda c: c.accept("7001-A"),
        "REFUSED",
        id="accepting-a-refused-order-is-rejected",
    ),
    pytest.param(
        refunded_order(),
        lambda c: c.refund("7001-A", RefundRequest()),
        None,
        id="a-line-refunded-already-is-not-refunded-again",
    ),
    pytest.param(
        mirakl_order(state="SHIPPED"),
        lambda c: c.refund("7001-A", RefundRequest(items={"SKU-9999": 1})),
        "SKU-9999",
        id="a-refund-of-an-sku-not-on-the-order-is-rejected",
    ),
]


@pytest.mark.parametrize(("order", "operation", "rejected"), NO_WRITE)
async def test_an_operation_done_already_or_impossible_sends_no_write(
    http: aioresponses,
    connector: MiraklConnector,
    order: dict[str, Any],
    operation: Callable[[MiraklConnector], Awaitable[object]],
    rejected: str | None,
) -> None:
    http.get(ORDERS, body=listing(order))

    if rejected is None:
        await operation(connector)
    else:
        with pytest.raises(Rejected, match=rejected):
            await operation(connector)

    assert sent(http, "PUT") == []


async def test_a_refused_refund_without_reason_code_says_one_may_be_needed(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, body=listing(mirakl_order(state="SHIPPED")))
    http.put(REFUND, status=400, payload={"message": "reason_code is required"})

    with pytest.raises(Rejected, match=r"reason_code is required.*must be configured"):
        await connector.refund("7001-A", RefundRequest())


async def test_deliver_is_rejected_without_any_call(
    http: aioresponses, connector: MiraklConnector
) -> None:
    with pytest.raises(Rejected, match="customer confirms receipt"):
        await connector.deliver("7001-A")
    assert sent(http) == []


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (listing(mirakl_order(state="SHIPPING")), OrderStatus.WAITING_SHIPMENT),
        (listing(mirakl_order(state="RECEIVED")), OrderStatus.SHIPPED),
        # Accepted, not debited: a bare status cannot say "not to offer"; the poll reads it.
        (listing(mirakl_order(state="WAITING_DEBIT_PAYMENT")), None),
        (listing(mirakl_order(state="STAGING")), None),
        (listing(), None),
    ],
)
async def test_order_status_reads_one_order(
    http: aioresponses, connector: MiraklConnector, answer: str, status: OrderStatus | None
) -> None:
    http.get(ORDERS, body=answer)

    assert await connector.order_status("7001-A") == status
    [(_, url, _)] = sent(http)
    assert url.query["order_ids"] == "7001-A"


# -- errors -----------------------------------------------------------------------------------


async def test_retry_after_as_an_http_date(http: aioresponses, connector: MiraklConnector) -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    http.get(ORDERS, status=429, headers={"Retry-After": format_datetime(later, usegmt=True)})

    with pytest.raises(RateLimited) as caught:
        await pages(connector)

    assert caught.value.retry_after is not None
    assert 110 <= caught.value.retry_after <= 120


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_fail_auth_without_showing_the_key(
    http: aioresponses, connector: MiraklConnector, status: int
) -> None:
    http.get(ORDERS, status=status, body=f'{{"message": "Invalid key {KEY}"}}')

    with pytest.raises(AuthFailed) as caught:
        await pages(connector)

    assert f"HTTP {status}" in str(caught.value)
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("answer", "current", "message"),
    [
        pytest.param(
            {
                "status": 400,
                "payload": {"status": 400, "message": f"Order cannot be canceled (key {KEY})"},
            },
            listing(mirakl_order(state="SHIPPED")),
            "Order cannot be canceled (key ***)",
            id="mirakls-message-without-the-key",
        ),
        pytest.param(
            {"status": 404, "body": "<html>\n  Not   Found\n</html>"},
            listing(),
            "HTTP 404: <html> Not Found </html>",
            id="without-json-the-status-and-an-excerpt",
        ),
    ],
)
async def test_a_client_error_is_rejected_with_what_mirakl_said(
    http: aioresponses,
    connector: MiraklConnector,
    answer: dict[str, Any],
    current: str,
    message: str,
) -> None:
    http.put(put_url("7001-A", "cancel"), **answer)
    http.get(ORDERS, body=current)

    with pytest.raises(Rejected) as caught:
        await connector.cancel("7001-A")

    assert caught.value.message == message


async def test_json_of_the_wrong_shape_is_transient(
    http: aioresponses, connector: MiraklConnector
) -> None:
    http.get(ORDERS, payload={"orders": {"7001-A": {}}, "total_count": 1})

    with pytest.raises(Transient, match="unexpected answer"):
        await pages(connector)


# -- session ----------------------------------------------------------------------------------
