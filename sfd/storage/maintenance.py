"""Backups and integrity checks of the SQLite file, safe beside a running daemon.

Both read the file through their own connection and never write to it: WAL lets them see one
consistent snapshot while the daemon goes on writing.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread

from sfd.storage.database import Connection, StorageError, load_migrations
from sfd.storage.db import BUSY_TIMEOUT_MS, refuse_foreign


@dataclass(frozen=True)
class CheckReport:
    """What `PRAGMA integrity_check` and `foreign_key_check` say, and the rows per table."""

    path: str
    schema_version: int
    known_version: int
    integrity: list[str]
    """["ok"] for a sound file, else SQLite's findings."""
    foreign_keys: list[str] = field(default_factory=list)
    """One line per row whose parent is missing."""
    tables: dict[str, int] = field(default_factory=dict)
    method: str = "integrity_check, foreign_key_check"
    """How the database was checked."""

    @property
    def ok(self) -> bool:
        """Sound: the integrity check says ok and no reference dangles."""
        return self.integrity == ["ok"] and not self.foreign_keys


@dataclass(frozen=True)
class BackupResult:
    """A verified copy of the database."""

    path: str
    size: int
    check: CheckReport


def open_source(path: Path) -> sqlite3.Connection:
    """A connection that only reads `path`, refusing what is not an sfd database."""
    if not path.is_file():
        raise StorageError(f"database {path} does not exist")
    refuse_foreign(path)
    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        connection.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StorageError(f"database {path} cannot be opened: {exc}") from None
    return connection


