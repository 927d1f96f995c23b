"""The legacy Shopping Flux XML webservice, `POST /ws`, as the old shop modules use it.

Every test talks to a real aiohttp server on 127.0.0.1 with the form encodings the modules
send: multipart (PrestaShop, TH-XML) and URL-encoded (Magento 1).
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypedDict, Unpack

import aiohttp
import defusedxml.ElementTree as SafeET
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sfd.connectors import shoppingflux_xml as wsx
from sfd.connectors.mirakl import MiraklConnector
from sfd.connectors.settings import MiraklSettings
from sfd.daemon.ws import LegacyWebservice
from sfd.domain import FulfilledBy, MarketplaceOrder, OrderStatus, Shipment
from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.storage import Storage
from tests.conftest import NOW
from tests.factories import make_order

pytestmark = pytest.mark.both_backends

S = OrderStatus

ADDRESS_TAGS = [
    "LastName",
    "FirstName",
    "Phone",
    "PhoneMobile",
    "Street",
    "Street1",
    "Street2",
    "Company",
    "PostalCode",
    "Town",
    "Country",
    "Email",
]


@dataclass
class Reply:
    status: int
    content_type: str
    text: str
    root: ET.Element

    def find(self, path: str) -> str:
        element = self.root.find(path)
        assert element is not None, f"no {path} in {self.text}"
        return element.text or ""

    def orders(self) -> list[ET.Element]:
        return self.root.findall("Response/Orders/Order")


class CallOptions(TypedDict, total=False):
    """How `Ws.call` posts its form, past the CALL and the REQUEST."""

    token: str | None
    form: str
    path: str
    mode: str


@dataclass
class Ws:
    """The webservice under test, its storage, a store 1 token and the scheduler's kicks."""

    storage: Storage
    session: aiohttp.ClientSession
    url: str
    token: str
    kicks: list[int] = field(default_factory=list)

    async def call(
        self,
        call: str | None,
        request: str | bytes = "",
        *,
        token: str | None = None,
        form: str = "file",
        path: str = "/ws",
        mode: str = "Production",
    ) -> Reply:
        """POST the form: `file` (multipart, REQUEST as a file), `plain` (multipart, every
        field plain, as curl sends a PHP array) or `urlencoded` (as Zend_Http_Client sends)."""
        fields = {"TOKEN": self.token if token is None else token, "MODE": mode}
        if call is not None:
            fields["CALL"] = call
        data: Any
        if form == "urlencoded":
            data = {**fields, "REQUEST": request}
        else:
            data = aiohttp.FormData(default_to_multipart=True)
            for name, value in fields.items():
                data.add_field(name, value)
            if form == "file":
                raw = request.encode() if isinstance(request, str) else request
                data.add_field("REQUEST", io.BytesIO(raw), filename="request.xml")
            else:
                data.add_field("REQUEST", request)
        async with self.session.post(self.url + path, data=data) as response:
            text = await response.text()
            return Reply(
                status=response.status,
                content_type=response.headers["Content-Type"],
                text=text,
                root=SafeET.fromstring(text.encode()),
            )

    async def valid_orders(self, *orders: str, **options: Unpack[CallOptions]) -> Reply:
        """Call ValidOrders with these `<Order>` elements."""
        return await self.call("ValidOrders", valid_orders(*orders), **options)

    async def update_orders(self, *orders: str, **options: Unpack[CallOptions]) -> Reply:
        """Call UpdateOrders with these `<Order>` elements."""
        return await self.call("UpdateOrders", update_orders(*orders), **options)

    async def operations(self) -> int:
        row = await self.storage.db.fetchrow("SELECT count(*) FROM operations")
        assert row is not None
        return int(row[0])


@asynccontextmanager
async def serve(
    storage: Storage, webservice: LegacyWebservice, kicks: list[int] | None = None
) -> AsyncIterator[Ws]:
    """The webservice served on 127.0.0.1, and a client of it with a new store 1 token."""
    app = web.Application()
    webservice.routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    _, token = await storage.tokens.create(1, "legacy", NOW)
    try:
        async with aiohttp.ClientSession() as session:
            yield Ws(
                storage, session, str(server.make_url("")), token, [] if kicks is None else kicks
            )
    finally:
        await server.close()


