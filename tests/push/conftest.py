"""A daemon in this process with a sandbox marketplace and a fake WooCommerce shop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import aiohttp
import pytest

from sfd.config import load_config
from sfd.connectors.base import AuthFailed
from sfd.connectors.shop import Retry
from sfd.daemon.loops import Poller
from sfd.daemon.push import PushLoop
from sfd.daemon.runtime import Daemon
from sfd.domain import StoredOrder
from sfd.sandbox.kit import RecordedCall
from sfd.sandbox.marketplace import SandboxMarketplace, channel_toml, run_sandbox
from sfd.sandbox.prestashop import SandboxPrestaShop, run_prestashop
from sfd.sandbox.shopify import SandboxShopify, run_shopify
from sfd.sandbox.woocommerce import SandboxWooCommerce, run_woocommerce
from tests.support import InProcess, run_cli, start_daemon, until, write_config

MARKETPLACE_KEY = "sandbox-key-push"
WC_KEY = "ck_0123456789abcdef0123456789abcdef01234567"
WC_SECRET = "cs_fedcba9876543210fedcba9876543210fedcba98"
TOKEN = "shpat_0123456789abcdef0123456789abcdef"
PS_KEY = "PSKEY0123456789ABCDEFGHIJKLMNOPQ"
#: The shop's retries keep their shape (several attempts, growing waits), in milliseconds.
SHORT_RETRY = Retry(attempts=4, wait_initial=0.01, wait_max=0.05, timeout=10.0)


def shop_toml(
    marketplace_url: str,
    connector: str,
    settings: str,
    *,
    require_tracking: bool = True,
    name: str = "main",
    sync: str = "1h",
    shop_lines: str = "",
) -> str:
    """A Mirakl sandbox channel and one shop `name` in push mode, with its `settings` lines."""
    channel = channel_toml(
        marketplace_url, "env:SANDBOX_KEY", auto_accept=False, require_tracking=require_tracking
    )
    return f"""{channel}
