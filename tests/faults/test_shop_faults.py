"""The shop misbehaves while the daemon pushes orders into it and reads its shipments back: the
daemon keeps running, the marketplace channel keeps polling, every order ends up in the shop
exactly once and no shipment is sent twice, the fault is logged once with the shop's name and a
precise reason, and the shop recovers by itself when the fault stops."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from sfd.config import Config, Duration, load_config
from sfd.connectors.woocommerce import PER_PAGE
from sfd.daemon.push import PushLoop
from sfd.daemon.runtime import Daemon
from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.sandbox.woocommerce import SandboxWooCommerce, wc_time
from tests.faults import injector as faults
from tests.faults.harness import CapturedLog, query, running_daemon, until
from tests.faults.injector import HTML_ERROR, Fault, FaultInjector, Handler
from tests.faults.reliability import record
from tests.push.conftest import (
    MARKETPLACE_KEY,
    SHORT_RETRY,
    WC_KEY,
    WC_SECRET,
    push_config,
)
from tests.support import InProcess, write_config

GROUP = "shop fault"
SHOP = "main"
#: The shop's client timeout: short, yet long enough for a loaded 2-core machine.
TIMEOUT = 0.5
#: The marketplace's poll interval and the shop's sync interval; a failed sync waits as long.
INTERVAL = 0.2
#: Orders pushed before the fault, and orders arriving on the marketplace during it.
INITIAL = 4
DURING = 3
#: Faults that let a create through and lose its answer: the order must be found, not resent.
CREATE_LANDS = {
    "slow answer past the client timeout",
    "connection reset mid-body",
    "truncated JSON",
}


#: A call is still retried within a sync, with fewer attempts: a slow shop costs less.
THREE_ATTEMPTS = replace(SHORT_RETRY, attempts=3)


@dataclass
class ShopHub(CapturedLog, InProcess):
    """The running daemon, the marketplace it polls, the shop behind the injector, its log."""

    daemon: Daemon
    task: asyncio.Task[None]
    database: Path
    marketplace: SandboxMarketplace
    shop: SandboxWooCommerce
    injector: FaultInjector
    logs: io.StringIO

    @property
    def running(self) -> bool:
        return not self.task.done()

    def imported(self) -> set[str]:
        return {r[0] for r in query(self.database, "SELECT reference FROM orders")}

    def acknowledged(self) -> dict[str, str]:
        """Reference → the shop's id the order was acknowledged with."""
        rows = query(
            self.database,
            "SELECT reference, store_reference FROM orders WHERE acknowledgment_status = 'success'",
        )
        return {r[0]: r[1] for r in rows}

    def in_shop(self) -> Counter[str]:
        """How many shop orders carry each marketplace reference."""
        return Counter(
            next(m["value"] for m in o["meta_data"] if m["key"] == "sfd_marketplace_reference")
            for o in self.shop.orders.values()
        )

    def pushed(self, references: set[str]) -> bool:
        """Every one of `references` is in the shop and acknowledged with its shop id."""
        acknowledged = self.acknowledged()
        return all(
            r in acknowledged
            and [str(o["id"]) for o in self.shop.orders_for(r)] == [acknowledged[r]]
            for r in references
        )


def _config(tmp_path: Path, marketplace_url: str, shop_url: str, timeout: float) -> Config:
    text = push_config(marketplace_url, shop_url, timeout=timeout)
    env = {"SANDBOX_KEY": MARKETPLACE_KEY, "WC_KEY": WC_KEY, "WC_SECRET": WC_SECRET}
    config = load_config(write_config(tmp_path, text), env)
    # Durations in a config file are whole seconds; a test wants a sync every few tenths.
    fast = Duration(INTERVAL)
    return msgspec.structs.replace(
        config,
        channels=[msgspec.structs.replace(c, poll_interval=fast) for c in config.channels],
        shops=[msgspec.structs.replace(s, sync_interval=fast) for s in config.shops],
    )


@asynccontextmanager
async def running_shop_hub(tmp_path: Path, *, timeout: float = TIMEOUT) -> AsyncIterator[ShopHub]:
    """The daemon polling a sandbox marketplace and pushing into a fake WooCommerce behind the
    injector, once its first `INITIAL` orders are in the shop and acknowledged."""
    marketplace = SandboxMarketplace(MARKETPLACE_KEY, seed=41)
    initial = set(marketplace.add_orders(INITIAL, waiting_acceptance_ratio=0.0))
    shop = SandboxWooCommerce(WC_KEY, WC_SECRET)
    injector = FaultInjector()
    async with AsyncExitStack() as stack:
        shop_url = await stack.enter_async_context(injector.serve(shop.app()))
        marketplace_url = await stack.enter_async_context(run_sandbox(marketplace))
        config = _config(tmp_path, marketplace_url, shop_url, timeout)
        running = running_daemon(config, shop_retry=THREE_ATTEMPTS)
        daemon, task, logs = await stack.enter_async_context(running)
        hub = ShopHub(daemon, task, config.database, marketplace, shop, injector, logs)
        await until(lambda: hub.pushed(initial), what="the first orders pushed")
        yield hub


