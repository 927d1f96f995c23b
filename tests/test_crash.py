"""SIGKILL in the middle of an import, then restart: the file is sound and no order is lost."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

from sfd.sandbox.marketplace import SandboxMarketplace, channel_toml, run_sandbox
from tests.faults.reliability import record
from tests.support import SfdProcess, wait_until, write_config

API_KEY = "sandbox-key-crash"


def counts(database: Path) -> tuple[int, int, int]:
    """(orders, distinct references, import events), read as a person would with sqlite3."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        row = db.execute(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(DISTINCT reference) FROM orders),"
            " (SELECT count(*) FROM order_events WHERE kind = 'imported')"
        ).fetchone()
    return row[0], row[1], row[2]


async def test_sigkill_during_an_import_burst_loses_nothing(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    marketplace = SandboxMarketplace(API_KEY, seed=7)
    expected = set(marketplace.add_orders(3000, waiting_acceptance_ratio=0.1))
    database = tmp_path / "sfd.db"
    rng = random.Random(2026)
    async with run_sandbox(marketplace) as base_url:
        config = write_config(
            tmp_path,
            channel_toml(base_url, "env:SANDBOX_KEY", poll_interval="2s", auto_accept=False),
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

    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r[0] for r in db.execute("SELECT reference FROM orders")}
        events = db.execute(
            "SELECT count(*), count(DISTINCT order_id) FROM order_events WHERE kind = 'imported'"
        ).fetchone()
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
