"""The shop webservice, v1: every endpoint, rule and bad-input case, over real HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sfd.connectors.shoppingfeed import render_order
from sfd.daemon.api import ShopApi
from sfd.daemon.http import build_app
from sfd.domain import Address, MarketplaceOrder, OrderItem, OrderStatus
from sfd.domain.clock import from_iso
from sfd.storage import Storage
from tests import lookups
from tests.conftest import NOW
from tests.factories import make_order

pytestmark = pytest.mark.both_backends

S = OrderStatus
FIXTURE = Path(__file__).parent / "fixtures" / "shoppingfeed-order.json"


@dataclass
class Api:
    """A client of the running API, with one store-1 and one store-2 token."""

    http: aiohttp.ClientSession
    url: str
    storage: Storage
    token1: str
    token2: str
    woken: list[int]

    async def call(
        self, method: str, path: str, *, token: str | None = "1", **kwargs: Any
    ) -> tuple[int, Any]:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = "Bearer " + {"1": self.token1, "2": self.token2}.get(
                token, token
            )
        async with self.http.request(
            method, self.url + path, headers=headers, **kwargs
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kwargs)

    async def operate(
        self, operation: str, *entries: dict[str, Any], token: str = "1"
    ) -> tuple[str, list[dict[str, Any]]]:
        store = 1 if token == "1" else 2
        status, body = await self.call(
            "POST",
            f"/v1/store/{store}/order/{operation}",
            json={"order": list(entries)},
            token=token,
        )
        assert status == 202, body
        assert body["_links"]["ticket"]["href"] == f"/v1/store/{store}/ticket?batchId={body['id']}"
        status, tickets = await self.get(
            f"/v1/store/{store}/ticket?batchId={body['id']}", token=token
        )
        assert status == 200
        return body["id"], tickets["_embedded"]["ticket"]

    async def order_id(self, reference: str) -> int:
        return await lookups.order_id(self.storage, reference)

    async def operation_count(self) -> int:
        return await lookups.operation_count(self.storage)


async def seed(
    storage: Storage, channel: str, store: int, orders: list[MarketplaceOrder], now: datetime = NOW
) -> None:
    ids = await storage.channels.channel_ids()
    await storage.orders.import_page(ids[channel], store, orders, now)


@pytest.fixture
async def api(storage: Storage) -> AsyncIterator[Api]:
    storage.orders.renderer = render_order
    await seed(
        storage,
        "decathlon",
        1,
        [
            make_order("WAIT-1"),
            make_order("WAIT-2", updated_at=NOW - timedelta(hours=3)),
            make_order("ACCEPT-1", S.WAITING_STORE_ACCEPTANCE),
            make_order("SHIPPED-1", S.SHIPPED),
            make_order("CANCELLED-1", S.CANCELLED),
        ],
    )
    await seed(storage, "ebay-de", 2, [make_order("EBAY-1")])
    _, token1 = await storage.tokens.create(1, "prestashop", NOW)
    _, token2 = await storage.tokens.create(2, "magento", NOW)
    woken: list[int] = []
    shop = ShopApi(storage, lambda: NOW, on_operations=lambda: woken.append(1))
    server = TestServer(build_app(lambda: (True, {}), shop), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Api(http, str(server.make_url("")).rstrip("/"), storage, token1, token2, woken)
    await server.close()


# -- session --------------------------------------------------------------------------------


async def test_ping_answers_without_a_token(api: Api) -> None:
    status, body = await api.get("/v1/ping", token=None)
    assert status == 200
    assert body == {"timestamp": int(NOW.timestamp())}


async def test_password_grant_trades_a_token_name_and_token_for_an_access_token(api: Api) -> None:
    grant = {"grant_type": "password", "username": "prestashop", "password": api.token1}
    status, body = await api.call("POST", "/v1/auth", token=None, json=grant)
    assert (status, body) == (200, {"token_type": "Bearer", "access_token": api.token1})
    status, body = await api.call(
        "POST", "/v1/auth", token=None, json={**grant, "username": "magento"}
    )
    assert status == 401
    assert body["detail"] == "Invalid username or password"
    status, body = await api.call(
        "POST", "/v1/auth", token=None, json={**grant, "grant_type": "client_credentials"}
    )
    assert (status, body["field"]) == (400, "grant_type")


async def test_a_password_grant_that_is_not_json_is_refused_naming_the_body(api: Api) -> None:
    status, body = await api.call(
        "POST",
        "/v1/auth",
        token=None,
        data=b'{"grant_type": "password",',
        headers={"Content-Type": "application/json"},
    )
    assert (status, body["field"]) == (400, "body")
    assert body["detail"].startswith("body: not valid JSON: "), body["detail"]


async def test_me_embeds_the_store_with_the_links_the_sdk_expands(api: Api) -> None:
    status, me = await api.get("/v1/me")
    assert status == 200
    assert me["token"] == api.token1
    assert me["login"] == "prestashop"
    [store] = me["_embedded"]["store"]
    assert (store["id"], store["name"], store["status"]) == (1, "Shop one", "active")
    assert store["_links"]["order"] == {"href": "/v1/store/1/order{/operation}", "templated": True}
    assert store["_links"]["ticket"] == {"href": "/v1/store/1/ticket"}
    assert store["_links"]["channel"] == {"href": "/v1/store/1/channel"}


@pytest.mark.parametrize("header", [None, "Bearer sfd_" + "x" * 43, "Basic abc"])
async def test_no_token_or_a_wrong_one_gets_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    status, body = await api.get("/v1/store/1/order", token=None, headers=headers)
    assert status == 401
    assert body["title"] == "Unauthorized"


async def test_a_bare_token_without_bearer_is_accepted(api: Api) -> None:
    status, _ = await api.get("/v1/me", token=None, headers={"Authorization": api.token1})
    assert status == 200


async def test_a_revoked_token_stops_working_at_once(api: Api) -> None:
    assert (await api.get("/v1/me"))[0] == 200
    await api.storage.tokens.revoke("prestashop", NOW)
    assert (await api.get("/v1/me"))[0] == 401


async def test_another_stores_data_is_404_everywhere(api: Api) -> None:
    ebay = await api.order_id("EBAY-1")
    for path in (
        "/v1/store/2",
        "/v1/store/2/order",
        f"/v1/store/2/order/{ebay}",
        f"/v1/store/1/order/{ebay}",
        f"/v1/store/1/order/{ebay}/shipment",
        "/v1/store/2/ticket",
        "/v1/store/2/channel",
        "/v1/channel/2",
    ):
        status, body = await api.get(path)
        assert status == 404, path
        assert body["status"] == 404
    status, _ = await api.call(
        "POST", "/v1/store/2/order/acknowledge", json={"order": [{"id": ebay}]}
    )
    assert status == 404
    _, [ticket] = await api.operate("acknowledge", {"id": ebay})
    assert ticket["state"] == "failed"
    assert ticket["result"] == {"message": "order not found"}


# -- reading orders -------------------------------------------------------------------------


async def test_the_orders_to_process_are_accepted_unacknowledged_and_recent(api: Api) -> None:
    await seed(api.storage, "decathlon", 1, [make_order("OLD-1")], NOW - timedelta(days=8))
    status, page = await api.get(
        "/v1/store/1/order?acknowledgment=unacknowledged&status=waiting_shipment"
    )
    assert status == 200
    assert [o["reference"] for o in page["_embedded"]["order"]] == ["WAIT-1", "WAIT-2"]
    # Without both filters, the client gets exactly what it asks: the old order too.
    _, all_waiting = await api.get("/v1/store/1/order?status=waiting_shipment")
    assert {o["reference"] for o in all_waiting["_embedded"]["order"]} == {
        "WAIT-1",
        "WAIT-2",
        "OLD-1",
    }


@pytest.mark.parametrize(
    "query",
    [
        "acknowledgment=unacknowledged&status=waiting_shipment,waiting_store_acceptance",
        "acknowledgment=unacknowledged&status=waiting_shipment,shipped,cancelled",
        "acknowledgment=unacknowledged",
    ],
)
async def test_unacknowledged_orders_are_offered_7_days_whatever_the_statuses(
    api: Api, query: str
) -> None:
    old = [
        make_order("OLD-1"),
        make_order("OLD-ACCEPT", S.WAITING_STORE_ACCEPTANCE),
        make_order("OLD-SHIPPED", S.SHIPPED),
    ]
    await seed(api.storage, "decathlon", 1, old, NOW - timedelta(days=8))
    status, page = await api.get(f"/v1/store/1/order?{query}")
    assert status == 200, page
    references = {o["reference"] for o in page["_embedded"]["order"]}
    assert references, "the recent orders are listed"
    assert not references & {"OLD-1", "OLD-ACCEPT", "OLD-SHIPPED"}
    # Acknowledged or not, asked without the filter, the old orders are there.
    _, everything = await api.get("/v1/store/1/order?status=waiting_shipment,shipped")
    assert {"OLD-1", "OLD-SHIPPED"} <= {o["reference"] for o in everything["_embedded"]["order"]}


@pytest.mark.parametrize("name", ["tag", "search", "error"])
async def test_a_shoppingfeed_filter_sfd_cannot_honour_is_a_400_naming_it(
    api: Api, name: str
) -> None:
    status, body = await api.get(f"/v1/store/1/order?status=waiting_shipment&{name}=test")
    assert status == 400
    assert body["field"] == name
    assert body["detail"].startswith(f"{name}: this filter is not supported")


async def test_items_references_aliases_is_an_empty_object(api: Api) -> None:
    _, page = await api.get("/v1/store/1/order?reference=WAIT-1")
    [order] = page["_embedded"]["order"]
    assert order["itemsReferencesAliases"] == {}
    _, one = await api.get(f"/v1/store/1/order/{order['id']}")
    assert one["itemsReferencesAliases"] == {}


async def test_a_collection_pages_with_hal_links_until_the_last(api: Api) -> None:
    status, first = await api.get("/v1/store/1/order?limit=2&status=waiting_shipment,shipped")
    assert status == 200
    assert {k: first[k] for k in ("total", "count", "pages", "page", "limit")} == {
        "total": 3,
        "count": 2,
        "pages": 2,
        "page": 1,
        "limit": 2,
    }
    assert "prev" not in first["_links"]
    next_href = first["_links"]["next"]["href"]
    assert next_href == "/v1/store/1/order?status=waiting_shipment%2Cshipped&page=2&limit=2"
    status, second = await api.get(next_href)
    assert (second["count"], second["page"]) == (1, 2)
    assert "next" not in second["_links"]
    references = [
        o["reference"] for o in first["_embedded"]["order"] + second["_embedded"]["order"]
    ]
    assert sorted(references) == ["SHIPPED-1", "WAIT-1", "WAIT-2"]
    _, default = await api.get("/v1/store/1/order")
    assert default["limit"] == 200


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=refused,cancelled", {"CANCELLED-1"}),
        ("acknowledgment=acknowledged", set()),
        ("channel=decathlon&status=waiting_store_acceptance", {"ACCEPT-1"}),
        ("channelId=2", set()),
        ("reference=WAIT-2", {"WAIT-2"}),
        ("since=2026-11-29T07:30:00%2B00:00&status=waiting_shipment", {"WAIT-1"}),
        ("until=2026-11-29T07:30:00Z", {"WAIT-2"}),
        # PrestaShop writes a time zone abbreviation where the T belongs.
        ("since=2026-11-29UTC07:30:00&status=waiting_shipment", {"WAIT-1"}),
    ],
)
async def test_filters_select_exactly_what_they_name(
    api: Api, query: str, expected: set[str]
) -> None:
    status, page = await api.get(f"/v1/store/1/order?{query}")
    assert status == 200, page
    assert {o["reference"] for o in page["_embedded"]["order"]} == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=lost", "status"),
        ("acknowledgment=maybe", "acknowledgment"),
        ("since=yesterday", "since"),
        ("until=2026-13-45T00:00:00", "until"),
        ("limit=201", "limit"),
        ("limit=0", "limit"),
        ("page=abc", "page"),
    ],
)
async def test_a_bad_filter_is_a_400_naming_it(api: Api, query: str, field: str) -> None:
    status, body = await api.get(f"/v1/store/1/order?{query}")
    assert status == 400
    assert body["field"] == field
    assert body["detail"].startswith(f"{field}: ")


async def test_one_order_and_an_unknown_one(api: Api) -> None:
    order_id = await api.order_id("WAIT-1")
    status, order = await api.get(f"/v1/store/1/order/{order_id}")
    assert status == 200
    assert (order["id"], order["reference"], order["status"]) == (
        order_id,
        "WAIT-1",
        "waiting_shipment",
    )
    assert order["_embedded"]["channel"]["name"] == "decathlon"
    assert (await api.get("/v1/store/1/order/999999"))[0] == 404
    assert (await api.get("/v1/store/1/order/../../2/order"))[0] == 404


def _shape(value: Any) -> Any:
    """The JSON type of every key, recursively; lists by the shape of their first element."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _same_shape(reference: Any, ours: Any, where: str = "$") -> list[str]:
    """Where `ours` lacks a key of `reference`, or types differ (null matches anything)."""
    if reference == "NoneType" or ours == "NoneType":
        return []
    if isinstance(reference, dict):
        if not isinstance(ours, dict):
            return [f"{where}: expected an object"]
        problems = []
        for key, value in reference.items():
            if key not in ours:
                problems.append(f"{where}.{key}: missing")
            else:
                problems.extend(_same_shape(value, ours[key], f"{where}.{key}"))
        return problems
    if isinstance(reference, list):
        if not isinstance(ours, list):
            return [f"{where}: expected an array"]
        return _same_shape(reference[0], ours[0], f"{where}[0]") if reference and ours else []
    return [] if reference == ours else [f"{where}: {ours} instead of {reference}"]


