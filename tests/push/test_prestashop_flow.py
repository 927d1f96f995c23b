"""Push mode into PrestaShop end to end: the daemon, the sandbox marketplace, the fake shop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sfd.sandbox.prestashop import STATE_PAYMENT_ACCEPTED
from tests.push.conftest import PRESTASHOP, PsHub, shop_hub
from tests.support import run_cli


@pytest.fixture
async def ps_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[PsHub]:
    """A hub into PrestaShop; parametrized indirectly with a key to give the daemon instead."""
    options = {"secret": request.param} if hasattr(request, "param") else {}
    async with shop_hub(PRESTASHOP, tmp_path, monkeypatch, options) as hub:
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