@asynccontextmanager
async def mirakl_carriers(storage: Storage, marketplace: SandboxMarketplace) -> AsyncIterator[Ws]:
    """The webservice with store 1's carriers read from this Mirakl sandbox (SH21)."""
    async with run_sandbox(marketplace) as base_url:
        mirakl = MiraklConnector(MiraklSettings(base_url=base_url, api_key="ws-carriers-key"))
        try:
            async with serve(
                storage, LegacyWebservice(storage, lambda: NOW, carriers={1: [mirakl]})
            ) as ws:
                yield ws
        finally:
            await mirakl.aclose()


@pytest.fixture
async def ws(storage: Storage) -> AsyncIterator[Ws]:
    kicks: list[int] = []
    webservice = LegacyWebservice(storage, lambda: NOW, on_operations=lambda: kicks.append(1))
    async with serve(storage, webservice, kicks) as client:
        yield client


async def write(
    storage: Storage, *orders: MarketplaceOrder, channel: str = "decathlon", at: Any = None
) -> dict[str, int]:
    """Import orders as the poller would (at `at`, NOW - 1 h by default): reference → id."""
    channel_id = (await storage.channels.channel_ids())[channel]
    store_id = 1 if channel == "decathlon" else 2
    result = await storage.orders.import_page(
        channel_id, store_id, list(orders), at or NOW - timedelta(hours=1)
    )
    return {reference: order_id for order_id, reference, _ in result.created}


