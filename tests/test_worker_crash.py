"""SIGKILL while the worker delivers shipments and accepts, again and again: nothing is lost,
nothing fails, and the marketplace gets each operation once (a repeat only where sfd could
not know that its first attempt had been taken)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from sfd.sandbox.marketplace import RecordedCall, channel_toml, run_sandbox
from tests.faults.reliability import record
from tests.support import SfdProcess, read_only, run_cli, wait_until, write_config
from tests.test_worker import SlowSandbox

API_KEY = "sandbox-key-worker-crash"
ORDERS = 200
BATCH = 10
KILLS = 20


async def polling(
    sfd_processes: Callable[..., SfdProcess], tmp_path: Path, base_url: str
) -> tuple[Path, SfdProcess]:
    """The config of a real sfd polling the sandbox at `base_url` every second, and that sfd,
    ready."""
    channel = channel_toml(base_url, "env:SANDBOX_KEY", poll_interval="1s", auto_accept=False)
    config = write_config(tmp_path, channel)
    sfd = sfd_processes(config, tmp_path, env={"SANDBOX_KEY": API_KEY})
    await asyncio.to_thread(sfd.wait_ready)
    return config, sfd


async def post(
    http: aiohttp.ClientSession, url: str, token: str, operation: str, entries: list[Any]
) -> bool:
    """Post one batch; True once it is stored (202), False if the daemon was not there."""
    try:
        async with http.post(
            f"{url}/v1/store/1/order/{operation}",
            json={"order": entries},
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            body = await response.text()
            assert response.status == 202, body
            return True
    except (aiohttp.ClientError, TimeoutError):
        return False


def unexplained_repeats(
    calls: list[RecordedCall], interrupted: set[str], operation: str
) -> dict[str, list[tuple[int | None, bool]]]:
    """Orders that got `operation` more than once without a reason sfd could know of.

    A repeat is explained when an earlier attempt got no answer back from the sandbox, or when
    the operation was in flight at a kill (sfd never learnt the outcome).
    """
    by_order: dict[str, list[RecordedCall]] = {}
    for call in calls:
        if call.operation == operation and call.order_id is not None:
            by_order.setdefault(call.order_id, []).append(call)
    return {
        order: [(c.status, c.responded) for c in seen]
        for order, seen in by_order.items()
        if len(seen) > 1 and order not in interrupted and all(c.responded for c in seen[:-1])
    }


async def test_sigkill_while_operations_are_delivered_loses_none_and_sends_none_twice(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    marketplace = SlowSandbox(API_KEY, seed=17)
    references = marketplace.add_orders(ORDERS, waiting_acceptance_ratio=0.2)
    to_accept = {r for r in references if marketplace.state(r) == "WAITING_ACCEPTANCE"}
    # Each call takes a moment, so that kills land in the middle of deliveries.
    marketplace.latency.update({"OR21": 0.05, "OR23": 0.03, "OR24": 0.05})
    database = tmp_path / "sfd.db"
    env = {"SANDBOX_KEY": API_KEY}
    rng = random.Random(2027)
    async with run_sandbox(marketplace) as base_url, aiohttp.ClientSession() as http:
        config, sfd = await polling(sfd_processes, tmp_path, base_url)
        assert await wait_until(
            lambda: read_only(database, "SELECT count(*) FROM orders")[0][0] == ORDERS, 30
        ), "the orders were not imported"
        created = await asyncio.to_thread(
            run_cli, config, "token", "create", "--store", "1", env=env
        )
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        ids = {
            r["reference"]: r["id"] for r in read_only(database, "SELECT id, reference FROM orders")
        }
        accepts = [{"id": ids[r]} for r in references if r in to_accept]
        ships = [
            {"id": ids[r], "carrier": "Colissimo", "trackingNumber": f"6A{n:09d}"}
            for n, r in enumerate(references)
            if r not in to_accept
        ]
        pending = deque(
            [("accept", accepts[i : i + BATCH]) for i in range(0, len(accepts), BATCH)]
            + [("ship", ships[i : i + BATCH]) for i in range(0, len(ships), BATCH)]
        )
        rng.shuffle(pending)

        kills = 0
        interrupted: set[str] = set()
        while kills < KILLS or pending:
            assert kills < 3 * KILLS, f"{len(pending)} batches never stored"
            if sfd.proc.poll() is not None:
                sfd = sfd_processes(config, tmp_path, env=env)
                await asyncio.to_thread(sfd.wait_ready)

            async def post_next(url: str = sfd.url) -> None:
                if pending and await post(http, url, token, *pending[0]):
                    pending.popleft()

            poster = asyncio.create_task(post_next())
            await asyncio.sleep(rng.uniform(0.1, 0.8))
            await asyncio.to_thread(sfd.kill)
            kills += 1
            await poster
            # In flight at the kill: sfd cannot know whether the marketplace took these, so
            # the next start sends them again (connectors take "already done" as done).
            interrupted |= {
                r["reference"]
                for r in read_only(
                    database,
                    "SELECT o.reference FROM operations p JOIN orders o ON o.id = p.order_id "
                    "WHERE p.state = 'running'",
                )
            }

        final = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(final.wait_ready)
        settled = "SELECT count(*) FROM operations WHERE state IN ('succeed', 'failed')"
        assert await wait_until(lambda: read_only(database, settled)[0][0] == ORDERS, 30), (
            read_only(database, "SELECT state, count(*) FROM operations GROUP BY state")
        )
        confirmed = "SELECT count(*) FROM operations WHERE confirmed_at IS NOT NULL"
        assert await wait_until(lambda: read_only(database, confirmed)[0][0] == ORDERS, 15), (
            "the polls did not confirm every operation"
        )
        assert await asyncio.to_thread(final.terminate) == 0

    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    operations = read_only(
        database,
        "SELECT o.reference, p.kind, p.state, p.next_attempt_at, p.last_error "
        "FROM operations p JOIN orders o ON o.id = p.order_id",
    )
    assert sorted(r["reference"] for r in operations) == sorted(references), "one per order"
    assert [dict(r) for r in operations if r["state"] == "failed"] == []
    assert [
        dict(r)
        for r in operations
        if r["state"] != "succeed" and not (r["state"] == "scheduled" and r["next_attempt_at"])
    ] == []
    assert {r["reference"]: r["kind"] for r in operations} == {
        r: "accept" if r in to_accept else "ship" for r in references
    }

    calls = marketplace.calls
    took = Counter(c.order_id for c in calls if c.operation in ("OR21", "OR24") and c.status == 204)
    record(
        "crash",
        "SIGKILL while operations are delivered",
        tries=kills,
        lost=len(set(references) - {r["reference"] for r in operations if r["state"] == "succeed"}),
        duplicated=sum(n - 1 for n in took.values() if n > 1),
        test="tests/test_worker_crash.py",
    )
    assert unexplained_repeats(calls, interrupted, "OR24") == {}
    assert unexplained_repeats(calls, interrupted, "OR21") == {}
    for reference in references:
        took = [
            c
            for c in marketplace.calls_to("OR21" if reference in to_accept else "OR24", reference)
            if c.status == 204
        ]
        assert len(took) == 1, (reference, took)
        assert marketplace.state(reference) == ("SHIPPING" if reference in to_accept else "SHIPPED")
    sent = Counter(c.order_id for c in calls if c.operation in ("OR21", "OR24"))
    print(
        f"{kills} kills; {len(interrupted)} operations in flight at a kill; "
        f"{sum(1 for n in sent.values() if n > 1)} sent again after an unknown outcome"
    )
    assert interrupted, "no kill landed in the middle of a delivery"


async def test_an_operation_in_flight_at_a_kill_is_sent_again_at_the_next_start(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    marketplace = SlowSandbox(API_KEY, seed=18)
    [reference] = marketplace.add_orders(1, waiting_acceptance_ratio=0.0)
    marketplace.latency["OR24"] = 2.0
    database = tmp_path / "sfd.db"
    env = {"SANDBOX_KEY": API_KEY}
    async with run_sandbox(marketplace) as base_url, aiohttp.ClientSession() as http:
        config, sfd = await polling(sfd_processes, tmp_path, base_url)
        assert await wait_until(lambda: bool(read_only(database, "SELECT id FROM orders")), 15)
        [[order_id]] = read_only(database, "SELECT id FROM orders")
        created = await asyncio.to_thread(
            run_cli, config, "token", "create", "--store", "1", env=env
        )
        token = created.stdout.strip()
        entry = {"id": order_id, "carrier": "Colissimo", "trackingNumber": "6A1"}
        assert await post(http, sfd.url, token, "ship", [entry])
        assert await wait_until(lambda: bool(marketplace.calls_to("OR24", reference)), 10)
        await asyncio.to_thread(sfd.kill)  # the marketplace takes it; sfd never hears back

        marketplace.latency.clear()
        restarted = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(restarted.wait_ready)
        state = "SELECT state FROM operations"
        delivered = await wait_until(lambda: read_only(database, state)[0][0] == "succeed", 5)
        assert await asyncio.to_thread(restarted.terminate) == 0
    assert delivered, f"still {read_only(database, state)[0][0]} 5 s after the restart"
