"""The PrestaShop connector against the fake shop over real HTTP, and its settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from sfd.config import ConfigError, parse_config
from sfd.connectors.base import ConnectorError, Rejected
from sfd.connectors.prestashop import PrestaShopConnector
from sfd.connectors.settings import PrestaShopSettings
from sfd.connectors.shop import CreateUncertain, PushLine, PushOrder, ShopStatus, Steps
from sfd.domain import Address
from sfd.sandbox.prestashop import (
    PAYING_CARRIER,
    STATE_PAYMENT_ACCEPTED,
    STATE_PAYMENT_ERROR,
    SandboxPrestaShop,
    run_prestashop,
)
from tests.push.conftest import assert_refused_unquoted

PS_KEY = "PSKEY0123456789ABCDEFGHIJKLMNOPQ"


def order(
    reference: str = "SBX0000001-A", sku: str = "SKU-0001", *, country: str = "FR", **kw: Any
) -> PushOrder:
    address = Address(
        first_name="Léa",
        last_name="Martin",
        street="3 rue des Lilas",
        postal_code="69001",
        city="Lyon",
        country=country,
        email="lea-alias@marketplace.example",
        **kw,
    )
    return PushOrder(
        order_id=7,
        marketplace="decathlon",
        reference=reference,
        currency="EUR",
        billing=address,
        shipping=address,
        lines=(PushLine(sku=sku, name="Lampe", quantity=2, price=Decimal("34.99")),),
        shipping_method="Colissimo",
        shipping_amount=Decimal("3.90"),
    )


@pytest.fixture
async def fake() -> AsyncIterator[tuple[SandboxPrestaShop, str]]:
    shop = SandboxPrestaShop(PS_KEY)
    async with run_prestashop(shop) as url:
        yield shop, url


def connector(
    url: str, key: str = PS_KEY, *, per_page: int = 100, **settings: Any
) -> PrestaShopConnector:
    values: dict[str, Any] = {
        "base_url": url,
        "api_key": key,
        "payment_module": "ps_wirepayment",
        "carrier_id": 1,
        "timezone": "UTC",
    }
    return PrestaShopConnector(
        PrestaShopSettings(**(values | settings)), name="main", per_page=per_page
    )


async def test_the_create_chain_sends_these_xml_bodies_and_ends_paid_without_email(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url)) as ps:
        shop_id = int(await ps.create_order(order()))
    posts = [(r.resource, r.body) for r in shop.requests if r.method == "POST"]
    assert [p[0] for p in posts] == [
        "customers",
        "addresses",
        "carts",
        "messages",
        "specific_prices",
        "orders",
        "order_histories",
    ]
    bodies = dict(posts)
    customer = bodies["customers"]
    assert customer is not None
    assert customer["email"].endswith("@sfd.invalid"), "no email the shop could write to"
    assert (customer["firstname"], customer["lastname"], customer["is_guest"]) == (
        "Léa",
        "Martin",
        "1",
    )
    assert bodies["addresses"] == bodies["addresses"] | {
        "id_country": "1",
        "id_state": "0",
        "alias": "sfd 7 delivery",
        "address1": "3 rue des Lilas",
        "postcode": "69001",
        "city": "Lyon",
        "other": "decathlon order SBX0000001-A",
    }
    cart = bodies["carts"]
    assert cart is not None
    assert cart["associations"]["cart_rows"] == [
        {
            "id_product": "1",
            "id_product_attribute": "0",
            "id_address_delivery": "1",
            "quantity": "2",
        }
    ]
    assert (cart["id_carrier"], cart["id_currency"]) == ("1", "1")
    message = bodies["messages"]
    assert message is not None and message["private"] == "1"
    assert message["message"].startswith("sfd order 7: decathlon order SBX0000001-A")
    price = bodies["specific_prices"]
    assert price is not None
    # 34.99 with its 20% tax: PrestaShop is given the price without it.
    assert (price["price"], price["id_cart"], price["id_product"]) == ("29.158333", "1", "1")
    placed = bodies["orders"]
    assert placed is not None
    assert (placed["module"], placed["payment"], placed["total_paid"]) == (
        "ps_wirepayment",
        "decathlon",
        "69.98",
    )
    assert bodies["order_histories"] == {"id_order": str(shop_id), "id_order_state": "2"}
    assert all("sendemail" not in r.query for r in shop.requests)
    # The order went from PrestaShop's own initial state to paid, never to payment error.
    assert shop.states_of(shop_id) == [11, STATE_PAYMENT_ACCEPTED]
    assert shop.orders[shop_id]["current_state"] == STATE_PAYMENT_ACCEPTED
    assert shop.emails == [], "moved to paid without sendemail: PrestaShop mailed no one"


async def test_prices_are_given_without_tax_so_the_total_never_trips_payment_error(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    odd = (Decimal("0.01"), Decimal("9.99"), Decimal("123.45"), Decimal("19.9"), Decimal("7.77"))
    async with aclosing(connector(url)) as ps:
        for n, price in enumerate(odd):
            pushed = order(reference=f"R{n}", country="BE")
            line = PushLine(sku=f"SKU-{n + 1:04d}", name="x", quantity=3, price=price)
            pushed = PushOrder(**{**pushed.__dict__, "order_id": n, "lines": (line,)})
            shop_id = int(await ps.create_order(pushed))
            assert Decimal(shop.orders[shop_id]["total_paid"]) == price * 3
            assert STATE_PAYMENT_ERROR not in shop.states_of(shop_id)


async def test_a_paying_carrier_is_refused_before_anything_is_written(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url, carrier_id=PAYING_CARRIER)) as ps:
        with pytest.raises(ConnectorError, match=r"carrier 2 \(Colissimo\) is not free"):
            await ps.create_order(order())
    assert [r for r in shop.requests if r.method == "POST"] == []


async def test_the_total_mismatch_trap_is_real_in_the_sandbox(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    """What the connector avoids: a paying carrier's cost makes PrestaShop's total differ."""
    shop, url = fake
    async with aclosing(connector(url)) as ps:
        await ps.create_order(order())
    [cart_id] = shop.tables["carts"]
    shop.tables["carts"][cart_id]["id_carrier"] = PAYING_CARRIER
    assert shop.cart_total(cart_id) == Decimal("69.98") + Decimal("4.90")


async def test_an_unknown_sku_creates_nothing_and_names_the_sku(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url)) as ps:
        with pytest.raises(Rejected, match=r"no product or combination .*'NOPE'.*SBX0000001-A"):
            await ps.create_order(order(sku="NOPE"))
    assert [r for r in shop.requests if r.method == "POST"] == []


async def test_a_combination_is_found_by_its_reference(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    parent = shop.add_product("TEE", "T-shirt", "12.50")
    variant = shop.add_combination("TEE-M", parent)
    async with aclosing(connector(url)) as ps:
        shop_id = int(await ps.create_order(order(sku="TEE-M")))
    [cart] = shop.tables["carts"].values()
    [row] = cart["associations"]["cart_rows"]
    assert (row["id_product"], row["id_product_attribute"]) == (str(parent), str(variant))
    assert shop.orders[shop_id]["current_state"] == STATE_PAYMENT_ACCEPTED


async def test_a_country_with_states_needs_a_known_state(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url)) as ps:
        with pytest.raises(Rejected, match=r"needs a state for country US .*'Atlantis'.*province"):
            await ps.create_order(order(country="US", province="Atlantis"))
        shop_id = int(await ps.create_order(order(reference="R-US", country="US", province="NY")))
    address = shop.tables["addresses"][int(shop.orders[shop_id]["id_address_delivery"])]
    assert address["id_state"] == str(shop.find("states", iso_code="NY")[0]["id"])


async def test_a_module_not_installed_is_refused_with_the_setting_named(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url, payment_module="sfd_missing")) as ps:
        with pytest.raises(Rejected, match=r"not installed.*payment_module is 'sfd_missing'"):
            await ps.create_order(order())
    assert shop.orders == {}


async def test_with_customer_emails_on_the_customer_gets_the_marketplace_alias(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url, customer_emails=True)) as ps:
        await ps.create_order(order())
        second = order(reference="SECOND")
        await ps.create_order(PushOrder(**{**second.__dict__, "order_id": 8}))
    [customer] = shop.tables["customers"].values()
    assert customer["email"] == "lea-alias@marketplace.example"
    assert len(shop.orders) == 2, "the same buyer is one customer with two orders"


async def test_a_401_is_auth_failed_and_the_key_never_quoted(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    _, url = fake
    async with aclosing(connector(url, key="WRONGKEY0123456789")) as ps:
        await assert_refused_unquoted(ps.create_order(order()), "WRONGKEY0123456789")


async def test_a_crash_in_the_middle_of_the_chain_resumes_it(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    saved: dict[str, str] = {}

    async def save(done: dict[str, str]) -> None:
        saved.clear()
        saved.update(done)

    # The cart's answer is lost: the chain stops there, its id unknown.
    shop.drop_next(1, operation="carts.create")
    async with aclosing(connector(url)) as ps:
        with pytest.raises(CreateUncertain):
            await ps.create_order_in_steps(order(), Steps({}, save))
        assert set(saved) == {"customer", "delivery", "invoice"}
        # The next attempt, as after a restart: search first, then resume from the steps.
        steps = Steps(saved, save)
        assert await ps.find_order_in_steps(order(), None, steps) is None
        shop_id = await ps.create_order_in_steps(order(), steps)
    for table in ("customers", "addresses", "carts", "messages", "specific_prices", "orders"):
        assert len(shop.tables[table]) == 1, table
    assert saved["order"] == shop_id and saved["paid"]
    assert shop.orders[int(shop_id)]["current_state"] == STATE_PAYMENT_ACCEPTED


async def test_an_order_whose_answer_was_lost_is_found_and_finished(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    saved: dict[str, str] = {}

    async def save(done: dict[str, str]) -> None:
        saved.update(done)

    shop.drop_next(1, operation="orders.create")
    async with aclosing(connector(url)) as ps:
        with pytest.raises(CreateUncertain):
            await ps.create_order_in_steps(order(), Steps({}, save))
        assert "order" not in saved
        [made] = shop.orders
        assert shop.orders[made]["current_state"] == 11, "made, not yet moved to paid"
        # Found through the message alone too, as a connector without steps would.
        assert await ps.find_order(order()) == str(made)
        found = await ps.find_order_in_steps(order(), None, Steps(saved, save))
    assert found == str(made)
    assert len(shop.orders) == 1
    assert shop.states_of(made) == [11, STATE_PAYMENT_ACCEPTED], "moved to paid once"


async def test_changed_orders_are_read_with_prestashops_filter_and_tracking(
    fake: tuple[SandboxPrestaShop, str],
) -> None:
    shop, url = fake
    async with aclosing(connector(url, per_page=2)) as ps:
        ids = []
        for n in range(4):
            pushed = PushOrder(**{**order(reference=f"R{n}").__dict__, "order_id": n})
            ids.append(int(await ps.create_order(pushed)))
        shop.ship(ids[0], "6A0001")
        shop.ship(ids[1], "6A0002")
        shop.cancel(ids[2])
        read = [o async for page in ps.changed_orders(None) for o in page]
        later = [
            o
            async for page in ps.changed_orders(datetime.now(UTC) + timedelta(minutes=1))
            for o in page
        ]
    status = {o.shop_id: o.status for o in read}
    assert status == {
        str(ids[0]): ShopStatus.COMPLETED,
        str(ids[1]): ShopStatus.COMPLETED,
        str(ids[2]): ShopStatus.CANCELLED,
        str(ids[3]): ShopStatus.OTHER,
    }
    shipped = next(o for o in read if o.shop_id == str(ids[0]))
    assert shipped.tracking is not None
    assert (shipped.tracking.tracking_number, shipped.tracking.carrier) == ("6A0001", "Colissimo")
    assert shipped.tracking.tracking_link.endswith("code=6A0001")
    assert later == []
    dated = [r.query for r in shop.calls("orders.list") if "filter[date_upd]" in r.query]
    assert dated and all(q["filter[date_upd]"].startswith(">[") and q["date"] == "1" for q in dated)
    assert [r.query["limit"] for r in shop.calls("orders.list")][:3] == ["0,2", "2,2", "4,2"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            'base_url = "http://shop.example"',
            "shops[0].settings: base_url: the webservice key travels as HTTP Basic auth",
        ),
        (
            'base_url = "https://shop.example"\nshipped_states = [4, 6]',
            "shops[0].settings: shipped_states and cancelled_states: state 6 is in both",
        ),
        (
            'base_url = "https://shop.example"\ntimezone = "Mars/Olympus"',
            "shops[0].settings: timezone: unknown time zone 'Mars/Olympus'",
        ),
    ],
)
def test_shop_settings_are_checked_with_a_precise_message(settings: str, message: str) -> None:
    text = f"""
[[stores]]
id = 1
name = "One"
[[shops]]
name = "ps"
store = 1
connector = "prestashop"
[shops.settings]
{settings}
api_key = "KEY"
payment_module = "ps_wirepayment"
carrier_id = 1
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "sfd.toml", {})
    assert any(message in line for line in caught.value.lines()), caught.value.lines()
