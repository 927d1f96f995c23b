"""SIGKILL the real `sfd run` again and again while it pushes orders into each shop: the shop,
which outlives every crash, never holds two orders for one marketplace order, and every order
ends up in the shop and acknowledged with the shop's id. An order whose create went unanswered
is found in the shop (by its reference, its sourceIdentifier, or its resumed chain of steps for
PrestaShop), never created again."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.sandbox.prestashop import STATE_PAYMENT_ACCEPTED, SandboxPrestaShop, run_prestashop
from sfd.sandbox.shopify import SandboxShopify, run_shopify
from sfd.sandbox.woocommerce import SandboxWooCommerce, run_woocommerce
from tests.faults.reliability import record
from tests.push.conftest import (
    MARKETPLACE_KEY,
    PS_KEY,
    TOKEN,
    WC_KEY,
    WC_SECRET,
    prestashop_config,
    push_config,
    shopify_config,
)
from tests.support import SfdProcess, read_only, wait_until, write_config

ORDERS = 60
KILLS = 20
ACKNOWLEDGED = "SELECT reference FROM orders WHERE acknowledgment_status = 'success'"


@dataclass
class Run:
    """One shop's crash run: the shop, the database and what the kills did."""

    shop: Any
    database: Path
    references: list[str]
    kills: int = 0
    kills_during_a_create: int = 0


@dataclass(frozen=True)
class Case:
    """What differs from shop to shop; the kill loop is the same for all."""

    what: str
    seed: int
    kill_seed: int
    latency: float
    env: dict[str, str]
    make: Callable[[float], Any]
    run: Callable[[Any], AbstractAsyncContextManager[str]]
    config: Callable[[str, str], str]
    in_shop: Callable[[Any], Counter[str]]
    progress: Callable[[Any], int]
    """What grows as the pushes go on; a kill waits for `step` more of it."""
    step: int
    pause: float
    settle: float
    patience: float
    check: Callable[[Run], None]
    create_op: str | None = None
    """The create's operation, for a shop whose kills are counted when they cut one short."""
    cuts_pushes: bool = True
    """Whether the kills must end before every order went in (else: all KILLS made)."""


def _sync_1s(config: Callable[..., str]) -> Callable[[str, str], str]:
    return lambda m, s: config(m, s).replace('sync_interval = "1h"', 'sync_interval = "1s"')


def _woo_reference(order: dict[str, Any]) -> Any:
    return next(m["value"] for m in order["meta_data"] if m["key"] == "sfd_marketplace_reference")


def _check_woocommerce(run: Run) -> None:
    shop: SandboxWooCommerce = run.shop
    assert len(shop.orders) == ORDERS
    by_reference = {_woo_reference(o): o for o in shop.orders.values()}
    assert set(by_reference) == set(run.references)
    for row in read_only(run.database, "SELECT reference, store_reference FROM orders"):
        assert row["store_reference"] == str(by_reference[row["reference"]]["id"])
    # Some kills must have cut a create short, or the test proved nothing.
    unanswered = [r for r in shop.calls("orders.create") if not r.responded]
    assert unanswered or run.kills_during_a_create, "no kill landed during a create"
    # An order whose create went unanswered was found in the shop, never posted again.
    assert len(shop.calls("orders.create")) == ORDERS


def _check_shopify(run: Run) -> None:
    shop: SandboxShopify = run.shop
    assert set(_in_shopify(shop)) == set(run.references)
    by_reference = {o["sourceIdentifier"]: o for o in shop.orders.values()}
    for row in read_only(run.database, "SELECT reference, store_reference FROM orders"):
        assert row["store_reference"] == by_reference[row["reference"]]["legacyResourceId"]
    # Some kills cut a create short, and those orders were found, not posted again.
    unanswered = [r for r in shop.calls("orderCreate") if not r.responded]
    assert unanswered, "no kill landed during a create"
    assert len(shop.calls("orderCreate")) == ORDERS


def _check_prestashop(run: Run) -> None:
    shop: SandboxPrestaShop = run.shop
    assert set(_in_prestashop(shop)) == set(run.references) and len(shop.orders) == ORDERS
    by_reference = {shop.reference_of(i): i for i in shop.orders}
    for row in read_only(run.database, "SELECT reference, store_reference FROM orders"):
        shop_id = by_reference[row["reference"]]
        assert row["store_reference"] == str(shop_id)
        assert shop.orders[shop_id]["current_state"] == STATE_PAYMENT_ACCEPTED
        assert shop.states_of(shop_id).count(STATE_PAYMENT_ACCEPTED) == 1
    # One cart per order made: a chain cut short resumed its own cart, never began another.
    carts_with_orders = {int(o["id_cart"]) for o in shop.orders.values()}
    assert len(carts_with_orders) == ORDERS
    assert len(shop.tables["carts"]) == ORDERS, "no orphan cart either"
    assert shop.emails == []


def _in_shopify(shop: SandboxShopify) -> Counter[str]:
    return Counter(str(o["sourceIdentifier"]) for o in shop.orders.values())


def _in_prestashop(shop: SandboxPrestaShop) -> Counter[str]:
    return Counter(shop.reference_of(i) for i in list(shop.orders))


