"""PostgreSQL for tests: one database per test on the server at SFD_TEST_POSTGRES.

Without a server the PostgreSQL half of the suite is skipped, and the summary says why;
under CI=true an unreachable server fails the test instead, so CI cannot pass on SQLite alone.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgres"]


def server_url() -> str:
    """The maintenance database of the test server."""
    return os.environ.get("SFD_TEST_POSTGRES", DEFAULT_URL)


def _run(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # A short loop of its own, in a thread: callers may or may not be inside a running loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, make()).result()


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(server_url(), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@functools.cache
def unreachable() -> str | None:
    """Why the test server cannot be used, or None when it answers."""
    try:
        _run(lambda: _admin("SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = urllib.parse.urlsplit(server_url())._replace(netloc="").geturl()
        host = urllib.parse.urlsplit(server_url()).hostname
        return f"no PostgreSQL at SFD_TEST_POSTGRES ({host}{where}): {exc}"
    return None


def require_server() -> None:
    """Skip (fail under CI=true) when the test server does not answer."""
    reason = unreachable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI needs the PostgreSQL half (.ci/run starts a server)")
    pytest.skip(reason)


def database_url(name: str) -> str:
    """The URL of database `name` on the test server."""
    parts = urllib.parse.urlsplit(server_url())
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


class _Factory:
    """Migrated databases, cloned from a template migrated once per session.

    CREATE DATABASE takes about a second (the server syncs the copy to disk), so the next
    test's database is made in a thread while the current test runs.
    """

    def __init__(self) -> None:
        self.template: str | None = None
        self.ahead: Future[str] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="sfd-test-pg")

    def _template(self) -> str:
        from sfd.storage import Storage

        name = f"sfd_test_template_{secrets.token_hex(6)}"
        _run(lambda: _admin(f'CREATE DATABASE "{name}"'))

        async def migrate() -> None:
            await (await Storage.open(database_url(name))).close()

        _run(migrate)
        return name

    def _make(self) -> str:
        if self.template is None:
            self.template = self._template()
        name = f"sfd_test_{secrets.token_hex(6)}"
        _run(lambda: _admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        return name

    def take(self) -> str:
        """A migrated database of its own; the next one starts being made."""
        ahead, self.ahead = self.ahead, None
        name = ahead.result() if ahead is not None else self.executor.submit(self._make).result()
        self.ahead = self.executor.submit(self._make)
        return name

    def close(self) -> None:
        """Drop the database made ahead and the template."""
        if self.ahead is not None:
            _drop(self.ahead.result())
        if self.template is not None:
            _drop(self.template)
        self.executor.shutdown()


def _drop(name: str) -> None:
    _run(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


_factories: list[_Factory] = []


def _factory() -> _Factory:
    if not _factories:
        _factories.append(_Factory())
    return _factories[0]


def cleanup() -> None:
    """At the session's end: drop the template and the database made ahead."""
    while _factories:
        _factories.pop().close()


@contextmanager
def postgres_database(*, migrated: bool = True) -> Iterator[str]:
    """A database of its own (migrated, or empty), dropped afterwards."""
    require_server()
    if migrated:
        name = _factory().take()
    else:
        name = f"sfd_test_{secrets.token_hex(6)}"
        _run(lambda: _admin(f'CREATE DATABASE "{name}"'))
    try:
        yield database_url(name)
    finally:
        _drop(name)


def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on a test database, from sync code (as a person with psql)."""
    rows: list[tuple[Any, ...]] = []

    async def run() -> None:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            rows.extend(tuple(r) for r in await connection.fetch(sql))
        finally:
            await connection.close()

    _run(run)
    return rows
