"""The PostgreSQL adapter of the Database seam (asyncpg): a pool, transactions, migrations
under an advisory lock, and asyncpg's errors mapped to the storage's own exceptions.

The SQL above the seam is shared with SQLite, which stores times as fixed-width ISO text and
money as decimal text. Here the columns are `timestamptz` and `numeric`; the connection's
codecs convert at the boundary, so the stores give and get the same Python values (ISO text
for times, decimal text for amounts) on both backends.
"""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import asyncpg.exceptions as pgerr
from asyncpg.pool import PoolConnectionProxy

from sfd.domain.clock import to_iso, utcnow
from sfd.storage.adapter import AdapterConnection, AdapterDatabase
from sfd.storage.database import (
    Migration,
    StorageCondition,
    StorageConflict,
    StorageError,
    StorageUnavailable,
)

#: The URL schemes that name a PostgreSQL database rather than an SQLite file.
SCHEMES = ("postgresql", "postgres")
#: pg_advisory_lock key held while migrating: "sfd-migr" as a bigint.
MIGRATION_LOCK = 0x7366642D6D696772
#: How long a connection attempt or a pool acquire may take before the database counts as down.
CONNECT_TIMEOUT = 10.0
#: How long `close` lets in-flight queries finish before it cuts the connections.
CLOSE_TIMEOUT = 5.0


def is_postgres_url(value: str | os.PathLike[str]) -> bool:
    """Whether a `[daemon] database` value names a PostgreSQL database (else an SQLite path)."""
    return isinstance(value, str) and value.split("://", 1)[0] in SCHEMES and "://" in value


def redact_url(url: str) -> str:
    """The URL without its password, fit for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _encode_time(value: Any) -> str:
    # The stores hand over ISO text (to_iso); a datetime is accepted too.
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: a time must carry its offset")
        return value.isoformat()
    return str(value)


def _decode_time(text: str) -> str:
    # The session runs in UTC, so PostgreSQL writes `2026-11-29 09:00:00+00`; give it back
    # as the fixed-width ISO text SQLite holds.
    if text in ("infinity", "-infinity"):
        return text
    return datetime.fromisoformat(text).astimezone(UTC).isoformat(timespec="microseconds")


def _encode_numeric(value: Any) -> str:
    return str(value)


def _rowcount(status: str) -> int:
    """Rows a statement changed, from asyncpg's status (`UPDATE 3`, `INSERT 0 1`)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    pgerr.PostgresConnectionError,
    pgerr.CannotConnectNowError,
    pgerr.TooManyConnectionsError,
    pgerr.AdminShutdownError,
    pgerr.CrashShutdownError,
    pgerr.ConnectionDoesNotExistError,
    pgerr.InterfaceError,
)


def translate(exc: BaseException, where: str) -> StorageError:
    """The storage exception an asyncpg (or socket) error stands for."""
    now = utcnow()
    if isinstance(exc, pgerr.IntegrityConstraintViolationError):
        return StorageConflict(f"database {where} refused a change: {exc}")
    if isinstance(exc, pgerr.DiskFullError | pgerr.InsufficientResourcesError):
        what = f"the server has no room left ({exc})"
        return StorageUnavailable(StorageCondition("disk_full", _unwritten(where, what), now))
    if isinstance(exc, pgerr.ReadOnlySQLTransactionError):
        # A standby after a failover, or default_transaction_read_only.
        what = f"the server is read-only ({exc}): is it a standby?"
        return StorageUnavailable(StorageCondition("read_only", _unwritten(where, what), now))
    if isinstance(exc, _UNREACHABLE):
        detail = str(exc) or type(exc).__name__
        what = f"the server cannot be reached or dropped the connection ({detail})"
        return StorageUnavailable(StorageCondition("unreachable", _unwritten(where, what), now))
    if isinstance(exc, pgerr.InvalidPasswordError | pgerr.InvalidAuthorizationSpecificationError):
        return StorageError(
            f"database {where}: the server refused the login ({exc}); "
            "check the user and `database_password`"
        )
    if isinstance(exc, pgerr.InvalidCatalogNameError):
        return StorageError(f"database {where} does not exist on the server; create it first")
    return StorageError(f"database {where}: {exc}")


def _unwritten(where: str, what: str) -> str:
    return f"database {where} cannot be written: {what}; nothing was changed"


#: A connection, pooled or not (asyncpg's pool hands out a proxy).
_Conn = asyncpg.Connection | PoolConnectionProxy