async def test_an_order_has_the_keys_and_types_of_a_shoppingfeed_order(api: Api) -> None:
    reference = json.loads(FIXTURE.read_text())
    ship, bill = reference["shippingAddress"], reference["billingAddress"]

    def address(a: dict[str, str]) -> Address:
        """The fixture's address, its camelCase keys read as our snake_case fields."""
        fields = ("first_name", "last_name", "company", "street", "street2", "postal_code",
                  "city", "country", "phone", "mobile_phone", "email")  # fmt: skip
        given = {f: a[re.sub(r"_(\w)", lambda m: m[1].upper(), f)] for f in fields}
        return Address(**given, relay_id=a.get("relayId", ""))

    order = MarketplaceOrder(
        reference=reference["reference"],
        status=S.WAITING_SHIPMENT,
        created_at=from_iso(reference["createdAt"]),
        updated_at=from_iso(reference["updatedAt"]),
        currency="EUR",
        product_amount=Decimal("64.97"),
        shipping_amount=Decimal("5.9"),
        total_amount=Decimal("70.87"),
        payment_method="CB",
        shipping_method=reference["shipment"]["carrier"],
        latest_ship_date=from_iso(reference["latestShipDate"]),
        raw=b"{}",
        billing_address=address(bill),
        shipping_address=address(ship),
        items=tuple(
            OrderItem(
                reference=i["reference"],
                channel_reference=i["channelReference"],
                quantity=i["quantity"],
                price=Decimal(str(i["price"])),
                name=i["name"],
                commission=Decimal(str(i["commission"])),
                tax_amount=Decimal(str(i["taxAmount"])),
                ecotax_amount=Decimal(str(i["ecotaxAmount"])),
                image=i["image"],
                additional_fields=i["additionalFields"],
            )
            for i in reference["items"]
        ),
        additional_fields=reference["additionalFields"],
    )
    await seed(api.storage, "decathlon", 1, [order])
    _, ours = await api.get(f"/v1/store/1/order/{await api.order_id(order.reference)}")
    assert _same_shape(_shape(reference), _shape(ours)) == []
    assert ours["payment"] == reference["payment"]
    assert ours["commission"] == 7.8
    assert [i["price"] for i in ours["items"]] == [34.99, 14.99]
    assert ours["shippingAddress"] == reference["shippingAddress"]
    assert ours["items"][0]["id"] > 0


