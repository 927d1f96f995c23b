"""A channel's poller inside the running daemon, against the sandbox marketplace over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfd.config import load_config
from sfd.daemon.runtime import Daemon
from sfd.domain import OrderStatus
from sfd.domain.clock import from_iso, utcnow
from sfd.logs import configure_logging
from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.storage import OrderFilter
from tests.support import InProcess, start_daemon, until, write_config

KEY = "sandbox-key-poller"


@dataclass
class Running(InProcess):
    daemon: Daemon
    marketplace: SandboxMarketplace
    logs: io.StringIO

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.logs.getvalue().splitlines()]
        return [line for line in lines if line["event"] == name]

    async def poll_now(self) -> None:
        await until(lambda: self.poller.status.state == "idle")
        ticks = self.poller.status.ticks
        self.poller.wake()
        await until(lambda: self.poller.status.ticks > ticks)


@pytest.fixture
def auto_accept() -> bool | None:
    """Whether the channel accepts orders by itself; None leaves the key to its default."""
    return None


class ShiftedClock:
    """The sandbox marketplace's clock: now, moved by `offset`, to place orders in the past."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


@pytest.fixture
def marketplace_clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
def marketplace(marketplace_clock: ShiftedClock) -> SandboxMarketplace:
    return SandboxMarketplace(KEY, seed=3, clock=marketplace_clock)


@pytest.fixture
async def running(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    auto_accept: bool | None,
    marketplace: SandboxMarketplace,
    database_url: str,
) -> AsyncIterator[Running]:
    """The daemon, started as one task against a sandbox; stopped through its stop event."""
    accept_line = "" if auto_accept is None else f"auto_accept = {str(auto_accept).lower()}"
    async with run_sandbox(marketplace) as base_url:
        monkeypatch.setenv("SANDBOX_KEY", KEY)
        config = load_config(
            write_config(
                tmp_path,
                f"""
[[channels]]
name = "sandbox"
store = 1
connector = "mirakl"
poll_interval = "1h"
{accept_line}
[channels.settings]
base_url = "{base_url}"
api_key = "env:SANDBOX_KEY"
""",
                database=database_url,
            )
        )
        logs = io.StringIO()
        configure_logging("json", "info", config.secrets, stream=logs)
        daemon, task = await start_daemon(config)
        yield Running(daemon, marketplace, logs)
        daemon.request_stop()
        await asyncio.wait_for(task, 10)


@pytest.mark.both_backends
async def test_a_poll_imports_the_orders_and_records_the_channel_state(
    running: Running,
) -> None:
    running.marketplace.add_orders(250)
    await running.poll_now()
    storage = running.daemon.storage
    assert storage is not None
    assert await storage.orders.count(OrderFilter()) == 250
    [channel] = await storage.channels.states()
    assert channel.auth_state == "ok"
    assert channel.last_poll_at is not None and channel.last_success_at is not None
    assert channel.next_poll_at is not None and channel.cursor is not None
    assert running.poller.status.detail == {"pages": 3, "created": 250, "changed": 0, "skipped": 0}
    async with (
        aiohttp.ClientSession() as http,
        http.get(running.daemon.url + "/healthz") as response,
    ):
        health = await response.json()
    assert health["loops"]["poller:sandbox"]["state"] == "idle"
    assert health["loops"]["poller:sandbox"]["detail"]["created"] == 250
    async with aiohttp.ClientSession() as http, http.get(running.daemon.url + "/metrics") as r:
        metrics = await r.text()
    assert 'sfd_orders_imported_total{channel="sandbox"} 250.0' in metrics
    assert 'sfd_polls_total{channel="sandbox",result="ok"}' in metrics


@pytest.mark.both_backends
async def test_a_cancellation_on_the_marketplace_reaches_the_order(running: Running) -> None:
    [reference] = running.marketplace.add_orders(1, waiting_acceptance_ratio=0.0)
    await running.poll_now()
    running.marketplace.cancel(reference)
    await running.poll_now()
    storage = running.daemon.storage
    assert storage is not None
    [order] = await storage.orders.find(OrderFilter())
    detail = await storage.orders.get(order.id)
    assert detail is not None and detail.status == "cancelled"
    assert [(e.source, e.kind, e.to_status) for e in detail.events][-1] == (
        "marketplace",
        "status",
        "cancelled",
    )
    assert [e["order"] for e in running.events("order_status_changed")] == [reference]


