"""SIGKILL the real `sfd run` again and again while it pushes orders into PrestaShop: every kill
may land anywhere in the creation chain, and the shop, which outlives every crash, ends up with
exactly one order per marketplace order, each paid and acknowledged with the shop's id."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.sandbox.prestashop import STATE_PAYMENT_ACCEPTED, SandboxPrestaShop, run_prestashop
from tests.faults.reliability import record
from tests.push.conftest import MARKETPLACE_KEY
from tests.push.test_prestashop_flow import PS_KEY, prestashop_config
from tests.support import SfdProcess, read_only, wait_until, write_config

ORDERS = 60
KILLS = 20


def in_shop(shop: SandboxPrestaShop) -> Counter[str]:
    """How many shop orders carry each marketplace reference."""
    return Counter(shop.reference_of(i) for i in list(shop.orders))


async def test_sigkill_during_prestashop_pushes_never_makes_an_order_twice(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    marketplace = SandboxMarketplace(MARKETPLACE_KEY, seed=29)
    references = marketplace.add_orders(ORDERS, waiting_acceptance_ratio=0.0)
    # Each answer comes a moment after the request took effect: kills land between the two,
    # and at any step of the chain.
    shop = SandboxPrestaShop(PS_KEY, latency=0.01)
    database = tmp_path / "sfd.db"
    env = {"SANDBOX_KEY": MARKETPLACE_KEY, "PS_WEBSERVICE_KEY": PS_KEY}
    rng = random.Random(2027)
    kills = 0
    async with run_sandbox(marketplace) as marketplace_url, run_prestashop(shop) as shop_url:
        config = write_config(tmp_path, prestashop_config(marketplace_url, shop_url, sync="1s"))
        for _ in range(KILLS):
            sfd = sfd_processes(config, tmp_path, env=env)
            await asyncio.to_thread(sfd.wait_ready)
            before = len(shop.requests)
            if len(shop.orders) >= ORDERS:
                break
            await wait_until(lambda before=before: len(shop.requests) > before + 5, 15)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            sfd.kill()
            kills += 1
            await asyncio.sleep(0.03)
            assert {r: n for r, n in in_shop(shop).items() if n > 1} == {}
        assert len(shop.orders) < ORDERS, "every order went in before the kills were over"

        sfd = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(sfd.wait_ready)
        acknowledged = "SELECT reference FROM orders WHERE acknowledgment_status = 'success'"
        everything = await wait_until(lambda: len(read_only(database, acknowledged)) == ORDERS, 90)
        assert sfd.terminate() == 0

    pushed = in_shop(shop)
    record(
        "crash",
        "SIGKILL during pushes into PrestaShop",
        tries=kills,
        lost=len(set(references) - pushed.keys()),
        duplicated=sum(n - 1 for n in pushed.values()),
        test="tests/push/test_prestashop_crash.py",
    )
    assert kills >= KILLS
    assert everything, "not every order was pushed and acknowledged"
    assert {r: n for r, n in pushed.items() if n > 1} == {}
    assert set(pushed) == set(references) and len(shop.orders) == ORDERS
    by_reference = {shop.reference_of(i): i for i in shop.orders}
    for row in read_only(database, "SELECT reference, store_reference FROM orders"):
        shop_id = by_reference[row["reference"]]
        assert row["store_reference"] == str(shop_id)
        assert shop.orders[shop_id]["current_state"] == STATE_PAYMENT_ACCEPTED
        assert shop.states_of(shop_id).count(STATE_PAYMENT_ACCEPTED) == 1
    # One cart per order made: a chain cut short resumed its own cart, never began another.
    carts_with_orders = {int(o["id_cart"]) for o in shop.orders.values()}
    assert len(carts_with_orders) == ORDERS
    assert len(shop.tables["carts"]) == ORDERS, "no orphan cart either"
    assert shop.emails == []
