"""Writing operations to the outbox: one way for the API, /ws, the CLI and auto-accept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sfd.domain import EventSource, OperationKind, TicketState
from sfd.logs import get_logger
from sfd.storage import Batch, OperationRequest, Storage

log = get_logger()


async def request_operations(
    storage: Storage,
    store_id: int,
    kind: OperationKind,
    requests: Sequence[OperationRequest],
    source: EventSource,
    now: datetime,
    wake: Callable[[], None] = lambda: None,
    *,
    via: str | None = None,
    actor: str | None = None,
) -> Batch:
    """Decide and write the operations, log each ticket, and wake the worker if it has work.

    `via` names the entry point in the logs when it is finer than the event source (`ws`);
    `actor` names who asked (a token's name, a user, a shop) in the orders' events.
    """
    batch = await storage.operations.submit(store_id, kind, requests, source, now, actor)
    for ticket in batch.tickets:
        log.info(
            "operation_requested",
            operation=ticket.operation_id,
            ticket=ticket.id,
            kind=kind.value,
            channel=ticket.channel,
            order=ticket.order_reference,
            state=ticket.state.value,
            source=via or source.value,
            actor=actor,
            batch=batch.id,
            reason=ticket.reason,
        )
    if any(t.state == TicketState.SCHEDULED for t in batch.tickets):
        wake()
    return batch