def _check(connection: sqlite3.Connection, path: Path) -> CheckReport:
    known = len(load_migrations())
    try:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        integrity = [str(r[0]) for r in connection.execute("PRAGMA integrity_check")]
        dangling = [
            f"{table} row {rowid}: no {parent} row for it"
            for table, rowid, parent, _ in connection.execute("PRAGMA foreign_key_check")
        ]
        names = [
            r[0]
            for r in connection.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        # One read transaction: every count is of the same moment.
        connection.execute("BEGIN")
        try:
            tables = {
                name: int(
                    connection.execute(
                        'SELECT count(*) FROM "{}"'.format(name.replace('"', '""'))
                    ).fetchone()[0]
                )
                for name in names
            }
        finally:
            connection.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        # A damaged file answers the check with an error rather than a report.
        return CheckReport(str(path), 0, known, [f"{type(exc).__name__}: {exc}"])
    return CheckReport(str(path), version, known, integrity, dangling, tables)


def check_sync(path: Path) -> CheckReport:
    """Check the file at `path` without writing to it."""
    connection = open_source(path)
    try:
        return _check(connection, path)
    finally:
        connection.close()


async def check(path: str | os.PathLike[str]) -> CheckReport:
    """Check the database file at `path` (integrity, references, row counts)."""
    return await anyio.to_thread.run_sync(check_sync, Path(path))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_sync(source: Path, target: Path, *, force: bool = False) -> BackupResult:
    """Copy `source` to `target` online: a temporary file, verified, then renamed into place."""
    if target.is_dir():
        raise StorageError(f"backup target {target} is a directory; name a file")
    if not target.parent.is_dir():
        raise StorageError(f"backup directory {target.parent} does not exist")
    if target.exists() and not force:
        raise StorageError(f"backup target {target} exists; use --force to replace it")
    if target.exists() and target.resolve() == source.resolve():
        raise StorageError(f"backup target {target} is the database itself")
    connection = open_source(source)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        copy = sqlite3.connect(temporary, isolation_level=None)
        try:
            # All pages in one step: one snapshot, however much the daemon writes meanwhile.
            connection.backup(copy, pages=-1)
            # A copy in rollback-journal mode is one self-contained file.
            copy.execute("PRAGMA journal_mode = DELETE")
            report = _check(copy, target)
        finally:
            copy.close()
        if not report.ok:
            raise StorageError(
                f"the copy of {source} failed its check ({'; '.join(report.integrity[:3])}); "
                f"{target} was not written"
            )
        _fsync(temporary)
        if force:
            os.replace(temporary, target)
        else:
            try:
                # A link never replaces: a file made at `target` meanwhile is kept.
                os.link(temporary, target)
            except FileExistsError:
                raise StorageError(
                    f"backup target {target} exists; use --force to replace it"
                ) from None
            except OSError:
                # A file system without hard links: check, then rename.
                if target.exists():
                    raise StorageError(
                        f"backup target {target} exists; use --force to replace it"
                    ) from None
                os.replace(temporary, target)
        _fsync(target.parent)
    except sqlite3.Error as exc:
        raise StorageError(f"backup of {source} to {target} failed: {exc}") from None
    except OSError as exc:
        raise StorageError(f"backup to {target} failed: {exc.strerror or exc}") from None
    finally:
        connection.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return BackupResult(str(target), target.stat().st_size, report)


async def backup(
    source: str | os.PathLike[str], target: str | os.PathLike[str], *, force: bool = False
) -> BackupResult:
    """Take an online backup of the database `source` into the file `target`."""
    return await anyio.to_thread.run_sync(
        lambda: backup_sync(Path(source), Path(target), force=force)
    )


async def check_postgres(url: str, *, password: str | None = None) -> CheckReport:
    """Check a PostgreSQL database without writing to it.

    With the `amcheck` extension installed, every B-tree index of the schema is verified
    (`bt_index_check`); without it, every row of every table is read, which makes the server
    read each page and detoast each value. Row counts come from one snapshot.
    """
    from sfd.storage.postgres import PostgresDatabase

    db = await PostgresDatabase.open(url, password=password, migrate=False, check=False)
    try:
        version = await db.schema_version()
        findings: list[str] = []
        tables: dict[str, int] = {}
        async with db.read() as reader:
            await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                names = [
                    r["tablename"]
                    for r in await reader.fetch(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                        "ORDER BY tablename"
                    )
                ]
                amcheck = await reader.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'amcheck')"
                )
                for name in names:
                    quoted = '"{}"'.format(name.replace('"', '""'))
                    # count and length: every row read, every value detoasted.
                    row = await _checked(
                        reader,
                        f"SELECT count(*), coalesce(sum(length(t::text)), 0) FROM {quoted} t",
                        (),
                        f"table {name}",
                        findings,
                    )
                    tables[name] = int(row[0]) if row else 0
                if amcheck:
                    indexes = await reader.fetch(
                        "SELECT c.relname FROM pg_index i "
                        "JOIN pg_class c ON c.oid = i.indexrelid "
                        "JOIN pg_am a ON a.oid = c.relam "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE a.amname = 'btree' AND n.nspname = current_schema() "
                        "ORDER BY c.relname"
                    )
                    for index in indexes:
                        await _checked(
                            reader,
                            "SELECT bt_index_check(to_regclass($1)::oid)",
                            (index["relname"],),
                            f"index {index['relname']}",
                            findings,
                        )
            finally:
                await reader.execute("ROLLBACK")
        how = "amcheck on every index" if amcheck else "every row read (amcheck not installed)"
        known = len(load_migrations(db.scheme))
        return CheckReport(db.where, version, known, findings or ["ok"], [], tables, how)
    finally:
        await db.close()


async def _checked(
    reader: Connection, sql: str, params: tuple[Any, ...], what: str, findings: list[str]
) -> Any:
    """One check's row, in a savepoint: a failure is a finding, and the checks go on."""
    await reader.execute("SAVEPOINT sfd_check")
    try:
        row = await reader.fetchrow(sql, params)
    except StorageError as exc:
        await reader.execute("ROLLBACK TO SAVEPOINT sfd_check")
        findings.append(f"{what}: {exc}")
        return None
    await reader.execute("RELEASE SAVEPOINT sfd_check")
    return row
