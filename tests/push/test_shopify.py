"""Push mode against a fake Shopify (Admin GraphQL), over real HTTP: orders go in once with
exactly the documented orderCreate, no email ever reaches a marketplace buyer, and fulfilments
(whole or partial) and cancellations come back as ship and cancel operations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sfd.connectors.base import RateLimited
from sfd.connectors.settings import ShopifySettings
from sfd.connectors.shopify import CREATE_MUTATION, VARIANT_QUERY, ShopifyConnector
from sfd.domain import Ticket
from sfd.domain.clock import to_iso
from sfd.sandbox.shopify import SandboxShopify, run_shopify
from tests.push.conftest import SHOPIFY, TOKEN, ShopifyHub, expected_meta, shop_hub, until
from tests.support import run_cli


@pytest.fixture
def shopify() -> SandboxShopify:
    return SandboxShopify(TOKEN)


@pytest.fixture
async def hub(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shopify: SandboxShopify,
    hub_options: dict[str, Any],
) -> AsyncIterator[ShopifyHub]:
    async with shop_hub(SHOPIFY, tmp_path, monkeypatch, hub_options, shop=shopify) as running:
        yield running


def _address(stored: Any) -> dict[str, str]:
    fields = {
        "firstName": stored.first_name,
        "lastName": stored.last_name,
        "company": stored.company,
        "address1": stored.street,
        "address2": ", ".join(p for p in (stored.street2, stored.other) if p),
        "city": stored.city,
        "zip": stored.postal_code,
        "countryCode": stored.country.upper(),
        "provinceCode": stored.province if 0 < len(stored.province) <= 3 else "",
        "phone": stored.phone or stored.mobile_phone,
    }
    return {k: v for k, v in fields.items() if v}


def _money(amount: Decimal) -> dict[str, Any]:
    return {"shopMoney": {"amount": f"{amount:f}", "currencyCode": "EUR"}}


# -- pushing --------------------------------------------------------------------------------


async def test_the_create_request_is_exactly_the_document_and_variables(hub: ShopifyHub) -> None:
    order, mirakl, create = await hub.pushed_create()
    reference = order.reference
    assert create.path == "/admin/api/2026-01/graphql.json"
    assert order.billing_address is not None and order.shipping_address is not None
    variants = {v["sku"]: v["id"] for v in hub.shop.variants.values()}
    shipping = Decimal(str(mirakl["shipping_price"]))
    total = sum((Decimal(str(line["price"])) for line in mirakl["order_lines"]), shipping)
    ship_by = None if order.latest_ship_date is None else to_iso(order.latest_ship_date)
    attributes, note = expected_meta(
        mirakl, order, reference, email_key="sfd_buyer_email", ship_by=ship_by
    )
    assert create.body == {
        "query": CREATE_MUTATION,
        "variables": {
            "order": {
                "currency": "EUR",
                "lineItems": [
                    {
                        "variantId": variants[line["offer_sku"]],
                        "quantity": line["quantity"],
                        "priceSet": _money(Decimal(str(line["price_unit"]))),
                    }
                    for line in mirakl["order_lines"]
                ],
                "shippingAddress": _address(order.shipping_address),
                "billingAddress": _address(order.billing_address),
                "shippingLines": [
                    {
                        "title": order.shipping_method,
                        "code": "sfd",
                        "source": "sandbox",
                        "priceSet": _money(shipping),
                    }
                ],
                "financialStatus": "PAID",
                "transactions": [
                    {
                        "kind": "SALE",
                        "status": "SUCCESS",
                        "gateway": "sandbox",
                        "amountSet": _money(total),
                    }
                ],
                "sourceName": "sandbox",
                "sourceIdentifier": reference,
                "tags": ["sfd", "sandbox"],
                "note": note,
                "customAttributes": attributes,
            },
            "options": {
                "sendReceipt": False,
                "sendFulfillmentReceipt": False,
                "inventoryBehaviour": "DECREMENT_OBEYING_POLICY",
            },
        },
    }
    # Each SKU was looked up once, by an exact `sku:` search.
    lookups = hub.shop.calls("productVariants")
    assert all(r.body["query"] == VARIANT_QUERY for r in lookups)
    assert sorted(r.body["variables"]["query"] for r in lookups) == sorted(
        {f"sku:'{line['offer_sku']}'" for line in mirakl["order_lines"]}
    )
    shop_order = hub.shop_order(reference)
    assert shop_order["displayFinancialStatus"] == "PAID"
    assert (await hub.order(reference)).store_reference == shop_order["legacyResourceId"]


async def test_no_field_that_would_make_shopify_write_to_a_buyer_is_set(hub: ShopifyHub) -> None:
    references = await hub.orders_on_sale(4)
    await hub.sync()
    for reference in references:
        hub.shop.fulfil(hub.shop_id(reference), number=f"6A{reference}")
    await hub.sync()

    assert len(hub.shop.orders) == 4
    for create in hub.shop.calls("orderCreate"):
        order = create.body["variables"]["order"]
        # `email` is mailed receipts and shipping updates, `phone` gets SMS; a customer
        # record would be both: none is set.
        assert {"email", "phone", "customer", "customerId"}.isdisjoint(order)
        assert create.body["variables"]["options"]["sendReceipt"] is False
        assert create.body["variables"]["options"]["sendFulfillmentReceipt"] is False
    assert hub.shop.customer_emails == []


@pytest.mark.parametrize(
    "hub_options", [{"shop_settings": "customer_emails = true\ninventory = 'bypass'"}]
)
async def test_customer_emails_and_inventory_are_the_merchants_choice(hub: ShopifyHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    await hub.sync()
    [create] = hub.shop.calls("orderCreate")
    order = await hub.order(reference)
    assert order.billing_address is not None
    assert create.body["variables"]["order"].get("email") == (order.billing_address.email or None)
    assert create.body["variables"]["options"]["inventoryBehaviour"] == "BYPASS"
    # Even so, sfd never asks Shopify to send its receipts.
    assert create.body["variables"]["options"]["sendReceipt"] is False


async def test_an_unknown_sku_fails_the_push_naming_it_then_retry_push(hub: ShopifyHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    sku = hub.marketplace.order(reference)["order_lines"][0]["offer_sku"]
    hub.shop.remove_variant(sku)
    await hub.sync()

    order = await hub.order(reference)
    assert hub.shop.orders == {}
    assert hub.shop.calls("orderCreate") == []
    assert order.acknowledgment_status == "error"
    assert f"no product variant with SKU {sku!r}" in (order.acknowledgment_message or "")
    await hub.sync()
    assert hub.shop.calls("orderCreate") == []

    hub.shop.add_variant(sku, "Back in the catalogue", "19.90")
    retried = await asyncio.to_thread(
        run_cli, hub.config_path, "orders", "retry-push", str(order.id)
    )
    assert retried.returncode == 0, retried.stderr
    await until(lambda: len(hub.shop.orders_for(reference)) == 1)
    await until(lambda: hub.pusher.status.state == "idle")
    order = await hub.order(reference)
    assert order.acknowledgment_status == "success"
    assert order.store_reference == str(hub.shop_id(reference))


async def test_a_user_error_rejects_the_order_with_shopifys_message(hub: ShopifyHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    for variant in hub.shop.variants.values():
        variant["inventoryQuantity"] = 0
    await hub.sync()

    order = await hub.order(reference)
    assert hub.shop.orders == {}
    assert order.acknowledgment_status == "error"
    assert "Unable to reserve inventory" in (order.acknowledgment_message or "")
    assert "order.lineItems.0.quantity" in (order.acknowledgment_message or "")


# -- throttling -----------------------------------------------------------------------------


@pytest.fixture
def small_bucket() -> SandboxShopify:
    # A bucket that holds three calls, refilled in a few hundredths of a second.
    return SandboxShopify(TOKEN, bucket_size=40.0, restore_rate=400.0)


async def test_the_cost_bucket_is_honoured_without_being_throttled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_bucket: SandboxShopify
) -> None:
    # The read-back's page must fit the bucket: 2 + 1 order of 32 points.
    async with shop_hub(SHOPIFY, tmp_path, monkeypatch, {}, shop=small_bucket) as running:
        running.pusher.connector.page_size = 1  # type: ignore[union-attr]
        small_bucket.throttled = 0  # the start-up sync's page was too big for this bucket
        references = await running.orders_on_sale(6)
        await running.sync()
        assert running.pusher.status.condition == "ok", running.pusher.status.last_error
        for reference in references:
            assert len(small_bucket.orders_for(reference)) == 1
        # Each call waited for the points it needed: Shopify never had to say THROTTLED.
        assert small_bucket.throttled == 0
        assert len(small_bucket.calls("orderCreate")) == 6


async def test_a_throttled_answer_is_rate_limited_with_the_wait_it_implies(
    shopify: SandboxShopify,
) -> None:
    shopify.restore_rate = 10.0
    async with run_shopify(shopify) as shop_url:
        connector = ShopifyConnector(ShopifySettings(shop_url=shop_url, access_token=TOKEN))
        try:
            shopify.drain()
            with pytest.raises(RateLimited) as caught:
                await connector.get_order("1")
        finally:
            await connector.aclose()
    # The order query asks for 541 points; the bucket had (almost) none, 10 come a second.
    assert caught.value.retry_after is not None
    assert 53.0 <= caught.value.retry_after <= 54.1
    assert "throttled" in str(caught.value)
    assert shopify.throttled == 1


async def test_a_throttled_sync_is_retried_after_the_wait_and_creates_once(
    hub: ShopifyHub,
) -> None:
    [reference] = await hub.orders_on_sale(1)
    hub.shop.restore_rate = 1.0
    hub.shop.drain()
    await hub.sync()
    assert hub.pusher.status.condition == "failing"
    assert "throttled" in (hub.pusher.status.last_error or "")
    assert hub.shop.orders == {}
    hub.shop.restore_rate = 100_000.0
    await hub.sync()
    assert hub.pusher.status.condition == "ok"
    assert len(hub.shop.orders_for(reference)) == 1


# -- reading back ---------------------------------------------------------------------------


async def ship_tickets(hub: ShopifyHub, order_id: int) -> list[Ticket]:
    """The order's ship operations, whatever their state, oldest first."""
    _, tickets = await hub.storage.operations.tickets(1)
    return [t for t in reversed(tickets) if t.order_id == order_id and t.kind == "ship"]


