"""The SQLite adapter of the Database seam: one file, a writer that serialises every write,
readers beside it, migrations.

SQL comes in with `$n` parameters and goes to SQLite as `?n`; SQLite's errors leave this
module as the storage's own exceptions.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from sfd.domain.clock import to_iso, utcnow
from sfd.storage.adapter import AdapterConnection, AdapterDatabase
from sfd.storage.database import (
    Connection,
    DatabaseLocked,
    Migration,
    StorageCondition,
    StorageConflict,
    StorageError,
    StorageUnavailable,
    load_migrations,
    newer_schema,
)

BUSY_TIMEOUT_MS = 10_000
#: Each connection's page cache. Small enough to be full within minutes, so the daemon's
#: memory is flat from then on; the kernel's page cache keeps the rest of the file warm.
CACHE_KIB = 8 * 1024
#: After a full disk, writes resume once this much is free again (a WAL's worth and more).
MIN_FREE_BYTES = 8 * 1024 * 1024

# SQLite's primary result codes that mean "the disk, not the statement": full, read-only, I/O.
_UNAVAILABLE = {
    sqlite3.SQLITE_FULL: ("disk_full", "the disk is full"),
    sqlite3.SQLITE_READONLY: ("read_only", "the database or its directory is read-only"),
    sqlite3.SQLITE_IOERR: ("io_error", "the disk reports an I/O error"),
    sqlite3.SQLITE_CANTOPEN: ("io_error", "a database file cannot be opened"),
}
# Codes that say what is wrong with the file or its neighbours, not with the statement.
_EXPLAINED = {
    sqlite3.SQLITE_BUSY: "it is busy: another process held a lock longer than the busy timeout",
    sqlite3.SQLITE_LOCKED: "a table is locked by another statement",
    sqlite3.SQLITE_CORRUPT: "the file is damaged; run `sfd db check` and restore a backup",
    sqlite3.SQLITE_NOTADB: "the file is not an SQLite database",
}


def classify(exc: BaseException, path: str | Path, now: datetime) -> StorageCondition | None:
    """The storage condition an SQLite error means, or None if it is about the statement."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or (code & 0xFF) not in _UNAVAILABLE:
        return None
    kind, what = _UNAVAILABLE[code & 0xFF]
    return StorageCondition(
        kind, f"database {path} cannot be written: {what} ({exc}); nothing was changed", now
    )


def translate(exc: BaseException, where: str | Path) -> StorageError:
    """The storage exception an SQLite error stands for."""
    condition = classify(exc, where, utcnow())
    if condition is not None:
        return StorageUnavailable(condition)
    if isinstance(exc, sqlite3.IntegrityError):
        return StorageConflict(f"database {where} refused a change: {exc}")
    code = getattr(exc, "sqlite_errorcode", None)
    what = _EXPLAINED.get(code & 0xFF) if code is not None else None
    return StorageError(f"database {where}: {what or exc}")


@functools.lru_cache(maxsize=1024)
def to_sqlite(sql: str) -> str:
    """`$n` parameters as SQLite's `?n`."""
    return _PARAM.sub(r"?\1", sql)


_PARAM = re.compile(r"\$(\d+)")


def _is_sqlite_file(path: Path) -> bool:
    with path.open("rb") as handle:
        header = handle.read(16)
    return header in (b"", b"SQLite format 3\x00")


def _header_version(path: Path) -> int:
    """`user_version` as the file's header holds it (bytes 60-63), read without SQLite."""
    with path.open("rb") as handle:
        header = handle.read(100)
    return int.from_bytes(header[60:64], "big") if len(header) == 100 else 0


class SQLiteConnection(AdapterConnection[aiosqlite.Connection]):
    """Queries on one aiosqlite connection, `$n` parameters in, storage errors out."""

    driver_errors = (sqlite3.Error,)
    translate = staticmethod(translate)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """All rows of a query."""
        with self.translated():
            return list(await self.connection.execute_fetchall(to_sqlite(sql), params))

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of a query, or None."""
        with self.translated():
            async with self.connection.execute(to_sqlite(sql), params) as cursor:
                row: sqlite3.Row | None = await cursor.fetchone()
                return row

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        with self.translated():
            async with self.connection.execute(to_sqlite(sql), params) as cursor:
                return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per row."""
        with self.translated():
            await self.connection.executemany(to_sqlite(sql), rows)


