"""The order page in a real browser: Debian's chromium, headless, driven by Playwright,
against the daemon running in this process and the sandbox marketplace over real HTTP.

One daemon and one browser serve the whole module; each test signs in in a fresh browser
context (its own cookies) and works on its own orders.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from sfd.config import load_config
from sfd.daemon.loops import Poller
from sfd.daemon.notify import SystemdNotifier
from sfd.daemon.runtime import Daemon
from sfd.domain.clock import utcnow
from sfd.sandbox.marketplace import SandboxMarketplace, channel_toml, run_sandbox
from sfd.storage import Storage
from tests.support import ROOT, until, write_config

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "docs" / "screenshots"
KEY = "sandbox-key-page"

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason="Debian's chromium is not installed (.ci/run installs it with apt-get)",
    ),
]


class ShiftedClock:
    """The sandbox's clock, moved back to place orders whose ship-by date has passed."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


@dataclass
class Hub:
    """The running daemon, its two marketplaces (store 1 and store 2), and one token each."""

    daemon: Daemon
    store1: SandboxMarketplace
    store2: SandboxMarketplace
    late: list[str]
    accept: list[str]
    token1: str = ""
    token2: str = ""
    task: asyncio.Task[None] | None = None
    polls: dict[str, int] = field(default_factory=dict)

    @property
    def storage(self) -> Storage:
        assert self.daemon.storage is not None
        return self.daemon.storage

    def poller(self, channel: str) -> Poller:
        return next(
            loop
            for loop in self.daemon.loops
            if isinstance(loop, Poller) and loop.channel.name == channel
        )

    async def order_id(self, channel: str, reference: str) -> int:
        row = await self.storage.db.fetchrow(
            "SELECT o.id FROM orders o JOIN channels c ON c.id = o.channel_id "
            "WHERE c.name = $1 AND o.reference = $2",
            (channel, reference),
        )
        assert row is not None, f"{reference} of {channel} not imported"
        return int(row[0])

    async def operations(self) -> int:
        row = await self.storage.db.fetchrow("SELECT count(*) FROM operations")
        assert row is not None
        return int(row[0])


