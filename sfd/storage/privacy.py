"""Personal data retention: erase the buyer's data of orders closed for long enough.

An order closed (shipped, cancelled, refused, refunded, partially refunded) since before the
cutoff loses its buyer's names, companies, street lines, phones and emails: in its addresses,
its `additional_fields`, its raw payload (redacted by the function the caller gives, which
knows the marketplace's wire format), its stored API document (rendered again) and whatever
an erasure hook holds (the invoices' table registers one). Amounts, lines, country, postcode,
city, carrier, tracking, statuses, events and operations stay. Each erased order gets an
event saying when and what; afterwards the WAL is checkpointed and truncated, so with
`secure_delete` on no copy of the erased data is left in the files.

How long an order has been closed is read from its last status event (order_events.at).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sfd.domain import EventSource
from sfd.domain.clock import to_iso
from sfd.domain.privacy import (
    PERSONAL_ADDRESS_FIELDS,
    RETENTION_STATUSES,
    erase_fields,
    known_values,
)
from sfd.storage.database import Connection, Database, marks, quoted
from sfd.storage.orders import OrdersFollower, OrderStore

#: (connector name, raw payload text, the order's known personal values) → redacted payload.
PayloadRedactor = Callable[[str, str, frozenset[str]], str]
#: Erases the personal data a table holds for the given orders, inside the erasure's
#: transaction; returns how many rows it changed.
ErasureHook = Callable[[Connection, Sequence[int]], Awaitable[int]]

#: Orders erased per transaction: short write transactions, the daemon's other writes go on.
BATCH = 200
#: The order event an erasure writes.
ERASED_EVENT = "personal_data_erased"

# Closed since: the time of the order's last status event (its import counts as one).
_CLOSED_AT = (
    "coalesce((SELECT max(e.at) FROM order_events e "
    "WHERE e.order_id = o.id AND e.to_status IS NOT NULL), o.updated_at)"
)
_DUE = (
    "SELECT o.id, o.additional_fields, c.connector, "
    f"{_CLOSED_AT} AS closed_at "
    "FROM orders o JOIN channels c ON c.id = o.channel_id "
    f"WHERE o.status IN ({quoted(sorted(RETENTION_STATUSES))}) "
    # Never erased, or written again since (a marketplace update brought data back).
    "AND (o.personal_data_erased_at IS NULL OR o.updated_at > o.personal_data_erased_at) "
    f"AND {_CLOSED_AT} <= $1 AND o.id > $2 ORDER BY o.id LIMIT $3"
)
_PERSONAL_SET = ", ".join(f"{name} = ''" for name in PERSONAL_ADDRESS_FIELDS)
_HAS_PERSONAL = " OR ".join(f"{name} <> ''" for name in PERSONAL_ADDRESS_FIELDS)


@dataclass
class ErasureReport:
    """What one erasure run did (or, dry, would do)."""

    cutoff: datetime
    """Orders closed before this time were due."""
    dry_run: bool = False
    orders: int = 0
    """Orders that had personal data, now erased."""
    addresses: int = 0
    payloads: int = 0
    """Raw marketplace payloads redacted."""
    fields: int = 0
    """Orders whose additional fields lost personal entries."""
    api_documents: int = 0
    """Stored API documents rendered again without the erased data."""
    hooks: dict[str, int] = field(default_factory=dict)
    """Rows each erasure hook changed, by the hook's name."""
    checked: int = 0
    """Due orders looked at, including those with nothing left to erase."""
    checkpointed: bool | None = None
    """Whether the WAL was truncated afterwards (None: nothing was written)."""


@dataclass(frozen=True)
class _Found:
    """What one due order holds that the erasure removes."""

    order_id: int
    addresses: int
    payload: str | None
    fields: dict[str, Any] | None
    closed_at: str

    @property
    def anything(self) -> bool:
        return bool(self.addresses) or self.payload is not None or self.fields is not None


