"""The deadline watch: each order near or past its ship-by date is reported once, ever."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sfd.daemon.deadlines import DeadlineWatch
from sfd.domain import FulfilledBy, MarketplaceOrder, OrderStatus
from sfd.storage import Storage, StorageError
from sfd.storage.db import SQLiteConnection
from sfd.storage.deadlines import DEADLINE_PASSED, DEADLINE_WARNING, DeadlineStore
from tests.conftest import NOW
from tests.factories import make_order
from tests.support import events, until

S = OrderStatus
DAY = timedelta(hours=24)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


async def seed(
    storage: Storage, orders: Sequence[MarketplaceOrder], channel: str = "decathlon"
) -> dict[str, int]:
    """Import the orders on a channel; return their ids by reference."""
    ids = await storage.channels.channel_ids()
    store = 1 if channel == "decathlon" else 2
    result = await storage.orders.import_page(ids[channel], store, orders, NOW)
    return {reference: order_id for order_id, reference, _ in result.created}


async def order_events(storage: Storage, order_id: int, kind: str) -> list[sqlite3.Row]:
    return await storage.db.fetch(
        "SELECT * FROM order_events WHERE order_id = $1 AND kind = $2", (order_id, kind)
    )


async def watch(
    storage: Storage, clock: Clock, decathlon: timedelta = DAY, ebay: timedelta = DAY
) -> DeadlineWatch:
    ids = await storage.channels.channel_ids()
    return DeadlineWatch(
        DeadlineStore(storage.db), {ids["decathlon"]: decathlon, ids["ebay-de"]: ebay}, clock
    )


async def seed_soon_and_late(storage: Storage) -> None:
    """One order due in five hours, one five hours late."""
    await seed(
        storage,
        [
            make_order("DEC-SOON", ship_by=NOW + timedelta(hours=5)),
            make_order("DEC-LATE", ship_by=NOW - timedelta(hours=5)),
        ],
    )


async def test_an_order_within_its_window_is_warned_of_once(
    storage: Storage, logs: io.StringIO
) -> None:
    ids = await seed(
        storage,
        [
            make_order("DEC-SOON", ship_by=NOW + timedelta(hours=5)),
            make_order("DEC-LATER", ship_by=NOW + timedelta(hours=30)),
        ],
    )
    clock = Clock()
    deadlines = await watch(storage, clock)
    await deadlines.tick()
    clock.now += timedelta(seconds=30)
    await deadlines.tick()

    [line] = events(logs, "ship_deadline_approaching")
    assert line["level"] == "warning"
    assert line["channel"] == "decathlon"
    assert line["order"] == "DEC-SOON"
    assert line["latestShipDate"] == "2026-11-29T14:00:00+00:00"
    assert line["hours_left"] == 5.0
    [event] = await order_events(storage, ids["DEC-SOON"], DEADLINE_WARNING)
    assert event["source"] == "auto"
    assert "2026-11-29T14:00:00+00:00" in event["message"]
    assert await order_events(storage, ids["DEC-LATER"], DEADLINE_WARNING) == []
    assert deadlines.status.detail == {"late_orders": 0, "approaching": 1}
    assert events(logs, "ship_deadline_passed") == []


async def test_a_passed_deadline_is_an_error_once_and_the_order_counts_late(
    storage: Storage, logs: io.StringIO
) -> None:
    ids = await seed(storage, [make_order("DEC-1", ship_by=NOW + timedelta(hours=1))])
    clock = Clock()
    deadlines = await watch(storage, clock)
    await deadlines.tick()
    assert events(logs, "ship_deadline_passed") == []

    clock.now = NOW + timedelta(hours=2)
    await deadlines.tick()
    await deadlines.tick()

    [line] = events(logs, "ship_deadline_passed")
    assert line["level"] == "error"
    assert (line["channel"], line["order"]) == ("decathlon", "DEC-1")
    assert line["latestShipDate"] == "2026-11-29T10:00:00+00:00"
    assert len(events(logs, "ship_deadline_approaching")) == 1, "warned before, not again"
    assert len(await order_events(storage, ids["DEC-1"], DEADLINE_PASSED)) == 1
    assert deadlines.status.detail == {"late_orders": 1, "approaching": 0}
    assert await DeadlineStore(storage.db).count_late(clock.now) == 1


async def test_an_order_imported_already_late_is_reported_as_passed_only(
    storage: Storage, logs: io.StringIO
) -> None:
    await seed(storage, [make_order("DEC-OLD", ship_by=NOW - timedelta(days=3))])
    await (await watch(storage, Clock())).tick()
    [line] = events(logs, "ship_deadline_passed")
    assert line["order"] == "DEC-OLD"
    assert events(logs, "ship_deadline_approaching") == []


async def test_shipped_and_marketplace_fulfilled_orders_are_never_reported(
    storage: Storage, logs: io.StringIO
) -> None:
    by_marketplace = msgspec.structs.replace(
        make_order("DEC-FBA", ship_by=NOW + timedelta(hours=1)), fulfilled_by=FulfilledBy.CHANNEL
    )
    ids = await seed(
        storage,
        [
            make_order("DEC-SHIPPED", S.SHIPPED, ship_by=NOW + timedelta(hours=1)),
            make_order("DEC-CANCELLED", S.CANCELLED, ship_by=NOW - timedelta(hours=1)),
            make_order("DEC-SHIPPED-LATE", S.SHIPPED, ship_by=NOW - timedelta(hours=1)),
            by_marketplace,
        ],
    )
    clock = Clock()
    deadlines = await watch(storage, clock)
    for hours in (0, 2, 48):
        clock.now = NOW + timedelta(hours=hours)
        await deadlines.tick()

    assert events(logs, "ship_deadline_approaching") == []
    assert events(logs, "ship_deadline_passed") == []
    for order_id in ids.values():
        assert await order_events(storage, order_id, DEADLINE_WARNING) == []
        assert await order_events(storage, order_id, DEADLINE_PASSED) == []
    assert deadlines.status.detail == {"late_orders": 0, "approaching": 0}


async def test_an_order_shipped_after_its_warning_is_not_reported_late(
    storage: Storage, logs: io.StringIO
) -> None:
    ship_by = NOW + timedelta(hours=3)
    await seed(storage, [make_order("DEC-1", ship_by=ship_by)])
    clock = Clock()
    deadlines = await watch(storage, clock)
    await deadlines.tick()
    await seed(
        storage,
        [make_order("DEC-1", S.SHIPPED, updated_at=NOW + timedelta(hours=1), ship_by=ship_by)],
    )
    clock.now = NOW + timedelta(hours=4)
    await deadlines.tick()
    assert len(events(logs, "ship_deadline_approaching")) == 1
    assert events(logs, "ship_deadline_passed") == []
    assert deadlines.status.detail["late_orders"] == 0


async def test_after_a_restart_nothing_is_reported_again(
    storage: Storage, logs: io.StringIO, tmp_path: Path
) -> None:
    await seed_soon_and_late(storage)
    clock = Clock()
    await (await watch(storage, clock)).tick()
    assert len(events(logs, "ship_deadline_approaching")) == 1
    assert len(events(logs, "ship_deadline_passed")) == 1

    # Another process over the same file, as after `systemctl restart sfd`.
    restarted = await Storage.open(tmp_path / "sfd.db")
    try:
        again = await watch(restarted, clock)
        await again.tick()
        clock.now += timedelta(minutes=5)
        await again.tick()
        assert again.status.detail == {"late_orders": 1, "approaching": 1}
    finally:
        await restarted.close()
    assert len(events(logs, "ship_deadline_approaching")) == 1
    assert len(events(logs, "ship_deadline_passed")) == 1


async def test_each_channel_has_its_own_warning_window(storage: Storage, logs: io.StringIO) -> None:
    ship_by = NOW + timedelta(hours=5)
    await seed(storage, [make_order("DEC-1", ship_by=ship_by)], "decathlon")
    await seed(storage, [make_order("EB-1", ship_by=ship_by)], "ebay-de")
    clock = Clock()
    deadlines = await watch(storage, clock, decathlon=DAY, ebay=timedelta(hours=2))
    await deadlines.tick()
    assert [e["order"] for e in events(logs, "ship_deadline_approaching")] == ["DEC-1"]

    clock.now = NOW + timedelta(hours=3, minutes=10)
    await deadlines.tick()
    lines = events(logs, "ship_deadline_approaching")
    assert [(e["channel"], e["order"]) for e in lines] == [
        ("decathlon", "DEC-1"),
        ("ebay-de", "EB-1"),
    ]
    assert lines[1]["hours_left"] == 1.8


async def test_a_channel_without_a_window_is_only_reported_late(
    storage: Storage, logs: io.StringIO
) -> None:
    await seed(storage, [make_order("EB-1", ship_by=NOW + timedelta(hours=1))], "ebay-de")
    ids = await storage.channels.channel_ids()
    clock = Clock()
    deadlines = DeadlineWatch(DeadlineStore(storage.db), {ids["decathlon"]: DAY}, clock)
    await deadlines.tick()
    assert events(logs, "ship_deadline_approaching") == []
    clock.now = NOW + timedelta(hours=2)
    await deadlines.tick()
    assert [e["order"] for e in events(logs, "ship_deadline_passed")] == ["EB-1"]


async def test_the_watch_ticks_at_the_next_deadline_or_window_opening(
    storage: Storage, logs: io.StringIO
) -> None:
    clock = Clock()
    deadlines = await watch(storage, clock, decathlon=DAY, ebay=timedelta(hours=2))
    assert await deadlines.tick() == 60.0, "nothing due: the interval"

    await seed(storage, [make_order("DEC-1", ship_by=NOW + timedelta(seconds=20))])
    delay = await deadlines.tick()  # warned now; its deadline passes in 20 s
    assert delay == pytest.approx(20.05)
    clock.now += timedelta(seconds=delay or 0)
    assert await deadlines.tick() == 60.0
    assert [e["order"] for e in events(logs, "ship_deadline_passed")] == ["DEC-1"]

    # eBay's two-hour window opens for this order in 30 s.
    await seed(
        storage,
        [make_order("EB-1", ship_by=clock.now + timedelta(hours=2, seconds=30))],
        "ebay-de",
    )
    delay = await deadlines.tick()
    assert delay == pytest.approx(30.05)
    clock.now += timedelta(seconds=delay or 0)
    await deadlines.tick()
    assert [e["order"] for e in events(logs, "ship_deadline_approaching")] == ["DEC-1", "EB-1"]


async def test_a_backlog_larger_than_a_batch_is_worked_through_at_once(
    storage: Storage, logs: io.StringIO
) -> None:
    await seed(
        storage,
        [make_order(f"DEC-{n}", ship_by=NOW - timedelta(days=n)) for n in range(1, 6)],
    )
    ids = await storage.channels.channel_ids()
    deadlines = DeadlineWatch(DeadlineStore(storage.db), {ids["decathlon"]: DAY}, Clock(), batch=2)
    assert await deadlines.tick() == 0.0
    assert await deadlines.tick() == 0.0
    assert await deadlines.tick() == 60.0
    assert await deadlines.tick() == 60.0
    reported = [e["order"] for e in events(logs, "ship_deadline_passed")]
    assert sorted(reported) == [f"DEC-{n}" for n in range(1, 6)]


async def test_the_watch_runs_as_a_loop_and_shows_its_counts(
    storage: Storage, logs: io.StringIO
) -> None:
    await seed_soon_and_late(storage)
    clock = Clock()
    deadlines = await watch(storage, clock)
    task = asyncio.create_task(deadlines.run())
    try:
        await until(lambda: deadlines.status.ticks > 0)
        assert deadlines.status.ticks == 1
        assert deadlines.status.state == "idle"
        assert deadlines.status.condition == "ok"
        assert deadlines.status.detail == {"late_orders": 1, "approaching": 1}
        assert deadlines.status.next_tick_at == NOW + timedelta(seconds=60)
        assert deadlines.healthy(clock.now)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert deadlines.status.state == "stopped"


async def test_recording_twice_writes_one_event(storage: Storage) -> None:
    ids = await seed(storage, [make_order("DEC-1")])
    store = DeadlineStore(storage.db)
    assert await store.record(ids["DEC-1"], DEADLINE_WARNING, NOW, "first")
    assert not await store.record(ids["DEC-1"], DEADLINE_WARNING, NOW, "second")
    assert not await store.record(999_999, DEADLINE_WARNING, NOW, "no such order")
    [event] = await order_events(storage, ids["DEC-1"], DEADLINE_WARNING)
    assert event["message"] == "first"


class FailingStore(DeadlineStore):
    async def count_late(self, now: datetime) -> int:
        raise StorageError("database is locked")


async def test_a_database_failure_is_logged_once_and_the_watch_carries_on(
    storage: Storage, logs: io.StringIO
) -> None:
    deadlines = DeadlineWatch(FailingStore(storage.db), {}, Clock())
    assert await deadlines.tick() == 60.0
    assert await deadlines.tick() == 60.0
    assert deadlines.status.condition == "failing"
    assert deadlines.status.last_error == "StorageError: database is locked"
    assert len(events(logs, "deadline_watch_failed")) == 1


async def test_every_query_reads_the_ship_by_index(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a million orders, only the index of orders still to ship is small enough to read."""
    await seed(storage, [make_order("DEC-1", ship_by=NOW + timedelta(hours=1))])
    ids = await storage.channels.channel_ids()
    warnings = {ids["decathlon"]: DAY, ids["ebay-de"]: timedelta(hours=2)}
    queries: list[tuple[str, Sequence[Any]]] = []
    fetchall, fetchone = SQLiteConnection.fetch, SQLiteConnection.fetchrow

    async def spy_all(
        self: SQLiteConnection, sql: str, params: Sequence[Any] = ()
    ) -> list[sqlite3.Row]:
        queries.append((sql, params))
        return await fetchall(self, sql, params)

    async def spy_one(
        self: SQLiteConnection, sql: str, params: Sequence[Any] = ()
    ) -> sqlite3.Row | None:
        queries.append((sql, params))
        return await fetchone(self, sql, params)

    monkeypatch.setattr(SQLiteConnection, "fetch", spy_all)
    monkeypatch.setattr(SQLiteConnection, "fetchrow", spy_one)
    store = DeadlineStore(storage.db)
    await store.approaching(NOW, warnings)
    await store.overdue(NOW)
    await store.count_late(NOW)
    await store.count_approaching(NOW, warnings)
    await store.next_moment(NOW, warnings, NOW + timedelta(minutes=1))
    await store.gauges(NOW)
    monkeypatch.undo()

    on_orders = [(sql, params) for sql, params in queries if "FROM orders o" in sql]
    assert len(on_orders) == 6
    for sql, params in on_orders:
        plan = [row[3] for row in await storage.db.fetch("EXPLAIN QUERY PLAN " + sql, params)]
        reads = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
        orders = [step for step in reads if step.startswith(("SCAN o ", "SEARCH o "))]
        assert orders, plan
        assert all("USING INDEX orders_ship_by_idx (latest_ship_date" in s for s in orders), plan
        events_steps = [step for step in reads if " e " in step]
        assert all("order_events_order_idx (order_id=?)" in s for s in events_steps), plan
