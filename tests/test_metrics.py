"""/metrics: counters and histograms from the loops, gauges from the database."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sfd.daemon.metrics import Metrics
from sfd.domain import EventSource, OperationKind, OrderStatus
from sfd.domain.rules import ReasonPayload
from sfd.logs import configure_logging
from sfd.storage import OperationRequest, Storage, StorageUnavailable
from tests.conftest import NOW
from tests.factories import make_order

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def families(text: str) -> dict[str, str]:
    """Each family's type; prometheus_client's `*_created` companions are left out."""
    return {
        f.name: f.type
        for f in text_string_to_metric_families(text)
        if not f.name.endswith("_created")
    }


def test_counters_and_histograms_show_with_their_names_and_labels() -> None:
    metrics = Metrics()
    metrics.declare_channels(["decathlon", "ebay-de"])
    metrics.orders_created("decathlon", 3)
    metrics.orders_created("decathlon", 0)
    metrics.operation_delivered(OperationKind.SHIP, 12.0)
    metrics.operation_outcome(OperationKind.SHIP, "retried")
    metrics.operation_outcome("accept", "waiting_credentials")
    metrics.operation_outcome("accept", "failed")
    metrics.operation_confirmed("ship", 4000.0)
    metrics.poll_finished("decathlon", "ok", 1.5)
    metrics.poll_finished("ebay-de", "auth_failed", 0.2)
    metrics.poll_finished("ebay-de", "failed", None)
    text = metrics.render().decode()
    found = samples(text)

    assert families(text) == {
        "sfd_orders_imported": "counter",
        "sfd_operations": "counter",
        "sfd_operation_delivery_seconds": "histogram",
        "sfd_operation_confirmation_seconds": "histogram",
        "sfd_poll_duration_seconds": "histogram",
        "sfd_polls": "counter",
        "sfd_shop_syncs": "counter",
        "sfd_orders_pushed": "counter",
        "sfd_pending_operations": "gauge",
        "sfd_late_orders": "gauge",
        "sfd_channel_auth_state": "gauge",
        "sfd_storage_writable": "gauge",
    }
    assert sample(found, "sfd_orders_imported_total", channel="decathlon") == 3
    assert sample(found, "sfd_orders_imported_total", channel="ebay-de") == 0, "declared"
    assert sample(found, "sfd_operations_total", kind="ship", outcome="delivered") == 1
    assert sample(found, "sfd_operations_total", kind="ship", outcome="retried") == 1
    assert sample(found, "sfd_operations_total", kind="accept", outcome="waiting_credentials") == 1
    assert sample(found, "sfd_operations_total", kind="accept", outcome="failed") == 1

    delivery = "sfd_operation_delivery_seconds"
    assert sample(found, f"{delivery}_bucket", kind="ship", le="10.0") == 0
    assert sample(found, f"{delivery}_bucket", kind="ship", le="30.0") == 1
    assert sample(found, f"{delivery}_count", kind="ship") == 1
    assert sample(found, f"{delivery}_sum", kind="ship") == 12.0
    confirmation = "sfd_operation_confirmation_seconds"
    assert sample(found, f"{confirmation}_bucket", kind="ship", le="3600.0") == 0
    assert sample(found, f"{confirmation}_bucket", kind="ship", le="7200.0") == 1
    assert sample(found, f"{confirmation}_bucket", kind="ship", le="86400.0") == 1

    assert sample(found, "sfd_polls_total", channel="decathlon", result="ok") == 1
    assert sample(found, "sfd_polls_total", channel="decathlon", result="failed") == 0
    assert sample(found, "sfd_polls_total", channel="ebay-de", result="auth_failed") == 1
    assert sample(found, "sfd_polls_total", channel="ebay-de", result="failed") == 1
    assert sample(found, "sfd_poll_duration_seconds_count", channel="decathlon") == 1
    assert sample(found, "sfd_poll_duration_seconds_count", channel="ebay-de") == 1
    assert sample(found, "sfd_poll_duration_seconds_bucket", channel="decathlon", le="2.5") == 1


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.orders_created("decathlon", 2)
    name = "sfd_orders_imported_total"
    assert sample(samples(first.render().decode()), name, channel="decathlon") == 2
    assert sample(samples(second.render().decode()), name, channel="decathlon") is None
    assert REGISTRY.get_sample_value("sfd_orders_imported_total", {"channel": "decathlon"}) is None


async def seed(storage: Storage) -> None:
    """Two late orders and an accept pending on decathlon; eBay's credentials refused."""
    ids = await storage.channels.channel_ids()
    result = await storage.orders.import_page(
        ids["decathlon"],
        1,
        [
            make_order("DEC-LATE-1", ship_by=NOW - timedelta(hours=1)),
            make_order(
                "DEC-LATE-2", OrderStatus.PARTIALLY_SHIPPED, ship_by=NOW - timedelta(days=2)
            ),
            make_order("DEC-SHIPPED", OrderStatus.SHIPPED, ship_by=NOW - timedelta(hours=1)),
            make_order("DEC-ONTIME", ship_by=NOW + timedelta(hours=1)),
            make_order("DEC-NEW", OrderStatus.WAITING_STORE_ACCEPTANCE),
        ],
        NOW,
    )
    new = next(order_id for order_id, ref, _ in result.created if ref == "DEC-NEW")
    batch = await storage.operations.submit(
        1,
        OperationKind.ACCEPT,
        [OperationRequest(ReasonPayload(), order_id=new)],
        EventSource.AUTO,
        NOW,
    )
    assert [t.state.value for t in batch.tickets] == ["scheduled"]
    await storage.channels.record_poll_succeeded(ids["decathlon"], NOW, NOW + timedelta(hours=1))
    await storage.channels.record_poll_failed(
        ids["ebay-de"], NOW, "AuthFailed: token expired", NOW + timedelta(hours=1), auth_failed=True
    )


