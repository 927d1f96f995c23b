"""Fixtures for the fault and hostile-input suites.

`served`: the daemon's real HTTP app (v1 API and /ws) over a seeded database, on 127.0.0.1, with
short header and body deadlines, and its log captured as JSON lines.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from sfd.connectors.shoppingfeed import render_order
from sfd.daemon.api import ShopApi
from sfd.daemon.http import build_app
from sfd.daemon.ws import LegacyWebservice
from sfd.logs import configure_logging
from sfd.storage import OrderFilter, Storage
from tests.conftest import NOW
from tests.factories import make_order

#: The served app's header and body deadlines, short so that a slow client is cut quickly.
DEADLINE = 0.5


@dataclass
class Served:
    """The app on 127.0.0.1, its storage and two tokens: `token` for store 1, `other` for 2."""

    base_url: str
    storage: Storage
    api: ShopApi
    token: str
    other: str
    ids: dict[str, int]
    """Order reference → id: DEC-* in store 1, EB-* in store 2."""
    logs: io.StringIO

    @property
    def host_port(self) -> tuple[str, int]:
        """Where to open a raw socket."""
        host, _, port = self.base_url.removeprefix("http://").partition(":")
        return host, int(port)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The captured log lines of one event."""
        lines = [json.loads(line) for line in self.logs.getvalue().splitlines() if line]
        return [line for line in lines if line.get("event") == name]

    def levels(self, *levels: str) -> list[dict[str, Any]]:
        """The captured log lines at these levels."""
        lines = [json.loads(line) for line in self.logs.getvalue().splitlines() if line]
        return [line for line in lines if line.get("level") in levels]

    async def snapshot(self) -> list[tuple[Any, ...]]:
        """Every order, line, event and operation row: equal before and after means untouched."""
        rows: list[tuple[Any, ...]] = []
        for table in ("orders", "order_items", "order_events", "operations"):
            found = await self.storage.db.fetch(f"SELECT * FROM {table} ORDER BY id")
            rows += [(table, *tuple(r)) for r in found]
        return rows

    def integrity(self) -> str:
        """`PRAGMA integrity_check` on the file."""
        path = self.storage.db.path
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.fixture
async def served(storage: Storage) -> AsyncIterator[Served]:
    """Stores 1 and 2 with a few orders each, served by the daemon's own app."""
    storage.orders.renderer = render_order
    channels = await storage.channels.channel_ids()
    ids: dict[str, int] = {}
    for channel, store, references in (
        ("decathlon", 1, ["DEC-1", "DEC-2", "DEC-3"]),
        ("ebay-de", 2, ["EB-1", "EB-2"]),
    ):
        result = await storage.orders.import_page(
            channels[channel], store, [make_order(r) for r in references], NOW
        )
        ids |= {reference: order_id for order_id, reference, _ in result.created}
    assert len(await storage.orders.find(OrderFilter(limit=100))) == 5
    _, token = await storage.tokens.create(1, "shop-one", NOW)
    _, other = await storage.tokens.create(2, "shop-two", NOW)
    logs = io.StringIO()
    configure_logging("json", "info", stream=logs)
    api = ShopApi(storage, lambda: NOW)
    app = build_app(
        lambda: (True, {}),
        api,
        LegacyWebservice(storage, lambda: NOW),
        header_timeout=DEADLINE,
        body_timeout=DEADLINE,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Served(f"http://127.0.0.1:{port}", storage, api, token, other, ids, logs)
    finally:
        await runner.cleanup()