def valid_orders(*orders: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><ValidOrders>{"".join(orders)}</ValidOrders>'


def update_orders(*orders: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><UpdateOrders>{"".join(orders)}</UpdateOrders>'


def children(element: ET.Element | None) -> list[tuple[str, str]]:
    assert element is not None
    return [(c.tag, c.text or "") for c in element]


def answered_order(reply: Reply) -> list[tuple[str, str]]:
    """The fields of the first order a successful reply answers for."""
    assert reply.status == 200
    return children(reply.root.find("Response/Orders/Order"))


# -- GetOrders -----------------------------------------------------------------------------


async def test_get_orders_offers_exactly_the_orders_to_process(ws: Ws) -> None:
    await write(
        ws.storage,
        make_order("DEC-NEW"),
        make_order("DEC-ACKED"),
        make_order("DEC-SHIPPED", S.SHIPPED),
        make_order("DEC-WAITING-ACCEPTANCE", S.WAITING_STORE_ACCEPTANCE),
        msgspec.structs.replace(make_order("DEC-AFN"), fulfilled_by=FulfilledBy.CHANNEL),
    )
    await write(ws.storage, make_order("DEC-STALE"), at=NOW - timedelta(days=8))
    await write(ws.storage, make_order("EBAY-OTHER-STORE"), channel="ebay-de")
    reply = await ws.valid_orders(
        "<Order><IdOrder>DEC-ACKED</IdOrder><Marketplace>decathlon</Marketplace></Order>",
    )
    assert reply.find("Response/Orders/Order/Imported") == "True"

    reply = await ws.call("GetOrders")

    assert reply.status == 200
    assert [o.findtext("IdOrder") for o in reply.orders()] == ["DEC-NEW"]


#: The additional fields of Shoppingfeed's Amazon Business order, as Shoppingfeed sends them.
AMAZON_BUSINESS_FIELDS = {
    "is_ispu": "",
    "is_prime": "",
    "shipping_tax": "0",
    "is_business_order": "1",
    "purchase_order_number": "",
}


async def test_get_orders_carries_the_marketplaces_additional_fields(ws: Ws) -> None:
    """The PrestaShop module reads `$order->AdditionalFields->is_business_order` (Amazon B2B)."""
    business = msgspec.structs.replace(
        make_order("AMZ-B2B"),
        additional_fields={**AMAZON_BUSINESS_FIELDS, "weird key": "x", "nested": {"a": 1}},
    )
    # A connector that reads a boolean flag writes it as Shoppingfeed does: 1, or empty.
    flagged = msgspec.structs.replace(
        make_order("AMZ-FLAG"), additional_fields={"is_business_order": True, "is_prime": False}
    )
    await write(ws.storage, business, flagged, make_order("DEC-PLAIN"))

    reply = await ws.call("GetOrders")

    by_reference = {o.findtext("IdOrder"): o for o in reply.orders()}
    fields = by_reference["AMZ-B2B"].find("AdditionalFields")
    assert fields is not None
    assert children(fields) == sorted([*AMAZON_BUSINESS_FIELDS.items(), ("nested", '{"a": 1}')])
    assert children(by_reference["AMZ-FLAG"].find("AdditionalFields")) == [
        ("is_business_order", "1"),
        ("is_prime", ""),
    ]
    assert children(by_reference["DEC-PLAIN"].find("AdditionalFields")) == [
        ("channel_code", "decathlon-fr")
    ]


async def test_get_orders_writes_every_element_in_schema_order_with_exact_amounts(
    ws: Ws,
) -> None:
    await write(ws.storage, make_order("DEC-1", updated_at=NOW - timedelta(hours=2)))

    reply = await ws.call("GetOrders", form="urlencoded")

    [order] = reply.orders()
    assert [c.tag for c in order] == [
        "IdOrder",
        "Marketplace",
        "Currency",
        "TotalAmount",
        "TotalProducts",
        "TotalShipping",
        "TotalFees",
        "NumberOfProducts",
        "OrderDate",
        "Other",
        "ShippingMethod",
        "BillingAddress",
        "ShippingAddress",
        "Products",
        "AdditionalFields",
    ]
    # Lines: 1 x 20.99 and 2 x 21.99 = 64.97, plus 4.90 shipping.
    assert children(order)[:11] == [
        ("IdOrder", "DEC-1"),
        ("Marketplace", "decathlon"),
        ("Currency", "EUR"),
        ("TotalAmount", "69.87"),
        ("TotalProducts", "64.97"),
        ("TotalShipping", "4.90"),
        ("TotalFees", "0.00"),
        ("NumberOfProducts", "2"),
        ("OrderDate", "2026-11-29T06:00:00+00:00"),
        ("Other", ""),
        ("ShippingMethod", "Colissimo"),
    ]
    assert children(order.find("BillingAddress")) == list(
        zip(
            ADDRESS_TAGS,
            [
                "Dupont",
                "Camille",
                "",
                "",
                "12 rue des Lilas",
                "12 rue des Lilas",
                "",
                "",
                "69003",
                "Lyon",
                "FR",
                "camille@example.org",
            ],
            strict=True,
        )
    )
    shipping = order.find("ShippingAddress")
    assert [tag for tag, _ in children(shipping)] == ADDRESS_TAGS  # no RelayID: not a relay
    assert shipping is not None
    assert shipping.findtext("Street") == shipping.findtext("Street1") == "Relais Tabac du Centre"
    assert [children(p) for p in order.findall("Products/Product")] == [
        [("SKU", "SKU-0001"), ("Quantity", "1"), ("Price", "20.99"), ("Ecotax", "0.00")],
        [("SKU", "SKU-0002"), ("Quantity", "2"), ("Price", "21.99"), ("Ecotax", "0.00")],
    ]


async def test_a_relay_order_carries_its_relay_id_last_in_the_shipping_address(ws: Ws) -> None:
    await write(ws.storage, make_order("DEC-RELAY", relay_id="PUDO-908645"))

    reply = await ws.call("GetOrders")

    [order] = reply.orders()
    shipping = children(order.find("ShippingAddress"))
    assert shipping[-1] == ("RelayID", "PUDO-908645")
    assert [tag for tag, _ in shipping[:-1]] == ADDRESS_TAGS
    assert order.find("BillingAddress/RelayID") is None


async def test_the_envelope_echoes_the_request_but_never_the_token(ws: Ws) -> None:
    reply = await ws.call("GetOrders", form="urlencoded")

    assert reply.status == 200
    assert reply.content_type == "text/xml; charset=utf-8"
    assert reply.text.startswith('<?xml version="1.0" encoding="utf-8"?>')
    assert reply.root.tag == "Result"
    assert children(reply.root.find("Request")) == [
        ("Date", "2026-11-29T09:00:00+00:00"),
        ("Call", "GetOrders"),
        ("Token", ws.token[:4] + "…"),
        ("Mode", "Production"),
        ("Version", "2"),
    ]
    assert ws.token not in reply.text
    orders = reply.root.find("Response/Orders")
    assert orders is not None
    assert list(orders) == []


async def test_is_client_answers_client_for_a_valid_token(ws: Ws) -> None:
    reply = await ws.call("IsClient", path="/ws/")

    assert reply.status == 200
    assert reply.find("Response/Status") == "Client"


async def test_get_orders_reads_past_one_page_of_orders(ws: Ws) -> None:
    await write(ws.storage, *(make_order(f"DEC-{n:04d}", lines=1) for n in range(450)))

    reply = await ws.call("GetOrders")

    references = [o.findtext("IdOrder") for o in reply.orders()]
    assert sorted(references) == [f"DEC-{n:04d}" for n in range(450)]


# -- ValidOrders ---------------------------------------------------------------------------


async def test_valid_orders_acknowledges_with_the_shop_order_id(ws: Ws) -> None:
    ids = await write(ws.storage, make_order("DEC-1"), make_order("DEC-2"))

    reply = await ws.valid_orders(
        # Element order varies by client; the channel name is matched case-insensitively.
        "<Order><Marketplace>Decathlon</Marketplace><IdOrder> DEC-1 </IdOrder>"
        "<MerchantIdOrder><![CDATA[100042]]></MerchantIdOrder></Order>",
        form="urlencoded",
    )

    assert answered_order(reply) == [
        ("IdOrder", "DEC-1"),
        ("Marketplace", "Decathlon"),
        ("Imported", "True"),
    ]
    stored = await ws.storage.orders.get(ids["DEC-1"])
    assert stored is not None
    assert stored.acknowledged_at == NOW
    assert stored.store_reference == "100042"
    assert stored.acknowledgment_status == "success"
    after = await ws.call("GetOrders")
    assert [o.findtext("IdOrder") for o in after.orders()] == ["DEC-2"]
    assert ws.kicks == []  # an acknowledgement is settled at once: nothing to send


async def test_valid_orders_with_an_error_order_records_the_shops_error(ws: Ws) -> None:
    ids = await write(ws.storage, make_order("DEC-1"))

    reply = await ws.valid_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<ErrorOrder><![CDATA[Product SKU-0002 <unknown> & out of stock]]></ErrorOrder>"
        "</Order>",
    )

    assert reply.find("Response/Orders/Order/Imported") == "True"
    stored = await ws.storage.orders.get(ids["DEC-1"])
    assert stored is not None
    assert stored.acknowledgment_status == "error"
    assert stored.acknowledgment_message == "Product SKU-0002 <unknown> & out of stock"
    assert stored.store_reference is None


async def test_an_unknown_order_is_not_imported_and_the_others_go_through(ws: Ws) -> None:
    ids = await write(ws.storage, make_order("DEC-1"), make_order("DEC-2"))

    reply = await ws.valid_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<MerchantIdOrder>1</MerchantIdOrder></Order>",
        "<Order><IdOrder>NOPE-9</IdOrder><Marketplace>decathlon</Marketplace>"
        "<MerchantIdOrder>2</MerchantIdOrder></Order>",
        "<Order><IdOrder>DEC-2</IdOrder><Marketplace>decathlon</Marketplace>"
        "<MerchantIdOrder>3</MerchantIdOrder></Order>",
    )

    assert reply.status == 200
    assert [(o.findtext("IdOrder"), o.findtext("Imported")) for o in reply.orders()] == [
        ("DEC-1", "True"),
        ("NOPE-9", "False"),
        ("DEC-2", "True"),
    ]
    message = reply.orders()[1].findtext("Error/Message") or ""
    assert "NOPE-9" in message
    assert "order not found" in message
    assert reply.orders()[0].find("Error") is None
    for reference in ("DEC-1", "DEC-2"):
        stored = await ws.storage.orders.get(ids[reference])
        assert stored is not None
        assert stored.acknowledged_at == NOW