async def test_a_partial_fulfilment_becomes_a_partial_ship_operation(hub: ShopifyHub) -> None:
    references = await hub.orders_on_sale(8)
    reference = next(
        r
        for r in references
        if sum(line["quantity"] for line in hub.marketplace.order(r)["order_lines"]) >= 2
    )
    await hub.sync()
    order = await hub.order(reference)
    first = order.items[0]
    hub.shop.fulfil(hub.shop_id(reference), lines={first.reference: 1}, number="6A01")
    await hub.sync()

    [part] = await ship_tickets(hub, order.id)
    assert part.payload["items"] == [[first.id, 1]]
    assert part.payload["tracking_number"] == "6A01"
    # Mirakl ships whole orders only: it refuses the part (the ticket fails, with its
    # message), and the rest waits in the shop.
    for _ in range(500):
        [part] = await ship_tickets(hub, order.id)
        if part.state not in ("scheduled", "running"):
            break
        await asyncio.sleep(0.01)
    assert part.state == "failed"
    assert "partial shipment" in (part.reason or "")
    await hub.sync()
    assert len(await ship_tickets(hub, order.id)) == 1

    hub.shop.fulfil(hub.shop_id(reference), number="6A02")
    await hub.sync()
    # The refused part sent nothing: the end ships the whole order, with the last tracking.
    [last] = await hub.storage.operations.shipments(order.id)
    assert last.payload["tracking_number"] == "6A02"
    assert not last.payload.get("items")
    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))


async def test_the_read_back_asks_only_for_sfds_orders_since_the_cursor(hub: ShopifyHub) -> None:
    await hub.orders_on_sale(1)
    await hub.sync()
    await hub.sync()
    queries = [r.body["variables"]["query"] for r in hub.shop.calls("orders")]
    assert queries[0] == "tag:sfd" or queries[0].startswith("tag:sfd updated_at:>'")
    assert queries[-1].startswith("tag:sfd updated_at:>'")


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"shop_url": "http://my-shop.myshopify.com"}, "https:// is required"),
        ({"inventory": "decrement"}, "inventory: expected one of"),
        ({"api_version": "latest"}, "api_version: expected a version"),
    ],
)
def test_unsafe_or_unknown_settings_are_refused(changes: dict[str, str], said: str) -> None:
    raw = {"shop_url": "https://my-shop.myshopify.com", "access_token": TOKEN} | changes
    with pytest.raises(msgspec.ValidationError, match=said):
        msgspec.convert(raw, ShopifySettings)
