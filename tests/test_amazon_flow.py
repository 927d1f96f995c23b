"""Amazon end to end over real HTTP: the daemon against the sandbox Amazon (Orders v2026-01-01).

A backlog of 250 orders arrives in three searchOrders pages, with full addresses and no call per
order; a shop ships one through the v1 API and Amazon confirms it. A database written by the
Orders v0 connector keeps its orders, their ids and its cursor on the first v2026 poll.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from sfd.config import Config, load_config
from sfd.connectors.amazon import format_date
from sfd.daemon.runtime import Daemon, sync_config
from sfd.domain import MISSING_PERSONAL_DATA, Address, MarketplaceOrder, OrderItem, OrderStatus
from sfd.domain.clock import utcnow
from sfd.logs import configure_logging
from sfd.sandbox.amazon import FRANCE, SHIPPING_ROLE, TAX_ROLES, SandboxAmazon, run_amazon
from sfd.storage import OrderFilter, Storage
from tests.connectors.amazon_model import check_request
from tests.support import InProcess, run_cli, start_daemon, until, write_config

CLIENT_ID = "amzn1.application-oa2-client.sandbox"
SECRET = "amzn1.oa2-cs.v1.sandbox-secret"
REFRESH = "Atzr|sandbox-refresh-token"


@dataclass
class Running(InProcess):
    daemon: Daemon
    amazon: SandboxAmazon
    logs: io.StringIO


def amazon_config(directory: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("AMAZON_SECRET", SECRET)
    monkeypatch.setenv("AMAZON_REFRESH", REFRESH)
    path = write_config(
        directory,
        f"""
[[channels]]
name = "amazon-fr"
store = 1
connector = "amazon"
poll_interval = "1h"
[channels.settings]
endpoint = "{base_url}"
token_url = "{base_url}/auth/o2/token"
client_id = "{CLIENT_ID}"
client_secret = "env:AMAZON_SECRET"
refresh_token = "env:AMAZON_REFRESH"
marketplace_ids = ["{FRANCE}"]
""",
    )
    # The first confirmation read comes a second after delivery, not a minute.
    text = path.read_text(encoding="utf-8").replace(
        "[daemon]\n", '[daemon]\nconfirm_delay = "1s"\n', 1
    )
    path.write_text(text, encoding="utf-8")
    return load_config(path)


async def start(config: Config, amazon: SandboxAmazon) -> tuple[Running, asyncio.Task[None]]:
    logs = io.StringIO()
    configure_logging("json", "info", config.secrets, stream=logs)
    daemon, task = await start_daemon(config)
    return Running(daemon, amazon, logs), task


@pytest.fixture
def amazon() -> SandboxAmazon:
    return SandboxAmazon(CLIENT_ID, SECRET, REFRESH, seed=5)


@pytest.fixture
async def served(amazon: SandboxAmazon) -> AsyncIterator[str]:
    async with run_amazon(amazon) as url:
        yield url


def check_calls(amazon: SandboxAmazon) -> None:
    """Every SP-API request the sandbox received fits Amazon's published model."""
    for call in amazon.calls:
        if call.operation != "lwa":
            check_request(
                call.method, URL(call.path).with_query(call.query), call.body, now=call.at
            )


