"""Benchmark: paging through the orders to process, at 10,000 and at 1,000,000 orders.

Seeds orders straight into SQLite, starts the real `sfd run` on the file, and drives
`GET /v1/store/1/order?acknowledgment=unacknowledged&status=waiting_shipment&limit=100`
from an aiohttp client with 16 connections. Beside it, in the same run, a bare aiohttp
handler returns the same bytes, as the ceiling of what aiohttp itself can serve here.

    .venv/bin/python bench/api.py [--seconds 10] [--sizes 10000,1000000]

On PostgreSQL (issue 17), one instance and then several on the same database, side by side,
the load spread round-robin over the instances' addresses (as a load balancer would):

    .venv/bin/python bench/api.py --postgres postgresql://postgres@127.0.0.1/postgres \
        --sizes 1000000 --instances 1,3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Daemon,
    add_database_option,
    chosen_backends,
    load,
    postgres_database,
    write_config,
)
from sfd.connectors.shoppingfeed import render_order
from sfd.domain import Address, OrderStatus, StoredItem, StoredOrder
from sfd.domain.clock import to_iso, utcnow
from sfd.storage import Storage
from sfd.storage.channels import ChannelSpec

QUERY = "acknowledgment=unacknowledged&status=waiting_shipment&limit=100"
#: However long the history, a shop has a few thousand orders waiting at most.
TO_PROCESS = 2_000
BARE_SERVER = """
import sys
from aiohttp import web
body = open(sys.argv[1], "rb").read()
async def handler(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/{tail:.*}", handler)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""


NOT_ACKNOWLEDGED = (
    "store_reference",
    "acknowledged_at",
    "acknowledgment_status",
    "acknowledgment_message",
)
TIMESTAMPS = ("created_at", "updated_at", "marketplace_updated_at", "imported_at")


def template() -> StoredOrder:
    now = utcnow()
    where = {"street": "12 rue des Lilas", "postal_code": "69003", "city": "Lyon", "country": "FR"}
    contact = {"phone": "+33600000000", "email": "camille.dupont@example.org"}
    address = Address(first_name="Camille", last_name="Dupont", **where, **contact)
    items = [
        StoredItem(
            id=n,
            reference=f"SKU-{n:05d}",
            channel_reference=f"L-{n}",
            name="Lampe de bureau en chêne massif",
            status="",
            quantity=n,
            price=Decimal("34.99"),
            commission=Decimal("4.20"),
            tax_amount=Decimal("5.83"),
            ecotax_amount=Decimal("0.12"),
            image="https://img.example.org/lamp.jpg",
            additional_fields={},
        )
        for n in (1, 2)
    ]
    return StoredOrder(
        id=0,
        store_id=1,
        channel_id=1,
        channel="decathlon",
        reference="",
        status=OrderStatus("waiting_shipment"),
        # Not acknowledged yet, and every timestamp is now.
        **dict.fromkeys(NOT_ACKNOWLEDGED),
        **dict.fromkeys(TIMESTAMPS, now),
        latest_ship_date=now + timedelta(days=2),
        is_test=False,
        fulfilled_by="store",
        currency="EUR",
        product_amount=Decimal("104.97"),
        shipping_amount=Decimal("4.90"),
        total_amount=Decimal("109.87"),
        payment_method="CB",
        shipping_method="Colissimo",
        carrier="",
        tracking_number="",
        tracking_link="",
        additional_fields={"channel_code": "decathlon-fr", "shipping_type_code": "STD"},
        billing_address=address,
        shipping_address=address,
        items=items,
    )


async def create_schema(database: Path | str) -> None:
    """An empty database with the benchmark's store and channel."""
    storage = await Storage.open(database)
    await storage.channels.sync([(1, "Bench")], [ChannelSpec("decathlon", 1, "mirakl")], utcnow())
    await storage.close()


def seeded_rows(total: int) -> Iterator[list[tuple[object, ...]]]:
    """`total` orders as rows of `_COLUMNS`, in batches of 20,000: the newest TO_PROCESS
    waiting, the rest shipped and acknowledged."""
    base = template()
    now = utcnow()
    rows: list[tuple[object, ...]] = []
    for n in range(1, total + 1):
        waiting = n > total - TO_PROCESS
        status = "waiting_shipment" if waiting else "shipped"
        moment = (
            now - timedelta(minutes=(total - n))
            if waiting
            else now - timedelta(days=10, minutes=total - n)
        )
        order = msgspec.structs.replace(
            base,
            id=n,
            reference=f"DEC-{n:08d}",
            status=OrderStatus(status),
            created_at=moment,
            updated_at=moment,
            acknowledged_at=None if waiting else moment,
            store_reference=None if waiting else f"PS-{n}",
        )
        rows.append(
            (n, 1, 1, f"DEC-{n:08d}", status, None if waiting else moment,
             None if waiting else f"PS-{n}", moment, moment, moment, moment, "EUR",
             Decimal("104.97"), Decimal("4.90"), Decimal("109.87"), render_order(order))
        )  # fmt: skip
        if len(rows) == 20_000 or n == total:
            yield rows
            rows = []


_COLUMNS = [
    "id", "channel_id", "store_id", "reference", "status", "acknowledged_at",
    "store_reference", "created_at", "updated_at", "marketplace_updated_at", "imported_at",
    "currency", "product_amount", "shipping_amount", "total_amount", "document",
]  # fmt: skip


def _sqlite_value(value: object) -> object:
    """A row's value as the SQLite schema stores it: times as ISO text, amounts as text."""
    if isinstance(value, datetime):
        return to_iso(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


async def seed(database: Path, total: int) -> None:
    """The orders of `seeded_rows` into an SQLite file."""
    await create_schema(database)
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA synchronous = OFF")
        for rows in seeded_rows(total):
            db.executemany(
                "INSERT INTO orders (id, channel_id, store_id, reference, status, "
                "acknowledged_at, store_reference, created_at, updated_at, "
                "marketplace_updated_at, imported_at, currency, product_amount, "
                "shipping_amount, total_amount, document) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [tuple(_sqlite_value(v) for v in row) for row in rows],
            )
        db.execute("ANALYZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_to_postgres(source: Path, target: str) -> dict[str, object]:
    """`sfd db copy` of the seeded file into PostgreSQL: its figures."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sfd", "db", "copy", str(source), target, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"sfd db copy failed: {done.stderr}")
    seconds = time.perf_counter() - started
    rows = sum(t["rows"] for t in json.loads(done.stdout)["tables"])
    return {"seconds": round(seconds, 1), "rows": rows, "rows_per_second": round(rows / seconds)}


def create_token(config: Path, name: str) -> str:
    """`sfd token create` for store 1: the token."""
    return subprocess.run(
        [sys.executable, "-m", "sfd", "--config", str(config), "token", "create",
         "--store", "1", "--name", name],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


async def measure(
    total: int, seconds: float, work: Path, postgres: str | None = None
) -> dict[str, object]:
    seeded_file = work / f"api-{total}{'-to-postgres' if postgres else ''}.db"
    started = time.perf_counter()
    await seed(seeded_file, total)
    seeded = time.perf_counter() - started
    copy: dict[str, object] | None = None
    database: Path | str = seeded_file
    if postgres is not None:
        # The same orders, moved the way a merchant moves them.
        copy = copy_to_postgres(seeded_file, postgres)
        database = postgres
    config = write_config(work, database)
    token = create_token(config, f"bench-{total}")
    daemon = Daemon(config)
    url = daemon.wait_ready()
    headers = {"Authorization": f"Bearer {token}"}
    pages = TO_PROCESS // 100

    def url_for(n: int) -> str:
        return f"{url}/v1/store/1/order?{QUERY}&page={n % pages + 1}"

    await load(url_for, connections=16, seconds=2, headers=headers)  # warm-up
    sfd = await load(url_for, connections=16, seconds=seconds, headers=headers)
    rss = daemon.rss_mb()
    # The same bytes the daemon serves for one page, for the bare handler.
    body_file = work / "page.json"
    async with aiohttp.ClientSession(headers=headers) as http, http.get(url_for(0)) as r:
        body_file.write_bytes(await r.read())
    daemon.stop()
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(body_file), str(port)])
    await asyncio.sleep(1.5)
    bare_url = f"http://127.0.0.1:{port}"
    await load(lambda n: f"{bare_url}/p{n}", connections=16, seconds=2)
    reference = await load(lambda n: f"{bare_url}/p{n}", connections=16, seconds=seconds)
    bare.terminate()
    bare.wait(10)
    return {
        "database": "postgres" if postgres else "sqlite",
        **({"db_copy": copy} if copy else {}),
        "orders": total,
        "to_process": TO_PROCESS,
        "seed_seconds": round(seeded, 1),
        "sfd": sfd.summary(),
        "bare": reference.summary(),
        "ratio_to_bare": round(sfd.rate / reference.rate, 3),
        "daemon_rss_mb": round(rss, 1),
    }


async def seed_postgres(url: str, total: int) -> None:
    """The orders of `seeded_rows` into a PostgreSQL database, with COPY."""
    await create_schema(url)
    connection = await asyncpg.connect(url)
    try:
        for rows in seeded_rows(total):
            await connection.copy_records_to_table("orders", records=rows, columns=_COLUMNS)
        await connection.execute("ANALYZE orders")
    finally:
        await connection.close()


async def measure_postgres(
    server: str, total: int, seconds: float, work: Path, counts: list[int]
) -> list[dict[str, object]]:
    """One instance, then `counts` instances, on one PostgreSQL database of `total` orders."""
    name = f"sfd_bench_api_{total}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = server.rsplit("/", 1)[0] + f"/{name}"
    try:
        started = time.perf_counter()
        await seed_postgres(url, total)
        seeded = time.perf_counter() - started
        config = write_config(work, url)
        token = create_token(config, f"bench-{total}")
        headers = {"Authorization": f"Bearer {token}"}
        pages = TO_PROCESS // 100
        results = []
        for count in counts:
            daemons = []
            for i in range(count):
                directory = work / f"pg-{total}-{count}-{i}"
                directory.mkdir(exist_ok=True)
                daemons.append(Daemon(write_config(directory, url)))
            urls = [d.wait_ready() for d in daemons]

            def url_for(n: int, urls: list[str] = urls) -> str:
                return f"{urls[n % len(urls)]}/v1/store/1/order?{QUERY}&page={n % pages + 1}"

            await load(url_for, connections=16 * count, seconds=2, headers=headers)
            sfd = await load(url_for, connections=16 * count, seconds=seconds, headers=headers)
            for d in daemons:
                d.stop()
            results.append(
                {
                    "backend": "postgres",
                    "orders": total,
                    "instances": count,
                    "connections": 16 * count,
                    "seed_seconds": round(seeded, 1),
                    "sfd": sfd.summary(),
                }
            )
        return results
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sizes", default="10000,1000000")
    add_database_option(
        parser,
        "postgres: seed SQLite, `sfd db copy` it into a new database on "
        "SFD_BENCH_POSTGRES, serve from there; both: SQLite then PostgreSQL, same orders",
    )
    parser.add_argument("--postgres", help="a PostgreSQL server URL: bench PostgreSQL instead")
    parser.add_argument("--instances", default="1,3", help="instance counts, on PostgreSQL")
    args = parser.parse_args()
    if args.postgres:
        counts = [int(c) for c in args.instances.split(",")]
        with tempfile.TemporaryDirectory(prefix="sfd-bench-") as tmp:
            for size in (int(s) for s in args.sizes.split(",")):
                for result in await measure_postgres(
                    args.postgres, size, args.seconds, Path(tmp), counts
                ):
                    print(json.dumps(result), flush=True)
        return
    results = []
    backends = chosen_backends(args.database)
    with tempfile.TemporaryDirectory(prefix="sfd-bench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for backend in backends:
                if backend == "postgres":
                    with postgres_database() as url:
                        result = await measure(size, args.seconds, Path(tmp), url)
                else:
                    result = await measure(size, args.seconds, Path(tmp))
                print(json.dumps(result), flush=True)
                if backend == backends[0]:
                    results.append(result)
    if len(results) == 2:
        small, large = results
        ratio = large["sfd"]["median_ms"] / small["sfd"]["median_ms"]  # type: ignore[index]
        print(json.dumps({"latency_ratio_1m_to_10k": round(ratio, 2)}))


if __name__ == "__main__":
    asyncio.run(main())
