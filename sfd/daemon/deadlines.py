"""The deadline watch: warns once when an order nears its ship-by date, and once when it passes.

Each report is an order event written before the log line, in a transaction that writes it
only if the order has none of that kind yet: a restart, or a second tick, reports nothing
twice. The watch ticks at the next deadline or window opening, at most `interval` apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from sfd.daemon.backoff import Backoff
from sfd.daemon.loops import Loop
from sfd.domain.clock import Clock, to_api
from sfd.storage import StorageError
from sfd.storage.deadlines import (
    DEADLINE_PASSED,
    DEADLINE_WARNING,
    DeadlineOrder,
    DeadlineStore,
)

#: Ticks land this long after the moment they wait for, so that moment is surely past.
SLACK = 0.05
#: Ticks are at least this far apart (a backlog aside): deadlines a moment apart share one.
MIN_GAP = 1.0
#: At most this many orders are reported per tick; a backlog is worked through at once after.
BATCH = 500


def hours_between(start: datetime, end: datetime) -> float:
    """Hours from `start` to `end`, to one decimal."""
    return round((end - start).total_seconds() / 3600, 1)


class DeadlineWatch(Loop):
    """Reports the orders near or past their ship-by date, each once."""

    failed_event = "deadline_watch_failed"
    recovered_event = "deadline_watch_recovered"
    # Storage maps every driver error to StorageError: that is the watch failing; anything
    # else is a bug in it, logged with its traceback by the loop's catch-all.
    expected = (StorageError,)

    def __init__(
        self,
        storage_deadlines: DeadlineStore,
        warnings: Mapping[int, timedelta],
        clock: Clock,
        interval: float = 60.0,
        *,
        batch: int = BATCH,
    ) -> None:
        # A failed watch looks again at its interval: what it reports does not get more urgent.
        steady = Backoff(base=interval, factor=1.0, cap=interval)
        super().__init__("deadline-watch", interval, clock, backoff=steady)
        self.deadlines = storage_deadlines
        self.warnings = dict(warnings)
        """Channel id → how long before its ship-by date an order is warned of."""
        self.batch = batch
        self.status.detail = {"late_orders": 0, "approaching": 0}

    async def step(self) -> float | None:
        now = self.clock()
        approaching = await self.deadlines.approaching(now, self.warnings, limit=self.batch)
        overdue = await self.deadlines.overdue(now, limit=self.batch)
        warned = await self._warn(approaching, now)
        passed = await self._passed(overdue, now)
        self.status.detail = {
            "late_orders": await self.deadlines.count_late(now),
            "approaching": await self.deadlines.count_approaching(now, self.warnings),
        }
        full = len(approaching) >= self.batch or len(overdue) >= self.batch
        if full and (warned or passed):
            return 0.0  # a backlog (a first start, a long stop): carry on at once
        moment = await self.deadlines.next_moment(
            now, self.warnings, now + timedelta(seconds=self.interval)
        )
        if moment is None:
            return self.interval
        wait = (moment - self.clock()).total_seconds() + SLACK
        return min(self.interval, max(MIN_GAP, wait))

    async def _warn(self, orders: Sequence[DeadlineOrder], now: datetime) -> int:
        warned = await self._record(
            DEADLINE_WARNING,
            orders,
            now,
            lambda o: (
                f"ship by {to_api(o.latest_ship_date)}: "
                f"{hours_between(now, o.latest_ship_date)} hours left"
            ),
        )
        for o in warned:
            self.log.warning(
                "ship_deadline_approaching",
                **_log_fields(o),
                hours_left=hours_between(now, o.latest_ship_date),
            )
        return len(warned)

    async def _passed(self, orders: Sequence[DeadlineOrder], now: datetime) -> int:
        passed = await self._record(
            DEADLINE_PASSED,
            orders,
            now,
            lambda o: f"ship-by date {to_api(o.latest_ship_date)} passed",
        )
        for o in passed:
            self.log.error(
                "ship_deadline_passed",
                **_log_fields(o),
                hours_late=hours_between(o.latest_ship_date, now),
            )
        return len(passed)

    async def _record(
        self,
        kind: str,
        orders: Sequence[DeadlineOrder],
        now: datetime,
        message: Callable[[DeadlineOrder], str],
    ) -> list[DeadlineOrder]:
        """Record the event `kind` on each order that lacks it: the orders recorded now."""
        recorded = await self.deadlines.record_many(
            kind, now, {o.order_id: message(o) for o in orders}
        )
        return [o for o in orders if o.order_id in recorded]


def _log_fields(order: DeadlineOrder) -> dict[str, object]:
    """What a deadline's log line says of its order."""
    return {
        "channel": order.channel,
        "order": order.reference,
        "order_id": order.order_id,
        "latestShipDate": to_api(order.latest_ship_date),
    }
