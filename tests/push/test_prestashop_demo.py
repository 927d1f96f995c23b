"""`sfd demo --push prestashop`: the whole push-mode circuit against the built-in fake
PrestaShop, and `--push` alone still meaning WooCommerce."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from sfd.config import parse_config
from sfd.sandbox import demo
from sfd.sandbox.demo import run_demo
from tests.push.test_demo_push import FAST, shipped_by_the_shop


def test_push_alone_still_means_woocommerce_and_prestashop_is_a_choice() -> None:
    parser = argparse.ArgumentParser()
    demo._arguments(parser)
    assert parser.parse_args(["--push"]).push == "woocommerce"
    assert parser.parse_args(["--push", "prestashop"]).push == "prestashop"
    assert parser.parse_args([]).push is None


async def test_the_prestashop_push_demo_ships_what_the_merchant_ships(tmp_path: Path) -> None:
    database = tmp_path / "demo.db"
    base = parse_config(
        f'[daemon]\ndatabase = "{database}"\nlisten = "127.0.0.1:0"\nlog_format = "json"\n\n'
        '[[stores]]\nid = 1\nname = "Demo store"\n',
        "demo.toml",
        {},
    )
    running = asyncio.create_task(run_demo(base, FAST, push="prestashop"))
    try:
        rows = []
        for _ in range(300):
            rows = await asyncio.to_thread(shipped_by_the_shop, database)
            if rows:
                break
            assert not running.done(), running.result()
            await asyncio.sleep(0.1)
        assert rows, "no order was shipped from the shop within 30 s"
        assert all(row["store_reference"] for row in rows)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
