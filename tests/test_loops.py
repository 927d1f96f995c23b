"""A loop's health, which decides whether systemd's watchdog is fed."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sfd.daemon.loops import STALL_AFTER, Loop
from tests.conftest import NOW


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class Stuck(Loop):
    """A loop whose tick never returns, as a hung marketplace call would."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("stuck", 60.0, clock)
        self.entered = asyncio.Event()

    async def tick(self) -> float | None:
        self.entered.set()
        await asyncio.Event().wait()
        return None


async def test_a_loop_stuck_in_one_tick_turns_unhealthy_after_the_stall_limit() -> None:
    clock = Clock()
    loop = Stuck(clock)
    task = asyncio.create_task(loop.run())
    await loop.entered.wait()
    assert loop.status.state == "busy"
    assert loop.healthy(clock.now + timedelta(seconds=STALL_AFTER - 1))
    assert not loop.healthy(clock.now + timedelta(seconds=STALL_AFTER + 1))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert loop.status.state == "stopped"
    assert not loop.healthy(clock.now)


class Counting(Loop):
    async def tick(self) -> float | None:
        return None


async def test_an_idle_loop_is_healthy_and_wakes_on_demand() -> None:
    clock = Clock()
    loop = Counting("counting", 3600.0, clock)
    task = asyncio.create_task(loop.run())
    for _ in range(100):
        if loop.status.ticks == 1:
            break
        await asyncio.sleep(0.01)
    assert loop.healthy(clock.now + timedelta(days=1)), "sleeping between ticks is progress"
    loop.wake()
    for _ in range(100):
        if loop.status.ticks == 2:
            break
        await asyncio.sleep(0.01)
    assert loop.status.ticks == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
