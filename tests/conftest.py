"""Shared fixtures: a real SQLite file, and real `sfd` processes cleaned up after each test."""

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


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    """A migrated database with stores 1 and 2 and channels `decathlon` (1) and `ebay-de` (2)."""
    store = await Storage.open(tmp_path / "sfd.db")
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


@pytest.fixture
def logs() -> io.StringIO:
    """sfd's JSON log lines of this test, for `tests.support.events`."""
    return capture_logs()
