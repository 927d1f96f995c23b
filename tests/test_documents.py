"""Documents (invoices): uploaded through v1 as the official SDK sends them, checked by
content, stored once, and delivered through the outbox: Mirakl's OR74, Amazon's
UPLOAD_VAT_INVOICE feed; eBay has no such call and the ticket says so."""

# ruff: noqa: F811 - the hub fixture comes from tests.test_worker

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from yarl import URL

from sfd.connectors.amazon import AmazonConnector
from sfd.connectors.base import Rejected
from sfd.connectors.ebay import NO_INVOICE_UPLOAD, EbayConnector
from sfd.connectors.mirakl import MiraklConnector
from sfd.connectors.settings import AmazonSettings, EbaySettings, MiraklSettings
from sfd.daemon.worker import OperationsWorker
from sfd.domain import EventSource, MarketplaceOrder, OperationKind, OrderStatus, TicketState
from sfd.domain.documents import MAX_DOCUMENT_BYTES, check_document
from sfd.domain.rules import (
    PriorOperation,
    decide,
    document_payload,
)
from sfd.sandbox.amazon import FRANCE, SandboxAmazon, run_amazon
from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox
from sfd.storage import Batch, OperationRequest, Storage
from tests import test_cli as cli_tests
from tests.connectors.amazon_model import check_request
from tests.factories import NOW, make_order, order_view
from tests.page.conftest import PageClient
from tests.support import run_cli, write_config
from tests.test_worker import Hub, hub, orders_on_sale, other_channel  # noqa: F401

#: A small but real PDF: what the SDK reads from the module's invoice file.
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
EXE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 120


def sdk_form(files: list[tuple[str, bytes]], orders: list[dict[str, Any]]) -> aiohttp.FormData:
    """The multipart body the SDK's uploadDocument sends: files[] parts, then `body`."""
    form = aiohttp.FormData()
    for name, content in files:
        form.add_field("files[]", content, filename=name)
    form.add_field("body", json.dumps({"order": orders}))
    return form


async def upload(
    hub: Hub, files: list[tuple[str, bytes]], orders: list[dict[str, Any]]
) -> tuple[int, Any]:
    return await hub.call(
        "POST", "/v1/store/1/order/upload-documents", data=sdk_form(files, orders)
    )


#: The store of each channel of the storage fixture.
STORES = {"decathlon": 1, "ebay-de": 2}


async def submit_document(
    storage: Storage, channel: str, order: MarketplaceOrder, file_name: str
) -> Batch:
    """Import `order` on `channel`, then submit the PDF as its `file_name`, as the CLI would."""
    store = STORES[channel]
    ids = await storage.channels.channel_ids()
    await storage.orders.import_page(ids[channel], store, [order], NOW)
    document = check_document(file_name, PDF)
    request = OperationRequest(
        payload=document_payload(document),
        reference=order.reference,
        channel=channel,
        document=document,
    )
    return await storage.operations.submit(
        store, OperationKind.UPLOAD_DOCUMENT, [request], EventSource.CLI, NOW
    )


async def batch_tickets(hub: Hub, batch_id: str) -> list[dict[str, Any]]:
    status, tickets = await hub.call("GET", f"/v1/store/1/ticket?batchId={batch_id}")
    assert status == 200, tickets
    return list(tickets["_embedded"]["ticket"])


async def count(storage: Storage, table: str) -> int:
    row = await storage.db.fetchrow(f"SELECT count(*) FROM {table}")
    assert row is not None
    return int(row[0])


# -- over real HTTP: v1 → the outbox → Mirakl's OR74 --------------------------------------


