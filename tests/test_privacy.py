"""Personal data retention: buyers' data erased after the retention, everywhere in the files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer

from sfd.config import ConfigError, parse_config
from sfd.connectors import amazon, ebay, mirakl
from sfd.connectors.privacy import EMPTY_PAYLOAD, redact_payload
from sfd.connectors.shoppingfeed import render_order
from sfd.daemon.api import ShopApi
from sfd.daemon.http import build_app
from sfd.daemon.page import OrderPage
from sfd.daemon.retention import RetentionLoop
from sfd.domain import Address, MarketplaceOrder, OrderStatus
from sfd.domain.clock import utcnow
from sfd.domain.privacy import known_values
from sfd.storage import Storage
from sfd.storage.channels import ChannelSpec
from tests.conftest import NOW
from tests.connectors.test_amazon import amazon_order
from tests.connectors.test_ebay import ebay_order
from tests.connectors.test_mirakl import mirakl_order
from tests.factories import make_order
from tests.page.conftest import PageClient
from tests.support import run_cli, write_config

RETENTION = timedelta(days=30)

#: Every personal value the three orders below carry, as their buyers typed them.
PERSONAL = [
    # Mirakl
    "Camille",
    "Dubois",
    "12 rue de la République",
    "Bâtiment B",
    "3 place de la Gare",
    "Tabac de la Gare",
    "Atelier Dubois",
    "Point relais 020406",
    "0472000000",
    "0611223344",
    "k2x9@notifications.mirakl.test",
    # Amazon
    "Claire Martin",
    "k2x9mq7vbn3r5t@marketplace.amazon.fr",
    "+33 4 72 00 00 00",
    "Accueil, 2e étage",
    # eBay
    "Anna Schmidt",
    "Anna Maria Schmidt",
    "Atelier Schmidt GmbH",
    "Hauptstraße 12",
    "Hinterhaus, 3. OG",
    "Invalidenstraße 44",
    "+49 30 1234567",
    "+49 171 7654321",
    "3f9a1c7b2e@members.ebay.de",
    "anna.s_berlin",
]


def _raw(document: dict[str, Any]) -> bytes:
    # As the marketplaces send it: non-ASCII written as UTF-8, not escaped.
    return json.dumps(document, ensure_ascii=False).encode()


def closed_orders() -> dict[str, MarketplaceOrder]:
    """One shipped order per marketplace, parsed by its connector from its own JSON."""
    found = {
        "mirakl": mirakl.parse_order(_raw(mirakl_order("7001-A", "SHIPPED"))),
        "amazon": amazon.normalize_order(
            amazon._decode_order(_raw(amazon_order(status="SHIPPED"))),
            _raw(amazon_order(status="SHIPPED")),
        ),
        "ebay": ebay.parse_order(_raw(ebay_order(fulfillment="FULFILLED"))),
    }
    orders = {}
    for name, order in found.items():
        assert order is not None
        orders[name] = order
    return orders


def open_order() -> MarketplaceOrder:
    """An order still to ship, its buyer someone else."""
    buyer = Address(
        first_name="Yves", last_name="Kerjean", street="5 quai Duguay-Trouin", city="Brest"
    )
    return msgspec.structs.replace(
        make_order("OPEN-1"), billing_address=buyer, shipping_address=buyer
    )


async def open_storage(path: Path) -> Storage:
    storage = await Storage.open(path, renderer=render_order)
    await storage.channels.sync(
        [(1, "Shop one")],
        [
            ChannelSpec("decathlon", 1, "mirakl"),
            ChannelSpec("amazon-fr", 1, "amazon"),
            ChannelSpec("ebay-de", 1, "ebay"),
        ],
        NOW,
    )
    return storage


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Storage]:
    """Three shipped orders imported at NOW, one per marketplace, and one still to ship."""
    storage = await open_storage(tmp_path / "sfd.db")
    ids = await storage.channels.channel_ids()
    orders = closed_orders()
    await storage.orders.import_page(ids["decathlon"], 1, [orders["mirakl"]], NOW)
    await storage.orders.import_page(ids["amazon-fr"], 1, [orders["amazon"]], NOW)
    await storage.orders.import_page(ids["ebay-de"], 1, [orders["ebay"]], NOW)
    await storage.orders.import_page(ids["decathlon"], 1, [open_order()], NOW)
    yield storage
    await storage.close()


def files_bytes(path: Path) -> bytes:
    """The database file, its WAL and its shared-memory index, as bytes on the disk."""
    found = b""
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            found += part.read_bytes()
    return found


def remaining(data: bytes) -> list[str]:
    """The personal values still found in `data`, raw or as JSON escapes them."""
    return [
        value
        for value in PERSONAL
        if value.encode() in data or json.dumps(value)[1:-1].encode() in data
    ]


async def snapshot(storage: Storage) -> list[Any]:
    """Every row of the tables an erasure may touch."""
    rows = []
    for table in ("orders", "order_addresses", "order_payloads", "order_events", "order_items"):
        rows.append([tuple(r) for r in await storage.db.fetch(f"SELECT * FROM {table}")])
    return rows


async def test_nothing_changes_before_the_retention_and_no_trace_remains_after(
    store: Storage, tmp_path: Path
) -> None:
    path = tmp_path / "sfd.db"
    # Some personal data in the main file, and more written again into the WAL.
    assert await store.db.checkpoint()
    ids = await store.channels.channel_ids()
    first = closed_orders()["mirakl"]
    later = msgspec.structs.replace(first, updated_at=first.updated_at + timedelta(hours=1))
    await store.orders.import_page(ids["decathlon"], 1, [later], NOW + timedelta(hours=1))
    assert remaining(files_bytes(path)) == PERSONAL, "the search must see what is there"
    before = await snapshot(store)

    moment = NOW + RETENTION - timedelta(seconds=1)
    loop = RetentionLoop(store, RETENTION, lambda: moment)
    await loop.step()
    assert await snapshot(store) == before
    assert remaining(files_bytes(path)) == PERSONAL

    moment = NOW + RETENTION + timedelta(seconds=1)
    await loop.step()

    # The storage is still open: the WAL and the shared-memory file are on the disk.
    assert path.with_name("sfd.db-shm").exists()
    assert remaining(files_bytes(path)) == []
    assert loop.status.detail["erased"] == 3

    open_order = (await store.db.fetch("SELECT id FROM orders WHERE reference = 'OPEN-1'"))[0][0]
    kept = await store.orders.get(open_order)
    assert kept is not None and kept.shipping_address is not None
    assert kept.shipping_address.last_name == "Kerjean"  # still open: kept whole
    assert b"5 quai Duguay-Trouin" in files_bytes(path)


async def test_the_window_is_counted_from_the_close_not_the_import(store: Storage) -> None:
    ids = await store.channels.channel_ids()
    # An order imported to ship, shipped 10 days later: its 30 days start then.
    shipped_late = make_order("LATE-SHIP", updated_at=NOW)
    await store.orders.import_page(ids["decathlon"], 1, [shipped_late], NOW)
    shipped = make_order("LATE-SHIP", OrderStatus.SHIPPED, updated_at=NOW + timedelta(days=10))
    await store.orders.import_page(ids["decathlon"], 1, [shipped], NOW + timedelta(days=10))
    order_id = (await store.db.fetch("SELECT id FROM orders WHERE reference = 'LATE-SHIP'"))[0][0]

    def redact(connector: str, text: str, known: frozenset[str]) -> str:
        return redact_payload(connector, text, known)

    report = await store.privacy.erase(NOW + timedelta(days=35), RETENTION, redact)
    assert report.orders == 3  # the three closed at NOW
    order = await store.orders.get(order_id)
    assert order is not None and order.billing_address is not None
    assert order.billing_address.first_name == "Camille"
    report = await store.privacy.erase(NOW + timedelta(days=40, seconds=1), RETENTION, redact)
    assert report.orders == 1
    order = await store.orders.get(order_id)
    assert order is not None and order.billing_address is not None
    assert order.billing_address.first_name == ""
    assert order.billing_address.city == "Lyon" and order.billing_address.postal_code == "69003"
    # A second run finds nothing left to erase and writes no second event.
    report = await store.privacy.erase(NOW + timedelta(days=41), RETENTION, redact)
    assert report.orders == 0
    order = await store.orders.get(order_id)
    assert order is not None
    assert [e.kind for e in order.events].count("personal_data_erased") == 1


async def test_an_erased_order_keeps_its_history_and_says_what_was_erased(store: Storage) -> None:
    loop = RetentionLoop(store, RETENTION, lambda: NOW + timedelta(days=31))
    await loop.step()
    row = await store.db.fetchrow("SELECT id FROM orders WHERE reference = '7001-A'")
    assert row is not None
    order = await store.orders.get(row[0])
    assert order is not None and order.shipping_address is not None
    address = order.shipping_address
    assert (address.first_name, address.last_name, address.company, address.street) == (
        "",
        "",
        "",
        "",
    )
    assert (address.phone, address.mobile_phone, address.email, address.other) == ("", "", "", "")
    assert (address.postal_code, address.city, address.country) == ("69003", "Lyon", "FR")
    assert address.relay_id == "020406"
    assert order.status is OrderStatus.SHIPPED
    assert str(order.total_amount) == "44.88" and order.items[0].reference == "SKU-0001"
    assert "organization_name" not in order.additional_fields
    assert order.additional_fields["commercial_id"] == "7001"
    erased = [e for e in order.events if e.kind == "personal_data_erased"]
    assert len(erased) == 1 and erased[0].source == "auto"
    assert "30 days after the order closed" in erased[0].message
    assert "raw marketplace payload" in erased[0].message
    payload = await store.db.fetchval(
        "SELECT payload FROM order_payloads WHERE order_id = $1", (row[0],)
    )
    redacted = json.loads(payload)
    assert redacted["order_id"] == "7001-A" and redacted["total_price"] == 44.88
    assert redacted["customer"]["customer_id"] == "C-981"
    assert redacted["customer"]["shipping_address"]["zip_code"] == "69003"
    assert redacted["customer"]["shipping_address"]["street_1"] == ""
    assert redacted["order_lines"][0]["offer_sku"] == "SKU-0001"


def test_each_marketplace_payload_keeps_ids_amounts_and_statuses() -> None:
    amazon_text = json.dumps(amazon_order(status="SHIPPED"))
    known = known_values([{"last_name": "Claire Martin", "street": "12 rue de la République"}])
    out = json.loads(redact_payload("amazon", amazon_text, known))
    assert out["orderId"] == "405-1234567-8901234"
    assert out["buyer"]["buyerName"] == "" and out["buyer"]["buyerEmail"] == ""
    assert out["buyer"]["buyerPurchaseOrderNumber"] == "PO-2026-118"
    assert out["recipient"]["deliveryAddress"]["postalCode"] == "69002"
    assert out["recipient"]["deliveryAddress"]["addressLine1"] == ""
    assert out["tax"]["taxRegistrations"][0]["legalName"] == ""
    assert out["proceeds"]["grandTotal"] == amazon_order()["proceeds"]["grandTotal"]
    assert out["fulfillment"]["fulfillmentStatus"] == "SHIPPED"
    ebay_out = json.loads(redact_payload("ebay", json.dumps(ebay_order()), frozenset()))
    ship_to = ebay_out["fulfillmentStartInstructions"][0]["shippingStep"]["shipTo"]
    assert ship_to["fullName"] == "" and ship_to["primaryPhone"]["phoneNumber"] == ""
    assert ship_to["contactAddress"]["postalCode"] == "10115"
    assert ebay_out["buyer"]["username"] == ""
    assert ebay_out["pricingSummary"]["total"] == {"value": "77.46", "currency": "EUR"}
    # Exact amounts survive: no float rounding on the way.
    assert redact_payload("mirakl", '{"price": 0.10000000000000001}', frozenset()) == (
        '{"price":0.10000000000000001}'
    )
    assert redact_payload("woocommerce", amazon_text, known) == EMPTY_PAYLOAD
    assert redact_payload("mirakl", "<xml/>", known) == EMPTY_PAYLOAD


async def test_an_erased_order_answers_in_v1_and_on_the_page_with_the_erased_fields_empty(
    store: Storage,
) -> None:
    later = NOW + timedelta(days=31)
    await RetentionLoop(store, RETENTION, lambda: later).step()
    _, token = await store.tokens.create(1, "prestashop", NOW)
    shop = ShopApi(store, lambda: later, on_operations=lambda: None)
    page = OrderPage(store, lambda: later)
    server = TestServer(build_app(lambda: (True, {}), shop, page=page), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    client = PageClient(base)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {token}"}
            url = base + "/v1/store/1/order?status=shipped"
            async with http.get(url, headers=headers) as response:
                assert response.status == 200
                text = await response.text()
        await client.sign_in(token)
        order_id = await store.db.fetchval("SELECT id FROM orders WHERE reference = '7001-A'")
        status, html = await client.get(f"/orders/{order_id}")
    finally:
        await client.close()
        await server.close()
    body = json.loads(text)
    orders = {o["reference"]: o for o in body["_embedded"]["order"]}
    assert set(orders) == {"7001-A", "405-1234567-8901234", "12-34567-89012"}
    shipping = orders["12-34567-89012"]["shippingAddress"]
    assert shipping["firstName"] == "" and shipping["lastName"] == ""
    assert shipping["street"] == "" and shipping["phone"] == "" and shipping["email"] == ""
    assert shipping["postalCode"] == "10115" and shipping["country"] == "DE"
    assert remaining(text.encode()) == []
    assert status == 200
    assert "7001-A" in html and "personal_data_erased" in html
    assert remaining(html.encode()) == []


async def test_db_anonymize_dry_run_counts_and_changes_nothing_then_erases(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text().replace("[daemon]\n", '[daemon]\npii_retention = "30d"\n')
    config.write_text(text)
    assert parse_config(text, "t").daemon.pii_retention == RETENTION.total_seconds()
    migrated = run_cli(config, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    storage = await open_storage(tmp_path / "sfd.db")
    ids = await storage.channels.channel_ids()
    old = closed_orders()
    long_ago = utcnow() - timedelta(days=40)
    await storage.orders.import_page(ids["decathlon"], 1, [old["mirakl"]], long_ago)
    await storage.orders.import_page(ids["ebay-de"], 1, [old["ebay"]], utcnow() - timedelta(days=5))
    order_id = await storage.db.fetchval("SELECT id FROM orders WHERE reference = '7001-A'")
    before = await snapshot(storage)
    await storage.close()

    dry = run_cli(config, "db", "anonymize", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    counts = json.loads(dry.stdout)
    assert counts["dry_run"] is True
    assert (counts["orders"], counts["addresses"], counts["payloads"]) == (1, 2, 1)
    assert counts["retention_seconds"] == RETENTION.total_seconds()
    storage = await Storage.open(tmp_path / "sfd.db")
    try:
        assert await snapshot(storage) == before
    finally:
        await storage.close()

    done = run_cli(config, "db", "anonymize", "--json")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert (counts["dry_run"], counts["orders"], counts["api_documents"]) == (False, 1, 1)
    assert counts["checkpointed"] is True

    shown = json.loads(run_cli(config, "orders", "show", str(order_id), "--json").stdout)
    assert (
        shown["billing_address"]["last_name"] == "" and shown["billing_address"]["city"] == "Lyon"
    )
    assert shown["shipping_address"]["street"] == "" and shown["shipping_address"]["email"] == ""
    erased = [e for e in shown["events"] if e["kind"] == "personal_data_erased"]
    assert [e["source"] for e in erased] == ["cli"]
    table = run_cli(config, "orders", "show", str(order_id))
    assert table.returncode == 0 and "personal_data_erased" in table.stdout
    again = run_cli(config, "db", "anonymize")
    assert again.returncode == 0
    assert again.stderr.startswith("sfd: erased the personal data of 0 orders closed before")
    storage = await Storage.open(tmp_path / "sfd.db")
    try:
        recent = await storage.db.fetchval(
            "SELECT first_name FROM order_addresses a JOIN orders o ON o.id = a.order_id "
            "WHERE o.reference = '12-34567-89012' AND a.kind = 'shipping'"
        )
        assert recent == "Anna"  # closed 5 days ago: kept
    finally:
        await storage.close()


def test_pii_retention_defaults_to_30_days_and_a_bad_value_names_its_key() -> None:
    stores = '[[stores]]\nid = 1\nname = "a"\n'
    assert parse_config(stores, "sfd.toml").daemon.pii_retention == RETENTION.total_seconds()
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[daemon]\npii_retention = "soon"\n{stores}', "sfd.toml")
    assert caught.value.lines() == [
        "sfd.toml: daemon.pii_retention: expected a duration such as 90s, 5m or 1h, got 'soon'"
    ]
