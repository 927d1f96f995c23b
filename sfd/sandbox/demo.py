"""`sfd demo`: the whole circuit in one process, on 127.0.0.1 only.

A sandbox marketplace (Mirakl's shop API) takes new orders now and then, sfd imports and
accepts them, and a simulated shop pulls the orders to process over the v1 API,
acknowledges each and ships it a few seconds later; the marketplace confirms the shipment
and sfd's next poll records it. The logs tell each step as it happens.

With `push=True` (`sfd demo --push`) there is no pulling shop: sfd pushes the orders into a
built-in fake WooCommerce, a simulated merchant completes them there with a tracking number,
and sfd reads that back and ships the orders on the marketplace.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio

from sfd.config import Config, parse_config
from sfd.daemon.cli import Command
from sfd.daemon.runtime import Daemon, StartupError
from sfd.domain.clock import utcnow
from sfd.logs import get_logger
from sfd.sandbox.kit import ShopMerchant, tracking_number
from sfd.sandbox.marketplace import SandboxMarketplace, channel_toml, run_sandbox
from sfd.sandbox.prestashop import prestashop_demo
from sfd.sandbox.woocommerce import SandboxWooCommerce, run_woocommerce
from sfd.storage import Storage, TokenError

CHANNEL = "sandbox"
SHOP = "woocommerce"
SHOP_TOKEN_NAME = "demo-shop"
CARRIERS = ("Colissimo", "Chronopost", "DPD", "Mondial Relay")

log = get_logger(component="demo")

#: A simulated merchant working in a fake shop until cancelled.
Merchant = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class DemoSettings:
    """How lively the demo is."""

    poll_interval: str = "5s"
    first_orders: int = 6
    new_orders_every: float = 15.0
    shop_pull_every: float = 5.0
    ship_after: float = 3.0
    ship_confirm_delay: float = 4.0
    shop_sync_interval: str = "5s"


def demo_config(
    base: Config,
    sandbox_url: str,
    api_key: str,
    settings: DemoSettings,
    shop: str | None = None,
) -> Config:
    """The config of the demo: the given daemon and stores, plus the sandbox channel, and
    with `shop` (its `connector` key and `[shops.settings]`) a shop in push mode."""
    store = base.stores[0].id if base.stores else 1
    text = f"""
[daemon]
database = "{base.database}"
listen = "{base.daemon.listen}"
log_format = "{base.daemon.log_format}"
log_level = "{base.daemon.log_level}"

[[stores]]
id = {store}
name = "{base.stores[0].name if base.stores else "Demo store"}"
"""
    text += channel_toml(
        sandbox_url,
        api_key,
        name=CHANNEL,
        store=store,
        poll_interval=settings.poll_interval,
        auto_accept=True,
        require_tracking=True,
        ship_deadline_warning="24h",
    )
    if shop is not None:
        text += f"""
[[shops]]
name = "{SHOP}"
store = {store}
sync_interval = "{settings.shop_sync_interval}"
{shop}"""
    return parse_config(text, f"{base.source} (demo)", {})


async def issue_shop_token(storage: Storage, store: int) -> str:
    """A fresh token for the simulated shop; the previous demo's is revoked."""
    with contextlib.suppress(TokenError):
        await storage.tokens.revoke(SHOP_TOKEN_NAME, utcnow())
    _, token = await storage.tokens.create(store, SHOP_TOKEN_NAME, utcnow())
    return token