async def test_a_pdf_uploaded_as_the_sdk_sends_it_reaches_or74_once_as_a_customer_invoice(
    hub: Hub,
) -> None:
    [first, second] = await orders_on_sale(hub, 2)
    first_id = await hub.order_id(first)
    status, batch = await upload(
        hub,
        [("FA000123.pdf", PDF), ("FA000124.pdf", PDF + b"%2")],
        [
            {"id": first_id, "documents": [{"type": "invoice"}]},
            {"reference": second, "channelName": "sandbox", "documents": [{"type": "invoice"}]},
        ],
    )
    assert status == 202, batch
    tickets = await batch_tickets(hub, batch["id"])
    assert len(tickets) == 2
    for ticket in tickets:
        assert (await hub.finished(ticket["id"]))["state"] == "succeed"

    [call] = hub.marketplace.calls_to("OR74", first)
    assert call.body["files"] == ["FA000123.pdf"]
    assert call.body["order_documents"] == (
        "<body><order_documents><order_document><file_name>FA000123.pdf</file_name>"
        "<type_code>CUSTOMER_INVOICE</type_code></order_document></order_documents></body>"
    )
    [kept] = hub.marketplace.documents[first]
    assert (kept["type_code"], kept["content"], kept["content_type"]) == (
        "CUSTOMER_INVOICE", PDF, "application/pdf",
    )  # fmt: skip
    assert [d["file_name"] for d in hub.marketplace.documents[second]] == ["FA000124.pdf"]

    # The same file again, even under another name: the same ticket, nothing sent again.
    status, again = await upload(
        hub, [("invoice-copy.pdf", PDF)], [{"id": first_id, "documents": [{"type": "invoice"}]}]
    )
    assert status == 202, again
    [repeat] = await batch_tickets(hub, again["id"])
    assert repeat["id"] == tickets[0]["id"]
    assert repeat["state"] == "succeed"
    await hub.poll_now()  # time for a worker that would send it again
    assert len(hub.marketplace.calls_to("OR74", first)) == 1
    assert await count(hub.storage, "documents") == 2

    documents = await hub.storage.documents.for_order(first_id)
    assert [(d.file_name, d.size, d.sha256, d.state) for d in documents] == [
        ("FA000123.pdf", len(PDF), hashlib.sha256(PDF).hexdigest(), TicketState.SUCCEED)
    ]
    assert documents[0].confirmed_at is not None
    events = [e.kind for e in (await hub.order(first)).events]
    assert "upload_document_delivered" in events
    assert "upload_document_confirmed" in events


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("big.pdf", b"%PDF-1.4\n" + b"0" * (12 * 1024**2), "is over 10485760 bytes (10 MiB)"),
        ("invoice.pdf", EXE, "is not a PDF, JPEG or PNG file"),
    ],
    ids=["12 MiB", "renamed exe"],
)
async def test_a_file_too_big_or_not_a_document_is_refused_naming_it_and_nothing_is_stored(
    hub: Hub, name: str, content: bytes, expected: str
) -> None:
    [reference] = await orders_on_sale(hub, 1)
    order_id = await hub.order_id(reference)
    status, problem = await upload(
        hub,
        [("ok.pdf", PDF), (name, content)],
        [{"id": order_id, "documents": [{"type": "invoice"}]}] * 2,
    )
    assert status == 400, problem
    assert problem["field"] == "files[1]"
    assert name in problem["detail"]
    assert expected in problem["detail"]
    assert await count(hub.storage, "documents") == 0
    assert await count(hub.storage, "operations") == 0
    assert hub.marketplace.calls_to("OR74") == []


async def test_files_and_documents_must_match_and_json_operations_cannot_upload(hub: Hub) -> None:
    [reference] = await orders_on_sale(hub, 1)
    order_id = await hub.order_id(reference)
    status, problem = await upload(
        hub, [("a.pdf", PDF)], [{"id": order_id, "documents": [{"type": "invoice"}]}] * 2
    )
    assert (status, problem["field"]) == (400, "files[]")
    assert "1 file(s) for 2 document(s)" in problem["detail"]
    status, problem = await upload(
        hub, [("a.pdf", PDF)], [{"id": order_id, "documents": [{"type": "label"}]}]
    )
    assert (status, problem["field"]) == (400, "files[0]")
    assert "document type 'label' is not known" in problem["detail"]
    status, problem = await hub.call(
        "POST", "/v1/store/1/order/upload_document", json={"order": [{"id": order_id}]}
    )
    assert status == 400
    assert "upload-documents" in problem["detail"]
    assert await count(hub.storage, "operations") == 0


