"""SIGKILL the real `sfd run` again and again while it pushes orders into a fake Shopify: the
shop, which outlives every crash, holds exactly one order per marketplace order, each found by
its sourceIdentifier after an unanswered create rather than created again."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.sandbox.shopify import SandboxShopify, run_shopify
from tests.faults.reliability import record
from tests.push.conftest import MARKETPLACE_KEY
from tests.push.test_shopify import TOKEN, shopify_config
from tests.support import SfdProcess, read_only, wait_until, write_config

ORDERS = 60
KILLS = 20


def in_shop(shop: SandboxShopify) -> Counter[str]:
    """How many shop orders carry each marketplace reference."""
    return Counter(str(o["sourceIdentifier"]) for o in shop.orders.values())


def more_than(shop: SandboxShopify, n: int) -> Callable[[], bool]:
    return lambda: len(shop.orders) > n


async def test_sigkill_during_shopify_pushes_never_puts_one_order_twice_in_the_shop(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    marketplace = SandboxMarketplace(MARKETPLACE_KEY, seed=29)
    references = marketplace.add_orders(ORDERS, waiting_acceptance_ratio=0.0)
    # Each answer comes a moment after the order is created: kills land between the two.
    shop = SandboxShopify(TOKEN, latency=0.05)
    database = tmp_path / "sfd.db"
    env = {"SANDBOX_KEY": MARKETPLACE_KEY, "SHOPIFY_TOKEN": TOKEN}
    rng = random.Random(2027)
    kills = 0
    async with run_sandbox(marketplace) as marketplace_url, run_shopify(shop) as shop_url:
        body = shopify_config(marketplace_url, shop_url).replace(
            'sync_interval = "1h"', 'sync_interval = "1s"'
        )
        config = write_config(tmp_path, body)
        for _ in range(KILLS):
            sfd = sfd_processes(config, tmp_path, env=env)
            await asyncio.to_thread(sfd.wait_ready)
            before = len(shop.orders)
            if before >= ORDERS:
                break
            await wait_until(more_than(shop, before), 15)
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            sfd.kill()
            kills += 1
            await asyncio.sleep(0.06)  # the shop finishes what it was serving
            assert {r: n for r, n in in_shop(shop).items() if n > 1} == {}
        assert kills >= KILLS, "every order went in before the kills were over"

        sfd = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(sfd.wait_ready)
        acknowledged = "SELECT reference FROM orders WHERE acknowledgment_status = 'success'"
        everything = await wait_until(lambda: len(read_only(database, acknowledged)) == ORDERS, 60)
        assert sfd.terminate() == 0

    pushed = in_shop(shop)
    record(
        "crash",
        "SIGKILL during pushes into Shopify",
        tries=kills,
        lost=len(set(references) - pushed.keys())
        + len(set(references) - {r[0] for r in read_only(database, acknowledged)}),
        duplicated=sum(n - 1 for n in pushed.values()),
        test="tests/push/test_shopify_crash.py",
    )
    assert everything, "not every order was pushed and acknowledged"
    assert set(pushed) == set(references)
    assert all(n == 1 for n in pushed.values())
    by_reference = {o["sourceIdentifier"]: o for o in shop.orders.values()}
    for row in read_only(database, "SELECT reference, store_reference FROM orders"):
        assert row["store_reference"] == by_reference[row["reference"]]["legacyResourceId"]
    # Some kills cut a create short, and those orders were found, not posted again.
    unanswered = [r for r in shop.calls("orderCreate") if not r.responded]
    assert unanswered, "no kill landed during a create"
    assert len(shop.calls("orderCreate")) == ORDERS
