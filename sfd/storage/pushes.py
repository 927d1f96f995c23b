"""Push mode's records: each shop's sync state and read-back cursor, and one row per order
pushed into a shop, written before the shop is called so no crash can create an order twice."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import msgspec

from sfd.domain import EventSource
from sfd.domain.clock import to_iso
from sfd.storage.database import Params, Store, from_row, marks, stored_time
from sfd.storage.orders import OrderStore

#: The order event recorded when a completed order's tracking did not come in time.
TRACKING_MISSING = "tracking_missing"

PENDING, CREATED, REJECTED = "pending", "created", "rejected"
#: How far before its registration a shop's first read-back starts.
FIRST_READ_MARGIN = timedelta(hours=1)


class PushRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One order pushed (or being pushed) into one shop."""

    id: int
    shop: str
    order_id: int
    state: str
    """pending: called, outcome unknown until recorded; created; rejected by the shop."""
    shop_order_id: str | None
    attempts: int
    last_error: str | None
    started_at: datetime
    completed_seen_at: datetime | None
    tracking_flagged_at: datetime | None
    settled_kind: str | None
    settled_at: datetime | None
    steps: dict[str, str] = msgspec.field(default_factory=dict)
    """The ids a connector creating the order in several calls recorded, by step."""


class ShopState(msgspec.Struct, kw_only=True, frozen=True):
    """A shop as `sfd shops` shows it, like a channel's poll state."""

    name: str
    store_id: int
    connector: str
    cursor: datetime | None
    auth_state: str
    last_sync_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    next_sync_at: datetime | None
    pushed: int
    rejected: int
    pending: int
    waiting_tracking: int


def _record(row: Any) -> PushRecord:
    return from_row(PushRecord, row, steps=_steps(row["steps"]))