async def test_another_stores_token_cannot_acknowledge_this_stores_order(ws: Ws) -> None:
    ids = await write(ws.storage, make_order("DEC-1"))
    _, other = await ws.storage.tokens.create(2, "other-shop", NOW)

    reply = await ws.valid_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace></Order>",
        token=other,
    )

    assert reply.status == 200
    assert reply.find("Response/Orders/Order/Imported") == "False"
    assert "order not found" in reply.find("Response/Orders/Order/Error/Message")
    stored = await ws.storage.orders.get(ids["DEC-1"])
    assert stored is not None
    assert stored.acknowledged_at is None
    assert stored.store_reference is None
    still = await ws.call("GetOrders")
    assert [o.findtext("IdOrder") for o in still.orders()] == ["DEC-1"]


# -- UpdateOrders --------------------------------------------------------------------------


async def test_update_orders_shipped_schedules_a_shipment_with_its_tracking(ws: Ws) -> None:
    ids = await write(ws.storage, make_order("DEC-1"))

    reply = await ws.update_orders(
        # Magento 1's element order: TrackingNumber, TrackingUrl, CarrierName.
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<Status>Shipped</Status><TrackingNumber><![CDATA[6A12345678901]]></TrackingNumber>"
        "<TrackingUrl><![CDATA[https://www.laposte.fr/outils/suivre-vos-envois?code=6A1]]>"
        "</TrackingUrl><CarrierName><![CDATA[Colissimo]]></CarrierName></Order>",
        form="urlencoded",
    )

    assert answered_order(reply) == [
        ("IdOrder", "DEC-1"),
        ("Marketplace", "decathlon"),
        ("StatusUpdated", "True"),
    ]
    row = await ws.storage.db.fetchrow("SELECT order_id, kind, state, payload FROM operations")
    assert row is not None
    assert (row["order_id"], row["kind"], row["state"]) == (ids["DEC-1"], "ship", "scheduled")
    assert json.loads(row["payload"]) == {
        "carrier": "Colissimo",
        "tracking_number": "6A12345678901",
        "tracking_link": "https://www.laposte.fr/outils/suivre-vos-envois?code=6A1",
    }
    assert ws.kicks == [1]


