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

import anyio.to_thread

from sfd.storage.database import StorageError, load_migrations
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


def _source(path: Path) -> sqlite3.Connection:
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
    connection = _source(path)
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
    connection = _source(source)
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
