"""The SQLite store: WAL, migrations, idempotent import, events, tokens, views and the run lock."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from sfd.domain import EventSource, MarketplaceOrder, OperationKind, OrderStatus
from sfd.domain.clock import to_iso, utcnow
from sfd.domain.rules import ShipPayload
from sfd.storage import ImportResult, OperationRequest, OrderFilter, Storage, StorageError
from sfd.storage.database import DatabaseLocked, StorageConflict, load_migrations
from sfd.storage.db import SQLiteDatabase
from sfd.storage.tokens import TokenError
from tests.conftest import NOW
from tests.factories import make_order

S = OrderStatus


pytestmark = pytest.mark.both_backends


async def channel_id(storage: Storage, name: str = "decathlon") -> int:
    return (await storage.channels.channel_ids())[name]


async def import_orders(
    storage: Storage, at: datetime, *orders: MarketplaceOrder, cursor: datetime | None = None
) -> ImportResult:
    """Import `orders` as one page of the decathlon channel (store 1), at `at`."""
    cid = await channel_id(storage)
    return await storage.orders.import_page(cid, 1, list(orders), at, cursor=cursor)


@pytest.mark.sqlite_only
async def test_the_file_runs_in_wal_mode_with_foreign_keys(storage: Storage) -> None:
    assert (await storage.db.fetchrow("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
    assert (await storage.db.fetchrow("PRAGMA foreign_keys"))[0] == 1  # type: ignore[index]
    assert (await storage.db.fetchrow("PRAGMA busy_timeout"))[0] > 0  # type: ignore[index]
    with pytest.raises(StorageConflict):
        async with storage.db.write() as tx:
            await tx.execute(
                "INSERT INTO order_events (order_id, at, source, kind) "
                "VALUES (999, 'x', 'api', 'k')"
            )


async def test_migrations_are_numbered_and_applied_once(tmp_path: Path) -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    db = await SQLiteDatabase.open(tmp_path / "a.db")
    assert await db.schema_version() == len(migrations)
    assert await db.migrate() == []
    rows = await db.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in migrations]
    await db.close()


async def test_a_page_is_imported_with_items_addresses_payload_and_an_event(
    storage: Storage,
) -> None:
    order = make_order("DEC-1", lines=3, relay_id="PUDO-908645")
    result = await import_orders(storage, NOW, order, cursor=NOW)
    assert [(ref, status) for _, ref, status in result.created] == [("DEC-1", S.WAITING_SHIPMENT)]
    stored = await storage.orders.get(result.created[0][0])
    assert stored is not None
    assert stored.channel == "decathlon"
    assert stored.total_amount == order.total_amount
    assert stored.product_amount == Decimal("133.94")  # 20.99 + 2 x 21.99 + 3 x 22.99
    assert [i.reference for i in stored.items] == ["SKU-0001", "SKU-0002", "SKU-0003"]
    assert stored.items[0].price == Decimal("20.99")
    assert stored.shipping_address is not None
    assert stored.shipping_address.relay_id == "PUDO-908645"
    assert [(e.source, e.kind, e.to_status) for e in stored.events] == [
        ("marketplace", "imported", "waiting_shipment")
    ]
    assert await storage.channels.cursor(await channel_id(storage)) == NOW
    payload = await storage.db.fetchrow("SELECT payload FROM order_payloads")
    assert payload is not None and '"order_id": "DEC-1"' in payload[0]


async def test_importing_the_same_page_twice_changes_nothing(storage: Storage) -> None:
    page = [make_order(f"DEC-{n}") for n in range(50)]
    await import_orders(storage, NOW, *page)
    again = await import_orders(storage, NOW + timedelta(minutes=5), *page)
    assert (again.created, again.changed, again.unchanged) == ([], [], 50)
    counts = await storage.db.fetchrow(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_events), "
        "(SELECT count(*) FROM order_items)"
    )
    assert tuple(counts) == (50, 50, 100)  # type: ignore[arg-type]


async def test_a_marketplace_change_becomes_an_event_and_older_versions_are_ignored(
    storage: Storage,
) -> None:
    await import_orders(storage, NOW, make_order("DEC-1", S.WAITING_STORE_ACCEPTANCE))
    later = NOW + timedelta(minutes=10)
    result = await import_orders(
        storage, later, make_order("DEC-1", S.CANCELLED, updated_at=later, lines=1)
    )
    assert [(r, a, b) for _, r, a, b in result.changed] == [
        ("DEC-1", S.WAITING_STORE_ACCEPTANCE, S.CANCELLED)
    ]
    stale = await import_orders(storage, later, make_order("DEC-1", S.WAITING_SHIPMENT))
    assert stale.unchanged == 1
    order = (await storage.orders.find(OrderFilter(channel="decathlon")))[0]
    full = await storage.orders.get(order.id)
    assert full is not None
    assert full.status == S.CANCELLED
    assert len(full.items) == 1
    assert [(e.kind, e.from_status, e.to_status) for e in full.events][-1] == (
        "status",
        "waiting_store_acceptance",
        "cancelled",
    )


@pytest.mark.parametrize(
    ("stored", "reported", "message"),
    [
        (
            S.WAITING_STORE_ACCEPTANCE,
            S.SHIPPED,
            "waiting_store_acceptance → shipped, skipping waiting_shipment",
        ),
        (S.CREATED, S.SHIPPED, "created → shipped, skipping waiting_shipment"),
        (S.CREATED, S.REFUNDED, "created → refunded, skipping waiting_shipment"),
        (S.PARTIALLY_REFUNDED, S.SHIPPED, ""),
        (
            S.CANCELLED,
            S.WAITING_SHIPMENT,
            "cancelled → waiting_shipment, a change the transition table has no path for",
        ),
    ],
)
async def test_a_marketplace_status_is_applied_even_when_it_skips_steps(
    storage: Storage, stored: S, reported: S, message: str
) -> None:
    await import_orders(storage, NOW, make_order("DEC-1", stored))
    later = NOW + timedelta(minutes=1)
    result = await import_orders(storage, later, make_order("DEC-1", reported, updated_at=later))
    [found] = await storage.orders.find(OrderFilter())
    order = await storage.orders.get(found.id)
    assert order is not None and order.status == reported
    assert result.changed == [(order.id, "DEC-1", stored, reported)]
    assert result.jumped == ([(order.id, "DEC-1", message)] if message else [])
    last = order.events[-1]
    assert (last.kind, last.from_status, last.to_status, last.message) == (
        "status",
        stored.value,
        reported.value,
        message,
    )
    # The cursor's overlap brings the same version again: it is not reported twice.
    again = await import_orders(storage, later, make_order("DEC-1", reported, updated_at=later))
    assert again.jumped == [] and again.changed == [] and again.unchanged == 1


async def test_an_order_waiting_for_payment_is_offered_once_the_marketplace_releases_it(
    storage: Storage,
) -> None:
    await import_orders(storage, NOW, make_order("DEC-1", S.WAITING_STORE_ACCEPTANCE))
    debit = NOW + timedelta(minutes=1)
    pending = msgspec.structs.replace(make_order("DEC-1", updated_at=debit), payment_pending=True)
    await import_orders(storage, debit, pending)
    [order] = await storage.orders.find(OrderFilter())
    assert order.status == S.WAITING_SHIPMENT and order.payment_pending
    assert await storage.orders.count(OrderFilter.to_process(debit)) == 0
    assert await storage.orders.count(OrderFilter(needs_person=True)) == 0

    released = NOW + timedelta(minutes=2)
    await import_orders(storage, released, make_order("DEC-1", updated_at=released))
    [offered] = await storage.orders.find(OrderFilter.to_process(released))
    assert offered.reference == "DEC-1" and not offered.payment_pending
    detail = await storage.orders.get(offered.id)
    assert detail is not None
    assert [(e.kind, e.to_status) for e in detail.events] == [
        ("imported", "waiting_store_acceptance"),
        ("status", "waiting_shipment"),
        ("payment_pending", None),
        ("payment_received", None),
    ]


async def test_orders_to_process_follow_the_circuit_rules(storage: Storage) -> None:
    old = NOW - timedelta(days=8)
    await import_orders(
        storage,
        NOW,
        make_order("WAIT"),
        make_order("ACK"),
        make_order("SHIPPED", S.SHIPPED),
        make_order("ACCEPT", S.WAITING_STORE_ACCEPTANCE),
    )
    await import_orders(storage, old, make_order("OLD"))
    async with storage.db.write() as tx:
        await tx.execute(
            "UPDATE orders SET acknowledged_at = $1 WHERE reference = 'ACK'", (NOW.isoformat(),)
        )
    offered = await storage.orders.find(OrderFilter.to_process(NOW, store_id=1))
    assert [o.reference for o in offered] == ["WAIT"]
    assert await storage.orders.count(OrderFilter.to_process(NOW, store_id=2)) == 0


async def test_late_orders_are_those_past_their_ship_by_date(storage: Storage) -> None:
    await import_orders(
        storage,
        NOW,
        make_order("LATE", ship_by=NOW - timedelta(hours=1)),
        make_order("ONTIME", ship_by=NOW + timedelta(hours=1)),
        make_order("SHIPPED-LATE", S.SHIPPED, ship_by=NOW - timedelta(hours=1)),
    )
    late = await storage.orders.find(OrderFilter(late_at=NOW))
    assert [o.reference for o in late] == ["LATE"]


async def test_the_views_answer_a_person_with_sqlite3(storage: Storage) -> None:
    # The views read SQLite's own clock, so this test writes orders around the real now.
    now = utcnow()
    await import_orders(
        storage,
        now,
        make_order("LATE", updated_at=now, ship_by=now - timedelta(days=1)),
        make_order("FRESH", updated_at=now, ship_by=now + timedelta(days=1)),
        make_order("STALE", updated_at=now - timedelta(days=8), ship_by=now + timedelta(days=1)),
        msgspec.structs.replace(
            make_order("UNPAID", updated_at=now, ship_by=now + timedelta(days=1)),
            payment_pending=True,
        ),
    )
    async with storage.db.write() as tx:
        await tx.execute(
            "UPDATE orders SET updated_at = $1 WHERE reference = 'STALE'",
            (to_iso(now - timedelta(days=8)),),
        )
    late = await storage.db.fetch("SELECT channel, reference FROM late_orders")
    assert [(r[0], r[1]) for r in late] == [("decathlon", "LATE")]
    to_process = await storage.db.fetch("SELECT reference FROM orders_to_process ORDER BY 1")
    assert [r[0] for r in to_process] == ["FRESH", "LATE"]
    health = await storage.db.fetch("SELECT name, orders FROM channel_health ORDER BY name")
    assert [(r[0], r[1]) for r in health] == [("decathlon", 4), ("ebay-de", 0)]
    assert await storage.db.fetch("SELECT * FROM pending_operations") == []


async def test_tokens_are_stored_hashed_and_stop_working_when_revoked(storage: Storage) -> None:
    name, token = await storage.tokens.create(1, "prestashop", NOW)
    assert token.startswith("sfd_") and len(token) == 47
    rows = await storage.db.fetch("SELECT * FROM api_tokens")
    dump = repr([tuple(r) for r in rows])
    assert token not in dump
    assert hashlib.sha256(token.encode()).hexdigest() in dump
    identity = await storage.tokens.verify(token)
    assert identity is not None and (identity.name, identity.store_id) == ("prestashop", 1)
    assert await storage.tokens.verify(token + "x") is None
    assert await storage.tokens.verify(token, name="other") is None
    await storage.tokens.revoke(name, NOW)
    assert await storage.tokens.verify(token) is None
    with pytest.raises(TokenError, match="no active token named 'prestashop'"):
        await storage.tokens.revoke(name, NOW)


async def test_a_token_needs_a_known_store_and_a_free_name(storage: Storage) -> None:
    with pytest.raises(TokenError, match="no store with id 9"):
        await storage.tokens.create(9, "x", NOW)
    await storage.tokens.create(1, "shop", NOW)
    with pytest.raises(TokenError, match="a token named 'shop' already exists"):
        await storage.tokens.create(2, "shop", NOW)


async def test_a_second_runner_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = await SQLiteDatabase.open(tmp_path / "sfd.db")
    await first.claim_runner()
    second = await SQLiteDatabase.open(tmp_path / "sfd.db")
    with pytest.raises(DatabaseLocked, match="already used by a running sfd"):
        await second.claim_runner()
    await second.close()
    await first.close()
    third = await SQLiteDatabase.open(tmp_path / "sfd.db")
    await third.claim_runner()
    await third.close()


async def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "sfd.db"
    content = b"these are my accounts, not a database\n" * 100
    path.write_bytes(content)
    with pytest.raises(StorageError, match="is not an SQLite file; it was left as is"):
        await SQLiteDatabase.open(path)
    assert path.read_bytes() == content
    assert not (tmp_path / "sfd.db-wal").exists()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sfd.db"
    db = await SQLiteDatabase.open(path)
    await db.close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 999")
    with pytest.raises(StorageError, match="schema version 999, newer than this sfd knows"):
        await SQLiteDatabase.open(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 999


@pytest.mark.parametrize("path", ["/proc/sfd.db", "/proc/sfd/sfd.db"])
async def test_a_database_that_cannot_be_written_is_refused(path: str) -> None:
    # /proc refuses new files even to root, so this holds on any machine.
    with pytest.raises(StorageError, match=r"^database .*(cannot be|is not writable)"):
        await SQLiteDatabase.open(path)


@pytest.mark.sqlite_only
async def test_the_worker_finds_due_operations_through_the_due_index_not_the_history(
    storage: Storage, tmp_path: Path
) -> None:
    """Claiming runs inside the write lock on every tick: it must never scan every operation
    ever written (the soak found it did, and the daemon's CPU grew with the history)."""
    statements: list[str] = []
    db = storage.db
    for connection in [db._writer, *db._all_readers]:
        await connection.set_trace_callback(statements.append)
    await storage.queue.claim(NOW, timedelta(minutes=1), 10)
    await storage.queue.next_due()
    for connection in [db._writer, *db._all_readers]:
        await connection.set_trace_callback(None)
    # One UPDATE … RETURNING claims (pick and mark in one statement), one SELECT finds the next.
    queries = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "UPDATE"))]
    assert [q.split()[0] for q in queries] == ["UPDATE", "SELECT"], queries
    plain = sqlite3.connect(db.path)
    try:
        for query in queries:
            plan = " | ".join(row[3] for row in plain.execute("EXPLAIN QUERY PLAN " + query))
            # Each branch over the outbox searches the partial index, none scans the table.
            assert "operations_due_idx" in plan, plan
            assert "SCAN p" not in plan and "SCAN operations " not in plan + " ", plan
    finally:
        plain.close()