# -- operations -----------------------------------------------------------------------------


async def test_acknowledge_stops_the_offer_and_keeps_the_first_time(api: Api) -> None:
    order_id = await api.order_id("WAIT-1")
    batch, [ticket] = await api.operate(
        "acknowledge",
        {
            "id": order_id,
            "storeReference": "PS-1001",
            "status": "success",
            "acknowledgedAt": "2026-11-29T09:00:00+01:00",
        },
    )
    assert (ticket["state"], ticket["batchId"], ticket["type"]) == (
        "succeed",
        batch,
        "order.acknowledge",
    )
    assert ticket["payload"]["reference"] == "WAIT-1"
    _, offered = await api.get(
        "/v1/store/1/order?acknowledgment=unacknowledged&status=waiting_shipment"
    )
    assert [o["reference"] for o in offered["_embedded"]["order"]] == ["WAIT-2"]
    await api.operate("acknowledge", {"id": order_id, "storeReference": "PS-2002"})
    _, order = await api.get(f"/v1/store/1/order/{order_id}")
    assert order["storeReference"] == "PS-2002"
    assert order["acknowledgedAt"] == "2026-11-29T08:00:00+00:00"
    assert api.woken == [], "acknowledging is settled at once; the worker has nothing to do"


async def test_unacknowledge_offers_the_order_again(api: Api) -> None:
    order_id = await api.order_id("WAIT-2")
    await api.operate("acknowledge", {"id": order_id, "storeReference": "PS-7"})
    _, [ticket] = await api.operate("unacknowledge", {"id": order_id})
    assert ticket["state"] == "succeed"
    _, offered = await api.get(
        "/v1/store/1/order?acknowledgment=unacknowledged&status=waiting_shipment"
    )
    assert "WAIT-2" in [o["reference"] for o in offered["_embedded"]["order"]]


