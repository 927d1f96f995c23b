"""The WooCommerce connector against the fake shop, and its settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from sfd.config import ConfigError, parse_config
from sfd.connectors.base import Rejected
from sfd.connectors.settings import WooCommerceSettings
from sfd.connectors.shop import PushLine, PushOrder, ShopStatus
from sfd.connectors.woocommerce import WooCommerceConnector
from sfd.domain import Address
from sfd.sandbox.woocommerce import SandboxWooCommerce, run_woocommerce
from tests.push.conftest import SHORT_RETRY, WC_KEY, WC_SECRET, assert_refused_unquoted


def order(reference: str = "SBX0000001-A", sku: str = "SKU-0001") -> PushOrder:
    return PushOrder(
        order_id=7,
        marketplace="decathlon",
        reference=reference,
        currency="EUR",
        billing=Address(first_name="Léa", last_name="Martin", email="lea@example.invalid"),
        shipping=Address(first_name="Léa", last_name="Martin", relay_id="012345"),
        lines=(PushLine(sku=sku, name="Lampe", quantity=2, price=Decimal("34.99")),),
        shipping_method="Livraison en point relais",
        shipping_amount=Decimal("3.90"),
        relay_id="012345",
        vat_number="FR12345678901",
    )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[SandboxWooCommerce, str]]:
    shop = SandboxWooCommerce(WC_KEY, WC_SECRET)
    async with run_woocommerce(shop) as url:
        yield shop, url


def connector(
    url: str, secret: str = WC_SECRET, *, customer_emails: bool = False, **kwargs: int
) -> WooCommerceConnector:
    settings = WooCommerceSettings(
        base_url=url,
        consumer_key=WC_KEY,
        consumer_secret=secret,
        customer_emails=customer_emails,
    )
    return WooCommerceConnector(settings, name="main", retry=SHORT_RETRY, **kwargs)


async def test_by_default_the_buyers_email_is_kept_out_of_billing_so_woocommerce_mails_nothing(
    fake: tuple[SandboxWooCommerce, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url)) as wc:
        shop_id = int(await wc.create_order(order()))
    created = shop.orders[shop_id]
    assert created["billing"].get("email", "") == ""
    assert created["billing"]["last_name"] == "Martin"
    meta = {m["key"]: m["value"] for m in created["meta_data"]}
    assert meta["_sfd_buyer_email"] == "lea@example.invalid"
    shop.complete(shop_id, tracking_number="6A123")
    assert shop.customer_emails == []


async def test_with_customer_emails_on_the_billing_carries_the_buyers_email(
    fake: tuple[SandboxWooCommerce, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url, customer_emails=True)) as wc:
        shop_id = int(await wc.create_order(order()))
    created = shop.orders[shop_id]
    assert created["billing"]["email"] == "lea@example.invalid"
    assert "_sfd_buyer_email" not in {m["key"] for m in created["meta_data"]}
    assert shop.customer_emails == [(shop_id, "lea@example.invalid", "customer_processing_order")]


async def test_a_variation_sku_is_sent_as_its_parent_product_and_variation(
    fake: tuple[SandboxWooCommerce, str],
) -> None:
    shop, url = fake
    parent = shop.add_product("TEE", "T-shirt", "15.00")
    variation = shop.add_product("TEE-M", "T-shirt M", "15.00", parent_id=parent)
    async with aclosing(connector(url)) as wc:
        shop_id = await wc.create_order(order(sku="TEE-M"))
    [line] = shop.orders[int(shop_id)]["line_items"]
    assert (line["product_id"], line["variation_id"], line["quantity"]) == (parent, variation, 2)
    assert line["total"] == "69.98"
    meta = {m["key"]: m["value"] for m in shop.orders[int(shop_id)]["meta_data"]}
    assert meta["sfd_relay_point_id"] == "012345"
    assert meta["sfd_buyer_vat_number"] == "FR12345678901"


async def test_an_unknown_sku_creates_nothing_and_names_the_sku(
    fake: tuple[SandboxWooCommerce, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url)) as wc:
        with pytest.raises(Rejected, match=r"no product with SKU 'NOPE'.*SBX0000001-A"):
            await wc.create_order(order(sku="NOPE"))
    assert shop.orders == {}
    assert shop.calls("orders.create") == []


async def test_refused_keys_are_auth_failed_and_never_quoted(
    fake: tuple[SandboxWooCommerce, str],
) -> None:
    _, url = fake
    async with aclosing(connector(url, secret="cs_not_the_secret")) as wc:
        await assert_refused_unquoted(wc.find_order(order()), "cs_not_the_secret", WC_KEY)


async def test_an_order_is_found_by_its_meta_data_when_search_misses_it(
    fake: tuple[SandboxWooCommerce, str],
) -> None:
    shop, url = fake
    started = datetime.now(UTC)
    async with aclosing(connector(url, per_page=2)) as wc:
        for n in range(3):
            await wc.create_order(order(reference=f"OTHER-{n}"))
        wanted = await wc.create_order(order())
        assert await wc.find_order(order(), started) == wanted
        assert await wc.find_order(order(reference="NEVER-PUSHED"), started) is None
    listed = shop.calls("orders.list")
    assert any("after" in r.query for r in listed)


async def test_completed_and_cancelled_orders_are_read_page_by_page_with_tracking(
    fake: tuple[SandboxWooCommerce, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url, per_page=2)) as wc:
        ids = [await wc.create_order(order(reference=f"R{n}")) for n in range(5)]
        for shop_id in ids[:3]:
            shop.complete(int(shop_id), tracking_number=f"T{shop_id}", provider="DPD")
        shop.cancel(int(ids[3]))
        read = [o async for page in wc.changed_orders(None) for o in page]
        since = datetime.now(UTC) + timedelta(minutes=1)
        later = [o async for page in wc.changed_orders(since) for o in page]
    assert [(o.shop_id, o.status) for o in read] == [
        *((i, ShopStatus.COMPLETED) for i in ids[:3]),
        (ids[3], ShopStatus.CANCELLED),
    ]
    assert [o.tracking.tracking_number if o.tracking else None for o in read] == [
        *(f"T{i}" for i in ids[:3]),
        None,
    ]
    assert read[0].tracking is not None and read[0].tracking.carrier == "DPD"
    assert read[0].marketplace_reference == "R0" and read[0].sfd_order_id == 7
    pages = [r.query["page"] for r in shop.calls("orders.list") if r.query["status"] == "completed"]
    assert pages[:2] == ["1", "2"]
    assert later == []


def woocommerce_toml(settings: str, *, shop_lines: str = "") -> str:
    """A store and a WooCommerce shop `main` with these `[shops.settings]` lines."""
    return f"""
