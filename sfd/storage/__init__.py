"""The only code that speaks SQL."""

from __future__ import annotations

import os

from sfd.storage.channels import ChannelState, ChannelStore
from sfd.storage.db import (
    Database,
    DatabaseLocked,
    StorageCondition,
    StorageError,
    StorageUnavailable,
)
from sfd.storage.operations import (
    Batch,
    Claim,
    OperationQueue,
    OperationRequest,
    OperationStore,
)
from sfd.storage.orders import (
    DocumentRenderer,
    ImportResult,
    OrderFilter,
    OrderStore,
)
from sfd.storage.pushes import PushStore
from sfd.storage.tokens import TokenError, TokenStore

__all__ = [
    "Batch",
    "ChannelState",
    "Claim",
    "Database",
    "DatabaseLocked",
    "DocumentRenderer",
    "ImportResult",
    "OperationRequest",
    "OrderFilter",
    "Storage",
    "StorageCondition",
    "StorageError",
    "StorageUnavailable",
    "TokenError",
]


class Storage:
    """The database and the stores of each kind of record over it."""

    def __init__(self, db: Database, renderer: DocumentRenderer | None = None) -> None:
        self.db = db
        self.channels = ChannelStore(db)
        self.orders = OrderStore(db, renderer)
        self.operations = OperationStore(db, self.orders)
        self.queue = OperationQueue(db, self.orders)
        self.tokens = TokenStore(db)
        self.pushes = PushStore(db)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readers: int = 2,
        migrate: bool = True,
        renderer: DocumentRenderer | None = None,
    ) -> Storage:
        """Open and migrate the SQLite file at `path`.

        `renderer` turns an order into its API document, stored each time the order changes.
        """
        return cls(await Database.open(path, readers=readers, migrate=migrate), renderer)

    async def close(self) -> None:
        """Close the database."""
        await self.db.close()
