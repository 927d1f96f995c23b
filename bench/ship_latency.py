"""Benchmark: from the API's 202 to the marketplace receiving the ship call (Mirakl OR24).

The sandbox marketplace runs in this process and records when each call arrives; the real
`sfd run` runs in its own. 1,000 shipments are reported through the v1 API at 50 per
second, one request each, as a shop module reports them.

    .venv/bin/python bench/ship_latency.py [--shipments 1000] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Daemon, write_config
from sfd.domain.clock import utcnow
from sfd.sandbox.marketplace import SandboxMarketplace, channel_toml, run_sandbox

KEY = "bench-ship-key"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shipments", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    marketplace = SandboxMarketplace(KEY, seed=5)
    marketplace.add_orders(args.shipments, waiting_acceptance_ratio=0.0)
    with tempfile.TemporaryDirectory(prefix="sfd-ship-") as tmp:
        work = Path(tmp)
        async with run_sandbox(marketplace) as base_url:
            config = write_config(
                work,
                work / "sfd.db",
                channel_toml(base_url, KEY, auto_accept=False),
            )
            token = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sfd",
                    "--config",
                    str(config),
                    "token",
                    "create",
                    "--store",
                    "1",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            daemon = Daemon(config)
            await asyncio.to_thread(daemon.wait_ready)
            headers = {"Authorization": f"Bearer {token}"}
            orders: list[dict[str, object]] = []
            async with aiohttp.ClientSession(headers=headers) as http:
                while len(orders) < args.shipments:  # the first poll imports the backlog
                    orders = []
                    url = f"{daemon.url}/v1/store/1/order?status=waiting_shipment&limit=200"
                    while url:
                        async with http.get(url) as response:
                            page = await response.json()
                        orders += page["_embedded"]["order"]
                        nxt = page["_links"].get("next")
                        url = f"{daemon.url}{nxt['href']}" if nxt else ""
                    await asyncio.sleep(0.5)
                accepted: dict[str, datetime] = {}
                start = time.perf_counter()
                for n, order in enumerate(orders[: args.shipments]):
                    await asyncio.sleep(max(0.0, start + n / args.rate - time.perf_counter()))
                    entry = {
                        "id": order["id"],
                        "carrier": "Colissimo",
                        "trackingNumber": f"6A{n:011d}",
                        "trackingLink": "https://www.laposte.fr/outils/suivre-vos-envois",
                    }
                    async with http.post(
                        f"{daemon.url}/v1/store/1/order/ship", json={"order": [entry]}
                    ) as response:
                        assert response.status == 202, await response.text()
                        accepted[str(order["reference"])] = utcnow()
                deadline = time.perf_counter() + 60
                while time.perf_counter() < deadline:
                    received = {c.order_id for c in marketplace.calls_to("OR24")}
                    if set(accepted) <= received:
                        break
                    await asyncio.sleep(0.2)
            daemon.stop()
    first_call = {}
    for call in marketplace.calls_to("OR24"):
        first_call.setdefault(call.order_id, call.at)
    latencies = sorted(
        (first_call[ref] - at).total_seconds() * 1000
        for ref, at in accepted.items()
        if ref in first_call
    )
    duplicates = len(marketplace.calls_to("OR24")) - len(first_call)
    print(
        json.dumps(
            {
                "shipments": len(accepted),
                "delivered": len(latencies),
                "rate_per_second": args.rate,
                "p50_ms": round(statistics.median(latencies), 1),
                "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
                "max_ms": round(latencies[-1], 1),
                "repeated_or24_calls": duplicates,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
