"""Shared fixtures: a real database (SQLite file, or PostgreSQL database), and real `sfd`
processes cleaned up after each test."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from sfd.storage import Storage
from sfd.storage.channels import ChannelSpec
from tests.postgres import BACKENDS, postgres_database
from tests.postgres import cleanup as postgres_cleanup
from tests.support import SfdProcess, capture_logs, start_sfd

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts and ends with default logging: `sfd` configures it process-wide."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_backends` run on SQLite and on PostgreSQL; the rest on SQLite."""
    if "backend" not in metafunc.fixturenames:
        return
    marked = metafunc.definition.get_closest_marker("both_backends") is not None
    unmarked = metafunc.definition.get_closest_marker("sqlite_only") is not None
    if marked and not unmarked:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test: "sqlite" unless the test runs on both."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """The `[daemon] database` of this test: an SQLite file in tmp_path, or a PostgreSQL
    database of its own (created, dropped afterwards) on the server at SFD_TEST_POSTGRES."""
    if backend == "sqlite":
        yield str(tmp_path / "sfd.db")
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[Storage]:
    """A migrated database with stores 1 and 2 and channels `decathlon` (1) and `ebay-de` (2)."""
    store = await Storage.open(database_url)
    await store.channels.sync(
        [(1, "Shop one"), (2, "Shop two")],
        [ChannelSpec("decathlon", 1, "mirakl", True), ChannelSpec("ebay-de", 2, "ebay", False)],
        NOW,
    )
    yield store
    await store.close()


@pytest.fixture
def sfd_processes() -> Iterator[Callable[..., SfdProcess]]:
    """Start real `sfd run` processes; any left running are killed afterwards."""
    started: list[SfdProcess] = []

    def start(config: Path, directory: Path, **kwargs: object) -> SfdProcess:
        process = start_sfd(config, directory, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.kill()
        process.notify.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the reliability figures the fault, hostile-input and crash tests recorded."""
    from tests.faults import reliability

    reliability.write()
    postgres_cleanup()


@pytest.fixture
def logs() -> io.StringIO:
    """sfd's JSON log lines of this test, for `tests.support.events`."""
    return capture_logs()
