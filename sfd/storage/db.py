"""One SQLite file: a single writer that serialises every write, readers beside it, migrations."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from sfd.clock import to_iso, utcnow

BUSY_TIMEOUT_MS = 10_000
CACHE_KIB = 32 * 1024
MMAP_BYTES = 256 * 1024 * 1024


class StorageError(Exception):
    """The database cannot be used; the message says why and what to do."""


class DatabaseLocked(StorageError):
    """Another `sfd run` already writes to this database."""


@dataclass(frozen=True)
class Migration:
    """A numbered schema change, applied once, in one transaction."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The migrations shipped with this sfd, in order."""
    found = []
    for entry in resources.files("sfd.storage").joinpath("migrations").iterdir():
        stem, _, suffix = entry.name.partition(".")
        if suffix != "sql":
            continue
        number, _, name = stem.partition("_")
        found.append(Migration(int(number), name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StorageError(f"migrations are not numbered 1..n: {[m.version for m in found]}")
    return found


def _is_sqlite_file(path: Path) -> bool:
    with path.open("rb") as handle:
        header = handle.read(16)
    return header in (b"", b"SQLite format 3\x00")


class Database:
    """The SQLite file: one writer connection behind a lock, and a pool of readers."""

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, readers: list[aiosqlite.Connection]
    ) -> None:
        self.path = path
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers = readers
        for reader in readers:
            self._readers.put_nowait(reader)
        self._run_lock: int | None = None

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, readers: int = 2, migrate: bool = True
    ) -> Database:
        """Open (creating if missing) and migrate the database; raise StorageError on failure."""
        db_path = Path(path)
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"database directory {db_path.parent} cannot be created: {exc.strerror}"
            ) from None
        if db_path.exists():
            try:
                sqlite_file = _is_sqlite_file(db_path)
            except OSError as exc:
                raise StorageError(f"database {db_path} cannot be read: {exc.strerror}") from None
            if not sqlite_file:
                raise StorageError(f"database {db_path} is not an SQLite file; it was left as is")
        elif not os.access(db_path.parent, os.W_OK):
            raise StorageError(f"database directory {db_path.parent} is not writable")
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
            for connection in opened:
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

    def claim_runner(self) -> None:
        """Take the file's run lock, so only one `sfd run` writes to it at a time."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
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
    async def write(self) -> AsyncIterator[Writer]:
        """A write transaction. It is shielded: once begun, cancellation lets it finish."""
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield Writer(self._writer)
                except BaseException:
                    await self._writer.rollback()
                    raise
                await self._writer.commit()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Reader]:
        """A reader connection; several reads in the block see one snapshot if wrapped in BEGIN."""
        connection = await self._readers.get()
        try:
            yield Reader(connection)
        finally:
            self._readers.put_nowait(connection)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one read query on a reader."""
        async with self.read() as reader:
            return await reader.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """Run one read query on a reader and return its first row."""
        async with self.read() as reader:
            return await reader.fetchone(sql, params)

    async def schema_version(self) -> int:
        """The newest migration applied to this file."""
        row = await _fetchone(self._writer, "PRAGMA user_version")
        return int(row[0]) if row else 0

    async def check_version(self) -> None:
        """Refuse a file migrated by a newer sfd, or one never migrated."""
        known = len(load_migrations())
        version = await self.schema_version()
        if version > known:
            raise StorageError(
                f"database {self.path} has schema version {version}, newer than this sfd "
                f"knows ({known}); upgrade sfd or restore a backup made for this version"
            )
        if version < known:
            raise StorageError(
                f"database {self.path} has schema version {version}, this sfd needs {known}; "
                "run `sfd db migrate`"
            )

    async def migrate(self) -> list[Migration]:
        """Apply every migration the file lacks, each in its own transaction."""
        migrations = load_migrations()
        applied: list[Migration] = []
        async with self._write_lock:
            version = await self.schema_version()
            if version > len(migrations):
                await self.check_version()
            for migration in migrations[version:]:
                with anyio.CancelScope(shield=True):
                    await self._apply(migration)
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
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, to_iso(utcnow())),
            )
            await self._writer.execute(f"PRAGMA user_version = {migration.version:d}")
        except BaseException:
            await self._writer.rollback()
            raise
        await self._writer.commit()


class Reader:
    """Queries on one connection."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """All rows of a query."""
        return list(await self.connection.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of a query, or None."""
        return await _fetchone(self.connection, sql, params)


class Writer(Reader):
    """Statements inside the one write transaction."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        async with self.connection.execute(sql, params) as cursor:
            return cursor.rowcount

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run an INSERT; return the new row's id."""
        async with self.connection.execute(sql, params) as cursor:
            if cursor.lastrowid is None:
                raise StorageError(f"insert returned no row id: {sql[:60]}")
            return cursor.lastrowid

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per row."""
        await self.connection.executemany(sql, rows)


async def _fetchone(
    connection: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
) -> sqlite3.Row | None:
    async with connection.execute(sql, params) as cursor:
        return await cursor.fetchone()


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
    try:
        if read_only:
            connection = await aiosqlite.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None
            )
        else:
            connection = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageError(f"database {path} cannot be opened: {exc}") from None
    connection.row_factory = sqlite3.Row
    try:
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        await connection.execute("PRAGMA foreign_keys = ON")
        # Order documents make the file large; a bigger page cache and memory-mapped reads
        # keep the pages a shop reads often out of the read() path.
        await connection.execute(f"PRAGMA cache_size = -{CACHE_KIB:d}")
        await connection.execute(f"PRAGMA mmap_size = {MMAP_BYTES:d}")
        if not read_only:
            await connection.execute("PRAGMA journal_mode = WAL")
            # FULL: an acknowledged shipment must survive a power cut, not just a crash.
            await connection.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as exc:
        await connection.close()
        raise StorageError(f"database {path} cannot be used: {exc}") from None
    return connection


async def _check_writable(path: Path, connection: aiosqlite.Connection) -> None:
    try:
        await connection.execute("BEGIN IMMEDIATE")
        await connection.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        raise StorageError(f"database {path} cannot be written: {exc}") from None