async def test_an_error_acknowledgement_records_the_message(api: Api) -> None:
    order_id = await api.order_id("WAIT-1")
    await api.operate(
        "acknowledge",
        {"id": order_id, "status": "error", "message": "SKU SKU-0001 unknown in the shop"},
    )
    _, order = await api.get(f"/v1/store/1/order/{order_id}")
    assert [(e["type"], e["message"]) for e in order["errors"]] == [
        ("acknowledge", "SKU SKU-0001 unknown in the shop")
    ]
    stored = await api.storage.orders.get(order_id)
    assert stored is not None
    assert stored.acknowledgment_status == "error"
    assert [e.kind for e in stored.events][-1] == "acknowledge"
    assert stored.events[-1].source == "api"
    assert stored.events[-1].actor == "prestashop", "who: the token's name"


async def test_a_shipment_is_written_once_and_an_identical_repeat_gets_the_same_ticket(
    api: Api,
) -> None:
    order_id = await api.order_id("WAIT-1")
    ship = {
        "id": order_id,
        "carrier": "Colissimo",
        "trackingNumber": "6A123456789",
        "trackingLink": "https://www.laposte.fr/outils/suivre-vos-envois?code=6A123456789",
        "items": [],
        "warehouseId": None,
    }
    first_batch, [first] = await api.operate("ship", ship)
    assert first["state"] == "scheduled"
    assert first["type"] == "order.notify.shipment"
    assert first["payload"]["trackingNumber"] == "6A123456789"
    assert api.woken == [1]
    second_batch, [second] = await api.operate("ship", ship)
    assert second_batch != first_batch
    assert second["id"] == first["id"]
    assert await api.operation_count() == 1
    _, [third] = await api.operate("ship", {**ship, "trackingNumber": "6A000000000"})
    assert third["state"] == "failed"
    assert third["result"]["message"] == (
        f"order WAIT-1 already has a shipment (ticket {first['id']}); a shipment is sent only once"
    )
    status, shipments = await api.get(f"/v1/store/1/order/{order_id}/shipment")
    assert status == 200
    [shipment] = shipments["_embedded"]["shipment"]
    assert (shipment["carrier"], shipment["trackingNumber"]) == ("Colissimo", "6A123456789")
    stored = await api.storage.orders.get(order_id)
    assert stored is not None
    assert stored.status == S.WAITING_SHIPMENT, "only the marketplace's confirmation ships it"
    assert [e.kind for e in stored.events][-2:] == ["ship_requested", "ship_refused"]


