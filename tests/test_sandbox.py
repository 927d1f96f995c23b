"""The Mirakl connector against the sandbox marketplace, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from sfd.connectors.base import (
    AuthFailed,
    MarketplaceConnector,
    OrderPage,
    RateLimited,
    ShipmentRequest,
    Transient,
)
from sfd.connectors.mirakl import MiraklConnector
from sfd.connectors.settings import MiraklSettings
from sfd.domain import MarketplaceOrder, OrderStatus
from sfd.sandbox import SandboxMarketplace, run_sandbox

KEY = "sandbox-key"
START = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@asynccontextmanager
async def connected(
    marketplace: SandboxMarketplace, api_key: str = KEY
) -> AsyncIterator[MiraklConnector]:
    """The sandbox served on a free port, and a connector pointed at it."""
    async with run_sandbox(marketplace) as url:
        connector = MiraklConnector(MiraklSettings(base_url=url, api_key=api_key, shop_id="1"))
        try:
            yield connector
        finally:
            await connector.aclose()


async def fetch(connector: MarketplaceConnector, since: datetime | None = None) -> list[OrderPage]:
    return [page async for page in connector.fetch_orders(since)]


def orders_of(pages: list[OrderPage]) -> list[MarketplaceOrder]:
    return [order for page in pages for order in page.orders]


async def test_lists_250_orders_across_pages_none_twice_none_missing() -> None:
    marketplace = SandboxMarketplace(KEY, seed=7, clock=FakeClock())
    created = marketplace.add_orders(250, unpaid_ratio=0.0)
    async with connected(marketplace) as connector:
        pages = await fetch(connector)

    references = [o.reference for o in orders_of(pages)]
    assert [len(p.orders) for p in pages] == [100, 100, 50]
    assert len(references) == len(set(references)) == 250
    assert set(references) == set(created)
    assert all(p.skipped == [] for p in pages)
    listings = marketplace.calls_to("OR11")
    assert [c.query["offset"] for c in listings] == ["0", "100", "200"]
    assert all(c.query["shop_id"] == "1" and c.responded for c in listings)


async def test_orders_waiting_for_payment_are_read_as_such() -> None:
    marketplace = SandboxMarketplace(KEY, seed=3, clock=FakeClock())
    created = marketplace.add_orders(40, unpaid_ratio=0.5)
    unpaid = {oid for oid in created if marketplace.state(oid) == "WAITING_DEBIT_PAYMENT"}
    async with connected(marketplace) as connector:
        pages = await fetch(connector)

    assert unpaid
    orders = orders_of(pages)
    assert {o.reference for o in orders} == set(created)
    assert {o.reference for o in orders if o.payment_pending} == unpaid
    assert all(p.skipped == [] for p in pages)


async def test_orders_read_like_real_ones() -> None:
    marketplace = SandboxMarketplace(KEY, seed=11, clock=FakeClock())
    marketplace.add_orders(60, waiting_acceptance_ratio=0.0, relay_ratio=0.5, b2b_ratio=0.5)
    async with connected(marketplace) as connector:
        orders = orders_of(await fetch(connector))

    assert all(o.status is OrderStatus.WAITING_SHIPMENT and o.currency == "EUR" for o in orders)
    assert all(1 <= len(o.items) <= 3 for o in orders)
    assert all(o.items[0].reference.startswith("SKU-0") for o in orders)
    assert all(o.total_amount == o.product_amount + o.shipping_amount for o in orders)
    assert all(o.latest_ship_date and o.latest_ship_date > o.created_at for o in orders)
    assert all(o.shipping_address.city and o.billing_address.last_name for o in orders)
    relays = [o for o in orders if o.shipping_address.relay_id]
    companies = [o for o in orders if "vat-number" in o.additional_fields]
    assert relays
    assert companies
    assert all(o.billing_address.company for o in companies)


async def test_the_same_seed_gives_the_same_orders() -> None:
    clock = FakeClock()
    first, second = (
        SandboxMarketplace(KEY, seed=5, clock=clock),
        SandboxMarketplace(KEY, seed=5, clock=clock),
    )
    ids = first.add_orders(20)

    assert second.add_orders(20) == ids
    assert [first.orders[i] for i in ids] == [second.orders[i] for i in ids]


async def test_accept_moves_the_order_to_shipping_and_reveals_the_address() -> None:
    clock = FakeClock()
    marketplace = SandboxMarketplace(KEY, seed=1, clock=clock)
    [order_id] = marketplace.add_orders(1, waiting_acceptance_ratio=1.0)
    async with connected(marketplace) as connector:
        [before] = orders_of(await fetch(connector))
        clock.advance(30)

        await connector.accept(order_id)

        assert marketplace.state(order_id) == "SHIPPING"
        assert await connector.order_status(order_id) is OrderStatus.WAITING_SHIPMENT
        [after] = orders_of(await fetch(connector, before.updated_at))

    assert before.status is OrderStatus.WAITING_STORE_ACCEPTANCE
    assert before.shipping_address.street == ""  # Mirakl hides it until acceptance
    assert after.status is OrderStatus.WAITING_SHIPMENT
    assert after.updated_at == START + timedelta(seconds=30)
    assert after.shipping_address.street != ""
    [accept] = marketplace.calls_to("OR21", order_id)
    assert accept.body == {
        "order_lines": [{"id": i.channel_reference, "accepted": True} for i in before.items]
    }


async def test_refuse_moves_the_order_to_refused() -> None:
    marketplace = SandboxMarketplace(KEY, seed=1, clock=FakeClock())
    [order_id] = marketplace.add_orders(1, waiting_acceptance_ratio=1.0)
    async with connected(marketplace) as connector:
        await connector.refuse(order_id)

        assert await connector.order_status(order_id) is OrderStatus.REFUSED
    assert marketplace.state(order_id) == "REFUSED"


async def test_shipment_is_confirmed_only_after_the_marketplace_delay() -> None:
    clock = FakeClock()
    marketplace = SandboxMarketplace(KEY, seed=2, clock=clock, ship_confirm_delay=120)
    [order_id] = marketplace.add_orders(1, waiting_acceptance_ratio=0.0)
    async with connected(marketplace) as connector:
        await connector.ship(order_id, ShipmentRequest(carrier="Colissimo", tracking_number="6A42"))

        assert await connector.order_status(order_id) is OrderStatus.WAITING_SHIPMENT
        clock.advance(119)
        assert await connector.order_status(order_id) is OrderStatus.WAITING_SHIPMENT
        clock.advance(1)
        assert await connector.order_status(order_id) is OrderStatus.SHIPPED
        [order] = orders_of(await fetch(connector, START))

    assert order.updated_at == START + timedelta(seconds=120)
    assert order.shipment is not None
    assert order.shipment.carrier == "COLISSIMO"
    assert order.shipment.tracking_number == "6A42"
    assert order.shipment.tracking_link.endswith("6A42")
    [tracking] = marketplace.calls_to("OR23", order_id)
    assert tracking.body == {"carrier_code": "COLISSIMO", "tracking_number": "6A42"}


async def test_shipping_again_after_the_order_shipped_is_a_success() -> None:
    marketplace = SandboxMarketplace(KEY, seed=2, clock=FakeClock())
    [order_id] = marketplace.add_orders(1, waiting_acceptance_ratio=0.0)
    shipment = ShipmentRequest(carrier="Mondial Relay", tracking_number="MR9")
    async with connected(marketplace) as connector:
        await connector.ship(order_id, shipment)
        await connector.ship(order_id, shipment)

    assert marketplace.state(order_id) == "SHIPPED"
    assert [c.status for c in marketplace.calls_to("OR24", order_id)] == [204, 400]
    assert len(marketplace.calls_to("SH21")) == 1


async def test_a_shipment_whose_answer_was_lost_is_retried_safely() -> None:
    marketplace = SandboxMarketplace(KEY, seed=2, clock=FakeClock())
    [order_id] = marketplace.add_orders(1, waiting_acceptance_ratio=0.0)
    # OR24 takes effect but no answer comes back (aiohttp itself may resend it once).
    marketplace.drop_next(5, operation="OR24")
    shipment = ShipmentRequest(carrier="DPD", tracking_number="250012345")
    async with connected(marketplace) as connector:
        with pytest.raises(Transient, match="OR24"):
            await connector.ship(order_id, shipment)
        assert marketplace.state(order_id) == "SHIPPED"
        marketplace.clear_failures()

        await connector.ship(order_id, shipment)  # the retry: Mirakl says no, the order shipped

    *lost, last = marketplace.calls_to("OR24", order_id)
    assert lost
    assert not any(c.responded for c in lost)
    assert (last.responded, last.status) == (True, 400)


async def test_a_cancellation_on_the_marketplace_shows_in_the_next_fetch() -> None:
    clock = FakeClock()
    marketplace = SandboxMarketplace(KEY, seed=4, clock=clock)
    created = marketplace.add_orders(30, waiting_acceptance_ratio=0.0)
    async with connected(marketplace) as connector:
        first = orders_of(await fetch(connector))
        cursor = max(o.updated_at for o in first)
        clock.advance(600)
        marketplace.cancel(created[12])

        later = orders_of(await fetch(connector, cursor))

    assert {o.status for o in first} == {OrderStatus.WAITING_SHIPMENT}
    assert later[-1].reference == created[12]  # oldest change first: the newest comes last
    assert later[-1].status is OrderStatus.CANCELLED
    assert later[-1].updated_at == START + timedelta(seconds=600)
    assert [o.updated_at for o in later] == sorted(o.updated_at for o in later)


async def test_the_shop_can_cancel_an_accepted_order() -> None:
    marketplace = SandboxMarketplace(KEY, seed=4, clock=FakeClock())
    [order_id] = marketplace.add_orders(1, waiting_acceptance_ratio=0.0)
    async with connected(marketplace) as connector:
        await connector.cancel(order_id)
        await connector.cancel(order_id)  # a repeat finds it cancelled: success

        assert await connector.order_status(order_id) is OrderStatus.CANCELLED
    assert [c.status for c in marketplace.calls_to("OR29", order_id)] == [204, 400]


async def test_injected_rate_limit_then_recovery() -> None:
    marketplace = SandboxMarketplace(KEY, seed=1, clock=FakeClock())
    marketplace.add_orders(3)
    marketplace.fail_next(1, 429, retry_after=7)
    async with connected(marketplace) as connector:
        with pytest.raises(RateLimited) as caught:
            await fetch(connector)
        pages = await fetch(connector)

    assert caught.value.retry_after == 7.0
    assert len(orders_of(pages)) == 3


async def test_injected_server_error_is_transient() -> None:
    marketplace = SandboxMarketplace(KEY, seed=1, clock=FakeClock())
    marketplace.fail_next(1, 503, operation="OR11")
    async with connected(marketplace) as connector:
        with pytest.raises(Transient, match="HTTP 503"):
            await fetch(connector)


async def test_a_wrong_key_fails_authentication() -> None:
    marketplace = SandboxMarketplace(KEY, seed=1, clock=FakeClock())
    async with connected(marketplace, api_key="not-the-key") as connector:
        with pytest.raises(AuthFailed, match="HTTP 401"):
            await fetch(connector)


async def test_the_sandbox_refuses_an_update_date_whose_plus_was_not_encoded() -> None:
    marketplace = SandboxMarketplace(KEY, seed=1, clock=FakeClock())
    async with run_sandbox(marketplace) as url, aiohttp.ClientSession() as session:
        raw = f"{url}/api/orders?start_update_date=2026-11-29T10:00:00+01:00"
        async with session.get(
            aiohttp.client.URL(raw, encoded=True), headers={"Authorization": KEY}
        ) as response:
            assert response.status == 400
            assert (await response.json())["message"].startswith("Invalid date")
