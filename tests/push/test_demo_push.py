"""`sfd demo --push [shop]`: the whole push-mode circuit against each built-in fake shop, and
`--push` alone still meaning WooCommerce."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from pathlib import Path

import pytest

from sfd.config import parse_config
from sfd.sandbox import demo as demo_module
from sfd.sandbox.demo import DemoSettings, run_demo

FAST = DemoSettings(
    poll_interval="1s",
    first_orders=4,
    new_orders_every=30.0,
    ship_after=0.5,
    ship_confirm_delay=0.5,
    shop_sync_interval="1s",
)


def shipped_by_the_shop(database: Path) -> list[sqlite3.Row]:
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        db.row_factory = sqlite3.Row
        try:
            return db.execute(
                "SELECT o.reference, o.store_reference FROM orders o WHERE o.status = 'shipped' "
                "AND EXISTS (SELECT 1 FROM order_events e WHERE e.order_id = o.id "
                "AND e.kind = 'ship_requested' AND e.source = 'shop')"
            ).fetchall()
        except sqlite3.OperationalError:
            return []  # not migrated yet


def test_push_alone_still_means_woocommerce_and_prestashop_is_a_choice() -> None:
    parser = argparse.ArgumentParser()
    demo_module._arguments(parser)
    assert parser.parse_args(["--push"]).push == "woocommerce"
    assert parser.parse_args(["--push", "prestashop"]).push == "prestashop"
    assert parser.parse_args([]).push is None


@pytest.mark.parametrize(
    "push",
    [
        pytest.param(True, id="woocommerce"),
        pytest.param("shopify", id="shopify"),
        pytest.param("prestashop", id="prestashop"),
    ],
)
async def test_the_push_demo_pushes_orders_and_ships_what_the_merchant_completes(
    push: bool | str, tmp_path: Path
) -> None:
    database = tmp_path / "demo.db"
    base = parse_config(
        f'[daemon]\ndatabase = "{database}"\nlisten = "127.0.0.1:0"\nlog_format = "json"\n\n'
        '[[stores]]\nid = 1\nname = "Demo store"\n',
        "demo.toml",
        {},
    )
    demo = asyncio.create_task(run_demo(base, FAST, push=push))
    try:
        rows: list[sqlite3.Row] = []
        for _ in range(300):
            rows = await asyncio.to_thread(shipped_by_the_shop, database)
            if rows:
                break
            assert not demo.done(), demo.result()
            await asyncio.sleep(0.1)
        assert rows, "no order was shipped from the shop within 30 s"
        assert all(row["store_reference"] for row in rows)
    finally:
        demo.cancel()
        await asyncio.gather(demo, return_exceptions=True)