@pytest.mark.parametrize(
    ("reference", "entry", "reason"),
    [
        (
            "CANCELLED-1",
            {"carrier": "DPD", "trackingNumber": "1"},
            "order CANCELLED-1 is cancelled; "
            "ship needs partially_refunded or partially_shipped or waiting_shipment",
        ),
        ("WAIT-1", {"carrier": "DPD"}, "channel decathlon requires a tracking number"),
        ("WAIT-1", {"trackingNumber": "1"}, "channel decathlon requires a carrier"),
        (
            "WAIT-1",
            {"carrier": "DPD", "trackingNumber": "1" * 300},
            "trackingNumber: 11111111111111111111... is 300 characters long; at most 255",
        ),
        (
            "WAIT-1",
            {"carrier": "DPD", "trackingNumber": "1 2 " * 300},
            "trackingNumber is 1200 characters long; at most 1024",
        ),
    ],
)
async def test_a_shipment_against_the_rules_gets_a_failed_ticket(
    api: Api, reference: str, entry: dict[str, Any], reason: str
) -> None:
    _, [ticket] = await api.operate("ship", {"id": await api.order_id(reference), **entry})
    assert ticket["state"] == "failed"
    assert ticket["result"]["message"] == reason


async def test_partial_shipments_ship_what_remains_and_no_more(api: Api) -> None:
    order_id = await api.order_id("WAIT-2")
    _, order = await api.get(f"/v1/store/1/order/{order_id}")
    line1, line2 = (i["id"] for i in order["items"])  # quantities 1 and 2
    base = {"id": order_id, "carrier": "DPD", "trackingNumber": "P1"}
    _, [ok] = await api.operate("ship", {**base, "items": [{"id": line2, "quantity": 1}]})
    assert ok["state"] == "scheduled"
    _, [too_many] = await api.operate(
        "ship", {**base, "trackingNumber": "P2", "items": [{"id": line2, "quantity": 2}]}
    )
    assert too_many["result"]["message"] == (
        f"item {line2}: quantity 2 is not between 1 and the 1 left to ship"
    )
    _, [foreign] = await api.operate(
        "ship", {**base, "trackingNumber": "P3", "items": [{"id": 987654, "quantity": 1}]}
    )
    assert foreign["result"]["message"] == "item 987654 is not a line of order WAIT-2"
    _, [rest] = await api.operate(
        "ship",
        {
            **base,
            "trackingNumber": "P4",
            "items": [{"id": line1, "quantity": 1}, {"id": line2, "quantity": 1}],
        },
    )
    assert rest["state"] == "scheduled"
    _, [whole] = await api.operate("ship", {**base, "trackingNumber": "P5"})
    assert whole["state"] == "failed"