class PostgresConnection(AdapterConnection[_Conn]):
    """Queries on one asyncpg connection, `$n` parameters in, storage errors out."""

    driver_errors = (asyncpg.PostgresError, *_UNREACHABLE)
    translate = staticmethod(translate)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[asyncpg.Record]:
        """All rows of a query."""
        with self.translated():
            return list(await self.connection.fetch(sql, *params))

    async def fetchrow(self, sql: str, params: Sequence[Any] = ()) -> asyncpg.Record | None:
        """The first row of a query, or None."""
        with self.translated():
            row: asyncpg.Record | None = await self.connection.fetchrow(sql, *params)
            return row

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        with self.translated():
            return _rowcount(await self.connection.execute(sql, *params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per row."""
        with self.translated():
            await self.connection.executemany(sql, [tuple(r) for r in rows])


async def _setup(connection: asyncpg.Connection) -> None:
    """Every pooled connection: times and amounts as the stores know them."""
    await connection.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_time,
        decoder=_decode_time,
        format="text",
    )
    await connection.set_type_codec(
        "numeric", schema="pg_catalog", encoder=_encode_numeric, decoder=str, format="text"
    )


class PostgresDatabase(AdapterDatabase):
    """A PostgreSQL database through an asyncpg pool.

    Write transactions of one process are serialised, as on SQLite, so the stores' read-then-
    write steps keep the meaning they have there; several processes share the work through
    the database's own locks.
    """

    scheme = "postgres"

    def __init__(self, url: str, pool: asyncpg.Pool, path: Path) -> None:
        # `where`: the URL as logs and messages show it (no password); `path`: a local path
        # standing for this database, the admin socket sits beside it.
        super().__init__(path, redact_url(url))
        self.url = url
        self._pool = pool
        self._instance: str | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        readers: int = 2,
        migrate: bool = True,
        check: bool = True,
        path: Path | None = None,
    ) -> PostgresDatabase:
        """Connect a pool of `readers + 2` connections and migrate (or, with `migrate` off,
        check the schema version unless `check` is off too); StorageError on failure."""
        where = redact_url(url)
        path = path or Path("var/postgres-sfd")
        try:
            # The admin socket sits beside `path`, as it sits beside an SQLite file.
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"state directory {path.parent} cannot be created: {exc}") from None
        try:
            pool = await asyncpg.create_pool(
                url,
                password=password,
                min_size=1,
                max_size=readers + 2,
                timeout=CONNECT_TIMEOUT,
                init=_setup,
                server_settings={"TimeZone": "UTC", "application_name": "sfd"},
            )
        except ValueError as exc:  # a URL the driver cannot read
            raise StorageError(f"database {where}: {exc}") from None
        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
            error = translate(exc, where)
            if isinstance(error, StorageUnavailable):
                detail = str(exc) or type(exc).__name__
                raise StorageError(
                    f"database {where} cannot be reached ({detail}); is the PostgreSQL server "
                    "up, and does it accept connections from this host?"
                ) from None
            raise error from None
        db = cls(url, pool, path)
        try:
            if migrate:
                await db.migrate()
            elif check:
                await db.check_version()
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        """Close every connection (in-flight queries get CLOSE_TIMEOUT to finish)."""
        with anyio.CancelScope(shield=True):
            if self._instance is not None:
                with suppress(StorageError):
                    await self.execute(
                        "UPDATE instances SET stopped_at = $1 WHERE id = $2",
                        (to_iso(utcnow()), self._instance),
                    )
                self._instance = None
            try:
                await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self._pool.terminate()

    async def claim_runner(self) -> None:
        """Register this instance: on PostgreSQL several `sfd run` share one database."""
        self._instance = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        now = to_iso(utcnow())
        await self.execute(
            "INSERT INTO instances (id, host, pid, started_at, seen_at) "
            "VALUES ($1, $2, $3, $4, $4)",
            (self._instance, socket.gethostname(), os.getpid(), now),
        )

    @property
    def instance_id(self) -> str | None:
        """This instance's id once registered by `claim_runner` (host:pid:random)."""
        return self._instance

    async def listen(self, channel: str, callback: Callable[[str], None]) -> PostgresListener:
        """Call `callback(payload)` for every NOTIFY on `channel`, on a connection held for it."""
        try:
            connection = await self._pool.acquire(timeout=CONNECT_TIMEOUT)
        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
            raise translate(exc, self.where) from exc
        listener = PostgresListener(self._pool, connection, channel, callback)
        try:
            await connection.add_listener(channel, listener.notified)
        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
            await listener.close()
            raise translate(exc, self.where) from exc
        return listener

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Conn]:
        try:
            connection = await self._pool.acquire(timeout=CONNECT_TIMEOUT)
        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
            raise translate(exc, self.where) from exc
        try:
            yield connection
        finally:
            try:
                await self._pool.release(connection)
            except (asyncpg.PostgresError, *_UNREACHABLE):
                pass

    @asynccontextmanager
    async def write(self) -> AsyncIterator[PostgresConnection]:
        """A write transaction, shielded from cancellation.

        A failure that is the server's (unreachable, read-only, full) raises
        StorageUnavailable and sets `condition` until `probe` finds the server back.
        """
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                try:
                    async with self._connection() as connection:
                        transaction = connection.transaction()
                        try:
                            await transaction.start()
                        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
                            raise translate(exc, self.where) from exc
                        try:
                            yield PostgresConnection(connection, self.where)
                        except BaseException:
                            try:
                                await transaction.rollback()
                            except (asyncpg.PostgresError, *_UNREACHABLE):
                                pass
                            raise
                        try:
                            await transaction.commit()
                        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
                            raise translate(exc, self.where) from exc
                except StorageUnavailable as exc:
                    raise self._noticed(exc) from exc.__cause__

    async def checkpoint(self) -> bool:
        """Prune the old versions of rows an erasure rewrote; False if that failed now.

        PostgreSQL keeps an updated row's old version until VACUUM prunes it. Logical backups
        (pg_dump) never hold such versions; this leaves none in the tables' pages either, rather
        than waiting for autovacuum. (The server's WAL archive, if any, is the operator's to
        rotate: docs/privacy.md.)"""
        try:
            connection = await self._pool.acquire(timeout=CONNECT_TIMEOUT)
            try:
                await connection.execute(
                    "VACUUM orders, order_addresses, order_payloads, documents"
                )
            finally:
                await self._pool.release(connection)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        return True

    @asynccontextmanager
    async def read(self) -> AsyncIterator[PostgresConnection]:
        """A pooled connection for several reads."""
        async with self._connection() as connection:
            yield PostgresConnection(connection, self.where)

    async def schema_version(self) -> int:
        """The newest migration applied (0 on an empty database)."""
        async with self.read() as reader:
            return await _version(reader)

    async def migrate(self) -> list[Migration]:
        """Apply every migration the database lacks, each in its own transaction.

        An advisory lock makes instances that start together take turns: the first migrates,
        the others find nothing left to do.
        """
        applied: list[Migration] = []
        with anyio.CancelScope(shield=True):
            async with self._connection() as connection:
                tx = PostgresConnection(connection, self.where)
                await tx.fetchval("SELECT pg_advisory_lock($1)", (MIGRATION_LOCK,))
                try:
                    for migration in self._pending(await _version(tx)):
                        await self._apply(connection, migration)
                        applied.append(migration)
                finally:
                    await tx.fetchval("SELECT pg_advisory_unlock($1)", (MIGRATION_LOCK,))
        return applied

    async def _apply(self, connection: _Conn, migration: Migration) -> None:
        try:
            async with connection.transaction():
                # No parameters: the simple protocol runs the whole script.
                await connection.execute(migration.sql)
                await connection.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL)"
                )
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    to_iso(utcnow()),
                )
        except (asyncpg.PostgresError, *_UNREACHABLE) as exc:
            error = translate(exc, self.where)
            if isinstance(error, StorageUnavailable):
                raise error from None
            raise self.migration_failed(migration, exc) from None


class PostgresListener:
    """A LISTEN on one pooled connection, held until `close`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        connection: PoolConnectionProxy,
        channel: str,
        callback: Callable[[str], None],
    ) -> None:
        self._pool = pool
        self._connection: PoolConnectionProxy | None = connection
        self.channel = channel
        self.callback = callback

    def notified(self, _connection: _Conn, _pid: int, _channel: str, payload: object) -> None:
        """asyncpg's listener callback."""
        self.callback(str(payload))

    def alive(self) -> bool:
        """Whether the connection is still open (notifications still arrive)."""
        return self._connection is not None and not self._connection.is_closed()

    async def close(self) -> None:
        """Stop listening; give the connection back to the pool."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with anyio.CancelScope(shield=True), suppress(asyncpg.PostgresError, *_UNREACHABLE):
            if not connection.is_closed():
                await connection.remove_listener(self.channel, self.notified)
            await self._pool.release(connection)


async def _version(connection: PostgresConnection) -> int:
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await connection.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


__all__ = [
    "PostgresConnection",
    "PostgresDatabase",
    "PostgresListener",
    "is_postgres_url",
    "redact_url",
    "translate",
]