async def test_a_tracking_number_that_is_a_link_becomes_the_tracking_url(ws: Ws) -> None:
    await write(ws.storage, make_order("DEC-1"))

    reply = await ws.update_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<Status>shipped</Status><CarrierName>DHL</CarrierName>"
        "<TrackingNumber>https://dhl.example/track/JD0001</TrackingNumber></Order>",
    )

    # decathlon requires a tracking number: a link alone is not one.
    assert reply.find("Response/Orders/Order/StatusUpdated") == "False"
    row = await ws.storage.db.fetchrow("SELECT payload FROM operations")
    assert row is not None
    assert json.loads(row["payload"]) == {
        "carrier": "DHL",
        "tracking_link": "https://dhl.example/track/JD0001",
    }


async def test_shipping_without_tracking_where_the_channel_requires_it_is_refused(
    ws: Ws,
) -> None:
    await write(ws.storage, make_order("DEC-1"))

    reply = await ws.update_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<MerchantIdOrder>100042</MerchantIdOrder><Status>Shipped</Status>"
        "<TrackingNumber></TrackingNumber><CarrierName>Colissimo</CarrierName></Order>",
    )

    assert reply.status == 200
    [order] = reply.orders()
    assert order.findtext("StatusUpdated") == "False"
    message = order.findtext("Error/Message") or ""
    assert "DEC-1" in message
    assert "channel decathlon requires a tracking number" in message
    row = await ws.storage.db.fetchrow("SELECT kind, state FROM operations")
    assert row is not None
    assert (row["kind"], row["state"]) == ("ship", "failed")
    assert ws.kicks == []