async def test_a_shipment_without_carrier_or_tracking_is_taken_on_a_default_channel(
    api: Api,
) -> None:
    """ebay-de keeps the default (no require_tracking): what the shop does not know is
    forwarded as missing, null or empty alike, and the marketplace decides."""
    order_id = await api.order_id("EBAY-1")
    entry = {"id": order_id, "carrier": None, "trackingNumber": None, "trackingLink": None}
    _, [ticket] = await api.operate("ship", entry, token="2")
    assert ticket["state"] == "scheduled"
    assert (ticket["payload"]["carrier"], ticket["payload"]["trackingNumber"]) == ("", "")
    stored = await api.storage.orders.get(order_id)
    assert stored is not None
    assert [e.kind for e in stored.events][-1] == "ship_requested"


async def test_a_link_that_is_not_http_is_dropped_with_a_warning_and_the_shipment_goes(
    api: Api,
) -> None:
    tracking = {"trackingNumber": "250123456, 250123457", "trackingLink": "javascript:alert(1)"}
    order_id = await api.order_id("WAIT-1")
    ship = {"id": order_id, "carrier": "DPD", **tracking}
    _, [ticket] = await api.operate("ship", ship)
    assert ticket["state"] == "scheduled"
    assert ticket["payload"]["trackingLink"] == ""
    assert ticket["payload"]["trackingNumber"] == "250123456, 250123457", "kept as given"
    stored = await api.storage.orders.get(order_id)
    assert stored is not None
    assert [(e.kind, e.source, e.actor) for e in stored.events][-2:] == [
        ("ship_requested", "api", "prestashop"),
        ("ship_warning", "api", "prestashop"),
    ]
    assert stored.events[-1].message == (
        "trackingLink 'javascript:alert(1)' is not an http(s):// URL: dropped, the shipment "
        "is sent without it"
    )
    assert stored.events[-1].operation_id == stored.events[-2].operation_id
    # The same request again is the same shipment: one ticket, no second warning.
    _, [again] = await api.operate("ship", ship)
    assert again["id"] == ticket["id"]
    assert await api.operation_count() == 1
    stored = await api.storage.orders.get(order_id)
    assert stored is not None and [e.kind for e in stored.events].count("ship_warning") == 1


