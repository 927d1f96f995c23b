"""PostgreSQL's own behaviour: `sfd db copy` from SQLite, `db check`/`db backup` on a server,
the URL and password in the config, migrations of instances starting together, errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sfd.config import ConfigError, parse_config
from sfd.domain import EventSource, OperationKind
from sfd.domain.rules import ShipPayload
from sfd.storage import OperationRequest, OrderFilter, Storage, StorageError, StorageUnavailable
from sfd.storage.channels import ChannelSpec
from sfd.storage.database import StorageConflict, load_migrations
from sfd.storage.db import SQLiteDatabase
from sfd.storage.postgres import PostgresDatabase
from tests.conftest import NOW
from tests.factories import make_order
from tests.postgres import postgres_database, require_server
from tests.support import run_cli, write_config

STORES = [(1, "Shop one"), (2, "Shop two")]
CHANNELS = [ChannelSpec("decathlon", 1, "mirakl", True), ChannelSpec("ebay-de", 2, "ebay", False)]


async def fill(path: str, orders: int) -> Storage:
    """A database with `orders` orders over two channels, a token and shipments."""
    storage = await Storage.open(path)
    await storage.channels.sync(STORES, CHANNELS, NOW)
    ids = await storage.channels.channel_ids()
    for start in range(0, orders, 250):
        page = [make_order(f"DEC-{n:06d}") for n in range(start, min(start + 250, orders))]
        channel, store = ("decathlon", 1) if start % 500 == 0 else ("ebay-de", 2)
        await storage.orders.import_page(ids[channel], store, page, NOW)
    await storage.tokens.create(1, "prestashop", NOW)
    shipped = await storage.orders.find(OrderFilter(channel="decathlon", limit=20))
    await storage.operations.submit(
        1,
        OperationKind.SHIP,
        [
            OperationRequest(ShipPayload(carrier="DHL", tracking_number=f"T{o.id}"), order_id=o.id)
            for o in shipped
        ],
        EventSource.API,
        NOW,
    )
    return storage


async def snapshot(storage: Storage) -> list[bytes]:
    """Every order as the API renders it, in id order."""
    found = await storage.orders.find(OrderFilter(limit=100_000, sort="updated"))
    full = [await storage.orders.get(o.id) for o in found[:50]]
    return [repr(o).encode() for o in full] + [repr(o).encode() for o in found]


async def test_db_copy_moves_a_whole_sqlite_database_verified(tmp_path: Path) -> None:
    source = tmp_path / "sfd.db"
    lite = await fill(str(source), 2000)
    before = await snapshot(lite)
    counts = {
        t: await lite.db.fetchval(f"SELECT count(*) FROM {t}")
        for t in ("orders", "order_items", "order_events", "operations", "api_tokens")
    }
    await lite.close()
    with postgres_database(migrated=False) as url:
        done = run_cli(write_config(tmp_path), "db", "copy", str(source), url, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        rows = {t["name"]: t["rows"] for t in report["tables"]}
        assert {t: rows[t] for t in counts} == counts
        assert rows["orders"] == 2000
        assert "counts and checksums match" in done.stderr
        pg = await Storage.open(url)
        try:
            assert await snapshot(pg) == before
            # Ids go on after the copied ones: a new order is stored, not refused.
            ids = await pg.channels.channel_ids()
            result = await pg.orders.import_page(ids["decathlon"], 1, [make_order("NEW-1")], NOW)
            assert result.created[0][0] > max(o.id for o in await pg.orders.find(OrderFilter()))
            # A second copy into the same (now filled) database is refused, and changes nothing.
            again = run_cli(write_config(tmp_path), "db", "copy", str(source), url)
            assert again.returncode == 1
            assert "is not empty" in again.stderr
            assert await pg.orders.count(OrderFilter()) == 2001
        finally:
            await pg.close()


async def test_db_copy_refuses_a_file_a_running_sfd_holds(tmp_path: Path) -> None:
    source = tmp_path / "sfd.db"
    await (await fill(str(source), 10)).close()
    daemon = await SQLiteDatabase.open(source)
    await daemon.claim_runner()
    try:
        with postgres_database(migrated=False) as url:
            done = run_cli(write_config(tmp_path), "db", "copy", str(source), url)
            assert done.returncode == 1
            assert "already used by a running sfd" in done.stderr
            target = await PostgresDatabase.open(url, migrate=False, check=False)
            try:
                assert await target.schema_version() == 0, "the target was left untouched"
            finally:
                await target.close()
    finally:
        await daemon.close()


async def test_db_copy_refuses_a_password_in_the_url(tmp_path: Path) -> None:
    done = run_cli(
        write_config(tmp_path), "db", "copy", "x.db", "postgresql://u:secret@127.0.0.1/sfd"
    )
    assert done.returncode == 1
    assert "holds a password" in done.stderr and "secret" not in done.stderr


@pytest.mark.both_backends
async def test_db_check_and_backup_on_each_backend(tmp_path: Path, database_url: str) -> None:
    await (await fill(database_url, 30)).close()
    config = write_config(tmp_path, database=database_url)
    check = run_cli(config, "db", "check", "--json")
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] and report["tables"]["orders"] == 30
    assert report["schema_version"] == len(load_migrations())
    backup = run_cli(config, "db", "backup", str(tmp_path / "copy.db"))
    if database_url.startswith("postgresql://"):
        assert backup.returncode == 1
        assert "pg_dump" in backup.stderr and "nothing was written" in backup.stderr
        assert not (tmp_path / "copy.db").exists()
    else:
        assert backup.returncode == 0, backup.stderr


def test_the_config_takes_a_postgresql_url_and_a_password_reference() -> None:
    text = (
        '[daemon]\ndatabase = "postgresql://sfd@db.internal:5432/sfd"\n'
        'database_password = "env:PGPASS"\n'
    )
    config = parse_config(text, environ={"PGPASS": "hunter22"})
    assert config.database_url == "postgresql://sfd@db.internal:5432/sfd"
    assert config.database_target == config.database_url
    assert config.database_password == "hunter22"
    assert "hunter22" in config.secrets
    with pytest.raises(ConfigError, match=r"daemon.database: the URL holds a password"):
        parse_config('[daemon]\ndatabase = "postgresql://sfd:pw@db/sfd"\n')
    with pytest.raises(ConfigError, match=r"daemon.database: the URL names no database"):
        parse_config('[daemon]\ndatabase = "postgresql://sfd@db"\n')
    with pytest.raises(ConfigError, match=r"daemon.database_password: environment variable"):
        parse_config(text, environ={})
    with pytest.raises(ConfigError, match=r"only a PostgreSQL database takes a password"):
        parse_config('[daemon]\ndatabase = "x.db"\ndatabase_password = "pw"\n')
    lite = parse_config('[daemon]\ndatabase = "var/x.db"\n')
    assert lite.database_url is None and lite.database_target == "var/x.db"


async def test_an_unreachable_server_is_a_clear_storage_error() -> None:
    with pytest.raises(StorageError, match=r"cannot be reached.*is the PostgreSQL server up"):
        await Storage.open("postgresql://postgres@127.0.0.1:1/sfd")


async def test_instances_starting_together_migrate_once() -> None:
    require_server()
    with postgres_database(migrated=False) as url:
        opened = await asyncio.gather(*(Storage.open(url) for _ in range(3)))
        try:
            rows = await opened[0].db.fetch("SELECT version FROM schema_migrations ORDER BY 1")
            assert [r[0] for r in rows] == list(range(1, len(load_migrations("postgres")) + 1))
            for storage in opened:
                await storage.claim_runner()
            assert await opened[0].db.fetchval("SELECT count(*) FROM instances") == 3
        finally:
            for storage in opened:
                await storage.close()


@pytest.mark.both_backends
async def test_a_unique_key_broken_is_a_conflict_on_each_backend(storage: Storage) -> None:
    with pytest.raises(StorageConflict):
        async with storage.db.write() as tx:
            await tx.execute(
                "INSERT INTO stores (id, name, created_at, updated_at) VALUES (1, 'x', $1, $1)",
                (NOW.isoformat(),),
            )
    assert await storage.channels.store_name(1) == "Shop one"


async def test_a_lost_connection_is_a_storage_condition_until_the_server_answers_again() -> None:
    require_server()
    with postgres_database() as url:
        storage = await Storage.open(url)
        seen: list[str | None] = []
        storage.on_condition(lambda new, _old: seen.append(new.kind if new else None))

        async def write(sql: str) -> None:
            async with storage.db.write() as tx:
                await tx.execute("UPDATE stores SET name = name", ())
                await tx.execute(sql, ())

        try:
            # The server ends the session in the middle of a write, as a restart or a
            # failover does: nothing of the transaction is kept.
            with pytest.raises(StorageUnavailable, match="cannot be reached or dropped"):
                await write("SELECT pg_terminate_backend(pg_backend_pid())")
            assert storage.condition is not None and storage.condition.kind == "unreachable"
            assert await storage.probe()  # a new connection: writes land again
            assert storage.condition is None
            assert seen == ["unreachable", None]
        finally:
            await storage.close()
