"""The Database seam: what the stores need of a backend, whichever it is.

The calls follow asyncpg (and mautrix-python's `async_db`): `fetch`, `fetchrow`, `fetchval`,
`execute`, `executemany`, with `$1`-style parameters given as one sequence. SQL above this
seam is written once, in the dialect both SQLite and PostgreSQL accept; an adapter
translates what it must (SQLite's adapter turns `$n` into `?n`) and maps its driver's errors
to the exceptions below, so nothing above it catches a driver's exception.
"""

from __future__ import annotations

import enum
import functools
import json
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from sfd.domain.clock import from_iso


class StorageError(Exception):
    """The database cannot be used; the message says why and what to do."""


class StorageConflict(StorageError):
    """A change broke a constraint of the schema (a unique key, a foreign key)."""


class DatabaseLocked(StorageError):
    """Another `sfd run` already writes to this database."""


@dataclass(frozen=True)
class StorageCondition:
    """Why the database cannot take writes at the moment: disk_full, read_only or io_error."""

    kind: str
    reason: str
    since: datetime


class StorageUnavailable(StorageError):
    """A write failed because the disk is full, read-only or failing; nothing of it was kept.

    The condition is the storage's, not the caller's: retry once the disk is fixed.
    """

    def __init__(self, condition: StorageCondition) -> None:
        super().__init__(condition.reason)
        self.condition = condition


class Record(Protocol):
    """A result row: by column name or position (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> Any: ...


class Connection(Protocol):
    """Queries on one connection; inside `Database.write()`, in its transaction."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of a query."""
        ...

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        """The first row of a query, or None."""
        ...

    async def fetchval(self, sql: str, params: Sequence[Any] = (), column: int = 0) -> Any:
        """One value of the first row, or None when there is no row."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per row."""
        ...


class Database(Connection, Protocol):
    """One database: a writer that serialises every write transaction, and readers.

    `scheme` names the backend ("sqlite" or "postgres"); migrations are told it.
    """

    scheme: str
    path: Path
    where: str
    """The database as messages name it: the file's path, or the URL without its password."""
    condition: StorageCondition | None
    on_condition: Callable[[StorageCondition | None, StorageCondition | None], None]

    def write(self) -> AbstractAsyncContextManager[Connection]:
        """A write transaction, shielded from cancellation; StorageUnavailable on disk trouble."""
        ...

    def read(self) -> AbstractAsyncContextManager[Connection]:
        """A read connection for several queries."""
        ...

    async def probe(self) -> bool:
        """Whether writes fit again; if so, clear `condition`."""
        ...

    async def schema_version(self) -> int:
        """The newest migration applied."""
        ...

    async def checkpoint(self) -> bool:
        """Leave no older copy of written pages beside the database (SQLite: its WAL);
        False if that could not be done now."""
        ...

    async def migrate(self) -> list[Migration]:
        """Apply every migration the database lacks."""
        ...

    async def claim_runner(self) -> None:
        """Take the database's run lock (DatabaseLocked if another `sfd run` holds it), or,
        where several instances may share the database, register this one."""
        ...

    async def close(self) -> None:
        """Close every connection and release the run lock."""
        ...


class Store:
    """The base of the stores, one per kind of record: each runs its queries on `db`."""

    def __init__(self, db: Database) -> None:
        self.db = db


def marks(count: int, start: int = 1) -> str:
    """`$start, $start+1, …`: the parameters of an IN list of `count` values."""
    return ", ".join(f"${n}" for n in range(start, start + count))


def stored_time(value: str | None) -> datetime | None:
    """A nullable time column as read back: None, or the aware datetime it holds."""
    return from_iso(value) if value else None


_S = TypeVar("_S", bound=msgspec.Struct)


def _reader(kind: Any) -> Callable[[Any], Any] | None:
    """How a column holding `kind` is read back; None when the value is taken as it is."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if inner == [datetime]:
            return stored_time
        read = _reader(inner[0]) if len(inner) == 1 else None
        return None if read is None else lambda v: None if v is None else read(v)
    if kind is datetime:
        return from_iso
    if kind in (Decimal, bool):
        return typing.cast(Callable[[Any], Any], kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind
    if typing.get_origin(kind) is dict:
        return json.loads  # dict columns hold JSON text
    return None


@functools.cache
def _readers(cls: type[msgspec.Struct]) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _reader(hints[f.name])) for f in msgspec.structs.fields(cls))


def from_row(cls: type[_S], row: Record, **given: Any) -> _S:
    """A struct from the row's columns of the same names, read back by each field's type:
    times from ISO text, decimals from text, flags from 0/1, enums, JSON objects.

    `given` supplies (or overrides) fields whose column is named otherwise; a field with a
    default whose column the row lacks keeps its default.
    """
    columns = set(row.keys())
    values = dict(given)
    for name, read in _readers(cls):
        if name in values or name not in columns:
            continue
        value = row[name]
        values[name] = value if read is None else read(value)
    return cls(**values)


class Params(list[Any]):
    """The parameters of a statement built piece by piece: `p(value)` appends, returns `$n`."""

    def __call__(self, value: Any) -> str:
        self.append(value)
        return f"${len(self)}"

    def many(self, values: Iterable[Any]) -> str:
        """`$n, $n+1, …` for an IN list of `values`."""
        return ", ".join(self(v) for v in values)


def quoted(values: Iterable[str]) -> str:
    """An IN list of constant strings, spelled as SQL literals (for partial index conditions)."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


@dataclass(frozen=True)
class Migration:
    """A numbered schema change, applied once, in one transaction.

    `NNNN_name.sql` serves every backend; `NNNN_name.<scheme>.sql` overrides it for one.
    """

    version: int
    name: str
    sql: str


def load_migrations(scheme: str = "sqlite") -> list[Migration]:
    """The migrations shipped with this sfd for the backend `scheme`, in order."""
    found: dict[int, Migration] = {}
    for entry in resources.files("sfd.storage").joinpath("migrations").iterdir():
        stem, _, suffix = entry.name.partition(".")
        if suffix not in ("sql", f"{scheme}.sql"):
            continue
        number, _, name = stem.partition("_")
        version = int(number)
        if suffix == "sql" and version in found:
            continue  # the backend's own version wins
        found[version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    ordered = [found[v] for v in sorted(found)]
    if [m.version for m in ordered] != list(range(1, len(ordered) + 1)):
        raise StorageError(f"migrations are not numbered 1..n: {sorted(found)}")
    return ordered


def newer_schema(where: object, version: int, known: int) -> StorageError:
    """The refusal of a database migrated by a newer sfd."""
    return StorageError(
        f"database {where} has schema version {version}, newer than this sfd knows "
        f"({known}); it was left as is; upgrade sfd or restore a backup made for this version"
    )


__all__ = [
    "Connection",
    "Database",
    "DatabaseLocked",
    "Migration",
    "Params",
    "Record",
    "StorageCondition",
    "StorageConflict",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "from_row",
    "load_migrations",
    "marks",
    "newer_schema",
    "quoted",
    "stored_time",
]