CASES = [
    pytest.param(
        Case(
            what="the shop",
            seed=23,
            kill_seed=2026,
            latency=0.05,
            env={"WC_KEY": WC_KEY, "WC_SECRET": WC_SECRET},
            make=lambda latency: SandboxWooCommerce(WC_KEY, WC_SECRET, latency=latency),
            run=run_woocommerce,
            config=_sync_1s(push_config),
            in_shop=lambda shop: Counter(_woo_reference(o) for o in shop.orders.values()),
            progress=lambda shop: len(shop.orders),
            step=0,
            pause=0.15,
            settle=0.06,
            patience=60,
            check=_check_woocommerce,
            create_op="orders.create",
        ),
        id="woocommerce",
    ),
    pytest.param(
        Case(
            what="Shopify",
            seed=29,
            kill_seed=2027,
            latency=0.05,
            env={"SHOPIFY_TOKEN": TOKEN},
            make=lambda latency: SandboxShopify(TOKEN, latency=latency),
            run=run_shopify,
            config=_sync_1s(shopify_config),
            in_shop=_in_shopify,
            progress=lambda shop: len(shop.orders),
            step=0,
            pause=0.15,
            settle=0.06,
            patience=60,
            check=_check_shopify,
            cuts_pushes=False,
        ),
        id="shopify",
    ),
    pytest.param(
        Case(
            what="PrestaShop",
            seed=29,
            kill_seed=2027,
            # Kills land anywhere in the creation chain.
            latency=0.01,
            env={"PS_WEBSERVICE_KEY": PS_KEY},
            make=lambda latency: SandboxPrestaShop(PS_KEY, latency=latency),
            run=run_prestashop,
            config=lambda m, s: prestashop_config(m, s, sync="1s"),
            in_shop=_in_prestashop,
            progress=lambda shop: len(shop.requests),
            step=5,
            pause=0.3,
            settle=0.03,
            patience=90,
            check=_check_prestashop,
        ),
        id="prestashop",
    ),
]


def _duplicates(case: Case, shop: Any) -> dict[str, int]:
    return {reference: n for reference, n in case.in_shop(shop).items() if n > 1}


def _grown(case: Case, shop: Any, before: int) -> Callable[[], bool]:
    return lambda: case.progress(shop) > before + case.step


async def _kill_repeatedly(
    case: Case, run: Run, config: Path, start: Callable[[], SfdProcess]
) -> None:
    """Start sfd and SIGKILL it at a random moment among its pushes, KILLS times."""
    shop = run.shop
    rng = random.Random(case.kill_seed)
    for _ in range(KILLS):
        sfd = start()
        await asyncio.to_thread(sfd.wait_ready)
        before = case.progress(shop)
        if len(shop.orders) >= ORDERS:
            break
        # Let some requests go through, then kill at a random moment among them.
        await wait_until(_grown(case, shop, before), 15)
        await asyncio.sleep(rng.uniform(0.0, case.pause))
        sfd.kill()
        run.kills += 1
        await asyncio.sleep(case.settle)  # the shop finishes what it was serving
        if case.create_op is not None:
            last = shop.calls(case.create_op)[-2:]
            run.kills_during_a_create += any(not r.responded for r in last)
        assert _duplicates(case, shop) == {}
    if case.cuts_pushes:
        assert len(shop.orders) < ORDERS, "every order went in before the kills were over"
    assert run.kills >= KILLS, "every order went in before the kills were over"


@pytest.mark.parametrize("case", CASES)
async def test_sigkill_during_pushes_never_puts_one_order_twice_in_the_shop(
    case: Case, tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    marketplace = SandboxMarketplace(MARKETPLACE_KEY, seed=case.seed)
    references = marketplace.add_orders(ORDERS, waiting_acceptance_ratio=0.0)
    # Each answer comes a moment after the request took effect: kills land between the two.
    run = Run(case.make(case.latency), tmp_path / "sfd.db", references)
    env = {"SANDBOX_KEY": MARKETPLACE_KEY, **case.env}
    async with run_sandbox(marketplace) as marketplace_url, case.run(run.shop) as shop_url:
        config = write_config(tmp_path, case.config(marketplace_url, shop_url))
        await _kill_repeatedly(case, run, config, lambda: sfd_processes(config, tmp_path, env=env))

        sfd = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(sfd.wait_ready)
        everything = await wait_until(
            lambda: len(read_only(run.database, ACKNOWLEDGED)) == ORDERS, case.patience
        )
        assert sfd.terminate() == 0

    pushed = case.in_shop(run.shop)
    acknowledged = {r[0] for r in read_only(run.database, ACKNOWLEDGED)}
    record(
        "crash",
        f"SIGKILL during pushes into {case.what}",
        tries=run.kills,
        lost=len(set(references) - pushed.keys()) + len(set(references) - acknowledged),
        duplicated=sum(n - 1 for n in pushed.values()),
        test="tests/push/test_push_crash.py",
    )
    assert everything, "not every order was pushed and acknowledged"
    assert _duplicates(case, run.shop) == {}
    assert all(n == 1 for n in pushed.values())
    case.check(run)
