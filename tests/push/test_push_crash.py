"""SIGKILL the real `sfd run` again and again while it pushes orders into the shop: the shop,
which outlives every crash, never holds two orders for one marketplace order, and every order
ends up in the shop and acknowledged with the shop's id."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.sandbox.woocommerce import SandboxWooCommerce, run_woocommerce
from tests.faults.reliability import record
from tests.push.conftest import MARKETPLACE_KEY, WC_KEY, WC_SECRET, push_config
from tests.support import SfdProcess, read_only, wait_until, write_config

ORDERS = 60
KILLS = 20


def in_shop(shop: SandboxWooCommerce) -> Counter[Any]:
    """How many shop orders carry each marketplace reference."""
    return Counter(
        next(m["value"] for m in o["meta_data"] if m["key"] == "sfd_marketplace_reference")
        for o in shop.orders.values()
    )


def duplicates(shop: SandboxWooCommerce) -> dict[Any, int]:
    return {reference: n for reference, n in in_shop(shop).items() if n > 1}


async def test_sigkill_during_pushes_never_puts_one_order_twice_in_the_shop(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    marketplace = SandboxMarketplace(MARKETPLACE_KEY, seed=23)
    references = marketplace.add_orders(ORDERS, waiting_acceptance_ratio=0.0)
    # Each answer comes a moment after the order is created: kills land between the two.
    shop = SandboxWooCommerce(WC_KEY, WC_SECRET, latency=0.05)
    database = tmp_path / "sfd.db"
    env = {"SANDBOX_KEY": MARKETPLACE_KEY, "WC_KEY": WC_KEY, "WC_SECRET": WC_SECRET}
    rng = random.Random(2026)
    kills_during_a_create = 0
    kills = 0
    async with run_sandbox(marketplace) as marketplace_url, run_woocommerce(shop) as shop_url:
        body = push_config(marketplace_url, shop_url).replace(
            'sync_interval = "1h"', 'sync_interval = "1s"'
        )
        config = write_config(tmp_path, body)
        for _ in range(KILLS):
            sfd = sfd_processes(config, tmp_path, env=env)
            await asyncio.to_thread(sfd.wait_ready)
            before = len(shop.orders)
            if before >= ORDERS:
                break
            # Let some creates go through, then kill at a random moment among them.
            await wait_until(lambda before=before: len(shop.orders) > before, 15)
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            sfd.kill()
            kills += 1
            await asyncio.sleep(0.06)  # the shop finishes what it was serving
            kills_during_a_create += any(not r.responded for r in shop.calls("orders.create")[-2:])
            assert duplicates(shop) == {}
        assert len(shop.orders) < ORDERS, "every order went in before the kills were over"

        sfd = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(sfd.wait_ready)
        acknowledged = "SELECT reference FROM orders WHERE acknowledgment_status = 'success'"
        everything = await wait_until(lambda: len(read_only(database, acknowledged)) == ORDERS, 60)
        assert sfd.terminate() == 0

    pushed = in_shop(shop)
    record(
        "crash",
        "SIGKILL during pushes into the shop",
        tries=kills,
        lost=len(set(references) - pushed.keys())
        + len(set(references) - {r[0] for r in read_only(database, acknowledged)}),
        duplicated=sum(n - 1 for n in pushed.values()),
        test="tests/push/test_push_crash.py",
    )
    assert everything, "not every order was pushed and acknowledged"
    assert duplicates(shop) == {}
    assert len(shop.orders) == ORDERS
    by_reference = {
        next(m["value"] for m in o["meta_data"] if m["key"] == "sfd_marketplace_reference"): o
        for o in shop.orders.values()
    }
    assert set(by_reference) == set(references)
    for row in read_only(database, "SELECT reference, store_reference FROM orders"):
        assert row["store_reference"] == str(by_reference[row["reference"]]["id"])
    # Some kills must have cut a create short, or the test proved nothing.
    unanswered = [r for r in shop.calls("orders.create") if not r.responded]
    assert unanswered or kills_during_a_create, "no kill landed during a create"
    # An order whose create went unanswered was found in the shop, never posted again.
    assert len(shop.calls("orders.create")) == ORDERS
