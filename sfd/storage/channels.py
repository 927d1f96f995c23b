"""Stores and channels: their rows follow the config, and each channel keeps its poll state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import msgspec

from sfd.domain.clock import to_iso
from sfd.storage.database import Connection, Store, from_row, marks, stored_time


class ChannelSpec(NamedTuple):
    """A channel as the config declares it."""

    name: str
    store: int
    connector: str
    require_tracking: bool = False


class ChannelState(msgspec.Struct, kw_only=True, frozen=True):
    """A channel as `sfd channels`, `/healthz` and the order page show it."""

    id: int
    name: str
    store_id: int
    connector: str
    active: bool
    cursor: datetime | None
    auth_state: str
    last_poll_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    next_poll_at: datetime | None
    orders: int
    pending_operations: int
    failed_operations: int
    held_by: str | None = None
    """The instance whose lease runs this channel's poller (several instances on PostgreSQL)."""


async def move_cursor(tx: Connection, channel_id: int, cursor: datetime, now: datetime) -> None:
    """Move a channel's import cursor inside the caller's transaction."""
    await tx.execute(
        "UPDATE channels SET cursor = $1, updated_at = $2 WHERE id = $3",
        (to_iso(cursor), to_iso(now), channel_id),
    )


class ChannelStore(Store):
    """Stores and channels."""

    async def sync(
        self,
        stores: Sequence[tuple[int, str]],
        channels: Sequence[ChannelSpec],
        now: datetime,
    ) -> None:
        """Make the stores and channels tables match the config; unlisted channels turn inactive."""
        stamp = to_iso(now)
        async with self.db.write() as tx:
            await tx.executemany(
                "INSERT INTO stores (id, name, created_at, updated_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "updated_at = excluded.updated_at WHERE stores.name != excluded.name",
                [(store_id, name, stamp, stamp) for store_id, name in stores],
            )
            names = [c.name for c in channels]
            # PostgreSQL has no empty IN list: with no channels, the clause goes.
            listed = f"AND name NOT IN ({marks(len(names), 2)})" if names else ""
            await tx.execute(
                f"UPDATE channels SET active = 0, updated_at = $1 WHERE active = 1 {listed}",
                (stamp, *names),
            )
            await tx.executemany(
                "INSERT INTO channels (name, store_id, connector, require_tracking, active, "
                "created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6) ON CONFLICT (name) DO "
                "UPDATE SET store_id = excluded.store_id, connector = excluded.connector, "
                "require_tracking = excluded.require_tracking, active = 1, "
                "updated_at = excluded.updated_at WHERE channels.store_id != excluded.store_id "
                "OR channels.connector != excluded.connector "
                "OR channels.require_tracking != excluded.require_tracking "
                "OR channels.active = 0",
                [
                    (c.name, c.store, c.connector, int(c.require_tracking), stamp, stamp)
                    for c in channels
                ],
            )

    async def channel_ids(self) -> dict[str, int]:
        """Channel name → id."""
        rows = await self.db.fetch("SELECT id, name FROM channels")
        return {row["name"]: row["id"] for row in rows}

    async def store_name(self, store_id: int) -> str | None:
        """The store's name, or None if no store has this id."""
        row = await self.db.fetchrow("SELECT name FROM stores WHERE id = $1", (store_id,))
        return str(row[0]) if row else None

    async def states(
        self, *, active_only: bool = True, store_id: int | None = None
    ) -> list[ChannelState]:
        """Every channel with its poll state and counts."""
        where, params = ["1 = 1"], list[object]()
        if active_only:
            where.append("h.active = 1")
        if store_id is not None:
            where.append("h.store_id = $1")
            params.append(store_id)
        rows = await self.db.fetch(
            "SELECT c.id, c.cursor, h.* FROM channel_health h JOIN channels c ON c.name = h.name "
            f"WHERE {' AND '.join(where)} ORDER BY h.name",
            params,
        )
        return [from_row(ChannelState, row) for row in rows]

    async def cursor(self, channel_id: int) -> datetime | None:
        """Where the channel's next import starts."""
        row = await self.db.fetchrow("SELECT cursor FROM channels WHERE id = $1", (channel_id,))
        return stored_time(row["cursor"]) if row else None

    async def set_cursor(self, channel_id: int, cursor: datetime, now: datetime) -> None:
        """Move the channel's import cursor."""
        async with self.db.write() as tx:
            await move_cursor(tx, channel_id, cursor, now)

    async def record_poll_started(self, channel_id: int, now: datetime) -> None:
        """A poll begins."""
        await self.db.execute(
            "UPDATE channels SET last_poll_at = $1, updated_at = $2 WHERE id = $3",
            (to_iso(now), to_iso(now), channel_id),
        )

    async def record_poll_succeeded(
        self, channel_id: int, now: datetime, next_poll_at: datetime
    ) -> None:
        """A poll ended well: credentials work, the error is cleared."""
        await self.db.execute(
            "UPDATE channels SET last_success_at = $1, auth_state = 'ok', last_error = NULL, "
            "next_poll_at = $2, updated_at = $3 WHERE id = $4",
            (to_iso(now), to_iso(next_poll_at), to_iso(now), channel_id),
        )

    async def record_poll_failed(
        self,
        channel_id: int,
        now: datetime,
        error: str,
        next_poll_at: datetime,
        *,
        auth_failed: bool = False,
    ) -> None:
        """A poll failed; an auth failure marks the channel `auth_failed`."""
        await self.db.execute(
            "UPDATE channels SET last_error = $1, last_error_at = $2, next_poll_at = $3, "
            "auth_state = CASE WHEN $4 THEN 'auth_failed' ELSE auth_state END, "
            "updated_at = $5 WHERE id = $6",
            (error, to_iso(now), to_iso(next_poll_at), auth_failed, to_iso(now), channel_id),
        )
