"""Benchmark: importing a backlog from a sandbox marketplace, pages of 100.

The sandbox runs in its own process. The real `sfd run` imports the whole backlog in its first
poll; its `poll_done` line gives the duration, /proc its peak RSS. Then, in the same run, a
minimal reference fetches the same pages with aiohttp and inserts them with `executemany`,
one transaction per page: the floor of what any importer in Python has to spend.

`--marketplace mirakl` (OR11) is the default; `amazon` serves the sandbox Amazon's Orders API
v2026-01-01 (`searchOrders` with every dataset sfd asks for); `both` runs Mirakl then Amazon
on the same backlog, side by side. Amazon's searchOrders allows a burst of 20 calls, then one
every three minutes, so an Amazon backlog of more than 2,000 orders measures the usage plan,
not sfd: Amazon mode imports at most 2,000.

    .venv/bin/python bench/ingest.py [--orders 100000] [--marketplace mirakl|amazon|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Daemon,
    add_database_option,
    chosen_backends,
    count_orders,
    peak_rss_mb,
    postgres_database,
    write_config,
)
from sfd.sandbox.marketplace import channel_toml

KEY = "bench-ingest-key"
AMAZON_BURST_ORDERS = 2000
AMAZON_ID = "amzn1.application-oa2-client.bench"
AMAZON_SECRET = "amzn1.oa2-cs.v1.bench"
AMAZON_REFRESH = "Atzr|bench"
AMAZON_SANDBOX = """
import asyncio, sys
from sfd.sandbox.amazon import SandboxAmazon
from sfd.sandbox.kit import serve
async def main():
    # sfd keeps to the usage plan itself; the reference, after it, must not find it spent.
    amazon = SandboxAmazon(
        sys.argv[1], sys.argv[2], sys.argv[3], seed=11, enforce_usage_plans=False
    )
    amazon.add_orders(int(sys.argv[4]))
    async with serve(amazon.app()) as url:
        print(url.rsplit(":", 1)[1], flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""
SANDBOX = """
import asyncio, sys
from sfd.sandbox.marketplace import SandboxMarketplace
from sfd.sandbox.kit import serve
async def main():
    marketplace = SandboxMarketplace(sys.argv[1], seed=11)
    marketplace.add_orders(int(sys.argv[2]), waiting_acceptance_ratio=0.0)
    async with serve(marketplace.app()) as url:
        print(url.rsplit(":", 1)[1], flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def reference_database(database: Path) -> sqlite3.Connection:
    """The plain schema the hand-written reference imports write to."""
    db = sqlite3.connect(database)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, reference TEXT UNIQUE, "
        "status TEXT, total TEXT, currency TEXT, updated TEXT, payload TEXT)"
    )
    db.execute("CREATE TABLE lines (order_ref TEXT, sku TEXT, quantity INTEGER, price TEXT)")
    return db


def insert_page(
    db: sqlite3.Connection, orders: list[tuple[Any, ...]], lines: list[tuple[Any, ...]]
) -> None:
    """One page of orders and their lines, with executemany."""
    db.executemany(
        "INSERT INTO orders (reference, status, total, currency, updated, payload) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        orders,
    )
    db.executemany("INSERT INTO lines VALUES (?, ?, ?, ?)", lines)


async def reference_import(base_url: str, database: Path) -> tuple[float, int]:
    """Fetch every page and insert orders and lines with executemany: (seconds, orders)."""
    db = reference_database(database)
    started = time.perf_counter()
    count = 0
    offset = 0
    async with aiohttp.ClientSession(headers={"Authorization": KEY}) as http:
        while True:
            async with http.get(
                f"{base_url}/api/orders",
                params={"paginate": "true", "max": "100", "offset": str(offset)},
            ) as response:
                page = await response.json()
            orders = page["orders"]
            if not orders:
                break
            with db:
                insert_page(
                    db,
                    [
                        (
                            o["order_id"],
                            o["order_state"],
                            str(o["total_price"]),
                            o["currency_iso_code"],
                            o["last_updated_date"],
                            json.dumps(o),
                        )
                        for o in orders
                    ],
                    [
                        (o["order_id"], line["offer_sku"], line["quantity"], str(line["price"]))
                        for o in orders
                        for line in o["order_lines"]
                    ],
                )
            count += len(orders)
            offset += len(orders)
    db.close()
    return time.perf_counter() - started, count


async def amazon_reference_import(base_url: str, database: Path) -> tuple[float, int]:
    """Amazon's pages fetched with aiohttp (one LWA token, then searchOrders with its
    nextToken), orders and lines inserted with executemany: (seconds, orders)."""
    db = reference_database(database)
    started = time.perf_counter()
    count = 0
    async with aiohttp.ClientSession() as http:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": AMAZON_REFRESH,
            "client_id": AMAZON_ID,
            "client_secret": AMAZON_SECRET,
        }
        async with http.post(f"{base_url}/auth/o2/token", data=form) as response:
            token = (await response.json())["access_token"]
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30 * 86400))
        before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 130))
        query = {
            "lastUpdatedAfter": since,
            "lastUpdatedBefore": before,
            "marketplaceIds": "A13V1IB3VIYZZH",
            "fulfilledBy": "MERCHANT",
            "maxResultsPerPage": "100",
            "includedData": "BUYER,RECIPIENT,FULFILLMENT,PROCEEDS,PACKAGES,TAX",
        }
        params = dict(query)
        while True:
            async with http.get(
                f"{base_url}/orders/2026-01-01/orders",
                params=params,
                headers={"x-amz-access-token": token},
            ) as response:
                page = await response.json()
            orders = page["orders"]
            with db:
                insert_page(
                    db,
                    [
                        (
                            o["orderId"],
                            o["fulfillment"]["fulfillmentStatus"],
                            o["proceeds"]["grandTotal"]["amount"],
                            o["proceeds"]["grandTotal"]["currencyCode"],
                            o["lastUpdatedTime"],
                            json.dumps(o),
                        )
                        for o in orders
                    ],
                    [
                        (
                            o["orderId"],
                            line["product"]["sellerSku"],
                            line["quantityOrdered"],
                            line["product"]["price"]["unitPrice"]["amount"],
                        )
                        for o in orders
                        for line in o["orderItems"]
                    ],
                )
            count += len(orders)
            token_next = (page.get("pagination") or {}).get("nextToken")
            if not token_next:
                break
            params = {**query, "paginationToken": token_next}
    db.close()
    return time.perf_counter() - started, count


MIRAKL_CHANNEL = channel_toml("{base_url}", "{key}", auto_accept=False)
AMAZON_CHANNEL = """
[[channels]]
connector = "amazon"
name = "amazon-fr"
poll_interval = "1h"
store = 1
settings.endpoint = "{base_url}"
settings.token_url = "{base_url}/auth/o2/token"
settings.marketplace_ids = ["A13V1IB3VIYZZH"]
settings.client_id = "{client_id}"
settings.client_secret = "{secret}"
settings.refresh_token = "{refresh}"
"""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--marketplace", choices=("mirakl", "amazon", "both"), default="mirakl")
    add_database_option(
        parser,
        "where sfd stores the import: its SQLite file, a new database on "
        "SFD_BENCH_POSTGRES, or both one after the other (the reference is always SQLite)",
    )
    args = parser.parse_args()
    kinds = ["mirakl", "amazon"] if args.marketplace == "both" else [args.marketplace]
    backends = chosen_backends(args.database)
    for kind in kinds:
        orders = args.orders if kind == "mirakl" else min(args.orders, AMAZON_BURST_ORDERS)
        for backend in backends:
            if backend == "postgres":
                with postgres_database("sfd_ingest") as url:
                    figures = await run(kind, orders, url)
            else:
                figures = await run(kind, orders)
            print(json.dumps({"marketplace": kind, "database": backend, **figures}), flush=True)


async def run(kind: str, orders: int, postgres: str | None = None) -> dict[str, object]:
    """Import `orders` from the sandbox of `kind`, then the reference: the figures."""
    with tempfile.TemporaryDirectory(prefix="sfd-ingest-") as tmp:
        work = Path(tmp)
        if kind == "amazon":
            command = [AMAZON_SANDBOX, AMAZON_ID, AMAZON_SECRET, AMAZON_REFRESH, str(orders)]
        else:
            command = [SANDBOX, KEY, str(orders)]
        sandbox = subprocess.Popen(
            [sys.executable, "-c", *command], stdout=subprocess.PIPE, text=True
        )
        assert sandbox.stdout is not None
        port = int(sandbox.stdout.readline())
        base_url = f"http://127.0.0.1:{port}"
        try:
            channel = (AMAZON_CHANNEL if kind == "amazon" else MIRAKL_CHANNEL).format(
                base_url=base_url,
                key=KEY,
                client_id=AMAZON_ID,
                secret=AMAZON_SECRET,
                refresh=AMAZON_REFRESH,
            )
            database: Path | str = postgres or work / "sfd.db"
            config = write_config(work, database, channel)
            daemon = Daemon(config)
            daemon.wait_ready()
            poll: dict[str, object] = {}
            while not poll:
                for line in daemon.log.read_text().splitlines():
                    if '"poll_done"' in line:
                        poll = json.loads(line)
                time.sleep(0.2)
            peak = peak_rss_mb(daemon.proc.pid)
            daemon.stop()
            stored = count_orders(database)
            reference = amazon_reference_import if kind == "amazon" else reference_import
            seconds, reference_count = await reference(base_url, work / "ref.db")
        finally:
            sandbox.terminate()
            sandbox.wait(10)
    duration = float(poll["duration"])  # type: ignore[arg-type]
    sfd_rate = stored / duration
    reference_rate = reference_count / seconds
    return {
        "orders": orders,
        "sfd": {
            "stored": stored,
            "pages": poll.get("pages"),
            "seconds": round(duration, 2),
            "orders_per_second": round(sfd_rate),
            "peak_rss_mb": round(peak, 1),
        },
        "reference": {
            "stored": reference_count,
            "seconds": round(seconds, 2),
            "orders_per_second": round(reference_rate),
        },
        "ratio_to_reference": round(sfd_rate / reference_rate, 2),
    }


if __name__ == "__main__":
    asyncio.run(main())