async def test_every_line_at_full_quantity_is_a_whole_shipment(api: Api) -> None:
    order_id = await api.order_id("WAIT-2")
    _, order = await api.get(f"/v1/store/1/order/{order_id}")
    every = [{"id": i["id"], "quantity": i["quantity"]} for i in order["items"]]
    ship = {"id": order_id, "carrier": "DPD", "trackingNumber": "P1", "items": every}
    _, [whole] = await api.operate("ship", ship)
    assert whole["state"] == "scheduled"
    assert whole["payload"]["items"] == [], "sent as the whole order"
    _, [again] = await api.operate("ship", ship)
    assert again["id"] == whole["id"], "a repeat is the same shipment"
    _, [more] = await api.operate("ship", {**ship, "items": every[:1]})
    assert more["state"] == "failed"
    assert more["result"]["message"] == (
        f"order WAIT-2 was shipped whole (ticket {whole['id']}); a shipment is sent only once"
    )


async def test_accept_and_refuse_need_an_order_waiting_for_acceptance(api: Api) -> None:
    accept_id = await api.order_id("ACCEPT-1")
    _, [accepted] = await api.operate("accept", {"id": accept_id, "reason": ""})
    assert accepted["state"] == "scheduled"
    _, [again] = await api.operate("refuse", {"id": accept_id})
    assert again["state"] == "failed"
    assert again["result"]["message"].startswith("order ACCEPT-1 already has a pending accept")
    _, [wrong] = await api.operate("accept", {"id": await api.order_id("WAIT-1")})
    assert wrong["result"]["message"] == (
        "order WAIT-1 is waiting_shipment; accept needs waiting_store_acceptance"
    )


async def test_cancel_is_only_before_shipment(api: Api) -> None:
    _, [ok] = await api.operate("cancel", {"id": await api.order_id("WAIT-1"), "reason": "stock"})
    assert ok["state"] == "scheduled"
    _, [late] = await api.operate("cancel", {"id": await api.order_id("SHIPPED-1")})
    assert late["state"] == "failed"
    assert late["result"]["message"].startswith("order SHIPPED-1 is shipped; cancel needs")


async def test_orders_named_by_reference_and_channel_and_unknown_ones(api: Api) -> None:
    batch, tickets = await api.operate(
        "acknowledge",
        {"reference": "WAIT-1", "channelName": "Decathlon", "storeReference": "W-1"},
        {"id": 999999, "storeReference": "W-2"},
        {"reference": "WAIT-2", "channelName": "decathlon", "storeReference": "W-3"},
    )
    assert [t["state"] for t in tickets] == ["succeed", "failed", "succeed"]
    assert tickets[1]["payload"]["id"] == 999999
    assert tickets[1]["result"]["message"] == "order not found"
    _, collection = await api.get(f"/v1/store/1/ticket?batchId={batch}")
    assert collection["meta"] == {"processing": False}
    assert collection["total"] == 3


async def test_a_batch_with_pending_tickets_is_processing(api: Api) -> None:
    batch, tickets = await api.operate("accept", {"id": await api.order_id("ACCEPT-1")})
    _, collection = await api.get(f"/v1/store/1/ticket?batchId={batch}")
    assert collection["meta"] == {"processing": True}
    status, one = await api.get(f"/v1/store/1/ticket/{tickets[0]['id']}")
    assert (status, one["id"], one["state"]) == (200, tickets[0]["id"], "scheduled")
    assert (await api.get(f"/v1/store/2/ticket/{tickets[0]['id']}", token="2"))[0] == 404
    _, listed = await api.get("/v1/store/1/ticket?state=scheduled")
    assert [t["id"] for t in listed["_embedded"]["ticket"]] == [tickets[0]["id"]]


