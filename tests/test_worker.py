"""The operations worker inside the running daemon: shipments and accepts reach the sandbox
marketplace over real HTTP, once, and their results come back to the tickets and the orders."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sfd.config import load_config
from sfd.daemon.backoff import Backoff
from sfd.daemon.runtime import Daemon
from sfd.daemon.worker import OperationsWorker
from sfd.domain import StoredOrder
from sfd.domain.clock import from_iso, to_iso
from sfd.sandbox.marketplace import Handler, RecordedCall, SandboxMarketplace, run_sandbox
from sfd.storage.database import load_migrations
from tests.page.conftest import PageClient
from tests.support import InProcess, run_cli, start_daemon, until, write_config

KEY = "sandbox-key-worker"
CONFIRM_DELAY = 0.2


class SlowSandbox(SandboxMarketplace):
    """The sandbox marketplace, taking `latency[operation]` seconds before it handles a call.

    The call is recorded when it arrives; the delay comes before the marketplace applies it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latency: dict[str, float] = {}

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._slow)  # inside the sandbox's own: after the recording
        return app

    @web.middleware
    async def _slow(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        delay = self.latency.get(request.match_info.route.name or "", 0.0)
        if delay:
            await asyncio.sleep(delay)
        return await handler(request)


def two_xx(call: RecordedCall) -> bool:
    return call.status is not None and 200 <= call.status < 300


def assert_took_effect_once(calls: list[RecordedCall]) -> None:
    """The marketplace applied the request once, and it was sent again only after an attempt
    that the marketplace did not apply (5xx, 429) or whose answer never came back."""
    assert [c for c in calls if two_xx(c)], f"never applied: {calls}"
    assert len([c for c in calls if two_xx(c)]) == 1, f"applied twice: {calls}"
    for earlier in calls[:-1]:
        assert not (two_xx(earlier) and earlier.responded), (
            f"sent again after the marketplace answered that it took it: {calls}"
        )


@dataclass
class Hub(InProcess):
    """The daemon running in this process against the sandbox, and an API client for store 1."""

    marketplace: SlowSandbox
    config_path: Path
    http: aiohttp.ClientSession
    daemon: Daemon = field(init=False)
    task: asyncio.Task[None] | None = None
    token: str = ""

    @property
    def worker(self) -> OperationsWorker:
        assert self.daemon.worker is not None
        return self.daemon.worker

    async def start(self) -> None:
        def hasten(daemon: Daemon) -> None:
            assert daemon.worker is not None
            daemon.worker.confirm_delay = CONFIRM_DELAY

        self.daemon, self.task = await start_daemon(load_config(self.config_path), hasten)

    async def stop(self) -> None:
        if self.task is not None:
            self.daemon.request_stop()
            await asyncio.wait_for(self.task, 10)
            self.task = None

    async def poll_now(self) -> None:
        await until(lambda: self.poller.status.state == "idle")
        ticks = self.poller.status.ticks
        self.poller.wake()
        await until(lambda: self.poller.status.ticks > ticks)

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(
            method, self.daemon.url + path, headers=headers, **kwargs
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def operate(self, operation: str, *entries: dict[str, Any]) -> list[dict[str, Any]]:
        """Post one operation request; return its tickets."""
        status, body = await self.call(
            "POST", f"/v1/store/1/order/{operation}", json={"order": list(entries)}
        )
        assert status == 202, body
        status, tickets = await self.call("GET", f"/v1/store/1/ticket?batchId={body['id']}")
        assert status == 200, tickets
        return list(tickets["_embedded"]["ticket"])

    async def ticket(self, ticket_id: str) -> dict[str, Any]:
        status, ticket = await self.call("GET", f"/v1/store/1/ticket/{ticket_id}")
        assert status == 200, ticket
        return dict(ticket)

    async def finished(self, ticket_id: str, timeout: float = 10) -> dict[str, Any]:
        """The ticket once it is `succeed` or `failed`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            ticket = await self.ticket(ticket_id)
            if ticket["state"] in ("succeed", "failed"):
                return ticket
            assert asyncio.get_running_loop().time() < deadline, f"still {ticket}"
            await asyncio.sleep(0.02)

    async def order_id(self, reference: str) -> int:
        row = await self.storage.db.fetchrow(
            "SELECT id FROM orders WHERE reference = $1", (reference,)
        )
        assert row is not None, f"order {reference} not imported"
        return int(row[0])

    async def order(self, reference: str) -> StoredOrder:
        order = await self.storage.orders.get(await self.order_id(reference))
        assert order is not None
        return order

    async def operation(self, ticket_id: str) -> sqlite3.Row:
        row = await self.storage.db.fetchrow(
            "SELECT attempts, state, last_error, next_attempt_at, confirmed_at, lease_until "
            "FROM operations WHERE ticket_id = $1",
            (ticket_id,),
        )
        assert row is not None
        return row


def ship(order_id: int, tracking: str = "6A123456789") -> dict[str, Any]:
    return {"id": order_id, "carrier": "Colissimo", "trackingNumber": tracking}


def channel(name: str, base_url: str) -> str:
    return f"""
[[channels]]
name = "{name}"
store = 1
connector = "mirakl"
poll_interval = "1h"
auto_accept = false
[channels.settings]
base_url = "{base_url}"
api_key = "env:SANDBOX_KEY"
"""


@pytest.fixture
def other_channel() -> bool:
    """Whether store 1 has a second channel, on another (empty) marketplace."""
    return False


@pytest.fixture
async def hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_channel: bool, database_url: str
) -> AsyncIterator[Hub]:
    """The daemon with a started worker (confirmations after 0.2 s), and a store-1 token."""
    monkeypatch.setenv("SANDBOX_KEY", KEY)
    marketplace = SlowSandbox(KEY, seed=5)
    async with (
        run_sandbox(marketplace) as base_url,
        run_sandbox(SandboxMarketplace(KEY, seed=6)) as other_url,
        aiohttp.ClientSession() as http,
    ):
        body = channel("sandbox", base_url)
        if other_channel:
            body += channel("other", other_url)
        config_path = write_config(tmp_path, body, database=database_url)
        running = Hub(marketplace, config_path, http)
        await running.start()
        _, running.token = await running.storage.tokens.create(1, "shop", running.daemon.clock())
        try:
            yield running
        finally:
            await running.stop()


async def orders_on_sale(hub: Hub, n: int, *, waiting_acceptance: bool = False) -> list[str]:
    """`n` new orders on the marketplace, imported by a poll."""
    references = hub.marketplace.add_orders(
        n, waiting_acceptance_ratio=1.0 if waiting_acceptance else 0.0
    )
    await hub.poll_now()
    return references


# -- shipments ------------------------------------------------------------------------------


@pytest.mark.both_backends
async def test_a_shipment_reaches_the_marketplace_once_and_the_order_ships_when_it_confirms(
    hub: Hub,
) -> None:
    # The marketplace applies OR24 later: long enough that a loaded machine still reads the
    # order before it does.
    hub.marketplace.ship_confirm_delay = 3.0
    [reference] = await orders_on_sale(hub, 1)
    [ticket] = await hub.operate("ship", ship(await hub.order_id(reference)))
    # Read back after the 202: the worker, woken at once, may be on it or done already.
    assert ticket["state"] in ("scheduled", "running", "succeed")

    done = await hub.finished(ticket["id"])
    assert done["state"] == "succeed"
    # The ticket says what was sent: the carrier's code and where it came from, the number.
    assert "COLISSIMO" in done["result"]["message"], done["result"]
    assert "6A123456789" in done["result"]["message"]
    assert [len(hub.marketplace.calls_to(op, reference)) for op in ("OR23", "OR24")] == [1, 1]
    tracking = hub.marketplace.calls_to("OR23", reference)[0].body
    assert tracking == {"carrier_code": "COLISSIMO", "tracking_number": "6A123456789"}
    order = await hub.order(reference)
    assert order.status == "waiting_shipment", "taken is not shipped: the marketplace decides"
    assert (order.carrier, order.tracking_number) == ("Colissimo", "6A123456789")
    # The worker's first look, 0.2 s later, finds the order not shipped yet: it looks again.
    await until(
        lambda: any(
            c.responded for c in hub.marketplace.calls_to("OR11") if c.query.get("order_ids")
        )
    )
    assert (await hub.order(reference)).status == "waiting_shipment"
    assert (await hub.operation(ticket["id"]))["confirmed_at"] is None

    await until(lambda: hub.marketplace.state(reference) == "SHIPPED", 10)
    await hub.poll_now()  # unless the worker's next look sees it first

    async def shipped() -> StoredOrder:
        deadline = asyncio.get_running_loop().time() + 5
        while (order := await hub.order(reference)).status != "shipped":
            assert asyncio.get_running_loop().time() < deadline, order.status
            await asyncio.sleep(0.05)
        return order

    order = await shipped()
    assert hub.marketplace.state(reference) == "SHIPPED"
    assert [len(hub.marketplace.calls_to(op, reference)) for op in ("OR23", "OR24")] == [1, 1]
    events = [(e.source, e.kind, e.from_status, e.to_status) for e in order.events]
    assert events == [
        ("marketplace", "imported", None, "waiting_shipment"),
        ("api", "ship_requested", None, None),
        ("marketplace", "ship_delivered", None, None),
        ("marketplace", "status", "waiting_shipment", "shipped"),
        ("marketplace", "ship_confirmed", None, None),
    ]
    assert order.events[2].message == (
        "taken by sandbox after 1 attempt(s); sent carrier COLISSIMO "
        '(automatic: "Colissimo"), tracking 6A123456789'
    )
    assert re.fullmatch(r"confirmed \d+s after the request", order.events[-1].message)
    assert (await hub.operation(ticket["id"]))["confirmed_at"] is not None


async def test_a_shipment_without_carrier_or_tracking_reaches_mirakl_by_or24_alone(
    hub: Hub,
) -> None:
    """The channel keeps the default (no require_tracking): OR23 needs a carrier, so it is
    skipped, and OR24 confirms the shipment; Mirakl decides."""
    [reference] = await orders_on_sale(hub, 1)
    [ticket] = await hub.operate("ship", {"id": await hub.order_id(reference)})
    assert ticket["state"] == "scheduled"

    done = await hub.finished(ticket["id"])
    assert done["state"] == "succeed", done["result"]
    assert [len(hub.marketplace.calls_to(op, reference)) for op in ("OR23", "OR24")] == [0, 1]
    await until(lambda: hub.marketplace.state(reference) == "SHIPPED", 5)
    order = await hub.order(reference)
    delivered = next(e for e in order.events if e.kind == "ship_delivered")
    assert delivered.message.endswith("; sent carrier none, tracking none")
    assert "ship_warning" not in [e.kind for e in order.events]


async def test_every_line_at_full_quantity_ships_the_whole_mirakl_order(hub: Hub) -> None:
    """The SDK's ship() lists every line: that is the whole order, which Mirakl can ship."""
    [reference] = await orders_on_sale(hub, 1)
    order = await hub.order(reference)
    every = [{"id": i.id, "quantity": i.quantity} for i in order.items]
    [ticket] = await hub.operate("ship", {**ship(order.id), "items": every})
    assert ticket["payload"]["items"] == []

    done = await hub.finished(ticket["id"])
    assert done["state"] == "succeed", done["result"]
    assert [len(hub.marketplace.calls_to(op, reference)) for op in ("OR23", "OR24")] == [1, 1]
    await until(lambda: hub.marketplace.state(reference) == "SHIPPED", 5)


async def test_several_tracking_numbers_on_mirakl_send_the_first_and_name_the_others(
    hub: Hub,
) -> None:
    """Mirakl's OR23 takes one number: the others are named in a warning event. A link that
    is not http(s) is dropped with a warning of its own, and the shipment still goes."""
    [reference] = await orders_on_sale(hub, 1)
    entry = {
        "id": await hub.order_id(reference),
        "carrier": "Transports Martin",  # not registered: a link would go as carrier_url
        "trackingNumber": "TM-1, TM-2;TM-3",
        "trackingLink": "ftp://martin.test/TM-1",
    }
    [ticket] = await hub.operate("ship", entry)

    done = await hub.finished(ticket["id"])
    assert done["state"] == "succeed", done["result"]
    [tracking] = hub.marketplace.calls_to("OR23", reference)
    assert tracking.body == {"carrier_name": "Transports Martin", "tracking_number": "TM-1"}
    assert len(hub.marketplace.calls_to("OR24", reference)) == 1
    order = await hub.order(reference)
    assert order.tracking_number == "TM-1, TM-2;TM-3", "every number is kept on the order"
    assert order.tracking_link == ""
    warnings = [(e.source, e.message) for e in order.events if e.kind == "ship_warning"]
    assert warnings == [
        (
            "api",
            "trackingLink 'ftp://martin.test/TM-1' is not an http(s):// URL: dropped, "
            "the shipment is sent without it",
        ),
        (
            "marketplace",
            "tracking number(s) TM-2, TM-3 not forwarded to sandbox: "
            "Mirakl takes one tracking number per order (OR23)",
        ),
    ]


async def test_a_channel_that_requires_tracking_still_refuses_a_shipment_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_KEY", KEY)
    marketplace = SandboxMarketplace(KEY, seed=7)
    async with run_sandbox(marketplace) as base_url, aiohttp.ClientSession() as http:
        body = channel("sandbox", base_url).replace(
            "auto_accept = false\n", "auto_accept = false\nrequire_tracking = true\n"
        )
        running = Hub(marketplace, write_config(tmp_path, body), http)
        await running.start()
        _, running.token = await running.storage.tokens.create(1, "shop", running.daemon.clock())
        try:
            [reference] = await orders_on_sale(running, 1)
            order_id = await running.order_id(reference)
            [bare] = await running.operate("ship", {"id": order_id})
            [no_carrier] = await running.operate("ship", {"id": order_id, "trackingNumber": "1"})
            [no_number] = await running.operate("ship", {"id": order_id, "carrier": "DPD"})
        finally:
            await running.stop()
    assert [t["state"] for t in (bare, no_carrier, no_number)] == ["failed"] * 3
    assert no_carrier["result"]["message"] == "channel sandbox requires a carrier"
    assert no_number["result"]["message"] == "channel sandbox requires a tracking number"
    assert marketplace.calls_to("OR23") == marketplace.calls_to("OR24") == []


async def test_a_marketplace_down_for_a_while_gets_every_shipment_once_when_it_is_back(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.worker.operation_backoff = Backoff(base=0.05, jitter=0.5)
    references = await orders_on_sale(hub, 6)
    ids = [await hub.order_id(r) for r in references]
    hub.marketplace.fail_next(5, 503, operation="OR24")
    hub.marketplace.fail_next(2, 500, operation="OR23")
    hub.marketplace.fail_next(1, 502, operation="SH21")
    # Then one OR24 is applied but its answer is lost: sfd cannot know it was taken.
    hub.marketplace.drop_next(1, operation="OR24")

    tickets = await hub.operate(
        "ship", *(ship(order_id, f"6A{n:09d}") for n, order_id in enumerate(ids))
    )
    finished = [await hub.finished(t["id"]) for t in tickets]

    assert [t["state"] for t in finished] == ["succeed"] * 6
    assert all(hub.marketplace.state(r) == "SHIPPED" for r in references)
    statuses = [c.status for c in hub.marketplace.calls_to("OR24")]
    assert statuses.count(503) == 5 and statuses.count(204) == 6
    for reference in references:
        assert_took_effect_once(hub.marketplace.calls_to("OR24", reference))
    [lost] = [c for c in hub.marketplace.calls_to("OR24") if not c.responded]
    assert lost.status == 204
    repeat = hub.marketplace.calls_to("OR24", lost.order_id)[-1]
    assert repeat.status == 400, "the repeat finds the order shipped: done already, a success"
    lost_ticket = finished[references.index(str(lost.order_id))]["id"]
    assert (await hub.operation(lost_ticket))["attempts"] >= 2


async def test_a_429_retry_after_is_waited_out_before_the_next_call(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.worker.operation_backoff = Backoff(base=0.05, jitter=0.5)  # Retry-After is the longer
    [reference] = await orders_on_sale(hub, 1)
    hub.marketplace.fail_next(1, 429, retry_after=1, operation="OR24")
    [ticket] = await hub.operate("ship", ship(await hub.order_id(reference)))

    assert (await hub.finished(ticket["id"]))["state"] == "succeed"
    throttled, accepted = hub.marketplace.calls_to("OR24", reference)
    assert (throttled.status, accepted.status) == (429, 204)
    assert accepted.at - throttled.at >= timedelta(seconds=0.95)
    assert (await hub.operation(ticket["id"]))["attempts"] == 2


@pytest.mark.parametrize("cause", ["cancelled on the marketplace", "OR24 answers 400"])
async def test_a_shipment_the_marketplace_refuses_fails_with_its_message(
    hub: Hub, cause: str
) -> None:
    [reference] = await orders_on_sale(hub, 1)
    order_id = await hub.order_id(reference)
    if cause == "cancelled on the marketplace":
        hub.marketplace.set_state(reference, "CANCELED")  # sfd has not polled since
        message = f"The tracking of order {reference} cannot be updated in state CANCELED"
    else:
        hub.marketplace.fail_next(1, 400, operation="OR24")
        message = "Injected failure"
    [ticket] = await hub.operate("ship", ship(order_id))

    failed = await hub.finished(ticket["id"])
    assert failed["state"] == "failed"
    assert failed["result"] == {"message": message}
    assert (await hub.ticket(ticket["id"]))["result"]["message"] == message
    assert (await hub.operation(ticket["id"]))["attempts"] == 1, "a refusal is not retried"
    assert len(hub.marketplace.calls_to("OR24", reference)) == (
        0 if cause == "cancelled on the marketplace" else 1
    )

    shown = await asyncio.to_thread(
        run_cli, hub.config_path, "orders", "show", str(order_id), "--json"
    )
    assert shown.returncode == 0, shown.stderr
    order = json.loads(shown.stdout)
    assert [(e["type"], e["message"]) for e in order["errors"]] == [("ship", message)]
    assert [(e["kind"], e["message"]) for e in order["events"]][-1] == ("ship_failed", message)
    assert [(o["kind"], o["state"], o["reason"]) for o in order["operations"]] == [
        ("ship", "failed", message)
    ]
    assert order["status"] == "waiting_shipment"


async def test_broken_credentials_spend_no_attempt_and_the_shipment_goes_once_they_work(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sfd.daemon.worker.AUTH_WAIT", 0.1)
    [reference] = await orders_on_sale(hub, 1)
    hub.marketplace.api_key = "rotated"
    [ticket] = await hub.operate("ship", ship(await hub.order_id(reference)))

    await until(lambda: len([c for c in hub.marketplace.calls if c.status == 401]) >= 3)
    for _ in range(100):  # read it between two tries, not in the middle of one
        row = await hub.operation(ticket["id"])
        if row["state"] == "scheduled":
            break
        await asyncio.sleep(0.01)
    assert row["state"] == "scheduled"
    assert row["attempts"] == 0
    assert row["last_error"].startswith("AuthFailed: Mirakl ")
    assert "401" in row["last_error"]
    assert (await hub.ticket(ticket["id"]))["state"] in ("scheduled", "running"), "still pending"
    assert hub.marketplace.calls_to("OR24", reference) == []

    hub.marketplace.api_key = KEY
    done = await hub.finished(ticket["id"])
    assert done["state"] == "succeed"
    assert (await hub.operation(ticket["id"]))["attempts"] == 1
    assert [c.status for c in hub.marketplace.calls_to("OR24", reference)] == [204]
    assert hub.marketplace.state(reference) == "SHIPPED"


# -- accept ---------------------------------------------------------------------------------


@pytest.mark.both_backends
async def test_an_accepted_order_is_accepted_on_the_marketplace_once_and_confirmed(
    hub: Hub,
) -> None:
    [reference] = await orders_on_sale(hub, 1, waiting_acceptance=True)
    assert (await hub.order(reference)).status == "waiting_store_acceptance"
    [ticket] = await hub.operate("accept", {"id": await hub.order_id(reference)})

    assert (await hub.finished(ticket["id"]))["state"] == "succeed"
    [accept] = hub.marketplace.calls_to("OR21", reference)
    assert accept.status == 204
    assert {line["accepted"] for line in accept.body["order_lines"]} == {True}
    assert hub.marketplace.state(reference) == "SHIPPING"
    deadline = asyncio.get_running_loop().time() + 5
    while (await hub.operation(ticket["id"]))["confirmed_at"] is None:
        assert asyncio.get_running_loop().time() < deadline, "never confirmed"
        await asyncio.sleep(0.02)
    order = await hub.order(reference)
    assert order.status == "waiting_shipment"
    assert [(e.source, e.kind, e.to_status) for e in order.events] == [
        ("marketplace", "imported", "waiting_store_acceptance"),
        ("api", "accept_requested", None),
        ("marketplace", "accept_delivered", None),
        ("marketplace", "status", "waiting_shipment"),
        ("marketplace", "accept_confirmed", None),
    ]
    assert len(hub.marketplace.calls_to("OR21", reference)) == 1


# -- refunds --------------------------------------------------------------------------------


async def test_a_refund_of_a_shipped_order_reaches_or28_once_and_the_order_is_refunded(
    hub: Hub,
) -> None:
    [reference] = await orders_on_sale(hub, 1)
    hub.marketplace.set_state(reference, "SHIPPED")
    await hub.poll_now()
    assert (await hub.order(reference)).status == "shipped"
    [ticket] = await hub.operate(
        "refund", {"id": await hub.order_id(reference), "refund": {"shipping": True}}
    )

    assert (await hub.finished(ticket["id"]))["state"] == "succeed"
    [refund] = hub.marketplace.calls_to("OR28")
    assert refund.status == 200
    lines = hub.marketplace.order(reference)["order_lines"]
    assert [r["order_line_id"] for r in refund.body["refunds"]] == [
        line["order_line_id"] for line in lines
    ]
    assert hub.marketplace.state(reference) == "REFUNDED"
    deadline = asyncio.get_running_loop().time() + 5
    while (await hub.order(reference)).status != "refunded":
        assert asyncio.get_running_loop().time() < deadline, "never seen refunded"
        await asyncio.sleep(0.02)
    assert len(hub.marketplace.calls_to("OR28")) == 1


# -- stopping -------------------------------------------------------------------------------


def read_operation(database: Path, ticket_id: str) -> dict[str, Any]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute(
            "SELECT state, attempts, last_error, next_attempt_at, lease_until "
            "FROM operations WHERE ticket_id = $1",
            (ticket_id,),
        ).fetchone()
    return dict(row)


async def test_a_stop_during_a_delivery_waits_for_the_answer_and_writes_it(hub: Hub) -> None:
    [reference] = await orders_on_sale(hub, 1)
    hub.marketplace.latency["OR24"] = 1.0
    [ticket] = await hub.operate("ship", ship(await hub.order_id(reference)))
    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))
    database = hub.daemon.config.database

    await hub.stop()
    # The stop waited for the answer, which reached the worker (not cut off by the grace).
    assert [c.responded for c in hub.marketplace.calls_to("OR24", reference)] == [True]

    assert read_operation(database, ticket["id"])["state"] == "succeed"
    assert [c.status for c in hub.marketplace.calls_to("OR24", reference)] == [204]
    assert hub.marketplace.state(reference) == "SHIPPED"


async def test_a_call_cut_short_by_a_stop_is_sent_again_at_the_next_start_and_succeeds(
    hub: Hub,
) -> None:
    [reference] = await orders_on_sale(hub, 1)
    hub.marketplace.latency["OR24"] = 1.5  # longer than the grace the stop gives it
    [ticket] = await hub.operate("ship", ship(await hub.order_id(reference)))
    await until(lambda: bool(hub.marketplace.calls_to("OR24", reference)))
    database = hub.daemon.config.database
    assert hub.daemon.worker is not None
    hub.daemon.worker.stop_gracefully(0.2)  # the stop's own (5 s) cannot lengthen this grace
    await hub.stop()

    interrupted = read_operation(database, ticket["id"])
    assert interrupted["state"] == "scheduled"
    assert interrupted["attempts"] == 0
    assert interrupted["last_error"] == "interrupted by a stop"
    # The marketplace still applies the call it had received: the outcome was unknown to sfd.
    await until(lambda: hub.marketplace.state(reference) == "SHIPPED", 5)

    hub.marketplace.latency.clear()
    await hub.start()
    done = await hub.finished(ticket["id"])
    assert done["state"] == "succeed"
    applied, repeat = hub.marketplace.calls_to("OR24", reference)
    assert (applied.status, repeat.status) == (204, 400)
    row = await hub.operation(ticket["id"])
    assert (row["attempts"], row["lease_until"]) == (1, None)


@pytest.mark.parametrize("other_channel", [True])
async def test_a_stop_leaves_no_operation_claimed(hub: Hub) -> None:
    """Whatever the worker had claimed when the stop came is due again at the next start."""
    references = await orders_on_sale(hub, 8)
    ids = [await hub.order_id(r) for r in references]
    hub.marketplace.latency["OR23"] = 0.3
    tickets = await hub.operate(
        "ship", *(ship(order_id, f"6A{n:09d}") for n, order_id in enumerate(ids))
    )
    await until(lambda: len(hub.marketplace.calls_to("OR23")) >= 2)
    database = hub.daemon.config.database
    await hub.stop()
    states = [read_operation(database, t["id"]) for t in tickets]
    assert [s for s in states if s["state"] == "running"] == []


# -- load on the marketplace and on the database -------------------------------------------


async def test_a_slow_marketplace_gets_one_status_read_at_a_time_for_an_operation(
    hub: Hub,
) -> None:
    [reference] = await orders_on_sale(hub, 1)
    hub.marketplace.latency["OR11"] = 1.0
    [ticket] = await hub.operate("ship", ship(await hub.order_id(reference)))
    assert (await hub.finished(ticket["id"]))["state"] == "succeed"

    def reads() -> list[RecordedCall]:
        return [c for c in hub.marketplace.calls_to("OR11") if c.query.get("order_ids")]

    await until(lambda: bool(reads()))
    await asyncio.sleep(1.2)  # the first read is answered, and confirms the shipment
    assert (await hub.operation(ticket["id"]))["confirmed_at"] is not None
    assert len(reads()) == 1, f"{len(reads())} status reads of one order in about a second"


async def test_a_channel_waiting_for_credentials_does_not_keep_the_worker_spinning(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sfd.daemon.worker.AUTH_WAIT", 3.0)
    first, second = await orders_on_sale(hub, 2)
    hub.marketplace.api_key = "rotated"
    await hub.operate("ship", ship(await hub.order_id(first)))
    await until(lambda: any(c.status == 401 for c in hub.marketplace.calls))
    # Due at once, but its channel is paused until the credentials are tried again.
    await hub.operate("ship", ship(await hub.order_id(second), "6A000000002"))
    assert hub.daemon.worker is not None
    ticks = hub.daemon.worker.status.ticks
    await asyncio.sleep(1.0)
    spent = hub.daemon.worker.status.ticks - ticks
    assert spent <= 3, f"{spent} worker ticks (each a write transaction) in one idle second"


# -- the marketplace's status is the truth ---------------------------------------------------


async def accepted_unconfirmed(hub: Hub, reference: str) -> dict[str, Any]:
    """Accept an order through the API and let it reach the marketplace, not yet confirmed:
    the worker's own check is put off, so the next poll is what settles it."""
    assert hub.daemon.worker is not None
    hub.daemon.worker.confirm_delay = 3600.0
    [ticket] = await hub.operate("accept", {"id": await hub.order_id(reference)})
    assert (await hub.finished(ticket["id"]))["state"] == "succeed"
    assert (await hub.operation(ticket["id"]))["confirmed_at"] is None
    return ticket


async def test_an_order_accepted_and_shipped_between_two_polls_ends_shipped(hub: Hub) -> None:
    [reference] = await orders_on_sale(hub, 1, waiting_acceptance=True)
    ticket = await accepted_unconfirmed(hub, reference)
    # Shipped from Mirakl's back office before sfd polled again: SHIPPING was never seen.
    hub.marketplace.set_state(reference, "SHIPPED")
    await hub.poll_now()

    order = await hub.order(reference)
    assert order.status == "shipped"
    status = [e for e in order.events if e.kind == "status"]
    assert [(e.from_status, e.to_status, e.message) for e in status] == [
        (
            "waiting_store_acceptance",
            "shipped",
            "waiting_store_acceptance → shipped, skipping waiting_shipment",
        )
    ]
    assert (await hub.operation(ticket["id"]))["confirmed_at"] is not None
    assert order.events[-1].kind == "accept_confirmed"
    assert not any(e.kind == "update_refused" for e in order.events)


async def test_an_order_waiting_for_payment_is_offered_once_mirakl_releases_it(hub: Hub) -> None:
    [reference] = await orders_on_sale(hub, 1, waiting_acceptance=True)
    ticket = await accepted_unconfirmed(hub, reference)
    order_id = await hub.order_id(reference)
    hub.marketplace.set_state(reference, "WAITING_DEBIT")
    await hub.poll_now()

    # The acceptance is confirmed, and the order waits for the buyer's payment.
    order = await hub.order(reference)
    assert (order.status, order.payment_pending) == ("waiting_shipment", True)
    assert (await hub.operation(ticket["id"]))["confirmed_at"] is not None
    to_process = "/v1/store/1/order?acknowledgment=unacknowledged&status=waiting_shipment"
    status, listing = await hub.call("GET", to_process)
    assert status == 200 and listing["count"] == 0, listing
    # Nor may it ship: Mirakl would refuse it before the debit.
    [refused] = await hub.operate("ship", ship(order_id))
    assert refused["state"] == "failed"
    assert (
        "waiting for the buyer's payment" in (await hub.ticket(refused["id"]))["result"]["message"]
    )
    shown = run_cli(hub.config_path, "orders", "show", str(order_id))
    assert shown.returncode == 0, shown.stderr
    assert "waiting for payment" in shown.stdout
    page = PageClient(hub.daemon.url)
    try:
        await page.sign_in(hub.token)
        status_code, html = await page.get(f"/orders/{order_id}")
    finally:
        await page.close()
    assert status_code == 200
    assert 'id="payment-pending"' in html and "waits for the buyer's payment" in html

    hub.marketplace.set_state(reference, "SHIPPING")
    await hub.poll_now()
    order = await hub.order(reference)
    assert (order.status, order.payment_pending) == ("waiting_shipment", False)
    status, listing = await hub.call("GET", to_process)
    assert status == 200, listing
    assert [o["reference"] for o in listing["_embedded"]["order"]] == [reference]
    assert [e.kind for e in order.events if e.kind.startswith("payment")] == [
        "payment_pending",
        "payment_received",
    ]


def old_database(path: Path) -> sqlite3.Connection:
    """A database at schema 5, the last one before the marketplace's status was the truth."""
    db = sqlite3.connect(path)
    for migration in load_migrations()[:5]:
        db.executescript(migration.sql)
    db.executescript(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TEXT NOT NULL) STRICT; PRAGMA user_version = 5;"
    )
    db.executemany(
        "INSERT INTO schema_migrations VALUES ($1, $2, '2026-01-01T00:00:00.000000+00:00')",
        [(m.version, m.name) for m in load_migrations()[:5]],
    )
    return db


async def test_an_order_an_older_sfd_left_stuck_is_repaired_by_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_KEY", KEY)
    marketplace = SlowSandbox(KEY, seed=5)
    [reference] = marketplace.add_orders(1, waiting_acceptance_ratio=1.0)
    marketplace.set_state(reference, "SHIPPED")
    data = marketplace.order(reference)
    shipped_at = from_iso(data["last_updated_date"])
    # What the old code left: the order still waiting for acceptance, the refused version's
    # time kept as the order's, an update_refused event, and the cursor moved past it.
    stamp = to_iso(shipped_at)
    db = old_database(tmp_path / "sfd.db")
    db.executescript(
        f"""
        INSERT INTO stores VALUES (1, 'Shop one', '{stamp}', '{stamp}');
        INSERT INTO channels (id, name, store_id, connector, cursor, created_at, updated_at)
            VALUES (1, 'sandbox', 1, 'mirakl', '{to_iso(shipped_at + timedelta(minutes=20))}',
                    '{stamp}', '{stamp}');
        INSERT INTO orders (id, channel_id, store_id, reference, status, created_at,
                            updated_at, marketplace_updated_at, imported_at, currency,
                            product_amount, shipping_amount, total_amount)
            VALUES (1, 1, 1, '{reference}', 'waiting_store_acceptance',
                    '{to_iso(from_iso(data["created_date"]))}', '{stamp}', '{stamp}',
                    '{stamp}', 'EUR', '10.00', '0.00', '10.00');
        INSERT INTO order_events (order_id, at, source, kind, to_status, message)
            VALUES (1, '{stamp}', 'marketplace', 'imported', 'waiting_store_acceptance', '');
        INSERT INTO order_events (order_id, at, source, kind, message)
            VALUES (1, '{stamp}', 'marketplace', 'update_refused',
                    'order {reference}: cannot go from waiting_store_acceptance to shipped');
        """
    )
    db.commit()
    db.close()
    async with run_sandbox(marketplace) as base_url, aiohttp.ClientSession() as http:
        running = Hub(marketplace, write_config(tmp_path, channel("sandbox", base_url)), http)
        await running.start()  # migrates, then polls once
        try:
            order = await running.order(reference)
            [state] = await running.storage.channels.states()
        finally:
            await running.stop()
    assert order.status == "shipped"
    assert [(e.kind, e.to_status, e.message) for e in order.events][-1] == (
        "status",
        "shipped",
        "waiting_store_acceptance → shipped, skipping waiting_shipment",
    )
    assert order.marketplace_updated_at == shipped_at
    assert state.cursor is not None and state.cursor >= shipped_at - timedelta(minutes=5)