# -- the connectors against their sandboxes ------------------------------------------------


async def test_mirakl_sends_the_channels_invoice_type_code_and_reports_mirakls_refusal() -> None:
    marketplace = SandboxMarketplace("key", seed=3)
    [reference] = marketplace.add_orders(1, waiting_acceptance_ratio=0.0)
    marketplace.document_types.add("FACTURE_CLIENT")
    async with run_sandbox(marketplace) as url:
        own = MiraklConnector(
            MiraklSettings(base_url=url, api_key="key", invoice_type_code="FACTURE_CLIENT")
        )
        default = MiraklConnector(MiraklSettings(base_url=url, api_key="key"))
        try:
            await own.upload_document(reference, check_document("F1.pdf", PDF))
            marketplace.document_types.discard("CUSTOMER_INVOICE")
            with pytest.raises(Rejected, match=r"F2\.pdf: unknown document type CUSTOMER_INVOICE"):
                await default.upload_document(reference, check_document("F2.pdf", PDF))
        finally:
            await own.aclose()
            await default.aclose()
    assert [d["type_code"] for d in marketplace.documents[reference]] == ["FACTURE_CLIENT"]


@pytest.fixture
async def amazon_sandbox() -> AsyncIterator[tuple[SandboxAmazon, str]]:
    amazon = SandboxAmazon("client", "secret", "refresh", seed=4)
    async with run_amazon(amazon) as url:
        yield amazon, url


def amazon_connector(url: str) -> AmazonConnector:
    settings = AmazonSettings(
        client_id="client",
        client_secret="secret",
        refresh_token="refresh",
        marketplace_ids=[FRANCE],
        endpoint=url,
        token_url=f"{url}/auth/o2/token",
    )
    return AmazonConnector(settings, feed_poll=0.01, feed_wait=5.0)


async def test_amazon_sends_an_invoice_as_an_upload_vat_invoice_feed_and_reads_its_report(
    amazon_sandbox: tuple[SandboxAmazon, str],
) -> None:
    amazon, url = amazon_sandbox
    [reference] = amazon.add_orders(1)
    connector = amazon_connector(url)
    try:
        await connector.upload_document(reference, check_document("FA-2026-0042.pdf", PDF))
        # A PNG: Amazon's processing report refuses it, and the ticket would fail with it.
        with pytest.raises(Rejected, match="The invoice must be a PDF file"):
            await connector.upload_document(reference, check_document("scan.png", PNG))
    finally:
        await connector.aclose()
    [invoice] = amazon.invoices[reference]
    assert invoice["invoice_number"] == "FA-2026-0042"
    assert invoice["document_type"] == "Invoice"
    assert invoice["content"] == PDF
    operations = [c.operation for c in amazon.calls if c.operation != "lwa"]
    assert operations[:4] == ["createFeedDocument", "uploadFeedDocument", "createFeed", "getFeed"]
    assert operations.count("getFeedDocument") == 2
    # Every SP-API call fits Amazon's published Feeds model.
    for call in amazon.calls:
        if call.path.startswith("/feeds/"):
            check_request(
                call.method, URL(call.path).with_query(call.query), call.body, now=call.at
            )
    [create] = [c for c in amazon.calls if c.operation == "createFeed"][:1]
    assert create.body["feedOptions"] == {
        "metadata:orderid": reference,
        "metadata:invoicenumber": "FA-2026-0042",
        "metadata:documenttype": "Invoice",
    }


# -- eBay: no invoice call ---------------------------------------------------------------


