"""Documents attached to orders (invoices): their bytes, digest and delivery state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sfd.domain import TicketState
from sfd.domain.clock import from_iso, to_iso, utcnow
from sfd.domain.documents import Document
from sfd.storage.database import Connection, Store, marks, stored_time


@dataclass(frozen=True)
class StoredDocument:
    """A document as stored, with the state of the ticket that delivers it."""

    id: int
    order_id: int
    operation_id: int
    ticket_id: str
    type: str
    file_name: str
    content_type: str
    size: int
    sha256: str
    state: TicketState
    reason: str | None
    created_at: datetime
    confirmed_at: datetime | None
    erased: bool


def _stored(row: Any) -> StoredDocument:
    return StoredDocument(
        id=row["id"],
        order_id=row["order_id"],
        operation_id=row["operation_id"],
        ticket_id=row["ticket_id"],
        type=row["type"],
        file_name=row["file_name"],
        content_type=row["content_type"],
        size=row["size"],
        sha256=row["sha256"],
        state=TicketState(row["state"]),
        reason=row["last_error"],
        created_at=from_iso(row["created_at"]),
        confirmed_at=stored_time(row["confirmed_at"]),
        erased=row["erased_at"] is not None,
    )


class DocumentStore(Store):
    """Store a document with its operation; list an order's; hand the worker its bytes."""

    @staticmethod
    async def insert(
        tx: Connection, order_id: int, operation_id: int, document: Document, now: datetime
    ) -> None:
        """Keep the bytes of a new upload_document operation, in its own transaction."""
        await tx.execute(
            "INSERT INTO documents (order_id, operation_id, type, file_name, content_type, "
            "size, sha256, content, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            (
                order_id,
                operation_id,
                document.type,
                document.file_name,
                document.content_type,
                document.size,
                document.sha256,
                document.content,
                to_iso(now),
            ),
        )

    async def for_order(self, order_id: int) -> list[StoredDocument]:
        """The order's documents, oldest first, with their delivery state."""
        rows = await self.db.fetch(
            "SELECT d.id, d.order_id, d.operation_id, d.type, d.file_name, d.content_type, "
            "d.size, d.sha256, d.created_at, d.erased_at, p.ticket_id, p.state, p.last_error, "
            "p.confirmed_at FROM documents d JOIN operations p ON p.id = d.operation_id "
            "WHERE d.order_id = $1 ORDER BY d.id",
            (order_id,),
        )
        return [_stored(r) for r in rows]

    @staticmethod
    async def for_operations(tx: Connection, operation_ids: list[int]) -> dict[int, Document]:
        """The documents (with their bytes) the given operations send; erased ones are left out."""
        if not operation_ids:
            return {}
        rows = await tx.fetch(
            "SELECT operation_id, type, file_name, content_type, sha256, content FROM documents "
            f"WHERE content IS NOT NULL AND operation_id IN ({marks(len(operation_ids))})",
            operation_ids,
        )
        return {
            r["operation_id"]: Document(
                type=r["type"],
                file_name=r["file_name"],
                content_type=r["content_type"],
                content=bytes(r["content"]),
                sha256=r["sha256"],
            )
            for r in rows
        }

    async def erase_order(self, order_id: int, now: datetime) -> int:
        """Delete the bytes of the order's documents (personal data); keep their trail.

        Returns how many documents were erased. Their tickets, if not yet sent, then fail."""
        async with self.db.write() as tx:
            return await erase_documents(tx, [order_id], now)


async def erase_documents(
    tx: Connection, order_ids: Sequence[int], now: datetime | None = None
) -> int:
    """In `tx`, delete the bytes of these orders' documents, keeping their rows as the trail.

    The personal data retention calls it for every order it erases."""
    if not order_ids:
        return 0
    return await tx.execute(
        "UPDATE documents SET content = NULL, erased_at = $1 "
        f"WHERE content IS NOT NULL AND order_id IN ({marks(len(order_ids), 2)})",
        (to_iso(now or utcnow()), *order_ids),
    )