class SQLiteDatabase(AdapterDatabase):
    """The SQLite file: one writer connection behind a lock, and a pool of readers."""

    scheme = "sqlite"

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, readers: list[aiosqlite.Connection]
    ) -> None:
        super().__init__(path, str(path))
        self._writer = writer
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers = readers
        for reader in readers:
            self._readers.put_nowait(reader)
        self._run_lock: int | None = None

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, readers: int = 2, migrate: bool = True
    ) -> SQLiteDatabase:
        """Open (creating if missing) and migrate the database; raise StorageError on failure."""
        db_path = Path(path)
        _check_file(db_path)
        writer = await _connect(db_path)
        opened = [writer]
        try:
            await _check_writable(db_path, writer)
            for _ in range(readers):
                opened.append(await _connect(db_path, read_only=True))
            db = cls(db_path, writer, opened[1:])
            if migrate:
                await db.migrate()
            else:
                await db.check_version()
        except BaseException:
            # The writer last: closing the last connection removes the -wal and -shm files.
            for connection in reversed(opened):
                await connection.close()
            raise
        return db

    async def close(self) -> None:
        """Close every connection and release the run lock."""
        with anyio.CancelScope(shield=True):
            for connection in [self._writer, *self._all_readers]:
                await connection.close()
            if self._run_lock is not None:
                os.close(self._run_lock)
                self._run_lock = None

    async def claim_runner(self) -> None:
        """Take the file's run lock, so only one `sfd run` writes to it at a time."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(
                f"run lock {lock_path} cannot be opened: {exc.strerror}; "
                "the database's directory must be writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DatabaseLocked(
                f"database {self.path} is already used by a running sfd (pid {holder}); "
                "stop it first, or point this one at another database"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._run_lock = fd

    @asynccontextmanager
    async def write(self) -> AsyncIterator[SQLiteConnection]:
        """A write transaction. It is shielded: once begun, cancellation lets it finish.

        A disk that is full, read-only or failing raises StorageUnavailable, with the whole
        transaction rolled back, and sets `condition` until `probe` finds the disk back.
        """
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                try:
                    await self._rollback()
                    await self._writer.execute("BEGIN IMMEDIATE")
                    try:
                        yield SQLiteConnection(self._writer, self.where)
                        await self._writer.commit()
                    except BaseException:
                        await self._rollback()
                        raise
                except sqlite3.Error as exc:
                    raise self._noticed(translate(exc, self.path)) from exc
                except StorageUnavailable as exc:
                    raise self._noticed(exc) from None

    async def _rollback(self) -> None:
        # SQLite rolls back on its own after some disk errors; a failed COMMIT may leave the
        # transaction open. Either way the next BEGIN must find none.
        if self._writer.in_transaction:
            await self._writer.rollback()

    async def _has_room(self, tx: Connection) -> bool:
        # After a full disk there must be room again, not just for the probe's one row: a
        # nearly full disk takes small writes and refuses the next import, and would flap.
        if self.condition is None or self.condition.kind != "disk_full":
            return True
        row = await tx.fetchrow(
            "SELECT page_size, max_page_count - page_count "
            "FROM pragma_page_size(), pragma_page_count(), pragma_max_page_count()"
        )
        free = shutil.disk_usage(self.path.parent).free
        pages_left = row[1] * row[0] if row else 0
        return min(free, pages_left) >= MIN_FREE_BYTES

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SQLiteConnection]:
        """A reader connection; several reads in the block see one snapshot if wrapped in BEGIN."""
        connection = await self._readers.get()
        try:
            yield SQLiteConnection(connection, self.where)
        finally:
            self._readers.put_nowait(connection)

    async def checkpoint(self) -> bool:
        """Copy the WAL into the file and truncate it to zero bytes; False if a reader kept it.

        The WAL holds the images of every page written since the last reset, old ones too:
        after an erasure, only this leaves no copy of the erased data beside the file.
        """
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                await self._rollback()
                try:
                    async with self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cursor:
                        row = await cursor.fetchone()
                except sqlite3.Error as exc:
                    raise translate(exc, self.path) from exc
        return row is not None and row[0] == 0

    async def schema_version(self) -> int:
        """The newest migration applied to this file."""
        value = await SQLiteConnection(self._writer, self.where).fetchval("PRAGMA user_version")
        return int(value or 0)

    async def migrate(self) -> list[Migration]:
        """Apply every migration the file lacks, each in its own transaction."""
        applied: list[Migration] = []
        async with self._write_lock:
            for migration in self._pending(await self.schema_version()):
                with anyio.CancelScope(shield=True):
                    try:
                        await self._apply(migration)
                    except sqlite3.Error as exc:
                        raise self.migration_failed(migration, exc) from None
                applied.append(migration)
        return applied

    async def _apply(self, migration: Migration) -> None:
        # executescript would commit on its own; run statement by statement in one transaction.
        await self._writer.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migration.sql):
                await self._writer.execute(statement)
            await self._writer.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL"
                ") STRICT"
            )
            await self._writer.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                (migration.version, migration.name, to_iso(utcnow())),
            )
            await self._writer.execute(f"PRAGMA user_version = {migration.version:d}")
        except BaseException:
            await self._writer.rollback()
            raise
        await self._writer.commit()


def refuse_foreign(path: Path) -> None:
    """StorageError unless `path` reads as an SQLite file (it is left as is either way)."""
    try:
        sqlite_file = _is_sqlite_file(path)
    except OSError as exc:
        raise StorageError(f"database {path} cannot be read: {exc.strerror}") from None
    if not sqlite_file:
        raise StorageError(f"database {path} is not an SQLite file; it was left as is")


def _check_file(db_path: Path) -> None:
    """Refuse, before any connection, a path that cannot hold this sfd's database."""
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"database directory {db_path.parent} cannot be created: {exc.strerror}"
        ) from None
    if db_path.exists():
        refuse_foreign(db_path)
        # Refused before any connection: opening one would switch the file to WAL.
        version, known = _header_version(db_path), len(load_migrations(SQLiteDatabase.scheme))
        if version > known:
            raise newer_schema(db_path, version, known)
    elif not os.access(db_path.parent, os.W_OK):
        raise StorageError(f"database directory {db_path.parent} is not writable")