async def test_an_invoice_for_an_ebay_order_fails_its_ticket_saying_ebay_has_no_such_call(
    storage: Storage,
) -> None:
    batch = await submit_document(storage, "ebay-de", make_order("12-34567-89012"), "FA1.pdf")
    [ticket] = batch.tickets
    assert ticket.state == TicketState.SCHEDULED
    settings = EbaySettings(client_id="c", client_secret="s", refresh_token="r")
    connector = EbayConnector(settings)
    ids = await storage.channels.channel_ids()
    worker = OperationsWorker(storage, {ids["ebay-de"]: connector}, lambda: NOW)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(500):
            found = await storage.operations.ticket(2, ticket.id)
            assert found is not None
            if found.state == TicketState.FAILED:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connector.aclose()
    assert found.state == TicketState.FAILED
    assert found.reason == NO_INVOICE_UPLOAD
    [stored] = await storage.documents.for_order(found.order_id or 0)
    assert (stored.state, stored.reason) == (TicketState.FAILED, NO_INVOICE_UPLOAD)


# -- storage --------------------------------------------------------------------------------


async def test_the_personal_data_retention_erases_a_closed_orders_invoices(
    storage: Storage,
) -> None:
    """An invoice names the buyer: the retention that erases the order's personal data
    erases the invoice's bytes with it, and keeps its row as the trail."""
    shipped = make_order("M-2", OrderStatus.SHIPPED)
    batch = await submit_document(storage, "decathlon", shipped, "FA10.pdf")
    order_id = batch.tickets[0].order_id or 0

    report = await storage.privacy.erase(
        NOW + timedelta(days=31), timedelta(days=30), lambda connector, text, known: "{}"
    )

    assert report.orders == 1
    [stored] = await storage.documents.for_order(order_id)
    assert stored.erased and stored.sha256 == check_document("FA10.pdf", PDF).sha256
    row = await storage.db.fetchrow("SELECT content FROM documents WHERE id = $1", (stored.id,))
    assert row is not None and row[0] is None


async def test_erasing_an_orders_documents_keeps_their_trail_and_fails_what_is_unsent(
    storage: Storage,
) -> None:
    batch = await submit_document(storage, "decathlon", make_order("M-1"), "FA9.pdf")
    order_id = batch.tickets[0].order_id
    assert order_id is not None
    assert await storage.documents.erase_order(order_id, NOW) == 1
    [stored] = await storage.documents.for_order(order_id)
    assert stored.erased
    row = await storage.db.fetchrow("SELECT content FROM documents WHERE id = $1", (stored.id,))
    assert row is not None and row[0] is None
    [claim] = await storage.queue.claim(NOW, timedelta(minutes=1), 5)
    assert claim.document is None  # the worker fails it: nothing left to send


def test_a_document_is_known_by_its_bytes_not_its_name() -> None:
    assert check_document("scan.jpeg", b"\xff\xd8\xff\xe0rest").content_type == "image/jpeg"
    assert check_document("facture", PDF).file_name == "facture.pdf"
    assert check_document("x.png.pdf", PNG).file_name == "x.png.png"
    assert len(b"0" * MAX_DOCUMENT_BYTES) == MAX_DOCUMENT_BYTES
    check_document("max.pdf", b"%PDF-" + b"0" * (MAX_DOCUMENT_BYTES - 5))


# -- the CLI --------------------------------------------------------------------------------