class PrivacyStore(OrdersFollower):
    """The erasure of buyers' personal data after the retention."""

    def __init__(self, db: Database, orders: OrderStore) -> None:
        super().__init__(db, orders)
        self.hooks: dict[str, ErasureHook] = {}
        self._checkpoint_pending = False
        """A checkpoint after an erasure could not finish: the next run tries again."""

    def register_eraser(self, name: str, hook: ErasureHook) -> None:
        """Have `hook` erase what its table holds of each order being erased (e.g. invoices)."""
        self.hooks[name] = hook

    async def erase(
        self,
        now: datetime,
        retention: timedelta,
        redact: PayloadRedactor,
        *,
        source: EventSource = EventSource.AUTO,
        actor: str | None = None,
        dry_run: bool = False,
        batch: int = BATCH,
    ) -> ErasureReport:
        """Erase the personal data of every order closed for `retention` at `now`.

        Dry, it only counts what it would erase. Each batch is one transaction: a stop
        between two loses nothing, the next run takes up the rest.
        """
        report = ErasureReport(cutoff=now - retention, dry_run=dry_run)
        cutoff = to_iso(report.cutoff)
        after = 0
        while True:
            if dry_run:
                async with self.db.read() as reader:
                    rows = await reader.fetch(_DUE, (cutoff, after, batch))
                    found = await self._inspect(reader, rows, redact)
            elif await self.db.fetchrow(_DUE, (cutoff, after, 1)) is None:
                rows, found = [], []  # nothing due: no write transaction at all
            else:
                async with self.db.write() as tx:
                    rows = await tx.fetch(_DUE, (cutoff, after, batch))
                    found = await self._inspect(tx, rows, redact)
                    await self._apply(tx, found, now, retention, report, source, actor)
            if not rows:
                break
            after = rows[-1]["id"]
            report.checked += len(rows)
            for item in found:
                if item.anything:
                    report.orders += 1
                    report.addresses += item.addresses
                    report.payloads += item.payload is not None
                    report.fields += item.fields is not None
            if len(rows) < batch:
                break
        if not dry_run and (report.checked or self._checkpoint_pending):
            report.checkpointed = await self.db.checkpoint()
            self._checkpoint_pending = not report.checkpointed
        return report

    async def due(self, now: datetime, retention: timedelta) -> int:
        """How many closed orders are past the retention and still to look at."""
        report = await self.erase(now, retention, lambda _c, text, _k: text, dry_run=True)
        return report.checked

    @staticmethod
    async def _inspect(
        conn: Connection, rows: Sequence[Any], redact: PayloadRedactor
    ) -> list[_Found]:
        """What each due order holds that would be erased, without changing anything."""
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        in_ids = marks(len(ids))
        addresses: dict[int, list[Any]] = {i: [] for i in ids}
        for address in await conn.fetch(
            f"SELECT * FROM order_addresses WHERE order_id IN ({in_ids})", ids
        ):
            addresses[address["order_id"]].append(address)
        payloads = {
            r["order_id"]: r["payload"]
            for r in await conn.fetch(
                f"SELECT order_id, payload FROM order_payloads WHERE order_id IN ({in_ids})", ids
            )
        }
        found = []
        for row in rows:
            order_id = row["id"]
            known = known_values(dict(zip(a.keys(), a, strict=True)) for a in addresses[order_id])
            personal = sum(
                any(a[name] for name in PERSONAL_ADDRESS_FIELDS) for a in addresses[order_id]
            )
            payload = payloads.get(order_id)
            redacted = redact(row["connector"], payload, known) if payload is not None else None
            fields = json.loads(row["additional_fields"])
            kept = erase_fields(fields, known)
            found.append(
                _Found(
                    order_id=order_id,
                    addresses=personal,
                    payload=redacted if redacted != payload else None,
                    fields=kept if kept != fields else None,
                    closed_at=row["closed_at"],
                )
            )
        return found

    async def _apply(
        self,
        tx: Connection,
        found: list[_Found],
        now: datetime,
        retention: timedelta,
        report: ErasureReport,
        source: EventSource,
        actor: str | None,
    ) -> None:
        if not found:
            return
        stamp = to_iso(now)
        ids = [item.order_id for item in found]
        erased = [item for item in found if item.anything]
        erased_ids = [item.order_id for item in erased]
        if erased_ids:
            await tx.execute(
                f"UPDATE order_addresses SET {_PERSONAL_SET} "
                f"WHERE order_id IN ({marks(len(erased_ids))}) AND ({_HAS_PERSONAL})",
                erased_ids,
            )
        await tx.executemany(
            "UPDATE order_payloads SET payload = $1 WHERE order_id = $2",
            [(item.payload, item.order_id) for item in erased if item.payload is not None],
        )
        await tx.executemany(
            "UPDATE orders SET additional_fields = $1 WHERE id = $2",
            [
                (json.dumps(item.fields), item.order_id)
                for item in erased
                if item.fields is not None
            ],
        )
        for name, hook in self.hooks.items():
            changed = await hook(tx, erased_ids) if erased_ids else 0
            report.hooks[name] = report.hooks.get(name, 0) + changed
        await tx.execute(
            f"UPDATE orders SET personal_data_erased_at = $1 WHERE id IN ({marks(len(ids), 2)})",
            [stamp, *ids],
        )
        if erased_ids:
            # The stored API document held the addresses: dropped, then rendered again.
            await tx.execute(
                f"UPDATE orders SET document = NULL WHERE id IN ({marks(len(erased_ids))})",
                erased_ids,
            )
            await self.orders.refresh_documents(tx, erased_ids)
            report.api_documents += len(erased_ids)
        days = retention.total_seconds() / 86400
        for item in erased:
            parts = []
            if item.addresses:
                plural = "es" if item.addresses > 1 else ""
                parts.append(
                    f"names, companies, street lines, phones and emails of {item.addresses} "
                    f"address{plural}"
                )
            if item.fields is not None:
                parts.append("personal additional fields")
            if item.payload is not None:
                parts.append("the raw marketplace payload")
            parts.append("the API document")
            await OrderStore.add_event(
                tx,
                item.order_id,
                now,
                source,
                ERASED_EVENT,
                message=f"personal data erased, {days:g} days after the order closed "
                f"({item.closed_at}): {'; '.join(parts)}",
                actor=actor,
            )