class SimulatedShop:
    """A shop module pulling over the v1 API: fetch, acknowledge, then ship."""

    def __init__(self, url: str, token: str, store: int, settings: DemoSettings) -> None:
        self.url = url
        self.store = store
        self.settings = settings
        self.headers = {"Authorization": f"Bearer {token}"}
        self.next_number = 1000
        self.log = get_logger(component="shop")

    async def run(self) -> None:
        """Pull, acknowledge and ship until cancelled."""
        async with (
            aiohttp.ClientSession(headers=self.headers) as http,
            anyio.create_task_group() as tg,
        ):
            while True:
                try:
                    await self._pull(http, tg)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.log.warning("shop_pull_failed", reason=str(exc))
                await anyio.sleep(self.settings.shop_pull_every)

    async def _pull(self, http: aiohttp.ClientSession, tg: anyio.abc.TaskGroup) -> None:
        base = f"{self.url}/v1/store/{self.store}/order"
        async with http.get(
            base, params={"acknowledgment": "unacknowledged", "status": "waiting_shipment"}
        ) as response:
            page = await response.json()
        orders = page["_embedded"]["order"]
        if not orders:
            return
        entries = []
        for order in orders:
            self.next_number += 1
            entries.append(
                {
                    "id": order["id"],
                    "storeReference": f"SHOP-{self.next_number}",
                    "status": "success",
                }
            )
        async with http.post(f"{base}/acknowledge", json={"order": entries}) as response:
            batch = await response.json()
        for order, entry in zip(orders, entries, strict=True):
            self.log.info(
                "shop_imported",
                order=order["reference"],
                store_reference=entry["storeReference"],
                batch=batch["id"],
            )
            tg.start_soon(self._ship_later, http, base, order)

    async def _ship_later(
        self, http: aiohttp.ClientSession, base: str, order: dict[str, Any]
    ) -> None:
        await anyio.sleep(self.settings.ship_after)
        tracking = tracking_number()
        entry = {
            "id": order["id"],
            "carrier": random.choice(CARRIERS),  # noqa: S311
            "trackingNumber": tracking,
            "trackingLink": f"https://www.laposte.fr/outils/suivre-vos-envois?code={tracking}",
        }
        async with http.post(f"{base}/ship", json={"order": [entry]}) as response:
            batch = await response.json()
        self.log.info(
            "shop_shipped",
            order=order["reference"],
            carrier=entry["carrier"],
            tracking_number=tracking,
            batch=batch["id"],
        )


async def _marketplace_activity(marketplace: SandboxMarketplace, settings: DemoSettings) -> None:
    rng = random.Random(7)  # noqa: S311 - sample data
    placed = marketplace.add_orders(settings.first_orders, waiting_acceptance_ratio=0.5)
    log.info("sandbox_orders_placed", count=len(placed), orders=placed)
    while True:
        await anyio.sleep(settings.new_orders_every)
        placed = marketplace.add_orders(rng.randint(1, 3), waiting_acceptance_ratio=0.5)
        log.info("sandbox_orders_placed", count=len(placed), orders=placed)
        if rng.random() < 0.3:
            waiting = [
                ref
                for ref, o in marketplace.orders.items()
                if o["order_state"] in ("WAITING_ACCEPTANCE", "SHIPPING")
            ]
            if waiting:
                victim = rng.choice(waiting)
                marketplace.cancel(victim)
                log.info("sandbox_order_cancelled_by_buyer", order=victim)


class SimulatedMerchant(ShopMerchant):
    """A merchant working in the fake WooCommerce admin: each order sfd pushed is completed a
    few seconds later, with a tracking number through the Shipment Tracking extension."""

    def __init__(self, shop: SandboxWooCommerce, settings: DemoSettings) -> None:
        super().__init__(settings.ship_after)
        self.shop = shop
        self.settings = settings

    def waiting(self) -> list[int]:
        """The orders still processing."""
        return [i for i, order in self.shop.orders.items() if order["status"] == "processing"]

    def ship(self, order_id: int) -> tuple[str | None, str, str]:
        """Complete the order with a tracking number."""
        order = self.shop.orders[order_id]
        tracking = tracking_number()
        carrier = random.choice(CARRIERS)  # noqa: S311
        self.shop.complete(order_id, tracking_number=tracking, provider=carrier)
        reference = next(
            (m["value"] for m in order["meta_data"] if m["key"] == "sfd_marketplace_reference"),
            None,
        )
        return reference, carrier, tracking


@contextlib.asynccontextmanager
async def _woocommerce(settings: DemoSettings) -> AsyncIterator[tuple[str, Merchant]]:
    key, secret = f"ck_{secrets.token_hex(20)}", f"cs_{secrets.token_hex(20)}"
    woocommerce = SandboxWooCommerce(key, secret)
    async with run_woocommerce(woocommerce) as url:
        toml = (
            f'connector = "woocommerce"\n[shops.settings]\nbase_url = "{url}"\n'
            f'consumer_key = "{key}"\nconsumer_secret = "{secret}"\n'
        )
        yield toml, SimulatedMerchant(woocommerce, settings).run


