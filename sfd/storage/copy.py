"""`sfd db copy`: move a whole SQLite database into an empty PostgreSQL database, verified.

The SQLite file's run lock is held for the whole copy, so no `sfd run` writes to it meanwhile
(and none runs when the copy starts). Every table is copied in one PostgreSQL transaction:
a failed copy leaves the target as empty as it found it. Then each table is read back and
compared with the source by row count and by a checksum of its rows.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from sfd.domain.clock import from_iso, to_iso
from sfd.storage.database import StorageError, load_migrations
from sfd.storage.db import SQLiteDatabase
from sfd.storage.maintenance import open_source
from sfd.storage.postgres import PostgresDatabase, redact_url, translate

#: Rows sent to PostgreSQL per COPY.
CHUNK = 5000
_MASK = (1 << 256) - 1


@dataclass(frozen=True)
class TableCopy:
    """One table: its rows on each side and the checksum both sides agree on."""

    name: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class CopyReport:
    """A verified copy."""

    source: str
    target: str
    schema_version: int
    seconds: float
    tables: list[TableCopy] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows copied, all tables together."""
        return sum(t.rows for t in self.tables)


def _to_target(kind: str) -> Callable[[Any], Any]:
    """How an SQLite value becomes the Python value asyncpg sends for a column of `kind`."""
    if kind == "timestamp with time zone":
        return lambda v: None if v is None else from_iso(v)
    if kind == "numeric":
        return lambda v: None if v is None else Decimal(str(v))
    if kind == "bytea":
        return lambda v: v.encode("utf-8") if isinstance(v, str) else v
    if kind in ("integer", "bigint", "smallint"):
        return lambda v: None if v is None else int(v)
    return lambda v: v


def _canonical(value: Any) -> bytes:
    """One value as the checksum sees it, the same on both sides once converted."""
    if value is None:
        return b"\x00"
    if isinstance(value, datetime):
        return to_iso(value).encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return b"b" + bytes(value)
    return str(value).encode()


def _row_hash(row: Sequence[Any]) -> int:
    digest = hashlib.sha256(b"\x1f".join(_canonical(v) for v in row)).digest()
    return int.from_bytes(digest, "big")


class _Checksum:
    """An order-free checksum of a table: the sum of its rows' SHA-256, modulo 2^256."""

    def __init__(self) -> None:
        self.total = 0
        self.rows = 0

    def add(self, row: Sequence[Any]) -> None:
        self.total = (self.total + _row_hash(row)) & _MASK
        self.rows += 1

    @property
    def hex(self) -> str:
        return f"{self.total:064x}"


def _tables(source: sqlite3.Connection) -> list[str]:
    """The source's tables, parents before children (by their foreign keys)."""
    names = [
        r[0]
        for r in source.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations' ORDER BY name"
        )
    ]
    parents = {
        name: {r[2] for r in source.execute(f'PRAGMA foreign_key_list("{name}")')} - {name}
        for name in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise StorageError(f"the tables' foreign keys form a cycle: {sorted(parents)}")
        ordered.extend(ready)
    return ordered


def _chunks(cursor: sqlite3.Cursor) -> Iterator[list[tuple[Any, ...]]]:
    while rows := cursor.fetchmany(CHUNK):
        yield [tuple(r) for r in rows]


async def copy_database(
    source: Path,
    target_url: str,
    *,
    password: str | None = None,
    progress: Callable[[str, int], None] = lambda _table, _rows: None,
) -> CopyReport:
    """Copy the SQLite file `source` into the empty PostgreSQL database `target_url`."""
    started = time.monotonic()
    if not source.is_file():
        raise StorageError(f"database {source} does not exist")
    # Opening checks the file is sfd's, at this sfd's schema; the run lock keeps daemons off.
    lock = await SQLiteDatabase.open(source, readers=0, migrate=False)
    try:
        await lock.claim_runner()
        version = await lock.schema_version()
        target = await PostgresDatabase.open(target_url, password=password, check=False)
        try:
            await _refuse_filled(target)
            await target.migrate()
        finally:
            await target.close()
        reader = open_source(source)
        try:
            tables = await _copy(reader, target_url, password, progress)
        finally:
            reader.close()
    finally:
        await lock.close()
    return CopyReport(
        str(source), redact_url(target_url), version, time.monotonic() - started, tables
    )


async def _refuse_filled(target: PostgresDatabase) -> None:
    """StorageError unless the target holds nothing: no tables, or sfd's tables all empty."""
    version = await target.schema_version()
    names = [
        r["tablename"]
        for r in await target.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
        )
    ]
    if version == 0:
        if names:
            raise StorageError(
                f"database {target.where} is not empty (tables {', '.join(names[:5])}); "
                "copy into a new, empty database"
            )
        return
    known = len(load_migrations(target.scheme))
    if version != known:
        raise StorageError(
            f"database {target.where} has schema version {version}, this sfd copies into "
            f"{known}; copy into a new, empty database"
        )
    for name in names:
        if name == "schema_migrations":
            continue
        if await target.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{name}")'):
            raise StorageError(
                f"database {target.where} is not empty (table {name} has rows); "
                "`sfd db copy` fills only an empty database"
            )


