"""Push mode against a fake WooCommerce: orders go in once, acknowledged with the shop's id;
completed and cancelled orders come back as ship and cancel operations on the marketplace."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from sfd.daemon import push
from sfd.daemon.push import retry_push
from sfd.domain import EventSource
from sfd.storage import OrderFilter
from sfd.storage.pushes import TRACKING_MISSING
from tests.push.conftest import PushHub, expected_meta, until
from tests.support import eventually, run_cli


def _address(stored: Any, *, billing: bool, customer_emails: bool = False) -> dict[str, str]:
    fields = {
        "first_name": stored.first_name,
        "last_name": stored.last_name,
        "company": stored.company,
        "address_1": stored.street,
        "address_2": ", ".join(p for p in (stored.street2, stored.other) if p),
        "city": stored.city,
        "state": stored.province,
        "postcode": stored.postal_code,
        "country": stored.country,
        "phone": stored.phone or stored.mobile_phone,
    }
    if billing and customer_emails:
        fields["email"] = stored.email
    return fields


# -- pushing --------------------------------------------------------------------------------


async def test_the_create_body_carries_the_order_exactly(hub: PushHub) -> None:
    order, mirakl, create = await hub.pushed_create()
    reference = order.reference
    product_ids = {p["sku"]: p["id"] for p in hub.shop.products.values()}
    assert order.billing_address is not None and order.shipping_address is not None
    assert mirakl["customer"]["shipping_address"]["firstname"] == order.shipping_address.first_name
    # customer_emails is off by default: the email is kept where WooCommerce mails nothing.
    expected, note = expected_meta(mirakl, order, reference)
    assert create.body == {
        "status": "processing",
        "set_paid": True,
        "currency": "EUR",
        "payment_method": "sfd",
        "payment_method_title": "sandbox",
        "billing": _address(order.billing_address, billing=True),
        "shipping": _address(order.shipping_address, billing=False),
        "line_items": [
            {
                "product_id": product_ids[line["offer_sku"]],
                "quantity": line["quantity"],
                "subtotal": f"{Decimal(str(line['price'])):.2f}",
                "total": f"{Decimal(str(line['price'])):.2f}",
            }
            for line in mirakl["order_lines"]
        ],
        "shipping_lines": [
            {
                "method_id": "sfd",
                "method_title": order.shipping_method,
                "total": f"{Decimal(str(mirakl['shipping_price'])):.2f}",
            }
        ],
        "customer_note": note,
        "meta_data": expected,
    }
    # The products were looked up by SKU, each once.
    looked_up = [r.query["sku"] for r in hub.shop.calls("products.list")]
    assert sorted(looked_up) == sorted({line["offer_sku"] for line in mirakl["order_lines"]})


@pytest.mark.both_backends
async def test_a_pushed_order_is_acknowledged_with_the_woocommerce_id_and_pushed_once(
    hub: PushHub,
) -> None:
    references = await hub.orders_on_sale(3)
    await hub.sync()
    for reference in references:
        shop_order = hub.shop_order(reference)
        order = await hub.order(reference)
        assert order.store_reference == str(shop_order["id"])
        assert order.acknowledgment_status == "success"
        assert order.acknowledged_at is not None
        [ack] = [e for e in order.events if e.kind == "acknowledge"]
        assert ack.source == "shop"
    assert await hub.storage.orders.count(OrderFilter.to_process(hub.daemon.clock())) == 0

    await hub.sync()
    assert len(hub.shop.calls("orders.create")) == 3
    [state] = await hub.storage.pushes.states()
    assert (state.pushed, state.rejected, state.pending, state.auth_state) == (3, 0, 0, "ok")
    async with hub.http.get(f"{hub.daemon.url}/metrics") as response:
        metrics = await response.text()
    assert 'sfd_orders_pushed_total{outcome="created",shop="main"} 3.0' in metrics


@pytest.mark.both_backends
async def test_a_store_in_push_mode_still_serves_the_v1_api(hub: PushHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    _, token = await hub.storage.tokens.create(1, "module", hub.daemon.clock())
    async with hub.http.get(
        f"{hub.daemon.url}/v1/store/1/order",
        params={"status": "waiting_shipment"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        body = await response.json()
    assert response.status == 200
    assert [o["reference"] for o in body["_embedded"]["order"]] == [reference]


@pytest.mark.both_backends
async def test_an_unknown_sku_is_acknowledged_as_an_error_and_waits_for_a_person(
    hub: PushHub,
) -> None:
    [reference] = await hub.orders_on_sale(1)
    sku = hub.marketplace.order(reference)["order_lines"][0]["offer_sku"]
    hub.shop.remove_product(sku)
    await hub.sync()

    order = await hub.order(reference)
    assert hub.shop.orders == {}
    assert order.acknowledgment_status == "error"
    assert order.acknowledgment_message is not None
    assert f"no product with SKU {sku!r}" in order.acknowledgment_message
    assert order.errors and order.errors[0].type == "acknowledge"
    # Not retried by itself.
    await hub.sync()
    assert hub.shop.calls("orders.create") == []
    listed = await asyncio.to_thread(run_cli, hub.config_path, "orders", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert reference in listed.stdout

    # A person adds the product and asks for the push again, with the CLI.
    hub.shop.add_product(sku, "Back in the catalogue", "19.90")
    retried = await asyncio.to_thread(
        run_cli, hub.config_path, "orders", "retry-push", str(order.id)
    )
    assert retried.returncode == 0, retried.stderr
    assert "pushed again" in retried.stderr
    await until(lambda: len(hub.shop.orders_for(reference)) == 1)
    await until(lambda: hub.pusher.status.state == "idle")
    order = await hub.order(reference)
    assert order.acknowledgment_status == "success"
    assert order.store_reference == str(hub.shop_order(reference)["id"])


async def test_retry_push_refuses_an_order_already_in_the_shop(hub: PushHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    await hub.sync()
    order = await hub.order(reference)
    again = await asyncio.to_thread(run_cli, hub.config_path, "orders", "retry-push", str(order.id))
    assert again.returncode == 1
    assert "already in shop main" in again.stderr
    await hub.sync()
    assert len(hub.shop.orders_for(reference)) == 1


async def test_a_rejected_order_gets_the_shops_own_message(hub: PushHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    hub.shop.fail_next(1, 400, operation="orders.create")
    await hub.sync()
    order = await hub.order(reference)
    assert order.acknowledgment_status == "error"
    assert order.acknowledgment_message == "WooCommerce create order: Injected failure"
    # Once a person retries, it goes in.
    await retry_push(hub.storage, order.id, EventSource.PAGE, hub.daemon.clock())
    await hub.sync()
    assert len(hub.shop.orders_for(reference)) == 1


# -- failures -------------------------------------------------------------------------------


async def test_5xx_answers_are_retried_with_backoff_and_the_order_goes_in_once(
    hub: PushHub,
) -> None:
    [reference] = await hub.orders_on_sale(1)
    hub.shop.fail_next(2, 502, operation="products.list")
    hub.shop.fail_next(2, 503, operation="orders.create")
    await hub.sync()

    assert [r.status for r in hub.shop.calls("orders.create")] == [503, 503, 201]
    assert [r.status for r in hub.shop.calls("products.list")][:3] == [502, 502, 200]
    assert len(hub.shop.orders_for(reference)) == 1
    order = await hub.order(reference)
    assert order.store_reference == str(hub.shop_order(reference)["id"])
    assert hub.pusher.status.condition == "ok"


async def test_a_read_that_timed_out_is_retried(hub: PushHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    hub.shop.slow_next(1, 3.0, operation="products.list")
    await hub.sync()
    lookups = hub.shop.calls("products.list")
    assert not lookups[0].responded
    assert lookups[1].query == lookups[0].query and lookups[1].responded
    assert len(hub.shop.orders_for(reference)) == 1


async def test_a_shop_down_for_a_whole_sync_is_retried_at_the_next_one(hub: PushHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    hub.shop.fail_next(100, 500)
    await hub.sync()
    assert hub.pusher.status.condition == "failing"
    assert (await hub.order(reference)).acknowledged_at is None
    hub.shop.clear_failures()
    await hub.sync()
    assert hub.pusher.status.condition == "ok"
    assert len(hub.shop.orders_for(reference)) == 1


# -- reading back ---------------------------------------------------------------------------


@pytest.mark.parametrize("shop", ["no-tracking-extension"], indirect=True)
async def test_tracking_is_read_from_order_meta_data_without_the_extension(
    hub: PushHub,
) -> None:
    assert not hub.shop.tracking_extension
    reference, shop_id = await hub.pushed_order()
    hub.shop.complete(shop_id, tracking_number="XJ123", provider="DPD")
    await hub.sync()
    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))
    [tracking] = hub.marketplace.calls_to("OR23", reference)
    assert tracking.body["tracking_number"] == "XJ123"


@pytest.mark.parametrize("hub_options", [{"tracking_wait": "1s"}])
async def test_a_completed_order_without_tracking_waits_then_is_flagged(hub: PushHub) -> None:
    reference, shop_id = await hub.pushed_order()
    hub.shop.complete(shop_id)
    await hub.sync()
    assert hub.marketplace.calls_to("OR24", reference) == []
    [state] = await hub.storage.pushes.states()
    assert state.waiting_tracking == 1

    async def flagged() -> bool:
        # The tracking wait is counted in real time: sync until it has run out.
        await hub.sync()
        return any(e.kind == TRACKING_MISSING for e in (await hub.order(reference)).events)

    await eventually(flagged, what="the order flagged for its missing tracking")
    order = await hub.order(reference)
    [flag] = [e for e in order.events if e.kind == TRACKING_MISSING]
    assert flag.source == "shop" and "without a tracking number" in flag.message
    assert [e.message for e in order.errors] == [flag.message], "shown in the order's errors"
    shown = await asyncio.to_thread(run_cli, hub.config_path, "orders", "show", str(order.id))
    assert TRACKING_MISSING in shown.stdout

    # The tracking comes in late: the shipment still goes, once.
    hub.shop.add_tracking(shop_id, "6A999")
    await hub.sync()
    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))
    await hub.sync()
    order = await hub.order(reference)
    assert len([e for e in order.events if e.kind == TRACKING_MISSING]) == 1
    assert len(hub.marketplace.calls_to("OR24", reference)) == 1


@pytest.mark.parametrize("hub_options", [{"require_tracking": False}])
async def test_without_require_tracking_a_completed_order_ships_at_once(hub: PushHub) -> None:
    reference, shop_id = await hub.pushed_order()
    hub.shop.complete(shop_id)
    await hub.sync()
    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))


async def test_a_refused_order_unacknowledged_through_the_api_is_pushed_again(
    hub: PushHub,
) -> None:
    [reference] = await hub.orders_on_sale(1)
    hub.shop.fail_next(1, 400, operation="orders.create")
    await hub.sync()
    order = await hub.order(reference)
    assert order.acknowledgment_status == "error"
    _, token = await hub.storage.tokens.create(1, "module", hub.daemon.clock())
    async with hub.http.post(
        f"{hub.daemon.url}/v1/store/1/order/unacknowledge",
        json={"order": [{"id": order.id}]},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 202, await response.text()
    await hub.sync()
    assert len(hub.shop.orders_for(reference)) == 1
    assert (await hub.order(reference)).acknowledgment_status == "success"


async def test_the_shops_own_orders_are_left_alone(hub: PushHub) -> None:
    [reference] = await hub.orders_on_sale(1)
    await hub.sync()
    # A web-shop order, completed by the merchant: not sfd's, so no tracking read, no operation.
    web_order = max(hub.shop.orders) + 1
    hub.shop.orders[web_order] = {
        **hub.shop_order(reference),
        "id": web_order,
        "meta_data": [],
    }
    hub.shop.complete(web_order, tracking_number="WEB1")
    await hub.sync()
    assert not any(str(web_order) in r.path for r in hub.shop.calls("trackings.list"))
    assert hub.marketplace.calls_to("OR24") == []


async def test_more_orders_than_a_batch_all_go_in_without_waiting_for_the_interval(
    hub: PushHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(push, "PUSH_BATCH", 2)
    references = await hub.orders_on_sale(5)
    await hub.sync()
    # The sync interval is an hour: the rest follow within seconds because the batch was full.
    await until(lambda: len(hub.shop.orders) == 5, timeout=15)
    assert sorted(hub.shop.orders_for(r)[0]["id"] for r in references) == sorted(hub.shop.orders)


async def test_an_order_already_shipped_another_way_is_not_shipped_again(hub: PushHub) -> None:
    reference, shop_id = await hub.pushed_order()
    order = await hub.order(reference)
    shipped = await asyncio.to_thread(
        run_cli,
        hub.config_path,
        "orders",
        "ship",
        str(order.id),
        "--carrier",
        "DPD",
        "--tracking-number",
        "DPD1",
    )
    assert shipped.returncode == 0, shipped.stderr
    hub.shop.complete(shop_id, tracking_number="6A777")
    await hub.sync()
    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))
    await hub.sync()
    [tracking] = hub.marketplace.calls_to("OR23", reference)
    assert tracking.body["tracking_number"] == "DPD1"
    order = await hub.order(reference)
    assert not any(e.kind == "ship_refused" for e in order.events)