[[shops]]
name = "{name}"
store = 1
connector = "{connector}"
sync_interval = "{sync}"
{shop_lines}
[shops.settings]
{settings}
"""


def push_config(
    marketplace_url: str,
    shop_url: str,
    *,
    require_tracking: bool = True,
    tracking_wait: str = "24h",
    shop_settings: str = "",
    timeout: float = 2.0,
) -> str:
    """A Mirakl sandbox channel and a WooCommerce shop `main` in push mode."""
    settings = (
        f'base_url = "{shop_url}"\nconsumer_key = "env:WC_KEY"\n'
        f'consumer_secret = "env:WC_SECRET"\ntimeout = {timeout}\n{shop_settings}'
    )
    return shop_toml(
        marketplace_url,
        "woocommerce",
        settings,
        require_tracking=require_tracking,
        shop_lines=f'tracking_wait = "{tracking_wait}"',
    )


def shopify_config(
    marketplace_url: str,
    shop_url: str,
    *,
    require_tracking: bool = True,
    timeout: float = 2.0,
    shop_settings: str = "",
) -> str:
    """A Mirakl sandbox channel and a Shopify shop `main` in push mode."""
    settings = (
        f'shop_url = "{shop_url}"\naccess_token = "env:SHOPIFY_TOKEN"\n'
        f"timeout = {timeout}\n{shop_settings}"
    )
    return shop_toml(marketplace_url, "shopify", settings, require_tracking=require_tracking)


def prestashop_config(
    marketplace_url: str, shop_url: str, *, require_tracking: bool = True, sync: str = "1h"
) -> str:
    """A Mirakl sandbox channel and a PrestaShop shop `ps` in push mode."""
    settings = (
        f'base_url = "{shop_url}"\napi_key = "env:PS_WEBSERVICE_KEY"\n'
        'payment_module = "ps_wirepayment"\ncarrier_id = 1\npaid_state = 2\n'
        'shipped_states = [4, 5]\ncancelled_states = [6]\ntimezone = "UTC"\ntimeout = 2.0'
    )
    return shop_toml(
        marketplace_url,
        "prestashop",
        settings,
        require_tracking=require_tracking,
        name="ps",
        sync=sync,
    )


@dataclass
class PushHub(InProcess):
    """The running daemon, the marketplace it polls and the shop it pushes into."""

    marketplace: SandboxMarketplace
    shop: SandboxWooCommerce
    config_path: Path
    http: aiohttp.ClientSession
    daemon: Daemon = field(init=False)
    task: asyncio.Task[None] | None = None
    CONNECTOR: ClassVar[str] = "woocommerce"
    CREATE: ClassVar[str] = "orders.create"
    """The operation under which the fake shop records the daemon's creates."""

    async def start(self) -> None:
        self.daemon, self.task = await start_daemon(
            load_config(self.config_path), shop_retry=SHORT_RETRY
        )
        await until(lambda: self.pusher.status.ticks >= 1)

    async def stop(self) -> None:
        if self.task is not None:
            self.daemon.request_stop()
            await asyncio.wait_for(self.task, 10)
            self.task = None

    async def _tick(self, loop: Poller | PushLoop) -> None:
        await until(lambda: loop.status.state == "idle")
        ticks = loop.status.ticks
        loop.wake()
        await until(lambda: loop.status.ticks > ticks, timeout=30)

    async def poll(self) -> None:
        """Import what the marketplace has now."""
        await self._tick(self.poller)

    async def sync(self) -> None:
        """One push-mode sync: push, acknowledge, read back."""
        await self._tick(self.pusher)

    async def orders_on_sale(self, n: int) -> list[str]:
        """`n` paid orders on the marketplace (waiting for shipment), imported."""
        references = self.marketplace.add_orders(n, waiting_acceptance_ratio=0.0)
        await self.poll()
        return references

    async def order(self, reference: str) -> StoredOrder:
        row = await self.storage.db.fetchrow(
            "SELECT id FROM orders WHERE reference = $1", (reference,)
        )
        assert row is not None, f"order {reference} not imported"
        order = await self.storage.orders.get(int(row[0]))
        assert order is not None
        return order

    def shop_order(self, reference: str) -> dict[str, Any]:
        [order] = self.shop.orders_for(reference)
        return order

    def shop_id(self, reference: str) -> int:
        """The id in the shop of the one order pushed for `reference`."""
        return int(self.shop_order(reference)["id"])

    async def pushed_create(self) -> tuple[StoredOrder, dict[str, Any], RecordedCall]:
        """One order on sale, pushed: the order as stored (before the push), as the
        marketplace has it, and the shop's one create request."""
        [reference] = await self.orders_on_sale(1)
        order = await self.order(reference)
        await self.sync()
        [create] = self.shop.calls(self.CREATE)
        return order, self.marketplace.order(reference), create

    async def pushed_order(self) -> tuple[str, int]:
        """One order on sale, pushed into the shop: its reference and its id in the shop."""
        [reference] = await self.orders_on_sale(1)
        await self.sync()
        return reference, self.shop_id(reference)

    def ship_in_shop(self, shop_id: int, tracking_number: str) -> None:
        """The merchant ships the order (with Colissimo if it has a tracking number):
        WooCommerce completes it."""
        self.shop.complete(shop_id, tracking_number=tracking_number, provider="Colissimo")

    def add_tracking_in_shop(self, shop_id: int, tracking_number: str) -> None:
        """The tracking of an order shipped without one comes in late."""
        self.shop.add_tracking(shop_id, tracking_number)


@dataclass
class ShopifyHub(PushHub):
    """The daemon, the marketplace it polls and the fake Shopify it pushes into."""

    shop: SandboxShopify  # type: ignore[assignment]  # the same hub, another shop
    CONNECTOR: ClassVar[str] = "shopify"
    CREATE: ClassVar[str] = "orderCreate"

    def shop_id(self, reference: str) -> int:
        return int(self.shop_order(reference)["legacyResourceId"])

    def ship_in_shop(self, shop_id: int, tracking_number: str) -> None:
        """The merchant fulfils the whole order, with no tracking at all without a number."""
        self.shop.fulfil(
            shop_id, company="Colissimo" if tracking_number else "", number=tracking_number
        )

    def add_tracking_in_shop(self, shop_id: int, tracking_number: str) -> None:
        """A later fulfilment, of nothing left, carries the tracking."""
        self.shop.fulfil(shop_id, number=tracking_number)


