"""Ship-by deadlines, and the figures /metrics reads from the database.

Every query here on orders walks the partial index `orders_ship_by_idx`, whose rows are only
the orders still to ship: it is small however many orders the file holds. For SQLite to use
it, each query repeats the index's own condition word for word (`_TO_SHIP`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import msgspec

from sfd.domain import LOCAL_OPERATIONS, TO_SHIP_STATUSES, OperationKind
from sfd.domain.clock import from_iso, to_iso
from sfd.storage.database import Record, Store, quoted

#: The order event recorded when an order enters its channel's warning window.
DEADLINE_WARNING = "deadline_warning"
#: The order event recorded when an order's ship-by date has passed unshipped.
DEADLINE_PASSED = "deadline_passed"

#: The orders the merchant still has to ship. The status test is `orders_ship_by_idx`'s
#: own WHERE clause, spelled the same, so that SQLite may use that partial index.
_TO_SHIP = f"o.status IN ({quoted(TO_SHIP_STATUSES)}) AND o.fulfilled_by = 'store' "

_SELECT_DEADLINE = (
    "SELECT o.id, o.reference, o.channel_id, "
    "(SELECT c.name FROM channels c WHERE c.id = o.channel_id) AS channel, o.latest_ship_date "
    "FROM orders o "
)

#: The states a channel's credentials can be in, as the channels table allows.
AUTH_STATES = ("unknown", "ok", "auth_failed")
#: The operations that wait for a marketplace; local ones are settled at once.
MARKETPLACE_KINDS = tuple(k.value for k in OperationKind if k not in LOCAL_OPERATIONS)


class DeadlineOrder(msgspec.Struct, kw_only=True, frozen=True):
    """An order still to ship, with its ship-by date."""

    order_id: int
    reference: str
    channel_id: int
    channel: str
    latest_ship_date: datetime


class DatabaseGauges(msgspec.Struct, kw_only=True, frozen=True):
    """What /metrics shows of the database at one moment."""

    pending_operations: dict[tuple[str, str], int]
    """(channel, kind) → operations scheduled or running."""
    late_orders: dict[str, int]
    """Channel → orders whose ship-by date passed, still to ship."""
    auth_states: dict[str, str]
    """Active channel → the state of its credentials."""


def _deadline(row: Record) -> DeadlineOrder:
    return DeadlineOrder(
        order_id=row["id"],
        reference=row["reference"],
        channel_id=row["channel_id"],
        channel=row["channel"] or "",
        latest_ship_date=from_iso(row["latest_ship_date"]),
    )


def _in_window(now: datetime, warnings: Mapping[int, timedelta]) -> tuple[str, list[object]]:
    """SQL for "due from `now` to the end of its channel's warning window", and its parameters.

    The first two terms bound a range of the ship-by index, as wide as the longest window;
    the OR then applies each channel's own window (each bound compared with the column, so
    PostgreSQL knows its type; `+` keeps SQLite from an OR over the (channel_id, reference)
    index). A channel without a window matches none.
    """
    windows = {cid: w for cid, w in warnings.items() if w > timedelta(0)}
    if not windows:
        return "1 = 0 ", []
    each = " OR ".join(
        f"(+o.channel_id = ${n} AND o.latest_ship_date <= ${n + 1})"
        for n in range(3, 3 + 2 * len(windows), 2)
    )
    params: list[object] = [to_iso(now), to_iso(now + max(windows.values()))]
    for channel_id, window in windows.items():
        params += [channel_id, to_iso(now + window)]
    return (
        f"o.latest_ship_date >= $1 AND o.latest_ship_date <= $2 AND ({each}) ",
        params,
    )


class DeadlineStore(Store):
    """Orders near or past their ship-by date, and the events that say they were reported."""

    async def approaching(
        self, now: datetime, warnings: Mapping[int, timedelta], *, limit: int = 500
    ) -> list[DeadlineOrder]:
        """Orders due within their channel's warning window, not yet past, never warned of.

        `warnings` maps a channel id to its window; orders of other channels are left out.
        Soonest deadline first, at most `limit`.
        """
        window, params = _in_window(now, warnings)
        if not params:
            return []
        rows = await self.db.fetch(
            _SELECT_DEADLINE + "WHERE " + _TO_SHIP + "AND " + window + "AND NOT EXISTS ("
            "SELECT 1 FROM order_events e "
            f"WHERE e.order_id = o.id AND e.kind = '{DEADLINE_WARNING}') "
            f"ORDER BY o.latest_ship_date, o.id LIMIT ${len(params) + 1}",
            [*params, limit],
        )
        return [_deadline(row) for row in rows]

    async def overdue(self, now: datetime, *, limit: int = 500) -> list[DeadlineOrder]:
        """Orders still to ship whose ship-by date is before `now`, never reported as passed."""
        rows = await self.db.fetch(
            _SELECT_DEADLINE + "WHERE " + _TO_SHIP + "AND o.latest_ship_date < $1 "
            "AND NOT EXISTS (SELECT 1 FROM order_events e "
            f"WHERE e.order_id = o.id AND e.kind = '{DEADLINE_PASSED}') "
            "ORDER BY o.latest_ship_date, o.id LIMIT $2",
            (to_iso(now), limit),
        )
        return [_deadline(row) for row in rows]

    async def record(self, order_id: int, kind: str, now: datetime, message: str) -> bool:
        """Record `kind` on the order unless it already carries it; True if recorded now."""
        return order_id in await self.record_many(kind, now, {order_id: message})

    async def record_many(self, kind: str, now: datetime, messages: Mapping[int, str]) -> set[int]:
        """Record `kind` (source `auto`) on each order that lacks it, in one transaction.

        Returns the ids of the orders recorded now. An order that already carries the event,
        from an earlier tick or an earlier run, is left alone: the caller logs only those
        returned, so each deadline is reported once, even across restarts.
        """
        recorded: set[int] = set()
        if not messages:
            return recorded
        stamp = to_iso(now)
        async with self.db.write() as tx:
            for order_id, message in messages.items():
                changed = await tx.execute(
                    "INSERT INTO order_events (order_id, at, source, kind, message) "
                    "SELECT $1, $2, 'auto', $3, $4 "
                    "WHERE EXISTS (SELECT 1 FROM orders WHERE id = $1) "
                    "AND NOT EXISTS (SELECT 1 FROM order_events "
                    "WHERE order_id = $1 AND kind = $3)",
                    (order_id, stamp, kind, message),
                )
                if changed:
                    recorded.add(order_id)
        return recorded

    async def count_late(self, now: datetime) -> int:
        """How many orders are still to ship after their ship-by date."""
        row = await self.db.fetchrow(
            "SELECT count(*) FROM orders o WHERE " + _TO_SHIP + "AND o.latest_ship_date < $1",
            (to_iso(now),),
        )
        return int(row[0]) if row else 0

    async def count_approaching(self, now: datetime, warnings: Mapping[int, timedelta]) -> int:
        """How many orders are within their channel's warning window and not yet late."""
        window, params = _in_window(now, warnings)
        if not params:
            return 0
        row = await self.db.fetchrow(
            "SELECT count(*) FROM orders o WHERE " + _TO_SHIP + "AND " + window, params
        )
        return int(row[0]) if row else 0

    async def next_moment(
        self, now: datetime, warnings: Mapping[int, timedelta], until: datetime
    ) -> datetime | None:
        """The first moment in [now, until] when an order's deadline passes or its window opens.

        None if nothing happens before `until`. Each part reads a slice of the ship-by index
        only `until - now` wide.
        """
        parts = [
            "SELECT 0 AS shift, min(o.latest_ship_date) AS at FROM orders o WHERE "
            + _TO_SHIP
            + "AND o.latest_ship_date >= $1 AND o.latest_ship_date <= $2"
        ]
        params: list[object] = [to_iso(now), to_iso(until)]
        for channel_id, window in warnings.items():
            if window <= timedelta(0):
                continue
            n = len(params)
            parts.append(
                f"SELECT CAST(${n + 1} AS DOUBLE PRECISION) AS shift, "
                "min(o.latest_ship_date) AS at FROM orders o WHERE "
                + _TO_SHIP
                # `+` keeps SQLite off the (channel_id, reference) index: the ship-by range
                # is the narrow one.
                + f"AND +o.channel_id = ${n + 2} AND o.latest_ship_date > ${n + 3} "
                f"AND o.latest_ship_date <= ${n + 4}"
            )
            params += [
                window.total_seconds(),
                channel_id,
                to_iso(now + window),
                to_iso(until + window),
            ]
        rows = await self.db.fetch(" UNION ALL ".join(parts), params)
        moments = [
            from_iso(row["at"]) - timedelta(seconds=row["shift"])
            for row in rows
            if row["at"] is not None
        ]
        return min(moments, default=None)

    async def gauges(self, now: datetime) -> DatabaseGauges:
        """Pending operations per channel and kind, late orders per channel, credentials.

        Every active channel is listed, with zeros where it has nothing, so a series does not
        vanish when its count falls to zero.
        """
        async with self.db.read() as reader:
            channels = await reader.fetch("SELECT id, name, active, auth_state FROM channels")
            pending = await reader.fetch(
                "SELECT coalesce(c.name, '') AS channel, g.kind, g.n FROM ("
                "SELECT channel_id, kind, count(*) AS n FROM operations "
                "WHERE state IN ('scheduled', 'running') GROUP BY channel_id, kind"
                ") g LEFT JOIN channels c ON c.id = g.channel_id",
            )
            late = await reader.fetch(
                "SELECT coalesce(c.name, '') AS channel, g.n FROM ("
                # Grouped by `+channel_id`, not channel_id, or SQLite would rather walk every
                # order in the (channel_id, reference) index than sort the few late ones.
                "SELECT +o.channel_id AS channel_id, count(*) AS n FROM orders o WHERE "
                + _TO_SHIP
                + "AND o.latest_ship_date < $1 GROUP BY 1"
                ") g LEFT JOIN channels c ON c.id = g.channel_id",
                (to_iso(now),),
            )
        active = [row["name"] for row in channels if row["active"]]
        pending_counts = {(name, kind): 0 for name in active for kind in MARKETPLACE_KINDS}
        for row in pending:
            key = (row["channel"], row["kind"])
            pending_counts[key] = pending_counts.get(key, 0) + int(row["n"])
        late_counts = dict.fromkeys(active, 0)
        for row in late:
            late_counts[row["channel"]] = late_counts.get(row["channel"], 0) + int(row["n"])
        return DatabaseGauges(
            pending_operations=pending_counts,
            late_orders=late_counts,
            auth_states={row["name"]: row["auth_state"] for row in channels if row["active"]},
        )