async def test_a_backlog_of_250_orders_arrives_in_three_calls_with_addresses_then_ships(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amazon: SandboxAmazon, served: str
) -> None:
    references = amazon.add_orders(250)
    config = amazon_config(tmp_path, served, monkeypatch)
    running, task = await start(config, amazon)
    try:
        storage = running.storage
        assert running.poller.status.detail == {
            "pages": 3,
            "created": 250,
            "changed": 0,
            "skipped": 0,
        }
        assert await storage.orders.count(OrderFilter()) == 250
        searches = amazon.calls_to("searchOrders")
        assert len(searches) == 3
        assert [c.query.get("paginationToken") is None for c in searches] == [True, False, False]
        assert amazon.calls_to("getOrder") == []  # no call per order
        assert len(amazon.calls_to("lwa")) == 1
        rows = await storage.db.fetch("SELECT id, reference FROM orders ORDER BY id", ())
        ids = {row["reference"]: row["id"] for row in rows}
        assert set(ids) == set(references)
        for reference in references[:20] + references[-5:]:
            order = await storage.orders.get(ids[reference])
            assert order is not None and order.shipping_address is not None
            address = order.shipping_address
            assert address.street.endswith("rue de la République")
            assert address.postal_code and address.city and address.last_name
            assert address.email.endswith("@marketplace.amazon.fr")
            assert MISSING_PERSONAL_DATA not in order.additional_fields
            assert order.status is OrderStatus.WAITING_SHIPMENT

        # The shop ships one order through the v1 API; Amazon confirms it.
        _, token = await storage.tokens.create(1, "shop", utcnow())
        shipped = references[7]
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{running.daemon.url}/v1/store/1/order/ship",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "order": [
                        {
                            "id": ids[shipped],
                            "carrier": "Mondial Relay",
                            "trackingNumber": "6A12345678901",
                        }
                    ]
                },
            ) as response:
                assert response.status == 202, await response.text()
            await until(lambda: amazon.status(shipped) == "SHIPPED")

            async def confirmed() -> bool:
                order = await storage.orders.get(ids[shipped])
                return order is not None and order.status is OrderStatus.SHIPPED

            for _ in range(2000):
                if await confirmed():
                    break
                await asyncio.sleep(0.01)
            assert await confirmed()
        [confirmation] = amazon.calls_to("confirmShipment")
        detail = confirmation.body["packageDetail"]
        # Mondial Relay is one of Amazon's carrier codes: sent as such, never as "Other".
        assert detail["carrierCode"] == "Mondial Relay" and "carrierName" not in detail
        order = await storage.orders.get(ids[shipped])
        assert order is not None
        [delivered] = [e for e in order.events if e.kind == "ship_delivered"]
        assert 'carrier Mondial Relay (automatic: "Mondial Relay")' in delivered.message
        assert {i["orderItemId"] for i in detail["orderItems"]} == {
            line.item_id for line in amazon._orders[shipped].lines
        }
        assert len(amazon.calls_to("getOrder")) >= 2  # the check before, the confirmation after
        check_calls(amazon)
    finally:
        running.daemon.request_stop()
        await asyncio.wait_for(task, 10)


async def test_without_the_shipping_role_orders_arrive_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: str, amazon: SandboxAmazon
) -> None:
    amazon.roles = frozenset(TAX_ROLES)
    assert SHIPPING_ROLE not in amazon.roles
    [reference] = amazon.add_orders(1)
    running, task = await start(amazon_config(tmp_path, served, monkeypatch), amazon)
    try:
        storage = running.storage
        [row] = await storage.db.fetch("SELECT id FROM orders", ())
        order = await storage.orders.get(row["id"])
        assert order is not None and order.reference == reference
        assert order.shipping_address is not None
        assert order.shipping_address.city and not order.shipping_address.street
        assert "Direct-to-Consumer Shipping" in order.additional_fields[MISSING_PERSONAL_DATA]
        # The order page says so.
        _, token = await storage.tokens.create(1, "me", utcnow())
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.post(f"{running.daemon.url}/signin", data={"token": token}) as r:
                assert r.status == 200
            async with http.get(f"{running.daemon.url}/orders/{order.id}") as r:
                page = await r.text()
        assert 'id="missing-personal-data"' in page
        assert "Direct-to-Consumer Shipping (Restricted) role" in page
    finally:
        running.daemon.request_stop()
        await asyncio.wait_for(task, 10)
    # So does `sfd orders show`.
    shown = run_cli(tmp_path / "sfd.toml", "orders", "show", str(order.id))
    assert shown.returncode == 0, shown.stderr
    assert "warning: Amazon sent this order without" in " ".join(shown.stdout.split())