async def _copy(
    reader: sqlite3.Connection,
    target_url: str,
    password: str | None,
    progress: Callable[[str, int], None],
) -> list[TableCopy]:
    where = redact_url(target_url)
    try:
        # A plain connection: asyncpg's own codecs (datetime, Decimal) for the binary COPY.
        connection = await asyncpg.connect(target_url, password=password, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise translate(exc, where) from None
    try:
        reader.execute("BEGIN")  # one snapshot of the source
        copied: list[tuple[str, int, str, list[str]]] = []
        async with connection.transaction():
            for table in _tables(reader):
                rows, checksum, columns = await _copy_table(reader, connection, table, progress)
                copied.append((table, rows, checksum, columns))
            for table, _, _, columns in copied:
                if "id" in columns:
                    await _restart_identity(connection, table)
        reader.execute("COMMIT")
        return [await _verify(connection, where, *entry) for entry in copied]
    except asyncpg.PostgresError as exc:
        raise StorageError(
            f"copy into {where} failed and was rolled back: {translate(exc, where)}"
        ) from None
    except sqlite3.Error as exc:
        raise StorageError(f"copy failed reading the SQLite file: {exc}") from None
    finally:
        await connection.close()


async def _copy_table(
    reader: sqlite3.Connection,
    connection: asyncpg.Connection,
    table: str,
    progress: Callable[[str, int], None],
) -> tuple[int, str, list[str]]:
    kinds = {
        r["column_name"]: r["data_type"]
        for r in await connection.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1",
            table,
        )
    }
    if not kinds:
        raise StorageError(f"table {table} of the SQLite file has no counterpart in the target")
    source_columns = [r[1] for r in reader.execute(f'PRAGMA table_info("{table}")')]
    missing = [c for c in source_columns if c not in kinds]
    if missing:
        raise StorageError(f"columns {missing} of table {table} have no counterpart in the target")
    converters = [_to_target(kinds[c]) for c in source_columns]
    checksum = _Checksum()
    quoted = ", ".join(f'"{c}"' for c in source_columns)
    for chunk in _chunks(reader.execute(f'SELECT {quoted} FROM "{table}"')):
        records = [tuple(f(v) for f, v in zip(converters, row, strict=True)) for row in chunk]
        for record in records:
            checksum.add(record)
        await connection.copy_records_to_table(table, records=records, columns=source_columns)
        progress(table, checksum.rows)
    return checksum.rows, checksum.hex, source_columns


async def _restart_identity(connection: asyncpg.Connection, table: str) -> None:
    """Make a table's identity continue after the ids the copy kept."""
    sequence = await connection.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
    if sequence:
        await connection.execute(
            f'SELECT setval($1, coalesce((SELECT max(id) FROM "{table}"), 0) + 1, false)',
            sequence,
        )


async def _verify(
    connection: asyncpg.Connection,
    where: str,
    table: str,
    rows: int,
    checksum: str,
    columns: list[str],
) -> TableCopy:
    """Read the table back from the target: the same count and the same checksum, or fail."""
    quoted = ", ".join(f'"{c}"' for c in columns)
    readback = _Checksum()
    async with connection.transaction(readonly=True):
        async for record in connection.cursor(f'SELECT {quoted} FROM "{table}"', prefetch=CHUNK):
            readback.add(tuple(record))
    if readback.rows != rows or readback.hex != checksum:
        raise StorageError(
            f"copy into {where}: table {table} does not match its source "
            f"({readback.rows} rows read back, {rows} copied; checksums "
            f"{readback.hex[:12]} and {checksum[:12]}); drop the target database and retry"
        )
    return TableCopy(table, rows, checksum)


__all__ = ["CopyReport", "TableCopy", "copy_database"]