class PsHub(PushHub):
    """The push hub, its shop a fake PrestaShop."""

    shop: SandboxPrestaShop  # type: ignore[assignment]
    CONNECTOR: ClassVar[str] = "prestashop"

    def shop_orders(self, reference: str) -> list[int]:
        return [i for i in self.shop.orders if self.shop.reference_of(i) == reference]

    def shop_id(self, reference: str) -> int:
        [shop_id] = self.shop_orders(reference)
        return shop_id

    def ship_in_shop(self, shop_id: int, tracking_number: str) -> None:
        """The merchant moves the order to shipped in the back office, with its tracking."""
        self.shop.ship(shop_id, tracking_number)

    def add_tracking_in_shop(self, shop_id: int, tracking_number: str) -> None:
        """The merchant ships the order again, this time with its tracking."""
        self.shop.ship(shop_id, tracking_number)


def expected_meta(
    mirakl: dict[str, Any],
    order: StoredOrder,
    reference: str,
    *,
    email_key: str = "_sfd_buyer_email",
    ship_by: str | None = None,
) -> tuple[list[dict[str, str]], str]:
    """The key/value meta data a pushed order carries in the shop (`ship_by` after its id,
    the buyer's email under `email_key`), and the shop order's note."""
    assert order.billing_address is not None
    meta = [
        {"key": "sfd_marketplace", "value": "sandbox"},
        {"key": "sfd_marketplace_reference", "value": reference},
        {"key": "sfd_order_id", "value": str(order.id)},
    ]
    if ship_by is not None:
        meta.append({"key": "sfd_ship_by", "value": ship_by})
    if mirakl["shipping_pudo_id"]:
        meta.append({"key": "sfd_relay_point_id", "value": mirakl["shipping_pudo_id"]})
    if mirakl["customer"]["organization"]:
        vat = mirakl["customer"]["organization"]["tax_identification_number"]
        meta.append({"key": "sfd_buyer_vat_number", "value": vat})
    if order.billing_address.email:
        meta.append({"key": email_key, "value": order.billing_address.email})
    note = f"sandbox order {reference}"
    if mirakl["shipping_pudo_id"]:
        note += f", relay point {mirakl['shipping_pudo_id']}"
    return meta, note


@pytest.fixture
def shop(request: pytest.FixtureRequest) -> SandboxWooCommerce:
    """The fake shop; parametrized indirectly with "no-tracking-extension" to go without it."""
    without = getattr(request, "param", None) == "no-tracking-extension"
    return SandboxWooCommerce(WC_KEY, WC_SECRET, tracking_extension=not without)


@pytest.fixture
def hub_options() -> dict[str, Any]:
    """Extra `push_config` options; a test overrides this fixture to change them."""
    return {}


Hub = TypeVar("Hub", bound=PushHub)


@asynccontextmanager
async def running_hub(
    tmp_path: Path,
    hub: type[Hub],
    shop: Any,
    serve_shop: Callable[[Any], AbstractAsyncContextManager[str]],
    config: Callable[[str, str], str],
    *,
    database_url: str | None = None,
) -> AsyncIterator[Hub]:
    """A started `hub`: the sandbox marketplace and `shop` (by `serve_shop`) served, the
    daemon running on the TOML `config` writes from their URLs (the marketplace's, the shop's),
    on `database_url` (a PostgreSQL URL) or else an SQLite file beside the config."""
    marketplace = SandboxMarketplace(MARKETPLACE_KEY, seed=11)
    async with (
        run_sandbox(marketplace) as marketplace_url,
        serve_shop(shop) as shop_url,
        aiohttp.ClientSession() as http,
    ):
        config_path = write_config(
            tmp_path, config(marketplace_url, shop_url), database=database_url or "sfd.db"
        )
        running = hub(marketplace, shop, config_path, http)
        await running.start()
        try:
            yield running
        finally:
            await running.stop()