def _statements(script: str) -> list[str]:
    """Split a migration into statements, using SQLite's own idea of a complete statement."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in current.splitlines()
    ):
        raise StorageError(f"migration ends with an incomplete statement: {current.strip()[:60]}")
    return statements


async def _connect(path: Path, read_only: bool = False) -> aiosqlite.Connection:
    if read_only:
        pending = aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        pending = aiosqlite.connect(path, isolation_level=None)
    try:
        connection = await pending
    except sqlite3.Error as exc:
        # aiosqlite stops its worker thread without waiting for it; wait here, or the thread
        # answers on an event loop that may be closed by then (a daemon that gives up).
        await anyio.to_thread.run_sync(pending._thread.join)
        raise StorageError(f"database {path} cannot be opened: {exc}") from None
    connection.row_factory = sqlite3.Row
    try:
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        await connection.execute("PRAGMA foreign_keys = ON")
        # No memory-mapped reads: mapped pages count in the daemon's RSS and grow with the
        # file, which hides a real leak, and measured no faster for the shop's pages.
        await connection.execute(f"PRAGMA cache_size = -{CACHE_KIB:d}")
        await connection.execute("PRAGMA mmap_size = 0")
        # Deleted and overwritten content is zeroed in its page, so erased personal data
        # does not linger in free space, where a backup or a copy of the file would keep it.
        await connection.execute("PRAGMA secure_delete = ON")
        if not read_only:
            await connection.execute("PRAGMA journal_mode = WAL")
            # FULL: an acknowledged shipment must survive a power cut, not just a crash.
            await connection.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as exc:
        await connection.close()
        raise StorageError(f"database {path} cannot be used: {exc}") from None
    return connection


async def _check_writable(path: Path, connection: aiosqlite.Connection) -> None:
    # SQLite opens a file it cannot write read-only, and a WAL file then even takes BEGIN
    # IMMEDIATE; only a page write, rolled back before it reaches the disk, tells.
    try:
        await connection.execute("BEGIN IMMEDIATE")
        try:
            async with connection.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            await connection.execute(f"PRAGMA user_version = {int(row[0]) if row else 0:d}")
        finally:
            if connection.in_transaction:
                await connection.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        raise StorageError(f"database {path} cannot be written: {exc}") from None
