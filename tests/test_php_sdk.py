"""The official Shoppingfeed PHP SDK (shoppingflux/php-sdk), unchanged, against the real `sfd run`.

tests/sdk/flow.php uses the SDK as a shop module does: session, store, the orders to process
over every page, filters, one order, every operation, tickets, shipments, the password grant
and the store's channels. It prints what it saw as JSON; this test asserts on it.

To run it locally (Debian): `apt-get install php-cli php-curl php-mbstring
php-guzzlehttp-guzzle php-guzzlehttp-psr7 php-guzzlehttp-promises php-psr-log
php-psr-http-message php-psr-http-client php-symfony-deprecation-contracts`, check out
shoppingflux/php-sdk outside this repository, write an autoloader that maps `ShoppingFeed\\Sdk\\`
to its src/ and requires /usr/share/php/GuzzleHttp/autoload.php (and the Psr ones), and set
SFD_PHP_SDK_AUTOLOAD to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sfd.connectors.shoppingfeed import render_order
from sfd.domain import MarketplaceOrder, OrderStatus
from sfd.domain.clock import to_api, utcnow
from sfd.sandbox.marketplace import channel_toml
from sfd.storage import Storage
from tests.factories import make_order
from tests.support import ROOT, SfdProcess, run_cli, write_config

S = OrderStatus
FLOW = ROOT / "tests" / "sdk" / "flow.php"
SKIP_REASON = (
    "the official PHP SDK is not available here: install php-cli and Debian's guzzle packages, "
    "check out shoppingflux/php-sdk, and set SFD_PHP_SDK_AUTOLOAD to its autoloader to run this"
)
CHANNELS = "".join(
    channel_toml("http://127.0.0.1:9", "env:SDK_TEST_KEY", name=name, store=store)
    for name, store in (("decathlon", 1), ("fnac", 1), ("ebay-de", 2))
)
ENV = {"SDK_TEST_KEY": "sdk-test-key"}
DECATHLON_TO_PROCESS = 230  # over 200: the SDK has to follow `_links.next`
FNAC_TO_PROCESS = 15
TO_PROCESS = DECATHLON_TO_PROCESS + FNAC_TO_PROCESS


def _autoloader() -> str:
    autoload = os.environ.get("SFD_PHP_SDK_AUTOLOAD", "")
    if not shutil.which("php") or not autoload or not Path(autoload).is_file():
        pytest.skip(SKIP_REASON)
    return autoload


async def _seed(config: Path, database: Path, now: datetime) -> None:
    """Orders written through the storage layer, as the pollers would, documents rendered."""
    migrated = run_cli(config, "db", "migrate", env=ENV)
    assert migrated.returncode == 0, migrated.stderr
    storage = await Storage.open(database)
    storage.orders.renderer = render_order
    try:
        ids = await storage.channels.channel_ids()
        decathlon: list[MarketplaceOrder] = [
            # Created between 1h and 1h50m ago: after the since/until split of 2 hours ago.
            make_order(f"DEC-{n:04d}", updated_at=now - timedelta(minutes=n % 50))
            for n in range(1, DECATHLON_TO_PROCESS + 1)
        ]
        decathlon += [
            make_order("ACCEPT-1", S.WAITING_STORE_ACCEPTANCE, updated_at=now),
            make_order("ACCEPT-2", S.WAITING_STORE_ACCEPTANCE, updated_at=now),
            make_order("SHIPPED-1", S.SHIPPED, updated_at=now),
            make_order("SHIPPED-2", S.SHIPPED, updated_at=now),
            make_order("CANCELLED-1", S.CANCELLED, updated_at=now),
        ]
        await storage.orders.import_page(ids["decathlon"], 1, decathlon, now)
        # Last changed 8 days ago: waiting for shipment, but no longer among the orders to
        # process (the window counts from when sfd last changed the order).
        eight_days_ago = now - timedelta(days=8)
        await storage.orders.import_page(
            ids["decathlon"], 1, [make_order("OLD-1", updated_at=eight_days_ago)], eight_days_ago
        )
        fnac = [  # created 4 hours ago: before the split
            make_order(f"FNAC-{n:02d}", updated_at=now - timedelta(hours=3))
            for n in range(1, FNAC_TO_PROCESS + 1)
        ]
        await storage.orders.import_page(ids["fnac"], 1, fnac, now)
        # Another store's orders: the SDK must never see them.
        ebay = [make_order(f"EBAY-{n}", updated_at=now) for n in range(1, 6)]
        await storage.orders.import_page(ids["ebay-de"], 2, ebay, now)
    finally:
        await storage.close()


def _run_flow(autoload: str, url: str, token: str, split: datetime) -> dict[str, Any]:
    result = subprocess.run(
        ["php", str(FLOW)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={
            **os.environ,
            "SFD_URL": url,
            "SFD_TOKEN": token,
            "SFD_STORE": "1",
            "SFD_SDK_AUTOLOAD": autoload,
            "SFD_SPLIT": to_api(split),
        },
        check=False,
    )
    assert result.returncode == 0, f"flow.php failed:\n{result.stderr}\n{result.stdout[-4000:]}"
    facts: dict[str, Any] = json.loads(result.stdout)
    return facts


def _states(tickets: list[dict[str, Any]]) -> list[str]:
    return [t["state"] for t in tickets]


async def test_the_official_php_sdk_runs_a_modules_whole_flow(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    autoload = _autoloader()
    now = utcnow()
    config = write_config(tmp_path, CHANNELS)
    await _seed(config, tmp_path / "sfd.db", now)
    created = run_cli(config, "token", "create", "--store", "1", "--name", "prestashop", env=ENV)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    sfd = sfd_processes(config, tmp_path, env=ENV)
    sfd.wait_ready()

    facts = _run_flow(autoload, sfd.url, token, now - timedelta(hours=2))
    print(json.dumps({k: facts[k] for k in ("pages", "ack_while_iterating")}))

    # Session, store, channels.
    assert facts["ping"] is True
    session = facts["session"]
    assert session["login"] == "prestashop"
    assert session["token_matches"] and session["store_count"] == 1
    assert session["select_by_int"] and session["select_by_name"]
    assert facts["store"] == {
        "id": 1,
        "name": "Shop one",
        "status": "active",
        "active": True,
        "country": "FR",
        "deletedAt": None,
        "organization": None,
    }
    assert [(c["name"], c["installed"]) for c in facts["channels"]] == [
        ("decathlon", True),
        ("fnac", True),
    ]

    # The orders to process: every page, no duplicate, nothing of store 2, all fields read.
    todo = facts["to_process"]
    assert todo["count"] == todo["unique_ids"] == TO_PROCESS
    assert todo["by_channel"] == {"decathlon": DECATHLON_TO_PROCESS, "fnac": FNAC_TO_PROCESS}
    assert todo["statuses"] == ["waiting_shipment"]
    assert todo["unacknowledged"] == TO_PROCESS
    assert todo["without_channel_name"] == todo["without_items"] == 0
    assert todo["item_count"] == 2 * TO_PROCESS and todo["item_ids_positive_unique"]
    assert not any(r.startswith(("EBAY", "OLD")) for r in todo["references"])
    gets = [r for r in todo["requests"] if r.startswith("GET ")]
    assert len(gets) == 2, gets
    assert gets[0].endswith(" 200") and "page=1" in gets[0] and "limit=200" in gets[0]
    assert "page=2&limit=200" in gets[1], "the second page comes from _links.next"
    first = todo["first"]
    assert first["channel"]["name"] in {"decathlon", "fnac"}
    assert first["channel"]["type"] == "marketplace"
    assert first["storeReference"] is None and first["acknowledgedAt"] is None
    assert first["createdAt"] and first["updatedAt"] and first["latestShipDate"]
    assert first["payment"]["currency"] == "EUR" and first["payment"]["method"] == "CB"
    assert first["payment"]["totalAmount"] == 69.87
    assert first["shipment"]["carrier"] == "Colissimo"
    assert first["shippingAddress"]["city"] == "Lyon"
    assert first["billingAddress"]["email"] == "camille@example.org"
    assert [i["reference"] for i in first["items"]] == ["SKU-0001", "SKU-0002"]
    assert [i["quantity"] for i in first["items"]] == [1, 2]
    assert first["items"][0]["unitPrice"] == 20.99

    # Pages and one page.
    assert [(p["page"], p["count"], p["iterated"]) for p in facts["pages"]] == [
        (1, 100, 100),
        (2, 100, 100),
        (3, 45, 45),
    ]
    assert {(p["total"], p["pages"]) for p in facts["pages"]} == {(TO_PROCESS, 3)}
    assert facts["page_2"] == {
        "page": 2,
        "count": 100,
        "total": TO_PROCESS,
        "pages": 3,
        "same_as_getAll": True,
    }

    # Filters.
    filters = facts["filters"]
    assert filters["channel"] == {"decathlon": DECATHLON_TO_PROCESS + 1, "fnac": FNAC_TO_PROCESS}
    assert filters["since"] == filters["since_string"] == DECATHLON_TO_PROCESS
    assert filters["until"] == FNAC_TO_PROCESS + 1  # and OLD-1
    assert filters["waiting_store_acceptance"] == ["ACCEPT-1", "ACCEPT-2"]
    assert filters["shipped"] == ["SHIPPED-1", "SHIPPED-2"]
    assert filters["acknowledged"] == 0
    assert filters["waiting_shipment_any_age"] == TO_PROCESS + 1

    # One order, and an unknown one.
    assert facts["one"]["same_as_listed"] is True
    assert facts["one"]["id"] == first["id"]
    assert facts["unknown_order"]["status"] == 404
    # An object, as Shoppingfeed sends it (PHP decodes `{}` into an empty array).
    assert first["itemsReferencesAliases"] == []
    assert facts["tag_filter"]["status"] == 400
    assert facts["tag_filter"]["body"]["field"] == "tag"

    # Acknowledge: settled at once, so wait() returns at once.
    ack = facts["acknowledge"]
    assert len(ack["batch_ids"]) == 1
    assert _states(ack["tickets"]) == ["succeed"] * 4
    assert {t["batchId"] for t in ack["tickets"]} == set(ack["batch_ids"])
    assert ack["wait_seconds"] < 5
    assert ack["order"]["storeReference"] == f"PS-{first['id']}"
    assert ack["order"]["acknowledgedAt"] is not None
    assert [e["type"] for e in ack["error_order"]["errors"]] == ["acknowledge"]
    # An `error` acknowledgement is an acknowledgement too: four orders leave the set.
    assert ack["to_process_after"] == TO_PROCESS - 4
    assert _states(facts["unacknowledge"]["tickets"]) == ["succeed"]
    assert facts["unacknowledge"]["to_process_after"] == TO_PROCESS - 3

    # Invoices: uploadDocument's multipart reaches upload-documents; a repeat is the same ticket.
    uploads = facts["upload_documents"]
    assert [p.split(" ")[0:2] for p in uploads["posts"]][:1] == [
        ["POST", "/v1/store/1/order/upload-documents"]
    ]
    assert [p.rsplit(" ", 1)[1] for p in uploads["posts"]] == ["202", "202", "202", "400"]
    [invoice] = uploads["tickets"]
    assert invoice["payload"]["id"] == uploads["order_id"]
    assert invoice["state"] in ("scheduled", "running")  # the marketplace is unreachable here
    [legacy] = uploads["legacy_tickets"]
    assert legacy["payload"]["reference"] == uploads["reference"]
    assert [t["id"] for t in uploads["again_tickets"]] == [invoice["id"]]
    assert uploads["posts"][3].endswith(" 400"), uploads["posts"]  # the renamed executable
    assert uploads["refused_batches"] == []
    legacy = facts["legacy_acknowledge"]
    assert _states(legacy["tickets"]) == ["succeed"]
    assert legacy["storeReference"] == "PS-LEGACY"

    # Every marketplace operation: one batch per type, its tickets left to the delivery worker.
    # This test's marketplace is unreachable, so what the worker retries stays unfinished
    # (scheduled or running) and its batch processing; what it refuses at once has failed.
    operations = facts["operations"]
    assert len(operations["posts"]) == 6 and all(p.endswith(" 202") for p in operations["posts"])
    assert len(operations["batch_ids"]) == 6
    assert [b["id"] for b in operations["batches"]] == operations["batch_ids"]
    assert len(operations["tickets"]) == 7
    unfinished = {"scheduled", "running"}
    assert set(_states(operations["tickets"])) <= unfinished | {"failed"}
    for batch in operations["batches"]:
        states = _states(batch["tickets"])
        assert batch["count"] == len(states)
        assert batch["processing"] is bool(unfinished & set(states)), batch
        assert batch["meta"] == {"processing": batch["processing"]}
    retried = {"order.notify.acceptance", "order.notify.refusal", "order.notify.cancellation"}
    for batch in operations["batches"]:
        if {t["type"] for t in batch["tickets"]} & retried:
            assert batch["processing"] is True, batch
            assert set(_states(batch["tickets"])) <= unfinished, batch
    # The operations above, and the two invoices the unreachable marketplace keeps unsent.
    assert 6 <= facts["tickets_unfinished"] <= 9
    assert operations["ticket_types"] == sorted(
        [
            "order.notify.shipment",
            "order.notify.shipment",
            "order.notify.acceptance",
            "order.notify.refusal",
            "order.notify.cancellation",
            "order.notify.refund",
            "order.notify.delivery",
        ]
    )
    assert operations["orders"]["accept"] == "ACCEPT-1"
    assert operations["orders"]["deliver"] == "SHIPPED-2"

    # Shipments as getShipmentsByOrder and OrderResource::getShipments read them.
    shipments = facts["shipments"]
    [whole] = shipments["whole"]
    assert whole["carrier"] == "Colissimo"
    assert whole["trackingNumber"].startswith("6A")
    assert whole["trackingUrl"].startswith("https://www.laposte.fr/")
    assert whole["returnInfo"]["carrier"] == "Colissimo Retour"
    assert whole["createdAt"] is not None and whole["items"] is None
    # The partial one is listed until the worker fails it (Mirakl ships whole orders only).
    for partial in shipments["partial"]:
        assert partial["items"] == [{"id": shipments["partial_item_id"], "quantity": 1}]
        assert partial["carrier"] == "DPD"
    assert len(shipments["partial"]) <= 1
    assert shipments["none"] == []
    assert shipments["from_order"] == shipments["whole"]

    # A second whole shipment is refused by a failed ticket, not by an HTTP error.
    assert _states(facts["refused_operation"]["tickets"]) == ["failed"]
    # The SDK docblock's SKU => quantity refund map is read like the list form: one batch.
    sku_map = facts["refund_sku_map"]
    assert sku_map["posts"] == ["POST /v1/store/1/order/refund 202"]
    assert len(sku_map["batch_ids"]) == 1
    [ticket] = sku_map["tickets"]
    assert ticket["payload"]["reference"] == sku_map["order"]
    # Taken, and waiting for the marketplace (this test's is unreachable).
    assert ticket["state"] in ("scheduled", "running")

    # Password grant: the token's name and the token.
    assert facts["password"]["login"] == "prestashop"
    assert facts["password"]["store"] is True
    assert facts["password"]["to_process"] == TO_PROCESS - 4  # and the legacy acknowledge
    assert facts["password"]["wrong"]["status"] == 401
    assert facts["bad_token"]["status"] == 401

    # Acknowledging while paging: later pages shift, but repeated runs lose and repeat nothing.
    runs = facts["ack_while_iterating"]
    assert runs["to_process_before"] == TO_PROCESS - 4
    assert sum(runs["seen_per_run"]) == runs["seen_unique"] == runs["to_process_before"]
    assert runs["to_process_after"] == 0
    assert facts["errors_logged"] == [
        "GET /v1/store/1/order/987654321 404",
        "GET /v1/store/1/order?page=1&limit=200&tag=test"
        "&acknowledgment=unacknowledged&status=waiting_shipment 400",
        "POST /v1/store/1/order/upload-documents 400",  # the renamed executable
    ]

    assert sfd.terminate() == 0
