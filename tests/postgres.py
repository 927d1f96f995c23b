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
    # Fixtures set up outside the test's event loop: a short loop of their own.
    asyncio.run(make())


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


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database of its own, dropped afterwards."""
    require_server()
    name = f"sfd_test_{secrets.token_hex(6)}"
    _run(lambda: _admin(f'CREATE DATABASE "{name}"'))
    try:
        yield database_url(name)
    finally:
        _run(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