@pytest.mark.both_backends
async def test_the_gauges_show_the_database_as_of_the_last_refresh(storage: Storage) -> None:
    await seed(storage)
    metrics = Metrics(storage, clock=lambda: NOW)
    before = samples(metrics.render().decode())
    assert not [key for key in before if key[0] == "sfd_late_orders"], "nothing read yet"

    await metrics.refresh()
    found = samples(metrics.render().decode())
    assert sample(found, "sfd_pending_operations", channel="decathlon", kind="accept") == 1
    assert sample(found, "sfd_pending_operations", channel="decathlon", kind="ship") == 0
    assert sample(found, "sfd_pending_operations", channel="ebay-de", kind="accept") == 0
    assert sample(found, "sfd_pending_operations", channel="decathlon", kind="acknowledge") is None
    assert sample(found, "sfd_late_orders", channel="decathlon") == 2
    assert sample(found, "sfd_late_orders", channel="ebay-de") == 0
    assert sample(found, "sfd_channel_auth_state", channel="decathlon", state="ok") == 1
    assert sample(found, "sfd_channel_auth_state", channel="decathlon", state="auth_failed") == 0
    assert sample(found, "sfd_channel_auth_state", channel="ebay-de", state="auth_failed") == 1
    assert sample(found, "sfd_channel_auth_state", channel="ebay-de", state="ok") == 0
    assert sample(found, "sfd_channel_auth_state", channel="ebay-de", state="unknown") == 0

    # Rendering reads memory only: a new late order shows after the next refresh.
    ids = await storage.channels.channel_ids()
    await storage.orders.import_page(
        ids["ebay-de"], 2, [make_order("EB-LATE", ship_by=NOW - timedelta(hours=3))], NOW
    )
    assert sample(samples(metrics.render().decode()), "sfd_late_orders", channel="ebay-de") == 0
    await metrics.refresh(storage)
    assert sample(samples(metrics.render().decode()), "sfd_late_orders", channel="ebay-de") == 1


async def get(server: BaseTestServer, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(server.make_url(path)) as response:
        return response.status, response.headers["Content-Type"], await response.text()


@pytest.mark.both_backends
async def test_the_handler_serves_the_text_format_over_http(storage: Storage) -> None:
    await seed(storage)
    metrics = Metrics(storage, clock=lambda: NOW)
    metrics.orders_created("decathlon", 5)
    app = web.Application()
    app.router.add_get("/metrics", metrics.handler)
    async with TestServer(app, host="127.0.0.1") as server:
        status, content_type, text = await get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(text)
    assert sample(found, "sfd_late_orders", channel="decathlon") == 2, "refreshed on request"
    assert sample(found, "sfd_pending_operations", channel="decathlon", kind="accept") == 1
    assert sample(found, "sfd_orders_imported_total", channel="decathlon") == 5


async def test_the_handler_serves_the_counters_when_the_database_fails(
    storage: Storage, tmp_path: Path
) -> None:
    out = io.StringIO()
    configure_logging("json", "info", [], stream=out)
    await seed(storage)
    other = await Storage.open(tmp_path / "sfd.db")
    metrics = Metrics(other, clock=lambda: NOW)
    await metrics.refresh()
    metrics.orders_created("decathlon", 1)
    await other.close()
    app = web.Application()
    app.router.add_get("/metrics", metrics.handler)
    async with TestServer(app, host="127.0.0.1") as server:
        status, _, text = await get(server, "/metrics")
    assert status == 200
    found = samples(text)
    assert sample(found, "sfd_orders_imported_total", channel="decathlon") == 1
    assert sample(found, "sfd_late_orders", channel="decathlon") == 2, "the last values"
    [line] = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["event"] == "metrics_refresh_failed"


async def test_storage_writable_turns_0_while_the_database_refuses_writes(
    storage: Storage,
) -> None:
    metrics = Metrics(storage, clock=lambda: NOW)
    assert sample(samples(metrics.render().decode()), "sfd_storage_writable") == 1
    db = storage.db
    async with db._write_lock:
        await db._writer.execute("PRAGMA query_only = 1")
    with pytest.raises(StorageUnavailable):
        await storage.tokens.create(1, "refused", NOW)
    assert sample(samples(metrics.render().decode()), "sfd_storage_writable") == 0
    async with db._write_lock:
        await db._writer.execute("PRAGMA query_only = 0")
    assert await db.probe()
    assert sample(samples(metrics.render().decode()), "sfd_storage_writable") == 1
