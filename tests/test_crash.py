"""SIGKILL in the middle of an import, then restart: the database is sound and no order is
lost (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sfd.sandbox.marketplace import channel_toml, run_sandbox
from tests.faults.reliability import record
from tests.postgres import fetch
from tests.support import SfdProcess, run_cli, wait_until, write_config
from tests.test_backup import SlowListing

API_KEY = "sandbox-key-crash"


def query(database: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql`, read as a person would with sqlite3 or psql."""
    if "://" in database:
        return fetch(database, sql)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        return [tuple(r) for r in db.execute(sql)]


def counts(database: str) -> tuple[int, int, int]:
    """(orders, distinct references, import events)."""
    [row] = query(
        database,
        "SELECT (SELECT count(*) FROM orders), (SELECT count(DISTINCT reference) FROM orders),"
        " (SELECT count(*) FROM order_events WHERE kind = 'imported')",
    )
    return row[0], row[1], row[2]


@pytest.mark.both_backends
async def test_sigkill_during_an_import_burst_loses_nothing(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess], database_url: str
) -> None:
    # Pages a little slow to list: however fast the machine, the burst outlasts each kill.
    marketplace = SlowListing(API_KEY, seed=7)
    marketplace.page_delay = 0.05
    expected = set(marketplace.add_orders(3000, waiting_acceptance_ratio=0.1))
    database = database_url
    rng = random.Random(2026)
    async with run_sandbox(marketplace) as base_url:
        config = write_config(
            tmp_path,
            channel_toml(base_url, "env:SANDBOX_KEY", poll_interval="2s", auto_accept=False),
            database=database,
            # A restart after SIGKILL finds the killed instance's lease on PostgreSQL: short.
            lease_ttl="2s",
        )
        env = {"SANDBOX_KEY": API_KEY}
        kills = 0
        committed = 0
        for _ in range(5):
            sfd = sfd_processes(config, tmp_path, env=env)
            await asyncio.to_thread(sfd.wait_ready)
            # Kill once the import is under way and before it ends, at a random depth.
            target = committed + rng.randint(50, 400)
            started = await wait_until(lambda t=target: counts(database)[0] >= t, timeout=30)
            done = counts(database)[0] == len(expected)
            sfd.kill()
            if started and not done:
                kills += 1
            after_kill = counts(database)
            assert after_kill[0] == after_kill[1] == after_kill[2], after_kill
            assert after_kill[0] >= committed, "a committed order vanished"
            committed = after_kill[0]
            if committed == len(expected):
                break
        assert kills >= 2, f"the import was killed mid-burst only {kills} times"

        final = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(final.wait_ready)
        assert await wait_until(lambda: counts(database)[0] == len(expected), timeout=60), (
            f"only {counts(database)[0]} of {len(expected)} orders after the last restart"
        )
        assert await asyncio.to_thread(final.terminate) == 0

    # PRAGMA integrity_check on SQLite; PostgreSQL's own checks (a read of every table).
    check = run_cli(config, "db", "check", "--json", env=env)
    assert check.returncode == 0 and json.loads(check.stdout)["ok"], check.stdout + check.stderr
    stored = {r[0] for r in query(database, "SELECT reference FROM orders")}
    [events] = query(
        database,
        "SELECT count(*), count(DISTINCT order_id) FROM order_events WHERE kind = 'imported'",
    )
    record(
        "crash",
        "SIGKILL during an import burst",
        tries=kills,
        lost=len(expected - stored),
        duplicated=events[0] - events[1],
        test="tests/test_crash.py",
    )
    assert stored == expected
    assert events == (len(expected), len(expected)), "an order was imported twice"