async def test_a_shipment_of_a_partially_refunded_order_is_confirmed_by_the_marketplaces_answer(
    storage: Storage,
) -> None:
    """eBay keeps an order `partially_refunded` once its other lines ship: no status read
    could ever confirm the shipment, so the marketplace's taking it confirms it."""
    result = await import_orders(storage, NOW, make_order("EB-1", S.PARTIALLY_REFUNDED), cursor=NOW)
    [(order_id, _, _)] = result.created
    batch = await storage.operations.submit(
        1,
        OperationKind.SHIP,
        [OperationRequest(ShipPayload(carrier="DHL", tracking_number="0034"), order_id=order_id)],
        EventSource.API,
        NOW,
    )
    assert batch.tickets[0].state == "scheduled"
    [claim] = await storage.queue.claim(NOW, timedelta(minutes=1), 10)

    confirmed = await storage.queue.delivered(claim, NOW, NOW + timedelta(minutes=1))

    assert [(kind, seconds) for _, kind, seconds in confirmed] == [("ship", 0.0)]
    stored = await storage.orders.get(order_id)
    assert stored is not None and stored.status == S.PARTIALLY_REFUNDED
    [event] = [e for e in stored.events if e.kind == "ship_confirmed"]
    assert "answer confirms it" in event.message
    later = NOW + timedelta(days=1)
    assert await storage.queue.due_confirmations(later, 10, next_check=later) == []


async def test_a_shipment_of_an_open_order_waits_for_the_marketplaces_status(
    storage: Storage,
) -> None:
    result = await import_orders(storage, NOW, make_order("EB-2"), cursor=NOW)
    [(order_id, _, _)] = result.created
    await storage.operations.submit(
        1,
        OperationKind.SHIP,
        [OperationRequest(ShipPayload(carrier="DHL", tracking_number="0035"), order_id=order_id)],
        EventSource.API,
        NOW,
    )
    [claim] = await storage.queue.claim(NOW, timedelta(minutes=1), 10)

    assert await storage.queue.delivered(claim, NOW, NOW + timedelta(minutes=1)) == []