@pytest.mark.parametrize(
    ("operation", "body", "field", "detail"),
    [
        ("ship", b"{not json", "body", "body: not valid JSON"),
        ("ship", b'{"orders": []}', "order", "order: is required"),
        ("ship", b'{"order": []}', "order", "order: is empty: name at least one order"),
        ("teleport", b'{"order": [{"id": 1}]}', "operation", "operation: unknown operation"),
        (
            "ship",
            b'{"order": [{"id": 1, "carrier": "DPD"}, {"carrier": "DPD"}]}',
            "order[1].id",
            "order[1].id: is required (or reference with channelName) to name the order",
        ),
        (
            "ship",
            b'{"order": [{"id": "one"}]}',
            "order[0].id",
            "order[0].id: expected an integer or null, got a string",
        ),
        (
            "ship",
            b'{"order": [{"id": 1, "items": [{"id": 1}]}]}',
            "order[0].items[0].quantity",
            "order[0].items[0].quantity: is required",
        ),
        (
            "acknowledge",
            b'{"order": [{"id": 1, "status": "maybe"}]}',
            "order[0].status",
            "order[0].status: expected 'success' or 'error', got 'maybe'",
        ),
        (
            "acknowledge",
            b'{"order": [{"id": 1, "acknowledgedAt": "soon"}]}',
            "order[0].acknowledgedAt",
            "order[0].acknowledgedAt: expected an ISO 8601 date",
        ),
    ],
)
async def test_a_malformed_operation_is_a_400_naming_the_field_and_writes_nothing(
    api: Api, operation: str, body: bytes, field: str, detail: str
) -> None:
    before = await api.operation_count()
    status, problem = await api.call(
        "POST",
        f"/v1/store/1/order/{operation}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    assert problem["field"] == field
    assert problem["detail"].startswith(detail)
    assert await api.operation_count() == before


async def test_a_body_over_10_mib_is_refused(api: Api) -> None:
    body = b'{"order": [{"id": 1, "carrier": "' + b"x" * (10 * 1024 * 1024) + b'"}]}'
    status, problem = await api.call(
        "POST", "/v1/store/1/order/ship", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert problem["field"] == "body"
    assert await api.operation_count() == 0


async def test_channels_are_listed_as_store_channels(api: Api) -> None:
    status, page = await api.get("/v1/store/1/channel")
    assert status == 200
    [entry] = page["_embedded"]["storeChannel"]
    assert entry["installed"] is True
    assert entry["_embedded"]["channel"]["name"] == "decathlon"
    status, channel = await api.get(f"/v1/channel/{entry['id']}")
    assert (status, channel["name"]) == (200, "decathlon")


async def test_a_refund_takes_products_as_a_list_or_as_the_manuals_sku_map(api: Api) -> None:
    order_id = await api.order_id("SHIPPED-1")
    _, [listed] = await api.operate(
        "refund",
        {
            "id": order_id,
            "refund": {"shipping": False, "products": [{"reference": "SKU-0001", "quantity": 1}]},
        },
    )
    assert listed["state"] == "scheduled"
    assert listed["payload"]["refund"] == {
        "shipping": False,
        "products": [{"reference": "SKU-0001", "quantity": 1}],
    }
    _, [mapped] = await api.operate(
        "refund", {"id": order_id, "refund": {"products": {"SKU-0002": 2}}}
    )
    assert mapped["payload"]["refund"]["products"] == [{"reference": "SKU-0002", "quantity": 2}]


async def test_catalog_links_answer_404_rather_than_leaving_sdk_clients_without_a_link(
    api: Api,
) -> None:
    _, me = await api.get("/v1/me")
    links = me["_embedded"]["store"][0]["_links"]
    status, body = await api.get(links["inventory"]["href"])
    assert status == 404
    assert body["detail"] == "sfd manages orders only; it keeps no catalog"