def oversized_page(hub: ShopHub, count: int = 10_000) -> bytes:
    """A listing of `count` completed orders of the merchant's own: 100 were asked for."""
    template = {**next(iter(hub.shop.orders.values())), "meta_data": [], "status": "completed"}
    stamp = wc_time(hub.shop.clock())
    orders = [{**template, "id": 50_000 + n, "date_modified_gmt": stamp} for n in range(count)]
    return msgspec.json.encode(orders)


ORDERS = "/wp-json/wc/v3/orders"
#: The first request of a sync with nothing to push: the completed orders, read back.
LISTED = "WooCommerce list completed orders"

#: id, the fault (built from the running hub), what the logged reason must say.
FAULTS: list[tuple[str, Callable[[ShopHub], Fault], str]] = [
    (
        "slow answer past the client timeout",
        lambda hub: faults.slow(hub.injector, 30),
        f"Transient: {LISTED}: no answer within {TIMEOUT:g} s",
    ),
    (
        "connection reset mid-body",
        lambda hub: faults.reset_mid_body,
        f"Transient: {LISTED}: ClientPayloadError: Response payload is not completed",
    ),
    (
        "truncated JSON",
        lambda hub: faults.truncated_json,
        f"Transient: {LISTED}: the answer is not JSON: ",
    ),
    (
        "invalid JSON",
        lambda hub: faults.replace_body(b"[{'id': 101, status: completed}"),
        f"Transient: {LISTED}: the answer is not JSON: [{{'id': 101, status: completed}}",
    ),
    (
        "valid JSON of the wrong shape (object)",
        lambda hub: faults.replace_body(b'{"orders": [{"id": 101}]}'),
        f"Transient: {LISTED}: unexpected answer (Expected `array`, got `object`)",
    ),
    (
        "valid JSON of the wrong shape (array)",
        lambda hub: faults.replace_body(b'[{"order_id": "101", "status": "completed"}]'),
        f"Transient: {LISTED}: unexpected answer (Object missing required field `id` - at `$[0]`)",
    ),
    (
        "200 with an HTML error page",
        lambda hub: faults.replace_body(HTML_ERROR, content_type="text/html"),
        f"Transient: {LISTED}: the answer is not JSON: <!DOCTYPE html>",
    ),
    *[
        (
            f"HTTP {code}{' with Retry-After' if after else ''}",
            lambda hub, code=code, after=after: faults.status(code, after),
            f"Transient: {LISTED}: HTTP {code}: <!DOCTYPE html>",
        )
        for code in (500, 502, 503)
        for after in (None, "1")
        if (code, after) != (503, "1")
    ],
    (
        "HTTP 503 with Retry-After",
        lambda hub: faults.status(503, "1"),
        f"RateLimited: {LISTED}: HTTP 503 unavailable, retry after 1 s",
    ),
    (
        "HTTP 429",
        lambda hub: faults.status(429),
        f"RateLimited: {LISTED}: HTTP 429 rate limited",
    ),
    (
        "HTTP 429 with Retry-After",
        lambda hub: faults.status(429, "1"),
        f"RateLimited: {LISTED}: HTTP 429 rate limited, retry after 1 s",
    ),
    (
        "10,000 orders where 100 were asked for",
        lambda hub: faults.replace_body(oversized_page(hub)),
        f"Transient: {LISTED}: 10000 orders in a page where at most {PER_PAGE} were asked for; "
        "page refused",
    ),
    (
        "redirect to another host",
        lambda hub: faults.redirect(f"https://elsewhere.invalid{ORDERS}"),
        f"Transient: {LISTED}: HTTP 302 redirect to elsewhere.invalid refused",
    ),
]