[[stores]]
id = 1
name = "One"
[[shops]]
name = "main"
store = 1
connector = "woocommerce"
{shop_lines}
[shops.settings]
{settings}
"""


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            'base_url = "http://shop.example"',
            "shops[0].settings: base_url: the consumer key and secret travel as HTTP Basic auth",
        ),
        (
            'base_url = "https://shop.example"\norder_status = "completed"',
            "shops[0].settings: order_status: expected one of 'pending', 'processing', "
            "'on-hold', got 'completed'",
        ),
        ('base_url = "ftp://shop.example"', "shops[0].settings.base_url: expected an http(s)"),
    ],
)
def test_shop_settings_are_checked_with_a_precise_message(settings: str, message: str) -> None:
    text = woocommerce_toml(f'{settings}\nconsumer_key = "ck"\nconsumer_secret = "cs"')
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "sfd.toml", {})
    assert any(message in line for line in caught.value.lines()), caught.value.lines()


def test_plain_http_is_accepted_on_the_loopback_and_the_tracking_wait_is_a_duration() -> None:
    text = woocommerce_toml(
        'base_url = "http://127.0.0.1:8080"\nconsumer_key = "ck_live"\nconsumer_secret = "cs_live"',
        shop_lines='tracking_wait = "36h"',
    )
    config = parse_config(text, "sfd.toml", {})
    assert config.shops[0].tracking_wait == 36 * 3600
    assert config.shops[0].sync_interval == 600
    assert {"ck_live", "cs_live"} <= config.secrets
