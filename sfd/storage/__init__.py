"""The only code that speaks SQL."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sfd.storage.channels import ChannelState, ChannelStore
from sfd.storage.database import (
    Database,
    DatabaseLocked,
    StorageCondition,
    StorageConflict,
    StorageError,
    StorageUnavailable,
)
from sfd.storage.db import SQLiteDatabase
from sfd.storage.deadlines import DatabaseGauges, DeadlineOrder, DeadlineStore
from sfd.storage.documents import DocumentStore, StoredDocument, erase_documents
from sfd.storage.leases import (
    OPERATIONS_CHANNEL,
    Lease,
    LeaseStore,
    Listener,
    channel_lease,
    shop_lease,
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
from sfd.storage.postgres import PostgresDatabase, is_postgres_url, redact_url
from sfd.storage.privacy import ErasureHook, ErasureReport, PayloadRedactor, PrivacyStore
from sfd.storage.pushes import PushStore
from sfd.storage.sessions import SessionStore
from sfd.storage.tokens import TokenError, TokenStore

__all__ = [
    "Batch",
    "ChannelState",
    "Claim",
    "Database",
    "DatabaseGauges",
    "DatabaseLocked",
    "DeadlineOrder",
    "DeadlineStore",
    "DocumentRenderer",
    "DocumentStore",
    "ErasureHook",
    "ErasureReport",
    "ImportResult",
    "Lease",
    "LeaseStore",
    "OperationRequest",
    "OrderFilter",
    "PayloadRedactor",
    "Storage",
    "StorageCondition",
    "StorageConflict",
    "StorageError",
    "StorageUnavailable",
    "StoredDocument",
    "TokenError",
    "channel_lease",
    "is_postgres_url",
    "redact_url",
    "shop_lease",
]


def new_instance_id() -> str:
    """An id for this process among instances: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Storage:
    """The database and the stores of each kind of record over it.

    The daemon talks to these named stores and to the few operations below, never to `db`.
    """

    def __init__(self, db: Database, renderer: DocumentRenderer | None = None) -> None:
        self.db = db
        self.deadlines = DeadlineStore(db)
        self.channels = ChannelStore(db)
        self.orders = OrderStore(db, renderer)
        self.operations = OperationStore(db, self.orders)
        self.queue = OperationQueue(db, self.orders)
        self.tokens = TokenStore(db)
        self.pushes = PushStore(db)
        self.leases = LeaseStore(db)
        self.sessions = SessionStore(db)
        self.documents = DocumentStore(db)
        self.privacy = PrivacyStore(db, self.orders)
        # An erased order's invoices lose their bytes with the rest of its personal data.
        self.privacy.register_eraser("documents", erase_documents)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readers: int = 2,
        migrate: bool = True,
        renderer: DocumentRenderer | None = None,
        password: str | None = None,
        state_path: Path | None = None,
    ) -> Storage:
        """Open and migrate the database: a `postgresql://` URL, else the SQLite file at `path`.

        `renderer` turns an order into its API document, stored each time the order changes.
        On PostgreSQL, `password` completes the URL and `state_path` stands for the database
        on this host (the admin socket sits beside it).
        """
        db: Database
        if is_postgres_url(path):
            db = await PostgresDatabase.open(
                str(path), password=password, readers=readers, migrate=migrate, path=state_path
            )
        else:
            db = await SQLiteDatabase.open(path, readers=readers, migrate=migrate)
        return cls(db, renderer)

    @property
    def where(self) -> str:
        """The database as messages name it: the file, or the URL without its password."""
        return self.db.where

    @property
    def scheme(self) -> str:
        """The backend: "sqlite" or "postgres"."""
        return self.db.scheme

    async def close(self) -> None:
        """Close the database."""
        await self.db.close()

    @property
    def path(self) -> Path:
        """Where the database lives (the admin socket sits beside it)."""
        return self.db.path

    @property
    def condition(self) -> StorageCondition | None:
        """Why writes fail at the moment (disk full, read-only, I/O), or None when they land."""
        return self.db.condition

    def on_condition(
        self, callback: Callable[[StorageCondition | None, StorageCondition | None], None]
    ) -> None:
        """Have `callback(new, old)` called each time the storage condition changes."""
        self.db.on_condition = callback

    def check_writable(self) -> None:
        """Raise StorageUnavailable while a storage condition holds, before trying a write."""
        if self.db.condition is not None:
            raise StorageUnavailable(self.db.condition)

    async def probe(self) -> bool:
        """Whether writes fit again; clears the condition if so."""
        return await self.db.probe()

    async def schema_version(self) -> int:
        """The newest migration applied to the database."""
        return await self.db.schema_version()

    async def claim_runner(self) -> None:
        """Take SQLite's run lock (DatabaseLocked if another `sfd run` holds it); on
        PostgreSQL, where several instances share the database, register this one."""
        await self.db.claim_runner()

    @property
    def instance_id(self) -> str:
        """This process's id among the instances sharing the database (host:pid:random)."""
        found: str | None = getattr(self.db, "instance_id", None)
        if found is None:
            found = self._instance_id = getattr(self, "_instance_id", None) or new_instance_id()
        return found

    async def listen_operations(self, wake: Callable[[], None]) -> Listener | None:
        """Have `wake()` called when another instance writes operations (PostgreSQL's
        LISTEN/NOTIFY); None on SQLite, where one instance writes them all."""
        listen = getattr(self.db, "listen", None)
        if listen is None:
            return None
        listener: Listener = await listen(OPERATIONS_CHANNEL, lambda _payload: wake())
        return listener

    async def deadline_gauges(self, now: datetime) -> DatabaseGauges:
        """What /metrics shows of the database at `now`."""
        return await self.deadlines.gauges(now)
