"""The only code that speaks SQL."""

from __future__ import annotations

import os

from sfd.storage.channels import ChannelState, ChannelStore
from sfd.storage.db import Database, DatabaseLocked, StorageError
from sfd.storage.orders import ImportResult, OrderFilter, OrderStore, StoredOrder
from sfd.storage.tokens import TokenError, TokenStore

__all__ = [
    "ChannelState",
    "Database",
    "DatabaseLocked",
    "ImportResult",
    "OrderFilter",
    "Storage",
    "StorageError",
    "StoredOrder",
    "TokenError",
]


class Storage:
    """The database and the stores of each kind of record over it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.channels = ChannelStore(db)
        self.orders = OrderStore(db)
        self.tokens = TokenStore(db)

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, readers: int = 2, migrate: bool = True
    ) -> Storage:
        """Open and migrate the SQLite file at `path`."""
        return cls(await Database.open(path, readers=readers, migrate=migrate))

    async def close(self) -> None:
        """Close the database."""
        await self.db.close()
