"""The lease keeper: which of this instance's channel pollers and shop push loops run here.

Every instance builds the same loops; a loop runs only while this instance holds its lease.
Each round (every third of `lease_ttl`) the keeper:
- records this instance's heartbeat, and renews its leases; a lease it no longer holds (or
  cannot renew before it lapses) stops its loop at once;
- counts the live instances and works out a fair share, ceil(loops / instances);
- gives back what it holds beyond that share (a new instance then takes it), never a channel
  whose operations are being delivered here;
- takes free or lapsed leases up to its share.

On a stop, every lease is given back at once, so the other instances take the work over at
their next round rather than after `lease_ttl`. On SQLite one instance holds everything, and
its leases never lapse.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import anyio.abc

from sfd.daemon.loops import Loop
from sfd.daemon.worker import OperationsWorker
from sfd.domain.clock import utcnow
from sfd.logs import get_logger
from sfd.storage import Lease, Storage, StorageError

log = get_logger()

#: A lease counts as ours only until this share of its ttl after the renewal that set it,
#: so a loop stops before the lease can lapse in the database (clocks drift a little).
SAFETY = 0.8


@dataclass
class _Held:
    deadline: float
    """time.monotonic() after which the lease may have lapsed: the loop must have stopped."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    channel_id: int | None = None
    running: bool = False


class LeaseKeeper:
    """Runs the leased loops of this instance, and keeps their leases."""

    def __init__(
        self,
        storage: Storage,
        instance: str,
        ttl: float,
        loops: Mapping[str, Loop],
        *,
        worker: OperationsWorker | None = None,
        channel_ids: Mapping[str, int] | None = None,
    ) -> None:
        self.storage = storage
        self.instance = instance
        self.ttl = timedelta(seconds=ttl)
        self.loops = dict(loops)
        self.worker = worker
        self.channel_ids = dict(channel_ids or {})
        """Lease name → channel id, for leases that also carry the channel's operations."""
        self.held: dict[str, _Held] = {}
        self.view: dict[str, Lease] = {}
        """Every lease as last read: who holds what."""
        self.instances = 1
        self._group: anyio.abc.TaskGroup | None = None
        self._failing = False
        for name, loop in self.loops.items():
            loop.lease_check = functools.partial(self.holds, name)

    @property
    def interval(self) -> float:
        """Seconds between rounds."""
        return self.ttl.total_seconds() / 3

    def holds(self, name: str) -> bool:
        """Whether this instance surely holds lease `name` now."""
        held = self.held.get(name)
        return held is not None and (
            self.storage.leases.exclusive or time.monotonic() < held.deadline
        )

    def holder(self, name: str) -> str | None:
        """Who holds lease `name`, as last read."""
        if name in self.held:
            return self.instance
        lease = self.view.get(name)
        return None if lease is None or lease.expires_at <= utcnow() else lease.holder

    async def run(self) -> None:
        """Keep the leases and run the held loops, until cancelled."""
        async with anyio.create_task_group() as tg:
            self._group = tg
            for name in self.held:
                self._start(name)
            while True:
                await anyio.sleep(self.interval)
                await self.round()

    async def round(self) -> None:
        """Renew, balance and take leases; start and stop loops to match."""
        started = time.monotonic()
        now = utcnow()
        leases = self.storage.leases
        try:
            await leases.heartbeat(self.instance, now)
            kept = await leases.renew(self.instance, sorted(self.held), now, self.ttl)
            deadline = started + self.ttl.total_seconds() * SAFETY
            for name in list(self.held):
                if name not in kept:
                    self._lost(name, "taken by another instance or lapsed")
                    continue
                self.held[name].deadline = deadline
                if not self.held[name].running and self._group is not None:
                    self._start(name)  # it stopped at a tick while the renewal was late
            self.instances = await leases.live_instances(now, self.ttl)
            self.view = await leases.all()
            share = math.ceil(len(self.loops) / self.instances)
            if len(self.held) > share:
                await self._give_back(len(self.held) - share)
            elif len(self.held) < share:
                await self._take(share - len(self.held), deadline)
        except StorageError as exc:
            if not self._failing:
                log.warning("lease_renewal_failed", instance=self.instance, reason=str(exc))
                self._failing = True
            for name, held in list(self.held.items()):
                if not self.holds(name) or held.deadline <= time.monotonic():
                    self._lost(name, "could not be renewed in time")
            return
        if self._failing:
            log.info("lease_renewal_recovered", instance=self.instance)
            self._failing = False
        for name, loop in self.loops.items():
            loop.status.holder = self.holder(name)
            if name not in self.held and loop.status.state == "starting":
                loop.status.state = "standby"

    async def _take(self, count: int, deadline: float) -> None:
        now = utcnow()
        # On SQLite whatever another instance held is free: the run lock says it is gone.
        exclusive = self.storage.leases.exclusive
        free = [
            name
            for name in self.loops
            if name not in self.held
            and (exclusive or (lease := self.view.get(name)) is None or lease.expires_at <= now)
        ]
        random.shuffle(free)  # instances starting together do not all race for the same rows
        taken = await self.storage.leases.acquire(self.instance, free, now, self.ttl, count)
        for name in taken:
            self.held[name] = _Held(deadline, channel_id=self.channel_ids.get(name))
            log.info("lease_taken", lease=name, instance=self.instance, instances=self.instances)
            if self._group is not None:
                self._start(name)
        if taken and self.worker is not None:
            self.worker.wake()  # the channels' left-over operations are due now

    async def _give_back(self, count: int) -> None:
        """Give back `count` leases, choosing channels with no delivery under way here."""
        worker = self.worker
        if worker is None:
            names = list(self.held)[:count]
            await self._release(names)
            return
        async with worker.claim_lock:
            busy = worker.busy_channels()
            names = [n for n, h in self.held.items() if h.channel_id not in busy][:count]
            await self._release(names)

    async def _release(self, names: list[str]) -> None:
        for name in names:
            held = self.held.pop(name)
            held.scope.cancel()
        await self.storage.leases.release(self.instance, names)
        for name in names:
            log.info(
                "lease_given_back", lease=name, instance=self.instance, instances=self.instances
            )

    def _lost(self, name: str, reason: str) -> None:
        held = self.held.pop(name)
        held.scope.cancel()
        log.warning("lease_lost", lease=name, instance=self.instance, reason=reason)

    def _start(self, name: str) -> None:
        assert self._group is not None
        held = self.held[name]
        held.scope = anyio.CancelScope()
        held.running = True
        self._group.start_soon(self._run_loop, name, held, name=name)

    async def _run_loop(self, name: str, held: _Held) -> None:
        loop = self.loops[name]
        try:
            with held.scope:
                await loop.run()
        finally:
            held.running = False
            loop.status.state = "standby"

    async def give_back_all(self) -> None:
        """On a stop: give every lease back at once, and say this instance stopped."""
        with anyio.CancelScope(shield=True):
            for held in self.held.values():
                held.scope.cancel()
            self.held.clear()
            try:
                released = await self.storage.leases.release(self.instance)
                await self.storage.leases.stopped(self.instance, utcnow())
            except StorageError as exc:
                log.warning("lease_give_back_failed", instance=self.instance, reason=str(exc))
                return
            if not self.storage.leases.exclusive:
                log.info("leases_given_back", instance=self.instance, count=released)