def _steps(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    return msgspec.json.decode(text, type=dict[str, str])


class PushStore(Store):
    """Shops and their pushes."""

    # -- shops -----------------------------------------------------------------------------

    async def register(self, shop: str, store_id: int, connector: str, now: datetime) -> None:
        """Record a configured shop; its cursor (from now, at first) and state survive restarts."""
        await self.db.execute(
            # The read-back starts about now: the shop's older orders are none of sfd's. The
            # margin covers the shop's clock and its timestamps, written to the second.
            "INSERT INTO shops (name, store_id, connector, cursor, updated_at) "
            "VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (name) DO UPDATE SET store_id = excluded.store_id, "
            "connector = excluded.connector, updated_at = excluded.updated_at "
            "WHERE shops.store_id != excluded.store_id "
            "OR shops.connector != excluded.connector",
            (shop, store_id, connector, to_iso(now - FIRST_READ_MARGIN), to_iso(now)),
        )

    async def cursor(self, shop: str) -> datetime | None:
        """Where the shop's read-back resumes."""
        row = await self.db.fetchrow("SELECT cursor FROM shops WHERE name = $1", (shop,))
        return stored_time(row[0]) if row else None

    async def set_cursor(self, shop: str, cursor: datetime, now: datetime) -> None:
        """Move the read-back cursor."""
        await self.db.execute(
            "UPDATE shops SET cursor = $1, updated_at = $2 WHERE name = $3",
            (to_iso(cursor), to_iso(now), shop),
        )

    async def sync_started(self, shop: str, now: datetime) -> None:
        """A sync begins."""
        await self.db.execute(
            "UPDATE shops SET last_sync_at = $1, updated_at = $2 WHERE name = $3",
            (to_iso(now), to_iso(now), shop),
        )

    async def sync_succeeded(self, shop: str, now: datetime, next_at: datetime) -> None:
        """A sync went through: the credentials work."""
        await self.db.execute(
            "UPDATE shops SET last_success_at = $1, auth_state = 'ok', last_error = NULL, "
            "next_sync_at = $2, updated_at = $3 WHERE name = $4",
            (to_iso(now), to_iso(next_at), to_iso(now), shop),
        )

    async def sync_failed(
        self, shop: str, now: datetime, reason: str, next_at: datetime, *, auth_failed: bool
    ) -> None:
        """A sync failed; `auth_failed` when the shop refused the credentials."""
        await self.db.execute(
            "UPDATE shops SET last_error = $1, last_error_at = $2, next_sync_at = $3, "
            "auth_state = CASE WHEN $4 THEN 'auth_failed' ELSE auth_state END, "
            "updated_at = $5 WHERE name = $6",
            (reason, to_iso(now), to_iso(next_at), int(auth_failed), to_iso(now), shop),
        )

    async def states(self, names: Collection[str] | None = None) -> list[ShopState]:
        """Every registered shop (or those named) with its state and push counts."""
        rows = await self.db.fetch(
            "SELECT s.*, "
            "(SELECT count(*) FROM shop_pushes p WHERE p.shop = s.name "
            " AND p.state = 'created') AS pushed, "
            "(SELECT count(*) FROM shop_pushes p WHERE p.shop = s.name "
            " AND p.state = 'rejected') AS rejected, "
            "(SELECT count(*) FROM shop_pushes p WHERE p.shop = s.name "
            " AND p.state = 'pending') AS pending, "
            "(SELECT count(*) FROM shop_pushes p WHERE p.shop = s.name "
            " AND p.completed_seen_at IS NOT NULL AND p.settled_at IS NULL) AS waiting "
            "FROM shops s ORDER BY s.name"
        )
        return [
            from_row(ShopState, r, waiting_tracking=r["waiting"])
            for r in rows
            if names is None or r["name"] in names
        ]

    # -- pushes ----------------------------------------------------------------------------

    async def for_orders(self, shop: str, order_ids: Collection[int]) -> dict[int, PushRecord]:
        """The push records of these orders in this shop, by order id."""
        ids = list(order_ids)
        found: dict[int, PushRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self.db.fetch(
                f"SELECT * FROM shop_pushes WHERE shop = $1 AND order_id IN "
                f"({marks(len(chunk), 2)})",
                [shop, *chunk],
            )
            found.update((row["order_id"], _record(row)) for row in rows)
        return found

    async def for_order(self, order_id: int) -> list[PushRecord]:
        """Every shop's push record of one order."""
        rows = await self.db.fetch(
            "SELECT * FROM shop_pushes WHERE order_id = $1 ORDER BY id", (order_id,)
        )
        return [_record(row) for row in rows]

    async def begin(self, shop: str, order_id: int, now: datetime) -> PushRecord:
        """Record an attempt before the shop is called: `pending` until its outcome is known.

        A row already there keeps its start, so a search covers every earlier attempt.
        """
        async with self.db.write() as tx:
            await tx.execute(
                "INSERT INTO shop_pushes (shop, order_id, state, attempts, started_at, "
                "updated_at) VALUES ($1, $2, 'pending', 1, $3, $4) ON CONFLICT (shop, order_id) "
                "DO UPDATE SET attempts = shop_pushes.attempts + 1, "
                "updated_at = excluded.updated_at, "
                "state = CASE WHEN shop_pushes.state = 'created' THEN shop_pushes.state "
                "ELSE 'pending' END",
                (shop, order_id, to_iso(now), to_iso(now)),
            )
            row = await tx.fetchrow(
                "SELECT * FROM shop_pushes WHERE shop = $1 AND order_id = $2", (shop, order_id)
            )
        assert row is not None
        return _record(row)

    async def created(self, shop: str, order_id: int, shop_order_id: str, now: datetime) -> None:
        """The shop holds the order, under `shop_order_id`."""
        changes = {"state": CREATED, "shop_order_id": shop_order_id, "last_error": None}
        await self._update(shop, order_id, now, changes)

    async def record_steps(
        self, shop: str, order_id: int, steps: dict[str, str], now: datetime
    ) -> None:
        """Record the steps a connector made so far of a pending create (all of them, merged:
        a step recorded once is never lost)."""
        async with self.db.write() as tx:
            row = await tx.fetchrow(
                "SELECT steps FROM shop_pushes WHERE shop = $1 AND order_id = $2",
                (shop, order_id),
            )
            merged = (_steps(row["steps"]) if row else {}) | steps
            await tx.execute(
                "UPDATE shop_pushes SET steps = $1, updated_at = $2 "
                "WHERE shop = $3 AND order_id = $4",
                (msgspec.json.encode(merged).decode(), to_iso(now), shop, order_id),
            )

    async def rejected(self, shop: str, order_id: int, message: str, now: datetime) -> None:
        """The shop refused the order: nothing was created."""
        await self._update(shop, order_id, now, {"state": REJECTED, "last_error": message})

    async def attempt_failed(self, shop: str, order_id: int, message: str, now: datetime) -> None:
        """An attempt whose outcome is unknown: the row stays pending, with the reason."""
        await self._update(shop, order_id, now, {"last_error": message}, pending_only=True)

    async def _update(
        self,
        shop: str,
        order_id: int,
        now: datetime,
        changes: dict[str, Any],
        *,
        pending_only: bool = False,
    ) -> None:
        """Set `changes` (column → value) and the update time on one push row."""
        p = Params()
        sets = ", ".join(f"{column} = {p(value)}" for column, value in changes.items())
        where = f"shop = {p(shop)} AND order_id = {p(order_id)}"
        await self.db.execute(
            f"UPDATE shop_pushes SET {sets}, updated_at = {p(to_iso(now))} WHERE {where}"
            + (f" AND state = {p(PENDING)}" if pending_only else ""),
            p,
        )

    async def forget(self, order_id: int) -> int:
        """Drop the order's push records that created nothing, so it may be pushed again."""
        return await self.db.execute(
            "DELETE FROM shop_pushes WHERE order_id = $1 AND state != 'created'", (order_id,)
        )

    async def by_shop_order(self, shop: str, shop_order_id: str) -> PushRecord | None:
        """The push that created the shop's order `shop_order_id`."""
        row = await self.db.fetchrow(
            "SELECT * FROM shop_pushes "
            "WHERE shop = $1 AND shop_order_id = $2 AND state = 'created'",
            (shop, shop_order_id),
        )
        return _record(row) if row else None

    async def waiting_tracking(self, shop: str) -> list[PushRecord]:
        """Completed in the shop, not yet shipped in sfd: waiting for a tracking number."""
        rows = await self.db.fetch(
            "SELECT * FROM shop_pushes WHERE shop = $1 AND completed_seen_at IS NOT NULL "
            "AND settled_at IS NULL ORDER BY id",
            (shop,),
        )
        return [_record(row) for row in rows]

    async def completed_seen(self, push_id: int, now: datetime) -> None:
        """The shop completed the order without a tracking number: the wait starts now."""
        await self.db.execute(
            "UPDATE shop_pushes SET completed_seen_at = coalesce(completed_seen_at, $1), "
            "updated_at = $2 WHERE id = $3",
            (to_iso(now), to_iso(now), push_id),
        )

    async def flag_tracking(self, push: PushRecord, now: datetime, message: str) -> None:
        """The wait for tracking is over: flag it once, as an event on the order."""
        async with self.db.write() as tx:
            changed = await tx.execute(
                "UPDATE shop_pushes SET tracking_flagged_at = $1, updated_at = $2 "
                "WHERE id = $3 AND tracking_flagged_at IS NULL",
                (to_iso(now), to_iso(now), push.id),
            )
            if changed:
                await OrderStore.add_event(
                    tx, push.order_id, now, EventSource.SHOP, TRACKING_MISSING, message=message
                )

    async def settle(self, push_id: int, kind: str, now: datetime) -> None:
        """The shop's order became `kind` (ship, cancel, or nothing): it is read no more."""
        await self.db.execute(
            "UPDATE shop_pushes SET settled_kind = $1, settled_at = $2, updated_at = $3 "
            "WHERE id = $4",
            (kind, to_iso(now), to_iso(now), push_id),
        )