@contextlib.asynccontextmanager
async def _shopify(settings: DemoSettings) -> AsyncIterator[tuple[str, Merchant]]:
    from sfd.sandbox.shopify import SandboxShopify, ShopifyMerchant, run_shopify

    token = f"shpat_{secrets.token_hex(16)}"
    shop = SandboxShopify(token)
    async with run_shopify(shop) as url:
        toml = (
            f'connector = "shopify"\n[shops.settings]\nshop_url = "{url}"\n'
            f'access_token = "{token}"\n'
        )
        merchant = ShopifyMerchant(shop, ship_after=settings.ship_after, carriers=CARRIERS)
        yield toml, merchant.run


#: The built-in fake shops of `sfd demo --push NAME`: each serves itself and yields its
#: `[[shops]]` TOML (connector and settings) and a merchant working in it.
PUSH_SHOPS: dict[
    str, Callable[[DemoSettings], AbstractAsyncContextManager[tuple[str, Merchant]]]
] = {
    "woocommerce": _woocommerce,
    "prestashop": lambda settings: prestashop_demo(settings.ship_after),
    "shopify": _shopify,
}


async def run_demo(
    base: Config, settings: DemoSettings | None = None, *, push: bool | str = False
) -> int:
    """Run the sandbox, sfd and the simulated shop until SIGINT or SIGTERM.

    With `push` (a PUSH_SHOPS name; True is WooCommerce), the shop is a fake that sfd pushes
    into (push mode).
    """
    push = "woocommerce" if push is True else push or ""
    settings = settings or DemoSettings()
    api_key = secrets.token_urlsafe(24)
    marketplace = SandboxMarketplace(
        api_key,
        seed=random.randrange(1 << 30),  # noqa: S311
        ship_confirm_delay=settings.ship_confirm_delay,
    )
    async with contextlib.AsyncExitStack() as stack:
        sandbox_url = await stack.enter_async_context(run_sandbox(marketplace))
        shop, merchant = (
            await stack.enter_async_context(PUSH_SHOPS[push](settings)) if push else (None, None)
        )
        config = demo_config(base, sandbox_url, api_key, settings, shop)
        daemon = Daemon(config)
        try:
            await daemon.start()
        except StartupError as exc:
            log.error("startup_failed", reason=str(exc))
            await daemon.stop()
            return 1
        assert daemon.storage is not None
        store = config.stores[0].id
        log.info(
            "demo_started",
            sandbox=sandbox_url,
            sfd=daemon.url,
            mode="push" if push else "pull",
            shop=push or None,
            hint="orders appear within seconds; Ctrl-C stops the demo",
            page=f"{daemon.url}/ (sign in with a token from `sfd token create --store {store}`)",
        )
        async with anyio.create_task_group() as tg:

            async def serve_then_stop_all() -> None:
                await daemon.serve()
                tg.cancel_scope.cancel()

            tg.start_soon(serve_then_stop_all)
            await daemon.ready.wait()
            tg.start_soon(_marketplace_activity, marketplace, settings)
            if merchant is not None:
                tg.start_soon(merchant)
            else:
                token = await issue_shop_token(daemon.storage, store)
                tg.start_soon(SimulatedShop(daemon.url, token, store, settings).run)
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--push",
        nargs="?",
        const="woocommerce",
        choices=sorted(PUSH_SHOPS),
        help="push mode: sfd pushes the orders into a built-in fake shop (default woocommerce)",
    )


async def _run(config: Config, args: argparse.Namespace) -> int:
    return await run_demo(config, push=args.push)


#: `sfd demo`, contributed through the `sfd.commands` entry points (pyproject.toml).
command = Command(
    help="run sfd with a sandbox marketplace and a simulated shop (127.0.0.1 only)",
    run=_run,
    arguments=_arguments,
    default_config=True,
    serves=True,
)
