"""Storage faults: the disk fills up or turns read-only under the running daemon, or the file
at the database path is not one this sfd may use.

While writes fail, the daemon keeps running: the API answers 503 with the reason, polling
pauses without blaming the marketplace or moving a cursor, a marketplace's answer to an
operation already sent is kept until it can be written, and /healthz says `storage`. When the
disk is back, the daemon notices by itself and catches up, with nothing lost, half-written or
duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import sfd.daemon.loops
import sfd.daemon.runtime
import sfd.daemon.worker
from sfd.config import load_config
from sfd.daemon.cli import main
from sfd.daemon.notify import SystemdNotifier
from sfd.daemon.runtime import Daemon, StartupError
from sfd.storage import OrderFilter
from sfd.storage.database import load_migrations
from sfd.storage.db import SQLiteDatabase
from tests.faults.harness import Hub, query, running_hub, until
from tests.faults.injector import Handler
from tests.faults.reliability import record
from tests.support import SfdProcess, write_config

GROUP = "storage"
TEST = "tests/faults/test_storage_faults.py"
INITIAL = 30
MORE = 10
#: Outages per test: the first with every check, the others shorter.
OUTAGES = 3


@pytest.fixture(autouse=True)
def fast_storage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry and probe every few tenths of a second instead of every few seconds."""
    monkeypatch.setattr(sfd.daemon.loops, "STORAGE_RETRY", 0.2)
    monkeypatch.setattr(sfd.daemon.runtime, "STORAGE_PROBE", 0.1)
    monkeypatch.setattr(sfd.daemon.worker, "SAVE_RETRY", 0.1)


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 24 MiB file system (tmpfs), mounted for this test only."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the simulated variants cover the same paths")
    mounted = _mount("-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


# -- ways to break the disk -----------------------------------------------------------------


class Breakage:
    """Makes every write of the running daemon fail, then mends it."""

    kind = ""
    name = ""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def break_(self) -> None:
        raise NotImplementedError

    async def mend(self) -> None:
        raise NotImplementedError


class FullFilesystem(Breakage):
    """A real full disk: a filler file takes every free block of the small file system."""

    kind = "disk_full"
    name = "disk full (tmpfs at its size limit)"

    async def break_(self) -> None:
        database = self.hub.database
        # An empty WAL: the next commit must grow a file, not reuse space it already holds.
        # In a thread: the checkpoint waits for the daemon's readers, which run on this loop.
        busy = await asyncio.to_thread(_checkpoint, database)
        assert busy == 0, "the WAL could not be emptied"
        self.filler = database.parent / "filler"
        await asyncio.to_thread(_fill, self.filler)

    async def mend(self) -> None:
        self.filler.unlink()


def _checkpoint(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as db:
        return int(db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])


def _fill(path: Path) -> None:
    """Write zeros until the file system has no block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = 1024 * 1024
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 4
    finally:
        os.close(fd)
    assert os.statvfs(path.parent).f_bavail == 0


class ReadOnlyDatabase(Breakage):
    """SQLite's read-only refusal (SQLITE_READONLY), on the daemon's own writer connection.

    A file system cannot be remounted read-only while a process holds files open for writing
    (EBUSY), so the refusal the daemon would meet is produced by `PRAGMA query_only`.
    """

    kind = "read_only"
    name = "database read-only"

    async def _set(self, on: bool) -> None:
        storage = self.hub.daemon.storage
        assert storage is not None
        db = storage.db
        async with db._write_lock:
            await db._writer.execute(f"PRAGMA query_only = {int(on)}")

    async def break_(self) -> None:
        await self._set(True)

    async def mend(self) -> None:
        await self._set(False)


# -- the daemon seen from outside ------------------------------------------------------------


@dataclass
class Client:
    """HTTP calls to the daemon with a store-1 token."""

    http: aiohttp.ClientSession
    url: str
    token: str

    async def get(self, path: str) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.get(self.url + path, headers=headers) as response:
            return response.status, response.headers, await response.json(content_type=None)

    async def ship(self, order_id: int) -> tuple[int, Any, Any]:
        body = {"order": [{"id": order_id, "carrier": "Colissimo", "trackingNumber": "6A1"}]}
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.post(
            self.url + "/v1/store/1/order/ship", json=body, headers=headers
        ) as response:
            return response.status, response.headers, await response.json(content_type=None)

    async def valid_orders(self, reference: str) -> tuple[int, str]:
        request = (
            '<?xml version="1.0" encoding="UTF-8"?><ValidOrders><Order>'
            f"<IdOrder>{reference}</IdOrder><Marketplace>flaky</Marketplace>"
            "<MerchantIdOrder>9001</MerchantIdOrder></Order></ValidOrders>"
        )
        form = {"TOKEN": self.token, "CALL": "ValidOrders", "MODE": "Production"}
        async with self.http.post(self.url + "/ws", data={**form, "REQUEST": request}) as response:
            return response.status, await response.text()

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with self.http.get(self.url + "/healthz") as response:
            return response.status, await response.json()


@asynccontextmanager
async def client(hub: Hub) -> AsyncIterator[Client]:
    storage = hub.daemon.storage
    assert storage is not None
    _, token = await storage.tokens.create(1, "shop", hub.daemon.clock())
    async with aiohttp.ClientSession() as http:
        yield Client(http, hub.daemon.url, token)


def hold(path: str) -> tuple[Callable[[web.Request, Handler], Any], asyncio.Event, asyncio.Event]:
    """A fault holding requests to `path` until released: (fault, arrived, release)."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return await handler(request)

    return fault, arrived, release


def cursors(hub: Hub) -> list[tuple[str, str | None]]:
    return [
        (r[0], r[1]) for r in query(hub.database, "SELECT name, cursor FROM channels ORDER BY 1")
    ]


async def settled_cursors(hub: Hub) -> list[tuple[str, str | None]]:
    """The cursors once the first polls have saved theirs."""
    await until(lambda: all(cursor for _, cursor in cursors(hub)), what="the first cursors")
    return cursors(hub)


def marketplace_calls(hub: Hub) -> int:
    return len(hub.flaky.calls) + len(hub.steady.calls)


async def writes_fail_cleanly_then_recover(hub: Hub, breakage: Breakage) -> None:
    """The whole story, for any way the disk refuses writes."""
    storage = hub.daemon.storage
    assert storage is not None
    orders = await storage.orders.find(OrderFilter(store_id=1, limit=3))
    in_flight, refused, unacknowledged = orders[0], orders[1], orders[2]
    async with client(hub) as api:
        # A shipment whose marketplace call is under way when the disk goes.
        fault, arrived, release = hold(f"/api/orders/{in_flight.reference}/ship")
        hub.injector.inject(fault, path=f"/api/orders/{in_flight.reference}/ship")
        status, _, batch = await api.ship(in_flight.id)
        assert status == 202, batch
        await asyncio.wait_for(arrived.wait(), 10)
        before = await settled_cursors(hub)

        await breakage.break_()
        hub.flaky.add_orders(MORE, waiting_acceptance_ratio=0.0)
        hub.steady.add_orders(MORE, waiting_acceptance_ratio=0.0)
        for channel in ("flaky", "steady"):
            hub.poller(channel).wake()
        await until(lambda: storage.db.condition is not None, what="the failed write to be noticed")
        release.set()  # the marketplace applies the shipment; its answer cannot be written
        hub.injector.heal()
        await until(
            lambda: [c.status for c in hub.flaky.calls_to("OR24", in_flight.reference)] == [204],
            what="the marketplace to answer the shipment",
        )
        await asyncio.sleep(0.3)  # a few attempts to write the answer
        # The claim is held, not lost: the operation is still running under its lease.
        assert query(
            hub.database, f"SELECT state FROM operations WHERE order_id = {in_flight.id}"
        ) == [("running",)]

        # /healthz says why, with the storage condition.
        status, health = await api.health()
        assert status == 503, health
        assert health["status"] == "unhealthy"
        assert health["storage"]["condition"] == breakage.kind
        assert "nothing was changed" in health["storage"]["reason"]

        # A write through the v1 API: 503 as problem+json, with the reason and Retry-After.
        status, headers, problem = await api.ship(refused.id)
        assert status == 503, problem
        assert headers["Content-Type"] == "application/problem+json"
        assert f"cannot take writes ({breakage.kind})" in problem["detail"]
        assert int(headers["Retry-After"]) > 0
        # ... and through the legacy /ws: its own XML error, 503.
        status, text = await api.valid_orders(unacknowledged.reference)
        assert status == 503, text
        assert f"cannot take writes ({breakage.kind})" in text
        # Reads still work.
        status, _, page = await api.get("/v1/store/1/order")
        assert status == 200, page

        # Polling pauses: no call to either marketplace, no cursor moved, nothing stored.
        await until(
            lambda: all(
                hub.poller(c).status.condition == "storage_unavailable" for c in ("flaky", "steady")
            ),
            what="both pollers to pause",
        )
        calls = marketplace_calls(hub)
        for _ in range(3):
            for channel in ("flaky", "steady"):
                hub.poller(channel).wake()
            await asyncio.sleep(0.3)
        assert marketplace_calls(hub) == calls, "a paused poller called its marketplace"
        assert cursors(hub) == before
        assert len(hub.stored("flaky")) == len(hub.stored("steady")) == INITIAL
        assert hub.running
        # The storage is blamed, once; the marketplaces are not.
        assert len(hub.events("storage_unavailable")) == 1
        assert hub.events("poll_failed") == []

        await breakage.mend()

        await until(lambda: storage.db.condition is None, what="the probe to see the disk back")
        status, health = await api.health()
        assert status == 200, health
        assert health["storage"] == {"condition": "ok"}
        assert len(hub.events("storage_recovered")) == 1
        await until(
            lambda: len(hub.stored("flaky")) == len(hub.stored("steady")) == INITIAL + MORE,
            what="the orders placed during the outage to be imported",
        )
        # The kept answer was written: the shipment was sent once and its ticket closed.
        status, _, tickets = await api.get(f"/v1/store/1/ticket?batchId={batch['id']}")
        assert status == 200, tickets
        await until_ticket_done(api, tickets["_embedded"]["ticket"][0]["id"])
        assert len(hub.flaky.calls_to("OR24", in_flight.reference)) == 1
        # The refused shipment was not half-written: it can be asked again, and goes through.
        assert query(
            hub.database, f"SELECT count(*) FROM operations WHERE order_id = {refused.id}"
        ) == [(0,)]
        status, _, again = await api.ship(refused.id)
        assert status == 202, again

        # Again, shorter: each outage ends the same way.
        for n in range(2, OUTAGES + 1):
            await breakage.break_()
            hub.flaky.add_orders(MORE, waiting_acceptance_ratio=0.0)
            hub.steady.add_orders(MORE, waiting_acceptance_ratio=0.0)
            hub.poller("flaky").wake()
            await until(lambda: storage.db.condition is not None, what=f"outage {n}")
            status, _, problem = await api.ship(unacknowledged.id)
            assert status == 503, problem
            await breakage.mend()
            await until(lambda: storage.db.condition is None, what=f"recovery {n}")
            await until(
                lambda n=n: (
                    len(hub.stored("flaky")) == len(hub.stored("steady")) == INITIAL + n * MORE
                ),
                what=f"the catch-up after outage {n}",
            )
        assert len(hub.events("storage_unavailable")) == len(hub.events("storage_recovered"))
        assert len(hub.events("storage_recovered")) == OUTAGES

    assert hub.integrity() == "ok"
    assert query(hub.database, "PRAGMA foreign_key_check") == []
    lost = (
        len(hub.flaky.orders)
        - len(hub.stored("flaky"))
        + len(hub.steady.orders)
        - len(hub.stored("steady"))
    )
    duplicated = hub.duplicates() + (len(hub.flaky.calls_to("OR24", in_flight.reference)) - 1)
    assert (lost, duplicated) == (0, 0)
    record(GROUP, breakage.name, tries=OUTAGES, lost=lost, duplicated=duplicated, test=TEST)


async def until_ticket_done(api: Client, ticket: str) -> None:
    for _ in range(500):
        status, _, body = await api.get(f"/v1/store/1/ticket/{ticket}")
        assert status == 200, body
        if body["state"] == "succeed":
            return
        assert body["state"] != "failed", body
        await asyncio.sleep(0.02)
    raise AssertionError(f"ticket {ticket} still {body['state']}")


async def test_a_full_disk_fails_writes_cleanly_pauses_polling_and_recovers(
    small_filesystem: Path,
) -> None:
    async with running_hub(small_filesystem, initial=INITIAL) as hub:
        await writes_fail_cleanly_then_recover(hub, FullFilesystem(hub))


async def test_a_read_only_database_fails_writes_cleanly_pauses_polling_and_recovers(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path, initial=INITIAL) as hub:
        await writes_fail_cleanly_then_recover(hub, ReadOnlyDatabase(hub))


async def test_a_database_at_its_page_limit_stores_no_part_of_a_page_and_resumes(
    tmp_path: Path,
) -> None:
    """SQLITE_FULL without root: `max_page_count` caps the file where it is, as a full disk
    would. The import that needs room fails whole; small writes that fit do not end it."""
    async with running_hub(tmp_path, initial=INITIAL) as hub:
        storage = hub.daemon.storage
        assert storage is not None
        db = storage.db
        await settled_cursors(hub)
        for n in range(1, OUTAGES + 1):
            await until(lambda: hub.poller("flaky").status.state == "idle", what="an idle poller")
            before = cursors(hub)
            async with db._write_lock:
                await db._writer.execute("PRAGMA max_page_count = 1")  # answers the current count
            hub.flaky.add_orders(200, waiting_acceptance_ratio=0.0)
            hub.poller("flaky").wake()
            await until(lambda: db.condition is not None, what="the import to hit the limit")
            assert db.condition is not None and db.condition.kind == "disk_full"
            await asyncio.sleep(0.5)  # probes run; a one-row write fits, but there is no room
            assert db.condition is not None, "a small write that fit cleared the condition"
            assert len(hub.stored("flaky")) == INITIAL + (n - 1) * 200
            assert cursors(hub) == before
            assert hub.integrity() == "ok"

            async with db._write_lock:
                await db._writer.execute("PRAGMA max_page_count = 4294967294")
            await until(lambda: db.condition is None, what="the probe to see room again")
            await until(
                lambda n=n: len(hub.stored("flaky")) == INITIAL + n * 200, what="the catch-up"
            )
        assert hub.integrity() == "ok"
        lost = len(hub.flaky.orders) - len(hub.stored("flaky"))
        duplicated = hub.duplicates()
        assert (lost, duplicated) == (0, 0)
        record(GROUP, "database at its size limit (max_page_count)", tries=OUTAGES, lost=lost,
               duplicated=duplicated, test=TEST)  # fmt: skip


async def test_a_read_only_file_system_at_start_is_refused_and_the_file_left_as_is(
    small_filesystem: Path,
) -> None:
    config = load_config(write_config(small_filesystem))
    db = await SQLiteDatabase.open(config.database)
    await db.close()
    snapshot = _snapshot(config.database)
    assert _mount("-o", "remount,ro", str(small_filesystem)).returncode == 0
    try:
        daemon = Daemon(config, notifier=SystemdNotifier({}), handle_signals=False)
        with pytest.raises(StartupError, match=r"cannot be (written|opened|used)"):
            await daemon.start()
        await daemon.stop()
        assert _snapshot(config.database) == snapshot
    finally:
        assert _mount("-o", "remount,rw", str(small_filesystem)).returncode == 0
    daemon = Daemon(config, notifier=SystemdNotifier({}), handle_signals=False)
    await daemon.start()
    await daemon.stop()
    record(GROUP, "read-only file system at start", tries=1, lost=0, duplicated=0, test=TEST)


# -- files this sfd must not use -------------------------------------------------------------


def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes, its mtime, and its companions (-wal, -shm, -journal) beside it."""
    beside = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-"))
    return path.read_bytes(), path.stat().st_mtime_ns, beside


def _not_sqlite(path: Path) -> str:
    path.write_bytes(b"PK\x03\x04 a zip archive, say, given the database's name\n" * 200)
    return "is not an SQLite file; it was left as is"


def _newer(journal_mode: str) -> Callable[[Path], str]:
    def make(path: Path) -> str:
        with contextlib.closing(sqlite3.connect(path)) as raw:
            raw.execute(f"PRAGMA journal_mode = {journal_mode}")
            raw.execute("CREATE TABLE made_by_a_newer_sfd (x)")
            raw.execute("PRAGMA user_version = 999")
            raw.commit()
        known = len(load_migrations())
        return f"schema version 999, newer than this sfd knows ({known}); it was left as is"

    return make


@pytest.mark.parametrize(
    ("fault", "make"),
    [
        ("not an SQLite file", _not_sqlite),
        ("newer schema version (WAL file)", _newer("wal")),
        ("newer schema version (rollback-journal file)", _newer("delete")),
    ],
    ids=["not-sqlite", "newer-schema-wal", "newer-schema-rollback-journal"],
)
def test_a_file_this_sfd_must_not_use_stops_sfd_run_and_is_never_touched(
    tmp_path: Path,
    fault: str,
    make: Callable[[Path], str],
    sfd_processes: Callable[..., SfdProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path)
    database = tmp_path / "sfd.db"
    message = make(database)
    snapshot = _snapshot(database)
    sfd = sfd_processes(config, tmp_path)
    assert sfd.proc.wait(15) == 1
    lines = [line for line in sfd.log_text().splitlines() if line.startswith("sfd: ")]
    assert len(lines) == 1 and message in lines[0], sfd.log_text()
    # Commands refuse it too, before writing anything.
    assert main(["--config", str(config), "db", "migrate"]) == 1
    assert message in capsys.readouterr().err
    assert _snapshot(database) == snapshot, "the file was changed, or files left beside it"
    record(GROUP, f"database file refused at start: {fault}", tries=1, lost=0, duplicated=0,
           test=TEST)  # fmt: skip
