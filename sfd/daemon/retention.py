"""The retention loop: every hour, erase the personal data of orders closed for long enough.

What is erased and what stays is the storage's (`sfd.storage.privacy`); how a marketplace's raw
payload is redacted is its connector's (`sfd.connectors.privacy`). This loop joins the two, on
the daemon's clock, and logs counts only: never a name, an address or an order's data.
"""

from __future__ import annotations

from datetime import timedelta

from sfd.connectors.privacy import redact_payload
from sfd.daemon.backoff import Backoff
from sfd.daemon.loops import Loop
from sfd.domain import EventSource
from sfd.domain.clock import Clock
from sfd.storage import ErasureReport, Storage, StorageError

#: How often the loop looks for orders past the retention.
INTERVAL = 3600.0


async def anonymize(
    storage: Storage,
    clock: Clock,
    retention: timedelta,
    *,
    dry_run: bool = False,
    source: EventSource = EventSource.AUTO,
    actor: str | None = None,
) -> ErasureReport:
    """Erase now (or, dry, count) the personal data of orders closed for `retention`."""
    return await storage.privacy.erase(
        clock(), retention, redact_payload, dry_run=dry_run, source=source, actor=actor
    )


class RetentionLoop(Loop):
    """Erases, hourly, the personal data of the orders closed for `[daemon] pii_retention`."""

    failed_event = "retention_failed"
    recovered_event = "retention_recovered"
    expected = (StorageError,)

    def __init__(
        self, storage: Storage, retention: timedelta, clock: Clock, interval: float = INTERVAL
    ) -> None:
        # A failed run tries again at the next interval: a day's delay is well within any
        # retention, and an erasure hammering a failing disk helps nobody.
        steady = Backoff(base=interval, factor=1.0, cap=interval)
        super().__init__("retention", interval, clock, backoff=steady)
        self.storage = storage
        self.retention = retention
        self.status.detail = {"retention_days": retention.total_seconds() / 86400, "erased": 0}

    async def step(self) -> float | None:
        report = await anonymize(self.storage, self.clock, self.retention)
        self.status.detail = {
            "retention_days": self.retention.total_seconds() / 86400,
            "erased": self.status.detail.get("erased", 0) + report.orders,
            "last_cutoff": report.cutoff.isoformat(),
        }
        if report.orders:
            self.log.info(
                "personal_data_erased",
                orders=report.orders,
                addresses=report.addresses,
                payloads=report.payloads,
                api_documents=report.api_documents,
                cutoff=report.cutoff.isoformat(),
                **{f"hook_{name}": count for name, count in report.hooks.items()},
            )
        if report.checkpointed is False:
            # A reader held the WAL: the erased pages may still sit in it until a later run.
            self.log.warning(
                "wal_checkpoint_incomplete",
                reason="a reader held the database; the next run checkpoints again",
            )
        return None