async def test_shipping_without_carrier_or_tracking_on_a_default_channel_is_taken(
    ws: Ws,
) -> None:
    """Shop modules send UpdateOrders once, without a carrier when the shop has none: on a
    channel with the default settings it goes to the marketplace as it is."""
    await write(ws.storage, make_order("DEC-1"))
    async with ws.storage.db.write() as tx:
        await tx.execute("UPDATE channels SET require_tracking = 0 WHERE name = 'decathlon'")

    reply = await ws.update_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<Status>Shipped</Status><CarrierName></CarrierName></Order>",
    )

    [order] = reply.orders()
    assert order.findtext("StatusUpdated") == "True"
    row = await ws.storage.db.fetchrow("SELECT kind, state, payload FROM operations")
    assert row is not None
    assert (row["kind"], row["state"], json.loads(row["payload"])) == ("ship", "scheduled", {})
    assert ws.kicks == [1]


async def test_update_orders_canceled_schedules_a_cancellation(ws: Ws) -> None:
    ids = await write(ws.storage, make_order("DEC-1"), make_order("DEC-2"))

    reply = await ws.update_orders(
        "<Order><IdOrder>DEC-2</IdOrder><Marketplace>decathlon</Marketplace>"
        "<Status>Canceled</Status></Order>",
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<Status>Shipped</Status><TrackingNumber>6A1</TrackingNumber>"
        "<CarrierName>Colissimo</CarrierName></Order>",
    )

    assert [(o.findtext("IdOrder"), o.findtext("StatusUpdated")) for o in reply.orders()] == [
        ("DEC-2", "True"),
        ("DEC-1", "True"),
    ]
    rows = await ws.storage.db.fetch(
        "SELECT order_id, kind, state, source FROM operations ORDER BY order_id"
    )
    assert [tuple(r) for r in rows] == [
        (ids["DEC-1"], "ship", "scheduled", "api"),
        (ids["DEC-2"], "cancel", "scheduled", "api"),
    ]


async def test_a_status_other_than_shipped_or_canceled_is_refused_whole(ws: Ws) -> None:
    await write(ws.storage, make_order("DEC-1"), make_order("DEC-2"))

    reply = await ws.update_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<Status>Canceled</Status></Order>",
        "<Order><IdOrder>DEC-2</IdOrder><Marketplace>decathlon</Marketplace>"
        "<Status>Delivered</Status></Order>",
    )

    assert reply.status == 400
    assert reply.find("Response/Error/Type") == "Request"
    message = reply.find("Response/Error/Message")
    assert "UpdateOrders/Order[2]/Status" in message
    assert "Delivered" in message
    assert await ws.operations() == 0


# -- refusals ------------------------------------------------------------------------------


async def test_a_bad_token_gets_401_with_both_error_forms_and_no_secret(ws: Ws) -> None:
    bad = "sfd_" + "Zz9" * 14 + "x"

    reply = await ws.call("GetOrders", token=bad, form="urlencoded")

    assert reply.status == 401
    assert reply.content_type == "text/xml; charset=utf-8"
    assert reply.find("Response/Error/Type") == "Authentication"
    assert reply.find("Response/Error/Message") == "invalid token"
    assert reply.find("error") == "invalid token"  # root-level, lower case: Magento 1
    assert bad not in reply.text
    assert bad[4:12] not in reply.text


async def test_a_revoked_token_is_refused(ws: Ws) -> None:
    await ws.storage.tokens.revoke("legacy", NOW)

    reply = await ws.call("IsClient")

    assert reply.status == 401
    assert reply.root.find("error") is not None


async def test_an_unknown_call_is_refused_by_name(ws: Ws) -> None:
    reply = await ws.call("GetMarketplaces")

    assert reply.status == 400
    assert "GetMarketplaces" in reply.find("Response/Error/Message")
    assert reply.find("Request/Call") == "GetMarketplaces"


async def test_plain_multipart_fields_as_prestashop_posts_them_work(ws: Ws) -> None:
    ids = await write(ws.storage, make_order("DEC-1"))

    reply = await ws.valid_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<MerchantIdOrder>7</MerchantIdOrder></Order>",
        form="plain",
    )

    assert reply.find("Response/Orders/Order/Imported") == "True"
    stored = await ws.storage.orders.get(ids["DEC-1"])
    assert stored is not None
    assert stored.store_reference == "7"


async def test_a_form_too_large_to_hold_any_valid_request_is_refused(ws: Ws) -> None:
    reply = await ws.call("ValidOrders", b" " * (32 * 1024**2))

    assert reply.status == 400
    assert "the form is over" in reply.find("Response/Error/Message")
    assert await ws.operations() == 0