def watched(fault: Fault, pusher: PushLoop, creates: list[int]) -> Fault:
    """`fault`, noting each create it spoils: the number of failed syncs at that moment."""

    async def spoil(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            creates.append(pusher.failures)
        return await fault(request, handler)

    return spoil


@pytest.mark.parametrize(("name", "make", "reason"), [pytest.param(*f, id=f[0]) for f in FAULTS])
async def test_a_shop_fault_is_survived_logged_once_and_recovered_from(
    tmp_path: Path, name: str, make: Callable[[ShopHub], Fault], reason: str
) -> None:
    async with running_shop_hub(tmp_path) as hub:
        pusher, poller = hub.pusher, hub.poller
        failures = 2 if "Retry-After" in name or name.startswith("slow") else 3
        before = hub.acknowledged()
        first = sorted(before)[0]
        creates: list[int] = []
        mark = hub.mark()  # only what the fault caused is judged
        # Between two syncs, so the next one meets the fault from its first request.
        await until(lambda: pusher.status.state == "idle", what="the shop loop between syncs")
        hub.injector.inject(watched(make(hub), pusher, creates), path="/wp-json/")
        await until(lambda: pusher.failures >= 1, what="a failed sync")

        # Meanwhile orders keep coming from the marketplace, and the merchant ships one.
        ticks = poller.status.ticks
        fresh = set(hub.marketplace.add_orders(DURING, waiting_acceptance_ratio=0.0))
        hub.shop.complete(int(before[first]), tracking_number="6A0000000099")
        await until(
            lambda: fresh <= hub.imported() and poller.status.ticks >= ticks + 2,
            what="the marketplace channel imports its new orders during the fault",
        )
        await until(
            lambda: pusher.failures >= failures and bool(creates) and pusher.failures > creates[0],
            what=f"{failures} failed syncs, one of them after a spoiled create",
        )
        assert poller.status.condition == "ok"
        assert pusher.status.condition == "failing"
        assert hub.running, "the daemon stopped"
        assert max(hub.in_shop().values()) == 1, "an order went twice into the shop"
        assert hub.marketplace.calls_to("OR24") == [], "shipped before the shop could be read"

        # Recovery by itself: no restart, no wake-up.
        hub.injector.heal()
        everything = before.keys() | fresh
        await until(
            lambda: (
                hub.pushed(everything)
                and len(hub.marketplace.calls_to("OR24", first)) == 1
                and pusher.status.condition == "ok"
            ),
            what="the shop recovers: every order pushed, the completed one shipped",
        )

        failed = hub.events("shop_sync_failed", mark, shop=SHOP)
        assert len(failed) == 1, [e["reason"] for e in failed]
        assert failed[0]["reason"].startswith(reason), failed[0]["reason"]
        assert failed[0]["level"] == "error" and failed[0]["condition"] == "failing"
        assert len(hub.events("shop_sync_recovered", mark, shop=SHOP)) == 1
        assert hub.events("poll_failed", mark) == []
        found = hub.events("shop_push_found", mark, shop=SHOP)
        assert bool(found) == (name in CREATE_LANDS), found
        others = [
            e for e in hub.levels("warning", "error", "critical", since=mark)
            if e["event"] != "shop_sync_failed"
        ]  # fmt: skip
        assert others == []

        in_shop = hub.in_shop()
        lost = len(everything - in_shop.keys()) + len(everything - hub.acknowledged().keys())
        duplicated = sum(n - 1 for n in in_shop.values()) + sum(
            n - 1 for n in Counter(c.order_id for c in hub.marketplace.calls_to("OR24")).values()
        )
        assert hub.acknowledged() | before == hub.acknowledged(), "an acknowledgement changed"
        assert hub.running
        record(
            GROUP,
            name,
            tries=hub.injector.hits,
            lost=lost,
            duplicated=duplicated,
            test="tests/faults/test_shop_faults.py",
        )
        assert (lost, duplicated) == (0, 0)
        assert set(in_shop) == everything


async def test_a_shop_down_is_asked_a_few_times_per_sync_not_retries_times_retries(
    tmp_path: Path,
) -> None:
    """Within a sync each read is tried `THREE_ATTEMPTS.attempts` times, and a create whose
    outcome is unknown is followed by one search: the search-then-create around them does not
    retry those reads again, which would multiply the calls (and the time a sync hangs) while a
    shop is down.
    """
    async with running_shop_hub(tmp_path) as hub:
        pusher = hub.pusher
        asked: list[tuple[int, str]] = []
        """(the failed sync a request belongs to, what it asked)."""
        down = faults.status(500)

        async def counted(request: web.Request, handler: Handler) -> web.StreamResponse:
            what = "search" if "search" in request.query else f"{request.method} {request.path}"
            asked.append((pusher.failures, what))
            return await down(request, handler)

        await until(lambda: pusher.status.state == "idle", what="the shop loop between syncs")
        # Orders only: the products still answer, so the new order's create goes out.
        hub.injector.inject(counted, path=ORDERS)
        await until(lambda: pusher.failures >= 1, what="a failed sync")
        hub.marketplace.add_orders(1, waiting_acceptance_ratio=0.0)
        await until(
            lambda: pusher.failures >= 4 and any(w.startswith("POST") for _, w in asked),
            what="failed syncs that tried to push the new order",
        )
        await until(lambda: pusher.status.state == "idle", what="the shop loop between syncs")
        hub.injector.heal()

    attempts = THREE_ATTEMPTS.attempts
    syncs: dict[int, Counter[str]] = {}
    for sync, what in asked:
        syncs.setdefault(sync, Counter())[what] += 1
    creates = 0
    for sync, calls in syncs.items():
        create = calls.pop(f"POST {ORDERS}", 0)
        assert create <= 1, (sync, create)
        creates += create
        # One read, retried: the listing or the search, whichever failed.
        assert list(calls.values()) == [attempts], (sync, calls)
        assert not create or calls == {"search": attempts}, "a create not followed by a search"
    assert creates >= 1
