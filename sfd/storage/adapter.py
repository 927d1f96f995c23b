"""What the SQLite and PostgreSQL adapters of the Database seam share.

Each adapter says how to reach its driver (`read`, `write`, `schema_version`, `migrate`) and
which of the driver's errors mean what (`translate`); the rest is written once here: the
one-statement shortcuts, the schema version check, and how a write failure that is the
storage's (not the statement's) sets and clears `condition`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from sfd.storage.database import (
    Connection,
    Database,
    Migration,
    StorageCondition,
    StorageError,
    StorageUnavailable,
    load_migrations,
    newer_schema,
)

#: A one-row write that changes nothing: it lands only where the database takes writes.
PROBE_WRITE = (
    "UPDATE schema_migrations SET applied_at = applied_at "
    "WHERE version = (SELECT max(version) FROM schema_migrations)"
)

_D = TypeVar("_D")
_E = TypeVar("_E", bound=StorageError)


class AdapterConnection(Connection, ABC, Generic[_D]):
    """Queries on one driver connection: the driver's errors leave as the storage's own."""

    #: The driver's exceptions that `translate` turns into the storage's own.
    driver_errors: ClassVar[tuple[type[BaseException], ...]]

    def __init__(self, connection: _D, where: str) -> None:
        self.connection = connection
        self.where = where

    @staticmethod
    @abstractmethod
    def translate(exc: BaseException, where: str) -> StorageError:
        """The storage exception a driver error stands for, in a message naming `where`."""

    @contextmanager
    def translated(self) -> Iterator[None]:
        """A block whose driver errors are raised again as the storage's own."""
        try:
            yield
        except self.driver_errors as exc:
            raise self.translate(exc, self.where) from exc

    async def fetchval(self, sql: str, params: Sequence[Any] = (), column: int = 0) -> Any:
        """One value of the first row, or None when there is no row."""
        row = await self.fetchrow(sql, params)
        return None if row is None else row[column]


class AdapterDatabase(Database, ABC):
    """A database behind the seam: write transactions of this process are serialised under
    `_write_lock`; a storage failure of one sets `condition` until `probe` clears it."""

    scheme: str

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        self.where = where
        self._write_lock = asyncio.Lock()
        self.condition: StorageCondition | None = None
        """Set when a write fails for a storage reason; only `probe` clears it."""
        self.on_condition: Callable[[StorageCondition | None, StorageCondition | None], None] = (
            lambda _now, _before: None
        )
        """Called with (new, old) each time `condition` changes."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one read query."""
        async with self.read() as reader:
            return await reader.fetch(sql, params)

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        """Run one read query and return its first row."""
        async with self.read() as reader:
            return await reader.fetchrow(sql, params)

    async def fetchval(self, sql: str, params: Sequence[Any] = (), column: int = 0) -> Any:
        """Run one read query and return one value of its first row."""
        async with self.read() as reader:
            return await reader.fetchval(sql, params, column)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in a write transaction of its own."""
        async with self.write() as tx:
            return await tx.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per row, in one write transaction."""
        async with self.write() as tx:
            await tx.executemany(sql, rows)

    async def check_version(self) -> None:
        """Refuse a database migrated by a newer sfd, or one never migrated."""
        known = len(load_migrations(self.scheme))
        version = await self.schema_version()
        if version > known:
            raise newer_schema(self.where, version, known)
        if version < known:
            raise StorageError(
                f"database {self.where} has schema version {version}, this sfd needs {known}; "
                "run `sfd db migrate`"
            )

    def _pending(self, version: int) -> list[Migration]:
        """The migrations a database at `version` lacks; refuse one migrated by a newer sfd."""
        migrations = load_migrations(self.scheme)
        if version > len(migrations):
            raise newer_schema(self.where, version, len(migrations))
        return migrations[version:]

    def migration_failed(self, migration: Migration, exc: BaseException) -> StorageError:
        """The refusal of a migration the database rolled back."""
        return StorageError(
            f"database {self.where}: migration {migration.version} "
            f"({migration.name}) failed and was rolled back: {exc}"
        )

    def _noticed(self, exc: _E) -> _E:
        """Record the condition a failed write revealed, if it is the storage's."""
        if isinstance(exc, StorageUnavailable) and (
            self.condition is None or self.condition.kind != exc.condition.kind
        ):
            self._set_condition(exc.condition)
        return exc

    def _set_condition(self, condition: StorageCondition | None) -> None:
        before, self.condition = self.condition, condition
        self.on_condition(condition, before)

    async def probe(self) -> bool:
        """Whether writes fit again; if so, clear `condition`."""
        try:
            async with self.write() as tx:
                await tx.execute(PROBE_WRITE)
                roomy = await self._has_room(tx)
        except StorageUnavailable:
            return False
        if not roomy:
            return False
        if self.condition is not None:
            self._set_condition(None)
        return True

    async def _has_room(self, tx: Connection) -> bool:
        """Whether, beyond the probe's write, there is room for more (inside its transaction)."""
        return True