async def test_an_auth_failure_is_logged_once_and_recovery_is_logged(running: Running) -> None:
    running.marketplace.add_orders(5)
    real_key = running.marketplace.api_key
    running.marketplace.api_key = "rotated"
    for _ in range(3):
        await running.poll_now()
    storage = running.daemon.storage
    assert storage is not None
    [channel] = await storage.channels.states()
    assert channel.auth_state == "auth_failed"
    assert channel.last_error is not None and "AuthFailed" in channel.last_error
    assert len(running.events("poll_failed")) == 1
    assert running.poller.status.condition == "auth_failed"

    running.marketplace.api_key = real_key
    await running.poll_now()
    [channel] = await storage.channels.states()
    assert channel.auth_state == "ok" and channel.last_error is None
    assert [e["after_failures"] for e in running.events("poll_recovered")] == [3]
    assert await storage.orders.count(OrderFilter()) == 5


@pytest.mark.parametrize("auto_accept", [True])
@pytest.mark.both_backends
async def test_auto_accept_accepts_new_orders_and_the_next_poll_confirms(
    running: Running,
) -> None:
    references = running.marketplace.add_orders(4, waiting_acceptance_ratio=1.0)
    await running.poll_now()
    storage = running.daemon.storage
    assert storage is not None
    await until(lambda: all(running.marketplace.state(r) == "SHIPPING" for r in references))
    assert [len(running.marketplace.calls_to("OR21", r)) for r in references] == [1, 1, 1, 1]
    await running.poll_now()
    for order in await storage.orders.find(OrderFilter()):
        detail = await storage.orders.get(order.id)
        assert detail is not None
        assert detail.status == "waiting_shipment"
        kinds = [(e.source, e.kind) for e in detail.events]
        assert kinds[:2] == [("marketplace", "imported"), ("auto", "accept_requested")]
        assert ("marketplace", "accept_delivered") in kinds
        assert kinds[-2:] == [("marketplace", "status"), ("marketplace", "accept_confirmed")]


@pytest.fixture
def history(
    marketplace: SandboxMarketplace, marketplace_clock: ShiftedClock
) -> dict[str, list[str]]:
    """Orders last changed 40 days ago and yesterday, placed before the daemon starts."""
    marketplace_clock.offset = -timedelta(days=40)
    old = marketplace.add_orders(2, waiting_acceptance_ratio=0.0)
    marketplace_clock.offset = -timedelta(days=1)
    recent = marketplace.add_orders(3, waiting_acceptance_ratio=0.0)
    marketplace_clock.offset = timedelta(0)
    return {"old": old, "recent": recent}


async def test_a_first_poll_asks_mirakl_only_for_the_last_import_since(
    history: dict[str, list[str]], running: Running
) -> None:
    first = running.marketplace.calls_to("OR11")[0]
    # The channel has no cursor yet: OR11 is bounded by the default `import_since`, 30 days.
    since = from_iso(first.query["start_update_date"])
    expected = first.at - timedelta(days=30)
    assert expected - timedelta(seconds=60) <= since <= expected
    storage = running.daemon.storage
    assert storage is not None
    rows = await storage.db.fetch("SELECT reference FROM orders")
    assert {r["reference"] for r in rows} == set(history["recent"])
    [bounded] = running.events("first_poll_bounded")
    assert bounded["import_since"] == 30 * 86400
    # The next poll follows the cursor the first one set.
    await running.poll_now()
    cursor = from_iso(running.marketplace.calls_to("OR11")[-1].query["start_update_date"])
    assert cursor > first.at - timedelta(days=2)


async def test_a_default_channel_leaves_orders_waiting_for_acceptance(running: Running) -> None:
    references = running.marketplace.add_orders(3, waiting_acceptance_ratio=1.0)
    await running.poll_now()
    storage = running.daemon.storage
    assert storage is not None
    orders = await storage.orders.find(OrderFilter())
    assert [o.status for o in orders] == [OrderStatus.WAITING_STORE_ACCEPTANCE] * 3
    assert running.marketplace.calls_to("OR21") == []
    assert [running.marketplace.state(r) for r in references] == ["WAITING_ACCEPTANCE"] * 3
    pending = await storage.db.fetchrow("SELECT count(*) FROM operations")
    assert pending is not None and pending[0] == 0


async def test_a_backlog_of_1000_orders_across_pages_is_imported_once_each(
    running: Running,
) -> None:
    references = set(running.marketplace.add_orders(1000, waiting_acceptance_ratio=0.3))
    await running.poll_now()
    # Changes made while the first pass runs are picked up by the next one.
    cancelled = sorted(references)[:5]
    for reference in cancelled:
        running.marketplace.cancel(reference)
    await running.poll_now()
    storage = running.daemon.storage
    assert storage is not None
    rows = await storage.db.fetch("SELECT reference, status FROM orders")
    assert {r["reference"] for r in rows} == references
    assert len(rows) == 1000
    assert {r["reference"] for r in rows if r["status"] == "cancelled"} == set(cancelled)
    imported = await storage.db.fetchrow(
        "SELECT count(*), count(DISTINCT order_id) FROM order_events WHERE kind = 'imported'"
    )
    assert tuple(imported) == (1000, 1000)  # type: ignore[arg-type]
