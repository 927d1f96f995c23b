"""A loop's health, which decides whether systemd's watchdog is fed."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import datetime, timedelta

import anyio

from sfd.daemon.backoff import Backoff
from sfd.daemon.loops import STALL_AFTER, Loop, LoopCondition
from tests.conftest import NOW
from tests.support import events, until


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

    async def step(self) -> float | None:
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
    async def step(self) -> float | None:
        return None


async def test_an_idle_loop_is_healthy_and_wakes_on_demand() -> None:
    clock = Clock()
    loop = Counting("counting", 3600.0, clock)
    task = asyncio.create_task(loop.run())
    await until(lambda: loop.status.ticks == 1)
    assert loop.healthy(clock.now + timedelta(days=1)), "sleeping between ticks is progress"
    loop.wake()
    await until(lambda: loop.status.ticks == 2)
    assert loop.status.ticks == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class Broken(Loop):
    """A loop whose first steps raise what no loop expects, as a bug would."""

    def __init__(self, clock: Clock, failing: int) -> None:
        super().__init__("broken", 0.01, clock, backoff=Backoff(base=0.001, cap=0.01))
        self.failing = failing
        self.steps = 0

    async def step(self) -> float | None:
        self.steps += 1
        if self.steps <= self.failing:
            raise KeyError("no such thing")
        return None


async def test_an_unexpected_exception_is_logged_once_and_the_other_loops_go_on(
    logs: io.StringIO,
) -> None:
    clock = Clock()
    broken = Broken(clock, failing=5)
    other = Counting("other", 0.001, clock)
    seen: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(broken.run)
        tg.start_soon(other.run)
        await until(lambda: broken.steps >= 3)
        assert broken.status.condition == LoopCondition.FAILING
        assert broken.status.last_error == "KeyError: 'no such thing'"
        seen.append(other.status.ticks)
        await until(lambda: broken.status.condition == LoopCondition.OK)
        seen.append(other.status.ticks)
        await until(lambda: other.status.ticks > seen[-1])  # still ticking after the recovery
        tg.cancel_scope.cancel()
    assert seen[0] >= 1 and seen[1] >= seen[0], "the other loop ticked while one was failing"
    [failed] = events(logs, "loop_failed_unexpectedly")
    assert failed["loop"] == "broken" and failed["condition"] == "failing"
    assert failed["reason"] == "KeyError: 'no such thing'"
    assert "KeyError" in json.dumps(failed["exception"]), "the traceback is logged"
    [recovered] = events(logs, "loop_recovered")
    assert recovered["loop"] == "broken" and recovered["after_failures"] == 5
    assert broken.status.last_error is None and broken.status.state == "stopped"
    assert other.status.ticks > seen[1]
