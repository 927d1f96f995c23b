"""`sfd db backup` and `sfd db check`: an online copy while the daemon writes, verified, never
over an existing file unless asked; a check that says ok or not, with the rows per table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sfd.daemon.cli import main
from sfd.sandbox.marketplace import Handler, SandboxMarketplace, channel_toml, run_sandbox
from sfd.storage import Storage
from sfd.storage.channels import ChannelSpec
from tests.conftest import NOW
from tests.factories import make_order
from tests.support import SfdProcess, run_cli, until, write_config

KEY = "sandbox-key-backup"
ORDERS = 1500


class SlowListing(SandboxMarketplace):
    """The sandbox, as slow to list orders as asked: a backup falls in the middle of an import.

    While `listing` is clear, the next pages wait: the import cannot end during a backup,
    however slowly a loaded machine starts the backup's process."""

    page_delay = 0.25

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listing = asyncio.Event()
        self.listing.set()

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self._slow)
        return app

    @web.middleware
    async def _slow(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.name == "OR11":
            await self.listing.wait()
            await asyncio.sleep(self.page_delay)
        return await handler(request)


def channel(base_url: str) -> str:
    return channel_toml(base_url, "env:SANDBOX_KEY", auto_accept=False)


def snapshot_counts(database: Path) -> tuple[int, int, int, str]:
    """(orders, their items' orders, import events, integrity), read read-only."""
    # Closed at once: a connection left open keeps the old -shm mapped in this process.
    with contextlib.closing(
        sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    ) as db:
        orders, with_items, imported = db.execute(
            "SELECT (SELECT count(*) FROM orders),"
            " (SELECT count(DISTINCT order_id) FROM order_items),"
            " (SELECT count(*) FROM order_events WHERE kind = 'imported')"
        ).fetchone()
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    return orders, with_items, imported, integrity


async def test_a_backup_taken_while_the_daemon_imports_is_a_sound_snapshot_that_restores(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    marketplace = SlowListing(KEY, seed=11)
    expected = set(marketplace.add_orders(ORDERS, waiting_acceptance_ratio=0.0))
    database = tmp_path / "sfd.db"
    target = tmp_path / "backups" / "sfd-1.db"
    target.parent.mkdir()
    env = {"SANDBOX_KEY": KEY}
    async with run_sandbox(marketplace) as base_url:
        config = write_config(tmp_path, channel(base_url))
        sfd = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(sfd.wait_ready)
        await until(lambda: snapshot_counts(database)[0] >= 100, 30, in_thread=True)

        marketplace.listing.clear()  # the page under way lands; the next wait for the backup
        before = snapshot_counts(database)[0]
        result = await asyncio.to_thread(run_cli, config, "db", "backup", str(target), env=env)
        after = snapshot_counts(database)[0]
        marketplace.listing.set()

        assert result.returncode == 0, result.stderr
        assert f"to {target}" in result.stderr and "integrity ok" in result.stderr
        marketplace.page_delay = 0.0
        orders, with_items, imported, integrity = snapshot_counts(target)
        assert integrity == "ok"
        # Taken mid-import, of one moment: each order with its items and its import event.
        assert before <= orders <= after < ORDERS, (before, orders, after)
        assert orders == with_items == imported
        assert [p.name for p in target.parent.iterdir()] == ["sfd-1.db"], "a temporary remains"
        # The daemon never noticed, and finishes its import.
        await until(lambda: snapshot_counts(database)[0] == ORDERS, 30, in_thread=True)
        assert await asyncio.to_thread(sfd.terminate) == 0

        # Restore: stopped, copied back, started; the next poll fills in what came later.
        for leftover in tmp_path.glob("sfd.db-*"):
            leftover.unlink()
        shutil.copyfile(target, database)
        check = await asyncio.to_thread(run_cli, config, "db", "check", "--json", env=env)
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout)["tables"]["orders"] == orders
        restored = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(restored.wait_ready)
        await until(lambda: snapshot_counts(database)[0] == ORDERS, 30, in_thread=True)
        assert await asyncio.to_thread(restored.terminate) == 0

    with contextlib.closing(sqlite3.connect(database)) as db:
        references = {r[0] for r in db.execute("SELECT reference FROM orders")}
        events = db.execute(
            "SELECT count(*), count(DISTINCT order_id) FROM order_events WHERE kind = 'imported'"
        ).fetchone()
    assert references == expected
    assert events == (ORDERS, ORDERS), "an order was imported twice"


@pytest.fixture
async def database(tmp_path: Path) -> Path:
    """A config and its migrated database, holding three orders."""
    config = write_config(tmp_path)
    storage = await Storage.open(tmp_path / "sfd.db")
    await storage.channels.sync(
        [(1, "Shop one"), (2, "Shop two")], [ChannelSpec("decathlon", 1, "mirakl")], NOW
    )
    cid = (await storage.channels.channel_ids())["decathlon"]
    await storage.orders.import_page(
        cid, 1, [make_order(f"DEC-{n}", updated_at=NOW) for n in range(3)], NOW
    )
    await storage.close()
    return config


def test_a_backup_never_replaces_a_file_unless_forced(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "keep.db"
    target.write_bytes(b"last week's backup")

    assert main(["--config", str(database), "db", "backup", str(target)]) == 1
    assert f"backup target {target} exists; use --force" in capsys.readouterr().err
    assert target.read_bytes() == b"last week's backup"

    assert main(["--config", str(database), "db", "backup", str(target), "--force"]) == 0
    with sqlite3.connect(target) as copy:
        assert copy.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        # One self-contained file: no -wal needed beside it.
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert sorted(p.name for p in tmp_path.glob("*keep*")) == ["keep.db"]


def test_a_backup_into_a_missing_directory_names_it(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "nowhere" / "sfd.db"
    assert main(["--config", str(database), "db", "backup", str(target)]) == 1
    assert f"backup directory {target.parent} does not exist" in capsys.readouterr().err


def test_db_check_reports_ok_and_the_rows_of_each_table(
    database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(database), "db", "check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["integrity"] == ["ok"] and report["foreign_keys"] == []
    assert report["schema_version"] == report["known_version"]
    assert report["tables"]["orders"] == 3 and report["tables"]["stores"] == 2

    assert main(["--config", str(database), "db", "check"]) == 0
    table = capsys.readouterr().out
    assert "orders" in table and "integrity: ok" in table


def test_db_check_exits_1_on_a_damaged_file_and_says_what_is_wrong(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sfd.db"
    with sqlite3.connect(path) as raw:
        page_size = raw.execute("PRAGMA page_size").fetchone()[0]
        root = raw.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'orders'").fetchone()
    raw.close()
    with path.open("r+b") as handle:
        handle.seek((root[0] - 1) * page_size)
        handle.write(b"\xff" * 64)  # the orders table's root page, scribbled over

    assert main(["--config", str(database), "db", "check", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False and report["integrity"] != ["ok"]
    assert "failed its check" in captured.err


def test_db_check_and_backup_refuse_a_file_that_is_not_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    (tmp_path / "sfd.db").write_bytes(b"not a database\n" * 10)
    assert main(["--config", str(config), "db", "check"]) == 1
    assert main(["--config", str(config), "db", "backup", str(tmp_path / "b.db")]) == 1
    err = capsys.readouterr().err
    assert err.count("is not an SQLite file; it was left as is") == 2
    assert not (tmp_path / "b.db").exists()