async def test_orders_upload_sends_a_file_once_and_show_lists_it_with_its_state(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, cli_tests.DEFAULT_CHANNELS)
    await cli_tests.seed(config, tmp_path)
    env = cli_tests.ENV
    orders = json.loads(run_cli(config, "orders", "list", "--json", env=env).stdout)
    order = next(o for o in orders if o["reference"] == "DEC-OK")
    invoice = tmp_path / "FA000777.pdf"
    invoice.write_bytes(PDF)
    first = run_cli(config, "orders", "upload", str(order["id"]), str(invoice), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith("sfd: upload_document of order DEC-OK: ticket ")
    assert first.stderr.endswith(" is scheduled\n")
    again = run_cli(config, "orders", "upload", str(order["id"]), str(invoice), env=env)
    assert again.stderr == first.stderr  # the same ticket: nothing is sent twice

    renamed = tmp_path / "invoice.pdf"
    renamed.write_bytes(EXE)
    refused = run_cli(config, "orders", "upload", str(order["id"]), str(renamed), env=env)
    assert refused.returncode == 1
    assert str(renamed) in refused.stderr
    assert "is not a PDF, JPEG or PNG file" in refused.stderr

    shown = json.loads(
        run_cli(config, "orders", "show", str(order["id"]), "--json", env=env).stdout
    )
    [document] = shown["documents"]
    assert (document["file_name"], document["size"], document["state"]) == (
        "FA000777.pdf", len(PDF), "scheduled",
    )  # fmt: skip
    assert document["sha256"] == hashlib.sha256(PDF).hexdigest()
    [operation] = shown["operations"]
    assert operation["kind"] == "upload_document"
    text = run_cli(config, "orders", "show", str(order["id"]), env=env).stdout
    assert "FA000777.pdf" in text and "invoice" in text


# -- the order page -------------------------------------------------------------------------


def page_form(csrf: str | None, name: str, content: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf", csrf)
    form.add_field("type", "invoice")
    form.add_field("file", content, filename=name, content_type="application/octet-stream")
    return form


async def test_the_order_page_uploads_an_invoice_with_its_csrf_token_and_lists_it(
    hub: Hub,
) -> None:
    [reference] = await orders_on_sale(hub, 1)
    order_id = await hub.order_id(reference)
    page = PageClient(hub.daemon.url)
    try:
        await page.sign_in(hub.token)
        status, html = await page.get(f"/orders/{order_id}")
        assert status == 200
        assert f'action="/orders/{order_id}/documents" enctype="multipart/form-data"' in html

        # Without the page's token: refused, nothing stored.
        status, html, _ = await page.request(
            "POST", f"/orders/{order_id}/documents", data=page_form("forged", "FA1.pdf", PDF)
        )
        assert status == 403 and "security token" in html
        # Not a document: the page says why, naming the file.
        status, html, _ = await page.request(
            "POST", f"/orders/{order_id}/documents", data=page_form(page.csrf, "FA1.pdf", EXE)
        )
        assert status == 400
        assert "FA1.pdf: is not a PDF, JPEG or PNG file" in html
        assert await count(hub.storage, "documents") == 0

        status, _, response = await page.request(
            "POST", f"/orders/{order_id}/documents", data=page_form(page.csrf, "FA1.pdf", PDF)
        )
        assert status == 303
        ticket_id = response.headers["Location"].rsplit("done=", 1)[1]
        assert (await hub.finished(ticket_id))["state"] == "succeed"
        status, html = await page.get(f"/orders/{order_id}")
    finally:
        await page.close()
    assert [d["file_name"] for d in hub.marketplace.documents[reference]] == ["FA1.pdf"]
    assert f'data-ticket="{ticket_id}"' in html
    section = html[html.index('id="documents"') :]
    assert "FA1.pdf" in section and "t-succeed" in section.split("</section>")[0]


def test_the_rules_match_a_document_by_its_digest_and_let_a_failed_one_be_sent_again() -> None:
    view = order_view(reference="M-1", channel="decathlon", status=OrderStatus.SHIPPED, items={})
    payload = document_payload(check_document("FA1.pdf", PDF))
    renamed = document_payload(check_document("other-name.pdf", PDF))
    stored = msgspec.to_builtins(payload)
    sent = PriorOperation(7, "t7", OperationKind.UPLOAD_DOCUMENT, TicketState.SUCCEED, stored)
    failed = PriorOperation(8, "t8", OperationKind.UPLOAD_DOCUMENT, TicketState.FAILED, stored)
    # Any status takes a document: a shipped order's invoice is the usual case.
    assert decide(OperationKind.UPLOAD_DOCUMENT, view, payload, []).state == TicketState.SCHEDULED
    again = decide(OperationKind.UPLOAD_DOCUMENT, view, renamed, [sent])
    assert again.reuse == sent
    retried = decide(OperationKind.UPLOAD_DOCUMENT, view, payload, [failed])
    assert (retried.state, retried.reuse) == (TicketState.SCHEDULED, None)
    other = document_payload(check_document("FA2.pdf", PDF + b"%2"))
    assert decide(OperationKind.UPLOAD_DOCUMENT, view, other, [sent]).reuse is None
