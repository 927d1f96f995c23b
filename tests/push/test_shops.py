"""What push mode does alike in every shop (WooCommerce, Shopify, PrestaShop): a create whose
answer was lost is found, not made again; the merchant's shipments and cancellations come back
as operations on the marketplace, once; refused credentials leave the shop `auth_failed`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sfd.domain import OrderStatus
from tests.push.conftest import SHOPS, PushHub, assert_auth_failed_and_shown, shop_hub, until


@pytest.fixture(params=list(SHOPS))
async def hub(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hub_options: dict[str, Any],
) -> AsyncIterator[PushHub]:
    """A hub into each shop in turn (a test names fewer with an indirect parametrize)."""
    async with shop_hub(SHOPS[request.param], tmp_path, monkeypatch, hub_options) as running:
        yield running


#: How each shop's connector looked for an order whose create went unanswered.
LOOKED_FOR: dict[str, Callable[[PushHub, str], bool]] = {
    # WooCommerce's search does not read meta data: the recent orders were read instead.
    "woocommerce": lambda hub, reference: bool(hub.shop.calls("orders.list")),
    "shopify": lambda hub, reference: (
        f"source_identifier:'{reference}'"
        in [r.body["variables"]["query"] for r in hub.shop.calls("orders")]
    ),
}


@pytest.mark.parametrize("hub", list(LOOKED_FOR), indirect=True)
async def test_a_create_answered_after_the_timeout_is_found_in_the_shop_not_made_again(
    hub: PushHub,
) -> None:
    [reference] = await hub.orders_on_sale(1)
    # The shop creates the order but answers after the client's 2 s timeout.
    hub.shop.slow_next(1, 3.0, operation=hub.CREATE)
    await hub.sync()

    assert len(hub.shop.calls(hub.CREATE)) == 1
    assert len(hub.shop.orders_for(reference)) == 1
    assert LOOKED_FOR[hub.CONNECTOR](hub, reference)
    order = await hub.order(reference)
    assert order.acknowledgment_status == "success"
    assert order.store_reference == str(hub.shop_id(reference))


@pytest.mark.parametrize("hub", ["woocommerce", "shopify"], indirect=True)
async def test_a_dropped_create_is_looked_for_before_any_new_one(hub: PushHub) -> None:
    references = await hub.orders_on_sale(2)
    hub.shop.drop_next(1, operation=hub.CREATE)
    await hub.sync()
    for reference in references:
        assert len(hub.shop.orders_for(reference)) == 1
        assert (await hub.order(reference)).acknowledgment_status == "success"
    assert len(hub.shop.calls(hub.CREATE)) == 2


@pytest.mark.parametrize(
    ("hub", "hub_options"),
    [("woocommerce", {"secret": "cs_wrong"}), ("shopify", {"secret": "shpat_wrong"})],
    indirect=["hub"],
)
async def test_refused_credentials_leave_the_shop_auth_failed_and_shown_so(
    hub: PushHub, hub_options: dict[str, str]
) -> None:
    [reference] = await hub.orders_on_sale(1)
    await hub.sync()

    row = await assert_auth_failed_and_shown(hub, hub_options["secret"], reference)
    assert hub.CONNECTOR in row
    async with hub.http.get(f"{hub.daemon.url}/healthz") as response:
        health = await response.json()
    assert health["loops"]["push:main"]["condition"] == "auth_failed"
    async with hub.http.get(f"{hub.daemon.url}/metrics") as response:
        metrics = await response.text()
    # The sync at start-up and this one.
    assert 'sfd_shop_syncs_total{result="auth_failed",shop="main"} 2.0' in metrics


# -- reading back ---------------------------------------------------------------------------


async def shipped_in_shop(hub: PushHub, tracking_number: str) -> tuple[str, int]:
    """One order pushed, shipped by the merchant with `tracking_number` (none if empty), and
    read back: its reference and its id in the shop."""
    reference, shop_id = await hub.pushed_order()
    hub.ship_in_shop(shop_id, tracking_number)
    await hub.sync()
    return reference, shop_id


async def test_an_order_shipped_in_the_shop_with_tracking_ships_on_the_marketplace_once(
    hub: PushHub,
) -> None:
    reference, _ = await shipped_in_shop(hub, "6A0000000042")

    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))
    [tracking] = hub.marketplace.calls_to("OR23", reference)
    assert tracking.body is not None and tracking.body["tracking_number"] == "6A0000000042"
    order = await hub.order(reference)
    [ship] = [e for e in order.events if e.kind == "ship_requested"]
    assert ship.source == "shop"
    [shipment] = await hub.storage.operations.shipments(order.id)
    assert shipment.payload.get("items") in (None, []), "the whole order"
    # Read again (the cursor overlaps), it is not shipped twice.
    await hub.sync()
    await hub.poll()
    assert (await hub.order(reference)).status == OrderStatus.SHIPPED
    await hub.sync()
    await hub.sync()
    assert len(hub.marketplace.calls_to("OR24", reference)) == 1


async def test_a_shipment_without_tracking_waits_for_it_on_a_channel_that_requires_one(
    hub: PushHub,
) -> None:
    reference, shop_id = await shipped_in_shop(hub, "")
    assert hub.pusher.status.detail.get("waiting_tracking") == 1
    [state] = await hub.storage.pushes.states()
    assert state.waiting_tracking == 1
    assert hub.marketplace.calls_to("OR24", reference) == []

    hub.add_tracking_in_shop(shop_id, "6A7654321")
    await hub.sync()
    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))
    [tracking] = hub.marketplace.calls_to("OR23", reference)
    assert tracking.body is not None and tracking.body["tracking_number"] == "6A7654321"


async def test_an_order_cancelled_in_the_shop_is_cancelled_on_the_marketplace_once(
    hub: PushHub,
) -> None:
    reference, shop_id = await hub.pushed_order()
    hub.shop.cancel(shop_id)
    await hub.sync()

    await until(lambda: bool(hub.marketplace.calls_to("OR29", reference)))
    order = await hub.order(reference)
    [cancel] = [e for e in order.events if e.kind == "cancel_requested"]
    assert cancel.source == "shop"
    await hub.poll()
    assert (await hub.order(reference)).status == OrderStatus.CANCELLED
    await hub.sync()
    assert len(hub.marketplace.calls_to("OR29", reference)) == 1
