"""Benchmark: importing 100,000 orders from the sandbox marketplace, pages of 100.

The sandbox runs in its own process. The real `sfd run` imports the whole backlog in its first
poll; its `poll_done` line gives the duration, /proc its peak RSS. Then, in the same run, a
minimal reference fetches the same pages with aiohttp and inserts them with `executemany`,
one transaction per page: the floor of what any importer in Python has to spend.

    .venv/bin/python bench/ingest.py [--orders 100000]
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

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Daemon, peak_rss_mb, write_config

KEY = "bench-ingest-key"
SANDBOX = """
import asyncio, sys
from aiohttp import web
from sfd.sandbox.marketplace import SandboxMarketplace
async def main():
    marketplace = SandboxMarketplace(sys.argv[1], seed=11)
    marketplace.add_orders(int(sys.argv[2]), waiting_acceptance_ratio=0.0)
    runner = web.AppRunner(marketplace.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def reference_import(base_url: str, database: Path) -> tuple[float, int]:
    """Fetch every page and insert orders and lines with executemany: (seconds, orders)."""
    db = sqlite3.connect(database)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, reference TEXT UNIQUE, "
        "status TEXT, total TEXT, currency TEXT, updated TEXT, payload TEXT)"
    )
    db.execute("CREATE TABLE lines (order_ref TEXT, sku TEXT, quantity INTEGER, price TEXT)")
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
                db.executemany(
                    "INSERT INTO orders (reference, status, total, currency, updated, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
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
                )
                db.executemany(
                    "INSERT INTO lines VALUES (?, ?, ?, ?)",
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sfd-ingest-") as tmp:
        work = Path(tmp)
        sandbox = subprocess.Popen(
            [sys.executable, "-c", SANDBOX, KEY, str(args.orders)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sandbox.stdout is not None
        port = int(sandbox.stdout.readline())
        base_url = f"http://127.0.0.1:{port}"
        try:
            config = write_config(
                work,
                work / "sfd.db",
                f"""
[[channels]]
name = "sandbox"
store = 1
connector = "mirakl"
poll_interval = "1h"
auto_accept = false
[channels.settings]
base_url = "{base_url}"
api_key = "{KEY}"
""",
            )
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
            with sqlite3.connect(work / "sfd.db") as db:
                stored = db.execute("SELECT count(*) FROM orders").fetchone()[0]
            seconds, reference_count = await reference_import(base_url, work / "ref.db")
        finally:
            sandbox.terminate()
            sandbox.wait(10)
    duration = float(poll["duration"])  # type: ignore[arg-type]
    sfd_rate = stored / duration
    reference_rate = reference_count / seconds
    print(
        json.dumps(
            {
                "orders": args.orders,
                "sfd": {
                    "stored": stored,
                    "seconds": round(duration, 1),
                    "orders_per_second": round(sfd_rate),
                    "peak_rss_mb": round(peak, 1),
                },
                "reference": {
                    "stored": reference_count,
                    "seconds": round(seconds, 1),
                    "orders_per_second": round(reference_rate),
                },
                "ratio_to_reference": round(sfd_rate / reference_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