@pytest.mark.parametrize(
    ("call", "token", "missing"), [(None, None, "CALL"), ("GetOrders", "", "TOKEN")]
)
async def test_a_missing_field_is_named(
    ws: Ws, call: str | None, token: str | None, missing: str
) -> None:
    reply = await ws.call(call, token=token, form="urlencoded")

    assert reply.status == 400
    assert reply.find("Response/Error/Message").startswith(f"{missing}: is required")


async def test_a_request_missing_an_id_order_is_refused_whole_naming_it(ws: Ws) -> None:
    ids = await write(ws.storage, make_order("DEC-1"))

    reply = await ws.valid_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace></Order>",
        "<Order><Marketplace>decathlon</Marketplace></Order>",
    )

    assert reply.status == 400
    assert reply.find("Response/Error/Message") == "ValidOrders/Order[2]/IdOrder: is required"
    assert await ws.operations() == 0
    stored = await ws.storage.orders.get(ids["DEC-1"])
    assert stored is not None
    assert stored.acknowledged_at is None


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">'
        for n in range(1, 10)
    )
    + "]><ValidOrders><Order><IdOrder>&lol9;</IdOrder>"
    "<Marketplace>decathlon</Marketplace></Order></ValidOrders>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    "<ValidOrders><Order><IdOrder>&e;</IdOrder><Marketplace>decathlon</Marketplace></Order>"
    "</ValidOrders>"
)
DEEP = "<ValidOrders>" + "<Order>" * 10_000 + "</Order>" * 10_000 + "</ValidOrders>"
HUGE = valid_orders(
    "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace></Order>"
    + "<!--"
    + "x" * (10 * 1024**2)
    + "-->"
)


@pytest.mark.parametrize(
    ("document", "form", "says"),
    [
        pytest.param(BILLION_LAUGHS, "file", "DOCTYPE is not allowed", id="billion-laughs"),
        pytest.param(EXTERNAL_ENTITY, "urlencoded", "DOCTYPE is not allowed", id="external-entity"),
        pytest.param(DEEP, "file", "nested deeper than 32 levels", id="deep-nesting"),
        pytest.param(DEEP, "plain", "nested deeper than 32 levels", id="deep-nesting-plain"),
        pytest.param(HUGE, "file", "is over 10485760 bytes", id="over-10-MiB-multipart"),
        pytest.param(HUGE, "urlencoded", "is over 10485760 bytes", id="over-10-MiB-urlencoded"),
        pytest.param("<ValidOrders><Order>", "file", "not well-formed", id="malformed"),
        pytest.param("<Orders/>", "file", "expected a <ValidOrders> document", id="wrong-root"),
        pytest.param("", "urlencoded", "is empty", id="empty"),
    ],
)
async def test_hostile_or_broken_xml_is_refused_and_nothing_is_written(
    ws: Ws, document: str, form: str, says: str
) -> None:
    ids = await write(ws.storage, make_order("DEC-1"))

    reply = await ws.call("ValidOrders", document, form=form)

    assert reply.status == 400
    assert reply.find("Response/Error/Type") == "Request"
    assert says in reply.find("Response/Error/Message")
    assert "root:" not in reply.text  # nothing of /etc/passwd
    assert await ws.operations() == 0
    stored = await ws.storage.orders.get(ids["DEC-1"])
    assert stored is not None
    assert stored.acknowledged_at is None


# -- the wire format alone -----------------------------------------------------------------


def test_responses_stay_well_formed_whatever_the_values_hold() -> None:
    envelope = wsx.Envelope(date=NOW, call="Valid\x00Orders", token="sfd_secret", mode="\x1b")
    body = wsx.render_valid_orders(
        envelope,
        [wsx.OrderResult("A&B<1>\x07", "deca]]>thlon", ok=False, reason="bad \ud800 value")],
    )

    root = SafeET.fromstring(body)
    assert root.findtext("Request/Call") == "ValidOrders"
    assert root.findtext("Response/Orders/Order/IdOrder") == "A&B<1>"
    assert root.findtext("Response/Orders/Order/Marketplace") == "deca]]>thlon"
    assert b"sfd_secret" not in body


