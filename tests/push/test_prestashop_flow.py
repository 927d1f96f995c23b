"""Push mode into PrestaShop end to end: the daemon, the sandbox marketplace, the fake shop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sfd.sandbox.prestashop import STATE_PAYMENT_ACCEPTED, SandboxPrestaShop, run_prestashop
from tests.push.conftest import (
    MARKETPLACE_KEY,
    PushHub,
    running_hub,
    shop_toml,
    until,
)
from tests.support import run_cli

PS_KEY = "PSKEY0123456789ABCDEFGHIJKLMNOPQ"


def prestashop_config(
    marketplace_url: str, shop_url: str, *, require_tracking: bool = True, sync: str = "1h"
) -> str:
    settings = (
        f'base_url = "{shop_url}"\napi_key = "env:PS_WEBSERVICE_KEY"\n'
        'payment_module = "ps_wirepayment"\ncarrier_id = 1\npaid_state = 2\n'
        'shipped_states = [4, 5]\ncancelled_states = [6]\ntimezone = "UTC"\ntimeout = 2.0'
    )
    return shop_toml(
        marketplace_url,
        "prestashop",
        settings,
        require_tracking=require_tracking,
        name="ps",
        sync=sync,
    )


class PsHub(PushHub):
    """The push hub, its shop a fake PrestaShop."""

    shop: SandboxPrestaShop  # type: ignore[assignment]

    def shop_orders(self, reference: str) -> list[int]:
        return [i for i in self.shop.orders if self.shop.reference_of(i) == reference]


@pytest.fixture
async def ps_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[PsHub]:
    key = getattr(request, "param", PS_KEY)
    monkeypatch.setenv("SANDBOX_KEY", MARKETPLACE_KEY)
    monkeypatch.setenv("PS_WEBSERVICE_KEY", key)
    shop = SandboxPrestaShop(PS_KEY)
    async with running_hub(tmp_path, PsHub, shop, run_prestashop, prestashop_config) as hub:
        yield hub


async def test_an_order_is_pushed_once_paid_and_acknowledged_with_the_shops_id(
    ps_hub: PsHub,
) -> None:
    [reference] = await ps_hub.orders_on_sale(1)
    await ps_hub.sync()
    await ps_hub.sync()
    [shop_id] = ps_hub.shop_orders(reference)
    assert ps_hub.shop.orders[shop_id]["current_state"] == STATE_PAYMENT_ACCEPTED
    order = await ps_hub.order(reference)
    assert order.store_reference == str(shop_id)
    assert len(ps_hub.shop.calls("orders.create")) == 1
    [state] = await ps_hub.storage.pushes.states()
    assert (state.connector, state.pushed, state.auth_state) == ("prestashop", 1, "ok")


async def test_an_unknown_sku_is_an_error_acknowledgement_then_retry_push_creates_it(
    ps_hub: PsHub,
) -> None:
    [reference] = await ps_hub.orders_on_sale(1)
    order = await ps_hub.order(reference)
    missing = order.items[0].reference
    ps_hub.shop.remove_product(missing)
    await ps_hub.sync()
    order = await ps_hub.order(reference)
    assert order.acknowledgment_status == "error"
    assert "no product or combination with reference" in (order.acknowledgment_message or "")
    assert ps_hub.shop.orders == {}
    ps_hub.shop.add_product(missing, "Back in the catalogue", "16.583333")
    retried = await asyncio.to_thread(
        run_cli, ps_hub.config_path, "orders", "retry-push", str(order.id)
    )
    assert retried.returncode == 0, retried.stderr
    await ps_hub.sync()
    await ps_hub.sync()
    assert len(ps_hub.shop_orders(reference)) == 1
    assert (await ps_hub.order(reference)).acknowledgment_status == "success"


async def test_a_shipped_order_with_tracking_reaches_the_marketplace_once(ps_hub: PsHub) -> None:
    [reference] = await ps_hub.orders_on_sale(1)
    await ps_hub.sync()
    [shop_id] = ps_hub.shop_orders(reference)
    ps_hub.shop.ship(shop_id, "6A1234567")
    await ps_hub.sync()
    await until(lambda: bool(ps_hub.marketplace.calls_to("OR24", reference)))
    [tracking] = ps_hub.marketplace.calls_to("OR23", reference)
    assert tracking.body["tracking_number"] == "6A1234567"
    # Read again (the cursor overlaps), it is not shipped twice.
    await ps_hub.sync()
    await ps_hub.poll()
    await ps_hub.sync()
    assert len(ps_hub.marketplace.calls_to("OR24", reference)) == 1


async def test_a_shipped_order_without_tracking_waits_on_a_require_tracking_channel(
    ps_hub: PsHub,
) -> None:
    [reference] = await ps_hub.orders_on_sale(1)
    await ps_hub.sync()
    [shop_id] = ps_hub.shop_orders(reference)
    ps_hub.shop.ship(shop_id, "")
    await ps_hub.sync()
    [state] = await ps_hub.storage.pushes.states()
    assert state.waiting_tracking == 1
    ps_hub.shop.ship(shop_id, "6A7654321")
    await ps_hub.sync()
    await until(lambda: bool(ps_hub.marketplace.calls_to("OR24", reference)))
    [tracking] = ps_hub.marketplace.calls_to("OR23", reference)
    assert tracking.body["tracking_number"] == "6A7654321"


async def test_a_cancellation_in_prestashop_cancels_on_the_marketplace(ps_hub: PsHub) -> None:
    [reference] = await ps_hub.orders_on_sale(1)
    await ps_hub.sync()
    [shop_id] = ps_hub.shop_orders(reference)
    ps_hub.shop.cancel(shop_id)
    await ps_hub.sync()
    await until(lambda: bool(ps_hub.marketplace.calls_to("OR29", reference)))
    await ps_hub.sync()
    assert len(ps_hub.marketplace.calls_to("OR29", reference)) == 1


@pytest.mark.parametrize("ps_hub", ["NOT-THE-KEY-0123456789"], indirect=True)
async def test_a_refused_key_is_auth_failed_everywhere_it_shows(ps_hub: PsHub) -> None:
    await ps_hub.orders_on_sale(1)
    await ps_hub.sync()
    assert ps_hub.pusher.status.condition == "auth_failed"
    [state] = await ps_hub.storage.pushes.states()
    assert state.auth_state == "auth_failed"
    assert "NOT-THE-KEY" not in (state.last_error or "")
    shops = await asyncio.to_thread(run_cli, ps_hub.config_path, "shops")
    assert "auth_failed" in shops.stdout


async def test_throttling_is_honoured_with_its_retry_after(ps_hub: PsHub) -> None:
    [reference] = await ps_hub.orders_on_sale(1)
    ps_hub.shop.fail_next(1, 429, operation="products.list", retry_after="7")
    await ps_hub.sync()
    status = ps_hub.pusher.status
    assert status.condition == "failing"
    [state] = await ps_hub.storage.pushes.states()
    assert "HTTP 429" in (state.last_error or "")
    assert state.next_sync_at is not None and state.last_error_at is not None
    assert (state.next_sync_at - state.last_error_at).total_seconds() >= 7
    await ps_hub.sync()
    assert len(ps_hub.shop_orders(reference)) == 1


async def test_a_create_whose_answer_was_lost_is_found_not_made_twice(ps_hub: PsHub) -> None:
    [reference] = await ps_hub.orders_on_sale(1)
    ps_hub.shop.drop_next(1, operation="orders.create")
    await ps_hub.sync()
    await ps_hub.sync()
    assert len(ps_hub.shop_orders(reference)) == 1
    assert len(ps_hub.shop.calls("orders.create")) == 1
    [shop_id] = ps_hub.shop_orders(reference)
    assert ps_hub.shop.states_of(shop_id) == [11, STATE_PAYMENT_ACCEPTED]
    assert (await ps_hub.order(reference)).store_reference == str(shop_id)