def channel(name: str, store: int, base_url: str) -> str:
    return channel_toml(
        base_url,
        "env:SANDBOX_KEY",
        name=name,
        store=store,
        auto_accept=False,
        require_tracking=True,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    clock = ShiftedClock()
    store1 = SandboxMarketplace(KEY, seed=11, clock=clock)
    store2 = SandboxMarketplace(KEY, seed=12)
    clock.offset = -timedelta(days=7)  # placed a week ago: due two to five days ago
    late = store1.add_orders(2, waiting_acceptance_ratio=0.0, relay_ratio=1.0)
    clock.offset = timedelta(0)
    store1.add_orders(3, waiting_acceptance_ratio=0.0)
    accept = store1.add_orders(2, waiting_acceptance_ratio=1.0)
    store2.add_orders(2, waiting_acceptance_ratio=0.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SANDBOX_KEY", KEY)
        async with run_sandbox(store1) as url1, run_sandbox(store2) as url2:
            directory = tmp_path_factory.mktemp("page")
            config = write_config(
                directory, channel("sandbox", 1, url1) + channel("other", 2, url2)
            )
            daemon = Daemon(load_config(config), notifier=SystemdNotifier({}), handle_signals=False)
            await daemon.start()
            assert daemon.worker is not None
            daemon.worker.confirm_delay = 0.2  # ask the marketplace soon after a delivery
            running = Hub(daemon, store1, store2, late, accept)
            running.task = asyncio.create_task(daemon.serve())
            await daemon.ready.wait()
            await until(
                lambda: all(running.poller(c).status.ticks >= 1 for c in ("sandbox", "other"))
            )
            now = daemon.clock()
            _, running.token1 = await running.storage.tokens.create(1, "person-one", now)
            _, running.token2 = await running.storage.tokens.create(2, "person-two", now)
            try:
                yield running
            finally:
                daemon.request_stop()
                await asyncio.wait_for(running.task, 10)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    opened = await context.new_page()
    try:
        yield opened
    finally:
        await context.close()


async def sign_in(page: Page, hub: Hub, token: str | None = None) -> None:
    await page.goto(hub.daemon.url + "/")
    await expect(page).to_have_url(hub.daemon.url + "/signin")
    await page.get_by_label("API token").fill(token or hub.token1)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(hub.daemon.url + "/orders")


async def open_order(page: Page, hub: Hub, reference: str) -> int:
    """Sign in and open the sandbox channel's order `reference`; return its id."""
    await sign_in(page, hub)
    order = await hub.order_id("sandbox", reference)
    await page.goto(f"{hub.daemon.url}/orders/{order}")
    return order


async def reload_until(
    page: Page, done: Callable[[], Awaitable[bool]], timeout: float = 20
) -> None:
    """Reload the page until an awaited check on it passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await page.reload()
        if await done():
            return
        assert asyncio.get_running_loop().time() < deadline, "the page never showed it"
        await asyncio.sleep(0.2)


# -- the flows ------------------------------------------------------------------------------


async def test_a_person_signs_in_with_a_token_and_sees_the_orders_needing_them(
    page: Page, hub: Hub
) -> None:
    await page.goto(hub.daemon.url + "/orders")
    await expect(page).to_have_url(hub.daemon.url + "/signin")
    await expect(page.get_by_label("API token")).to_be_focused()
    await page.keyboard.type(hub.token1)  # the keyboard alone signs in
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(hub.daemon.url + "/orders")
    await expect(page.get_by_role("heading", name="Orders", exact=True)).to_be_visible()
    await expect(page.get_by_text("store 1 · person-one")).to_be_visible()
    rows = page.locator("table.orders tbody tr")
    await expect(rows).to_have_count(7)  # 5 to ship (2 late) and 2 to accept; none shipped
    first = rows.first
    await expect(first).to_have_class("late")
    assert await first.get_attribute("data-reference") in hub.late
    await page.screenshot(path=str(SCREENSHOTS / "list.png"), full_page=True)


async def test_a_late_order_found_by_the_filters_is_shipped_and_the_marketplace_confirms(
    page: Page, hub: Hub
) -> None:
    await sign_in(page, hub)
    await page.get_by_label("Channel").select_option("sandbox")
    await page.get_by_label("Late only").check()
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"/orders\?.*channel=sandbox&.*late=1"))
    rows = page.locator("table.orders tbody tr")
    await expect(rows).to_have_count(2)
    reference = hub.late[0]
    await page.get_by_role("link", name=reference, exact=True).click()
    await expect(page.get_by_role("heading", name=f"Order {reference}")).to_be_visible()
    await expect(page.locator("#time-left")).to_contain_text("late by")

    await page.get_by_label("Carrier").fill("Colissimo")
    await page.get_by_label("Tracking number").fill("6A123456789")
    await page.get_by_label("Tracking link").fill(
        "https://www.laposte.fr/outils/suivre-vos-envois?code=6A123456789"
    )
    await page.get_by_role("button", name="Mark as shipped").click()
    await expect(page.get_by_role("status").first).to_contain_text("ship requested: ticket")

    ship_row = page.locator('tr[data-kind="ship"]')

    async def confirmed() -> bool:
        status = await page.locator("#order-status").inner_text()
        state = await ship_row.locator(".state").inner_text()
        return status == "shipped" and state == "succeed"

    await reload_until(page, confirmed)
    await expect(page.locator("#shipment")).to_contain_text("Colissimo 6A123456789")
    timeline = page.locator(".timeline")
    await expect(timeline).to_contain_text("page person-one ship_requested")
    await expect(timeline).to_contain_text("marketplace ship_confirmed")
    await expect(page.locator(".actions form[action$='/ship']")).to_have_count(0)
    assert len(hub.store1.calls_to("OR24", reference)) == 1
    assert hub.store1.state(reference) == "SHIPPED"
    await page.screenshot(path=str(SCREENSHOTS / "detail.png"), full_page=True)


async def test_a_ship_without_tracking_number_is_refused_and_explained_with_values_kept(
    page: Page, hub: Hub
) -> None:
    await open_order(page, hub, hub.late[1])
    await page.get_by_label("Carrier").fill("DPD")
    await page.get_by_label("Tracking link").fill("https://trace.dpd.fr/fr/trace/1")
    await page.get_by_role("button", name="Mark as shipped").click()
    await expect(page.locator("#ship-error")).to_have_text(
        "channel sandbox requires a tracking number"
    )
    await expect(page.get_by_label("Carrier")).to_have_value("DPD")
    await expect(page.get_by_label("Tracking link")).to_have_value(
        "https://trace.dpd.fr/fr/trace/1"
    )
    await expect(page.locator("#order-status")).to_have_text("waiting_shipment")
    await expect(page.locator(".timeline")).to_contain_text("page person-one ship_refused")
    assert hub.store1.calls_to("OR24", hub.late[1]) == []


async def test_an_oversized_tracking_number_is_refused_and_nothing_is_written(
    page: Page, hub: Hub
) -> None:
    await open_order(page, hub, hub.late[1])
    before = await hub.operations()
    tracking = page.get_by_label("Tracking number")
    await tracking.evaluate("input => input.removeAttribute('maxlength')")  # as a tamperer would
    await page.get_by_label("Carrier").fill("DPD")
    await tracking.fill("7 " * 550)
    await page.get_by_role("button", name="Mark as shipped").click()
    await expect(page.locator("#ship-error")).to_have_text(
        "Tracking number is 1099 characters long; at most 1024"
    )
    await expect(page.get_by_label("Carrier")).to_have_value("DPD")
    assert await hub.operations() == before


async def test_an_order_waiting_for_acceptance_is_accepted(page: Page, hub: Hub) -> None:
    await sign_in(page, hub)
    await page.get_by_label("Status").select_option("waiting_store_acceptance")
    await page.get_by_role("button", name="Filter").click()
    reference = hub.accept[0]
    await page.get_by_role("link", name=reference, exact=True).click()
    await expect(page.get_by_role("button", name="Mark as shipped")).to_have_count(0)
    await page.get_by_role("button", name="Accept").click()
    await expect(page.get_by_role("status").first).to_contain_text("accept requested: ticket")
    await expect(page.get_by_role("button", name="Accept")).to_have_count(0)

    async def accepted() -> bool:
        return await page.locator("#order-status").inner_text() == "waiting_shipment"

    await reload_until(page, accepted)
    await expect(page.get_by_role("button", name="Mark as shipped")).to_be_visible()
    assert hub.store1.state(reference) == "SHIPPING"


async def test_a_store_one_token_cannot_see_store_two_orders_even_by_editing_the_url(
    page: Page, hub: Hub
) -> None:
    theirs = await hub.order_id("other", next(iter(hub.store2.orders)))
    await sign_in(page, hub)
    await expect(page.get_by_label("Channel").locator("option")).to_have_text(["Any", "sandbox"])
    response = await page.goto(f"{hub.daemon.url}/orders/{theirs}")
    assert response is not None and response.status == 404
    await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    response = await page.goto(f"{hub.daemon.url}/orders/{theirs + 10_000}")
    assert response is not None and response.status == 404
    # The same order is there for store 2's token.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(hub.daemon.url + "/signin")
    await sign_in(page, hub, hub.token2)
    response = await page.goto(f"{hub.daemon.url}/orders/{theirs}")
    assert response is not None and response.status == 200


async def test_a_post_without_the_csrf_token_is_refused(page: Page, hub: Hub) -> None:
    order = await open_order(page, hub, hub.accept[1])
    before = await hub.operations()
    accept = page.locator(f"form[action='/orders/{order}/accept']")
    await accept.locator("input[name=csrf]").evaluate("input => input.remove()")
    await accept.get_by_role("button", name="Accept").click()
    await expect(page.get_by_role("heading", name="Form refused")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("Nothing was changed")
    assert await hub.operations() == before


async def test_script_in_a_field_is_shown_as_text_and_never_runs(page: Page, hub: Hub) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await open_order(page, hub, hub.accept[1])
    script = "<script>alert('x')</script><b>bold</b>"
    await page.get_by_label("Store reference (optional)").fill(script)
    await page.get_by_role("button", name="Acknowledge").click()
    await expect(page.locator("#store-reference")).to_have_text(script)
    await expect(page.locator("#store-reference b")).to_have_count(0)
    await page.goto(f"{hub.daemon.url}/orders?show=all&q=" + "%3Cscript%3E")
    await expect(page.get_by_label("Reference")).to_have_value("<script>")
    await expect(page.locator("table.orders tbody tr")).to_have_count(1)
    response = await page.goto(f"{hub.daemon.url}/orders/424242")
    assert response is not None and response.status == 404
    assert dialogs == []


async def test_the_channels_view_shows_each_channel_and_polls_now(page: Page, hub: Hub) -> None:
    await sign_in(page, hub)
    await page.get_by_role("link", name="Channels").click()
    card = page.locator('[data-channel="sandbox"]')
    await expect(card).to_contain_text("mirakl")
    await expect(card.locator("h2 .state")).to_have_text("ok")
    await expect(card).to_contain_text("Orders by status (7)")
    await expect(page.locator('[data-channel="other"]')).to_have_count(0)
    ticks = hub.poller("sandbox").status.ticks
    await card.get_by_role("button", name="Poll sandbox now").click()
    await expect(page.get_by_role("status")).to_contain_text("Channel sandbox polls now")
    await until(lambda: hub.poller("sandbox").status.ticks > ticks)
    await page.reload()
    await page.screenshot(path=str(SCREENSHOTS / "channels.png"), full_page=True)


LABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, button')]
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                 && !(e.tagName === 'BUTTON' && e.textContent.trim()))
    .map(e => e.outerHTML)"""
FITS = "() => document.documentElement.scrollWidth <= window.innerWidth"


async def test_every_view_fits_a_phone_and_labels_every_control(page: Page, hub: Hub) -> None:
    await sign_in(page, hub)
    await page.set_viewport_size({"width": 390, "height": 844})
    order = await hub.order_id("sandbox", hub.late[1])
    for path in ("/orders", f"/orders/{order}", "/channels"):
        await page.goto(hub.daemon.url + path)
        assert await page.evaluate(LABELLED) == [], path
        assert await page.evaluate(FITS), f"{path} scrolls sideways on a phone"
    await page.goto(hub.daemon.url + "/orders")
    await page.screenshot(path=str(SCREENSHOTS / "list-phone.png"), full_page=True)