# -- GetCarriers and MODE=Sandbox --------------------------------------------------------------


async def test_get_carriers_lists_the_marketplaces_carriers_and_the_names_orders_carry(
    storage: Storage,
) -> None:
    """Mirakl's SH21 list (read once, then cached) and every ShippingMethod GetOrders writes."""
    shipped = msgspec.structs.replace(
        make_order("DEC-SHIPPED", S.SHIPPED), shipment=Shipment(carrier="Transporteur Maison")
    )
    relay = msgspec.structs.replace(make_order("DEC-RELAY"), shipping_method="Mondial Relay")
    await write(storage, shipped, relay, make_order("DEC-1"))
    await write(
        storage,
        msgspec.structs.replace(make_order("EBAY-1"), shipping_method="DHL"),
        channel="ebay-de",
    )
    marketplace = SandboxMarketplace("ws-carriers-key")
    async with mirakl_carriers(storage, marketplace) as ws:
        first = await ws.call("GetCarriers")
        again = await ws.call("GetCarriers", form="urlencoded")
    assert first.status == 200
    names = [c.text for c in first.root.findall("Response/Carriers/Carrier")]
    # The operator's five, the shipment's carrier and the shipping methods; Mondial Relay and
    # Colissimo once each although both lists name them. Store 2's DHL is not store 1's.
    assert names == [
        "Chronopost",
        "Colissimo",
        "DPD",
        "Mondial Relay",
        "Transporteur Maison",
        "UPS",
    ]
    assert [c.text for c in again.root.findall("Response/Carriers/Carrier")] == names
    assert len(marketplace.calls_to("SH21")) == 1


async def test_get_carriers_still_answers_when_the_marketplace_is_down(storage: Storage) -> None:
    await write(storage, make_order("DEC-1"))
    marketplace = SandboxMarketplace("ws-carriers-key")
    marketplace.fail_next(5, 503, operation="SH21")
    async with mirakl_carriers(storage, marketplace) as ws:
        reply = await ws.call("GetCarriers")
    assert reply.status == 200
    assert [c.text for c in reply.root.findall("Response/Carriers/Carrier")] == ["Colissimo"]


async def test_sandbox_mode_answers_as_done_and_writes_nothing(ws: Ws) -> None:
    await write(ws.storage, make_order("DEC-1"))
    before = await ws.storage.db.fetch(
        "SELECT status, store_reference, acknowledged_at FROM orders"
    )
    events = await ws.storage.db.fetchrow("SELECT count(*) FROM order_events")

    valid = await ws.valid_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<MerchantIdOrder>PS-7</MerchantIdOrder></Order>",
        mode="Sandbox",
    )
    update = await ws.update_orders(
        "<Order><IdOrder>DEC-1</IdOrder><Marketplace>decathlon</Marketplace>"
        "<Status>Shipped</Status><CarrierName>Colissimo</CarrierName>"
        "<TrackingNumber>6A123</TrackingNumber></Order>",
        mode="sandbox",
    )

    assert valid.status == update.status == 200
    assert valid.find("Request/Mode") == "Sandbox"
    assert valid.find("Response/Orders/Order/Imported") == "True"
    assert update.find("Response/Orders/Order/StatusUpdated") == "True"
    assert await ws.operations() == 0
    assert ws.kicks == []
    after = await ws.storage.db.fetch("SELECT status, store_reference, acknowledged_at FROM orders")
    assert [tuple(r) for r in after] == [tuple(r) for r in before]
    assert await ws.storage.db.fetchrow("SELECT count(*) FROM order_events") == events
    # GetOrders still offers the order: nothing acknowledged it.
    assert [o.findtext("IdOrder") for o in (await ws.call("GetOrders")).orders()] == ["DEC-1"]
    # A broken request is still refused in sandbox mode, naming what is wrong.
    broken = await ws.update_orders("<Order/>", mode="Sandbox")
    assert broken.status == 400
    assert "UpdateOrders/Order[1]/IdOrder" in broken.find("Response/Error/Message")