async def assert_refused_unquoted(call: Awaitable[object], *secrets: str) -> None:
    """`call` fails as AuthFailed on the shop's HTTP 401, quoting none of `secrets`."""
    with pytest.raises(AuthFailed) as caught:
        await call
    assert "HTTP 401" in str(caught.value)
    for secret in secrets:
        assert secret not in str(caught.value)


async def assert_auth_failed_and_shown(hub: PushHub, secret: str, reference: str) -> str:
    """The shop refused the daemon's credentials (`secret`, never shown): nothing was pushed,
    the shop is `auth_failed` in its status and stored state; its `sfd shops` row."""
    assert hub.pusher.status.condition == "auth_failed"
    assert "401" in (hub.pusher.status.last_error or "")
    assert secret not in (hub.pusher.status.last_error or "")
    assert hub.shop.orders == {}
    assert (await hub.order(reference)).acknowledged_at is None
    [state] = await hub.storage.pushes.states()
    assert state.auth_state == "auth_failed"
    shown = await asyncio.to_thread(run_cli, hub.config_path, "shops")
    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if "main" in line]
    assert "auth_failed" in row
    return row


@dataclass(frozen=True)
class ShopKind(Generic[Hub]):
    """What differs from shop to shop in a hub: the fake shop, how it is served, the TOML, and
    the environment variables holding its credentials (`secret_env` the one a test spoils)."""

    hub: type[Hub]
    make: Callable[[], Any]
    serve: Callable[[Any], AbstractAsyncContextManager[str]]
    config: Callable[..., str]
    env: dict[str, str]
    secret_env: str


WOOCOMMERCE = ShopKind(
    PushHub,
    lambda: SandboxWooCommerce(WC_KEY, WC_SECRET),
    run_woocommerce,
    push_config,
    {"WC_KEY": WC_KEY, "WC_SECRET": WC_SECRET},
    "WC_SECRET",
)
SHOPIFY = ShopKind(
    ShopifyHub,
    lambda: SandboxShopify(TOKEN),
    run_shopify,
    shopify_config,
    {"SHOPIFY_TOKEN": TOKEN},
    "SHOPIFY_TOKEN",
)
PRESTASHOP = ShopKind(
    PsHub,
    lambda: SandboxPrestaShop(PS_KEY),
    run_prestashop,
    prestashop_config,
    {"PS_WEBSERVICE_KEY": PS_KEY},
    "PS_WEBSERVICE_KEY",
)
SHOPS: dict[str, ShopKind[Any]] = {
    "woocommerce": WOOCOMMERCE,
    "shopify": SHOPIFY,
    "prestashop": PRESTASHOP,
}


@asynccontextmanager
async def shop_hub(
    kind: ShopKind[Hub],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    *,
    shop: Any = None,
    database_url: str | None = None,
) -> AsyncIterator[Hub]:
    """A started hub into `kind` of shop (`shop`, or a new fake): `options` go to its config
    but "secret", which replaces its credential."""
    options = dict(options)
    env = {"SANDBOX_KEY": MARKETPLACE_KEY, **kind.env}
    env[kind.secret_env] = options.pop("secret", env[kind.secret_env])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = functools.partial(kind.config, **options)
    fake = kind.make() if shop is None else shop
    async with running_hub(
        tmp_path, kind.hub, fake, kind.serve, config, database_url=database_url
    ) as running:
        yield running


@pytest.fixture
async def hub(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shop: SandboxWooCommerce,
    hub_options: dict[str, Any],
    database_url: str,
) -> AsyncIterator[PushHub]:
    async with shop_hub(
        WOOCOMMERCE, tmp_path, monkeypatch, hub_options, shop=shop, database_url=database_url
    ) as running:
        yield running
