"""Reads of the stored state that tests of the HTTP surfaces share."""

from __future__ import annotations

from sfd.storage import Storage


async def order_id(storage: Storage, reference: str) -> int:
    """The stored id of the order `reference`; the order must exist."""
    row = await storage.db.fetchrow("SELECT id FROM orders WHERE reference = $1", (reference,))
    assert row is not None, f"no order {reference}"
    return int(row[0])


async def operation_count(storage: Storage) -> int:
    """How many operations are stored."""
    row = await storage.db.fetchrow("SELECT count(*) FROM operations")
    assert row is not None
    return int(row[0])