def v0_order(reference: str, updated_at: datetime) -> MarketplaceOrder:
    """An order as the Orders v0 connector stored it: raw payload {"order", "items"}."""
    raw = {
        "order": {
            "AmazonOrderId": reference,
            "PurchaseDate": format_date(updated_at - timedelta(minutes=5)),
            "LastUpdateDate": format_date(updated_at),
            "OrderStatus": "Unshipped",
            "FulfillmentChannel": "MFN",
            "MarketplaceId": FRANCE,
            "OrderTotal": {"CurrencyCode": "EUR", "Amount": "19.99"},
            "ShippingAddress": {"City": "Lyon", "PostalCode": "69002", "CountryCode": "FR"},
        },
        "items": [
            {
                "OrderItemId": "62410391658171",
                "SellerSKU": "HOUSSE-LIN-45",
                "QuantityOrdered": 1,
                "ItemPrice": {"CurrencyCode": "EUR", "Amount": "19.99"},
            }
        ],
    }
    return MarketplaceOrder(
        reference=reference,
        status=OrderStatus.WAITING_SHIPMENT,
        created_at=updated_at - timedelta(minutes=5),
        updated_at=updated_at,
        currency="EUR",
        product_amount=Decimal("19.99"),
        shipping_amount=Decimal(0),
        total_amount=Decimal("19.99"),
        raw=json.dumps(raw).encode(),
        payment_method="Other",
        shipping_method="Std FR Dom_1",
        shipping_address=Address(city="Lyon", postal_code="69002", country="FR"),
        items=(
            OrderItem(
                reference="HOUSSE-LIN-45",
                channel_reference="62410391658171",
                quantity=1,
                price=Decimal("19.99"),
            ),
        ),
        additional_fields={"order_status": "Unshipped", "fulfillment_channel": "MFN"},
    )


async def test_a_database_written_by_the_v0_connector_keeps_its_orders_ids_and_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: str, amazon: SandboxAmazon
) -> None:
    references = amazon.add_orders(30, age=timedelta(minutes=50))
    config = amazon_config(tmp_path, served, monkeypatch)
    now = utcnow()
    cursor = now - timedelta(hours=2)
    # The v0 connector's database: same channel, same order references, v0 payloads, a cursor.
    storage = await Storage.open(config.database)
    try:
        await sync_config(storage, config, now)
        channel_id = (await storage.channels.channel_ids())["amazon-fr"]
        await storage.orders.import_page(
            channel_id, 1, [v0_order(r, now - timedelta(hours=3)) for r in references[:20]], now
        )
        await storage.channels.set_cursor(channel_id, cursor, now)
        before = {
            row["reference"]: row["id"]
            for row in await storage.db.fetch("SELECT id, reference FROM orders", ())
        }
    finally:
        await storage.close()
    assert len(before) == 20

    running, task = await start(config, amazon)
    try:
        storage = running.storage
        rows = await storage.db.fetch("SELECT id, reference FROM orders", ())
        after = {row["reference"]: row["id"] for row in rows}
        assert len(rows) == 30  # no duplicate: 20 known, 10 new
        assert {r: after[r] for r in before} == before  # same ids
        assert set(after) == set(references)
        [first] = amazon.calls_to("searchOrders")
        assert first.query["lastUpdatedAfter"] == format_date(cursor)  # the cursor carried over
        moved = await storage.channels.cursor(channel_id)
        assert moved is not None and moved > cursor
        # The known orders now carry Amazon's full address, from v2026's RECIPIENT data.
        order = await storage.orders.get(before[references[0]])
        assert order is not None and order.shipping_address is not None
        assert order.shipping_address.street.endswith("rue de la République")
        assert order.additional_fields["order_status"] == "UNSHIPPED"
        check_calls(amazon)
    finally:
        running.daemon.request_stop()
        await asyncio.wait_for(task, 10)
