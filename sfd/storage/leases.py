"""Leases: which `sfd run` instance works a channel or a shop, and the instances' heartbeats.

A lease row names its holder and when it lapses. The holder renews it; another instance may
take it only once it has lapsed or was given back. Taking a channel's lease from another
holder makes that channel's operations the old holder left running due again one ttl later,
so they are delivered by the new holder (connectors treat a repeat of what was done as done).

On SQLite one instance owns the file (the run lock), so its leases never lapse: the same
code runs, and every lease is trivially its own.
"""

from __future__ import annotations

import os
import socket
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Protocol

import msgspec

from sfd.domain.clock import to_iso
from sfd.storage.database import Connection, Store, from_row, marks

#: A lease of an instance that owns the whole database (SQLite) lapses never.
NEVER = "9999-12-31T00:00:00.000000+00:00"
#: The channel that carries operation wake-ups between instances (LISTEN/NOTIFY).
OPERATIONS_CHANNEL = "sfd_operations"


def channel_lease(channel_id: int) -> str:
    """The lease name of a channel's poller and of its operations' delivery."""
    return f"channel:{channel_id}"


def shop_lease(shop: str) -> str:
    """The lease name of a shop's push loop."""
    return f"shop:{shop}"


class Lease(msgspec.Struct, kw_only=True, frozen=True):
    """Who holds a lease, and until when."""

    name: str
    holder: str
    acquired_at: datetime
    expires_at: datetime


class LeaseStore(Store):
    """Take, renew and give back leases; count the live instances."""

    @property
    def exclusive(self) -> bool:
        """Whether this instance owns the database alone (SQLite): its leases never lapse."""
        return self.db.scheme == "sqlite"

    def _connection(self) -> AbstractAsyncContextManager[Connection]:
        """Where lease statements run. On PostgreSQL each is one autocommit statement on a
        pooled connection of its own: a renewal must never queue behind this instance's
        write transactions (an import page, a delivery), or a busy instance would lose its
        leases. SQLite has one writer, taken as usual."""
        return self.db.write() if self.exclusive else self.db.read()

    def _until(self, now: datetime, ttl: timedelta) -> str:
        return NEVER if self.exclusive else to_iso(now + ttl)

    async def heartbeat(self, instance: str, now: datetime) -> None:
        """Record that `instance` is alive at `now` (registering it if need be)."""
        stamp = to_iso(now)
        async with self._connection() as tx:
            await tx.execute(
                "INSERT INTO instances (id, host, pid, started_at, seen_at) "
                "VALUES ($1, $2, $3, $4, $4) "
                "ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, stopped_at = NULL",
                (instance, socket.gethostname(), os.getpid(), stamp),
            )

    async def live_instances(self, now: datetime, ttl: timedelta) -> int:
        """Instances seen within `ttl` and not stopped (at least 1: the caller)."""
        if self.exclusive:
            return 1
        count = await self.db.fetchval(
            "SELECT count(*) FROM instances WHERE stopped_at IS NULL AND seen_at >= $1",
            (to_iso(now - ttl),),
        )
        return max(1, int(count or 0))

    async def stopped(self, instance: str, now: datetime) -> None:
        """Mark `instance` stopped, so others stop counting it at once."""
        async with self._connection() as tx:
            await tx.execute(
                "UPDATE instances SET stopped_at = $1 WHERE id = $2", (to_iso(now), instance)
            )

    async def renew(self, holder: str, names: list[str], now: datetime, ttl: timedelta) -> set[str]:
        """Extend `holder`'s leases among `names`; return those it still holds."""
        if not names:
            return set()
        async with self._connection() as tx:
            found = await tx.fetch(
                "UPDATE leases SET expires_at = $1 WHERE holder = $2 "
                f"AND name IN ({marks(len(names), 3)}) RETURNING name",
                (self._until(now, ttl), holder, *names),
            )
        return {r["name"] for r in found}

    async def acquire(
        self, holder: str, names: list[str], now: datetime, ttl: timedelta, limit: int
    ) -> list[str]:
        """Take up to `limit` of `names` that are free or lapsed, in the order given.

        For each channel taken from another holder, the operations that holder left running
        are due again one `ttl` later, whatever their own claim said.
        """
        taken: list[str] = []
        stamp, until = to_iso(now), self._until(now, ttl)
        for name in names:
            if len(taken) >= limit:
                break
            # One lease at a time: instances taking leases in different orders never hold
            # one row while waiting for another (no deadlock).
            async with self._connection() as tx:
                before = await tx.fetchrow("SELECT holder FROM leases WHERE name = $1", (name,))
                row = await tx.fetchrow(
                    "INSERT INTO leases (name, holder, acquired_at, expires_at) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET "
                    "holder = excluded.holder, acquired_at = excluded.acquired_at, "
                    "expires_at = excluded.expires_at "
                    "WHERE leases.holder = excluded.holder OR leases.expires_at <= $3 OR $5 "
                    "RETURNING name",
                    # SQLite: the run lock proves whoever held it before is gone.
                    (name, holder, stamp, until, self.exclusive),
                )
                if row is None:
                    continue
                taken.append(name)
                kind, _, item = name.partition(":")
                if kind == "channel" and before is not None and before["holder"] != holder:
                    # The old holder's claims become due one ttl from now: a holder that was
                    # only slow (its lease lapsed) still writes the answers of its calls under
                    # way, which it finishes; a dead one's are delivered again after that.
                    grace = to_iso(now + ttl)
                    await tx.execute(
                        "UPDATE operations SET lease_until = $1, updated_at = $2 "
                        "WHERE state = 'running' AND channel_id = $3 AND lease_until > $1",
                        (grace, stamp, int(item)),
                    )
        return taken

    async def release(self, holder: str, names: list[str] | None = None) -> int:
        """Give back `holder`'s leases among `names` (all of them when None)."""
        if names is not None and not names:
            return 0
        async with self._connection() as tx:
            if names is None:
                return await tx.execute("DELETE FROM leases WHERE holder = $1", (holder,))
            return await tx.execute(
                f"DELETE FROM leases WHERE holder = $1 AND name IN ({marks(len(names), 2)})",
                (holder, *names),
            )

    async def all(self) -> dict[str, Lease]:
        """Every lease, by name."""
        rows = await self.db.fetch("SELECT * FROM leases ORDER BY name")
        return {r["name"]: from_row(Lease, r) for r in rows}


class Listener(Protocol):
    """A LISTEN held open for notifications; `alive()` turns False if its connection dropped."""

    def alive(self) -> bool:
        """Whether notifications still arrive."""
        ...

    async def close(self) -> None:
        """Stop listening and give the connection back."""
        ...


__all__ = [
    "NEVER",
    "OPERATIONS_CHANNEL",
    "Lease",
    "LeaseStore",
    "Listener",
    "channel_lease",
    "shop_lease",
]
