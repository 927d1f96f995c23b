"""XML attacks on `/ws` beyond those in tests/test_ws.py (billion laughs, a file entity, deep
nesting, over 10 MiB): an external DTD that would make sfd call out, XInclude, a quadratic
blowup, an encoding that hides a DOCTYPE, an element with 100,000 attributes and a document of
100,000 orders. Each is refused or answered whole; nothing is written; nothing is fetched."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from xml.sax.saxutils import escape

import aiohttp
import defusedxml.ElementTree as SafeET
import pytest
from aiohttp import web

from tests.faults.conftest import Served
from tests.faults.reliability import record
from tests.faults.test_hostile_api import NASTY

GROUP = "hostile input"
TEST = "tests/faults/test_hostile_ws.py"


@pytest.fixture
async def bait() -> AsyncIterator[tuple[str, list[str]]]:
    """A server on 127.0.0.1 that records every request: an XML parser must never call it."""
    hits: list[str] = []

    async def record_hit(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text='<!ENTITY leak "LEAKED">', content_type="application/xml-dtd")

    app = web.Application()
    app.router.add_get("/{tail:.*}", record_hit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", hits
    finally:
        await runner.cleanup()


async def post(served: Served, call: str, document: bytes) -> tuple[int, str]:
    data = aiohttp.FormData()
    data.add_field("TOKEN", served.token)
    data.add_field("CALL", call)
    data.add_field("MODE", "Production")
    data.add_field("REQUEST", io.BytesIO(document), filename="request.xml")
    async with (
        aiohttp.ClientSession() as http,
        http.post(served.base_url + "/ws", data=data) as response,
    ):
        return response.status, await response.text()


def order(id_order: str = "DEC-1", extra: str = "") -> str:
    return (
        f"<Order><IdOrder>{id_order}</IdOrder><Marketplace>decathlon</Marketplace>{extra}</Order>"
    )


def attacks(bait_url: str) -> list[tuple[str, str, bytes, str]]:
    """(name, call, document, what the error says)."""
    quadratic = "A" * 100_000
    return [
        (
            "external DTD (SSRF)",
            "ValidOrders",
            f'<?xml version="1.0"?><!DOCTYPE ValidOrders SYSTEM "{bait_url}/evil.dtd">'
            f"<ValidOrders>{order('&leak;')}</ValidOrders>".encode(),
            "DOCTYPE is not allowed",
        ),
        (
            "parameter entity (SSRF)",
            "UpdateOrders",
            f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "{bait_url}/p.dtd"> %p;]>'
            "<UpdateOrders></UpdateOrders>".encode(),
            "DOCTYPE is not allowed",
        ),
        (
            "quadratic blowup",
            "UpdateOrders",
            f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "{quadratic}">]><UpdateOrders>'
            f"{order('&a;' * 1000)}</UpdateOrders>".encode(),
            "DOCTYPE is not allowed",
        ),
        (
            "DOCTYPE hidden in UTF-16",
            "ValidOrders",
            (
                '<?xml version="1.0" encoding="UTF-16"?>'
                '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                f"<ValidOrders>{order('&e;')}</ValidOrders>"
            ).encode("utf-16"),
            "DOCTYPE is not allowed",
        ),
        (
            "XInclude",
            "ValidOrders",
            (
                '<ValidOrders xmlns:xi="http://www.w3.org/2001/XInclude"><Order><IdOrder>'
                f'<xi:include href="{bait_url}/x.xml" parse="text"/></IdOrder>'
                "<Marketplace>decathlon</Marketplace></Order></ValidOrders>"
            ).encode(),
            "IdOrder: is required",
        ),
        (
            "100,000 attributes",
            "ValidOrders",
            (
                "<ValidOrders><Order "
                + " ".join(f'a{n}="{n}"' for n in range(100_000))
                + "><IdOrder>NOPE-1</IdOrder><Marketplace>decathlon</Marketplace></Order>"
                "</ValidOrders>"
            ).encode(),
            "",
        ),
    ]


async def test_xml_attacks_are_refused_fetch_nothing_and_write_nothing(
    served: Served, bait: tuple[str, list[str]]
) -> None:
    url, hits = bait
    before = await served.snapshot()
    tried = 0
    for name, call, document, says in attacks(url):
        status, text = await post(served, call, document)
        tried += 1
        root = SafeET.fromstring(text.encode())
        assert status < 500, (name, status, text[:300])
        if says:
            assert status == 400, (name, text[:300])
            assert says in (root.findtext("Response/Error/Message") or ""), (name, text[:300])
        assert "LEAKED" not in text and "root:" not in text, name
    assert hits == [], "the XML parser fetched a URL"
    after = await served.snapshot()
    assert [r for r in after if r[0] == "orders"] == [r for r in before if r[0] == "orders"]
    assert served.integrity() == "ok"
    assert served.levels("error", "critical") == []
    record(GROUP, "XML attacks on /ws", tries=tried, lost=0, duplicated=0, test=TEST)


async def test_a_document_of_100000_orders_is_refused_whole_naming_the_limit(
    served: Served,
) -> None:
    """Under the 10 MiB limit, but each order is checked and written in one transaction that
    holds the database's only writer: 100,000 of them held it for two minutes. Refused."""
    orders = "".join(order(f"NOPE-{n}") for n in range(100_000))
    document = f"<ValidOrders>{order('DEC-3')}{orders}</ValidOrders>".encode()
    assert len(document) < 10 * 1024**2
    before = await served.snapshot()
    status, text = await post(served, "ValidOrders", document)
    assert status == 400, text[:300]
    message = SafeET.fromstring(text.encode()).findtext("Response/Error/Message")
    assert message == (
        "ValidOrders: has 100001 <Order> elements; at most 1000 a request: "
        "send them in several calls"
    )
    assert await served.snapshot() == before
    # At the limit, every order gets its answer.
    at_limit = order("DEC-3") + "".join(order(f"NOPE-{n}") for n in range(999))
    status, text = await post(
        served, "ValidOrders", f"<ValidOrders>{at_limit}</ValidOrders>".encode()
    )
    assert status == 200, text[:300]
    assert len(SafeET.fromstring(text.encode()).findall("Response/Orders/Order")) == 1000
    assert served.integrity() == "ok"
    record(GROUP, "XML document of 100,000 orders", tries=1, lost=0, duplicated=0, test=TEST)


async def test_an_operation_naming_more_than_1000_orders_is_refused_whole(served: Served) -> None:
    entries = [{"reference": f"NOPE-{n}", "channelName": "decathlon"} for n in range(100_000)]
    before = await served.snapshot()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            served.base_url + "/v1/store/1/order/acknowledge",
            json={"order": entries},
            headers={"Authorization": f"Bearer {served.token}"},
        ) as response,
    ):
        assert response.status == 400
        problem = await response.json()
    assert problem["field"] == "order"
    assert problem["detail"].startswith("order: has 100000 entries; at most 1000 a request")
    assert await served.snapshot() == before
    record(GROUP, "v1 operation naming 100,000 orders", tries=1, lost=0, duplicated=0, test=TEST)


async def test_sql_metacharacters_and_unicode_in_every_ws_field_match_nothing(
    served: Served,
) -> None:
    """Every text of ValidOrders and UpdateOrders, and the form's own fields."""
    before = await served.snapshot()
    tries = 0
    for value in NASTY:
        text = escape(value)
        valid = (
            f"<ValidOrders><Order><IdOrder>{text}</IdOrder><Marketplace>{text}</Marketplace>"
            f"<MerchantIdOrder>{text}</MerchantIdOrder><ErrorOrder>{text}</ErrorOrder>"
            f"</Order><Order><IdOrder>DEC-1</IdOrder><Marketplace>{text}</Marketplace>"
            "</Order></ValidOrders>"
        )
        update = (
            f"<UpdateOrders><Order><IdOrder>{text}</IdOrder><Marketplace>decathlon</Marketplace>"
            f"<MerchantIdOrder>{text}</MerchantIdOrder><Status>Shipped</Status>"
            f"<TrackingNumber>{text}</TrackingNumber><CarrierName>{text}</CarrierName>"
            f"<TrackingUrl>{text}</TrackingUrl></Order></UpdateOrders>"
        )
        for call, document in (("ValidOrders", valid), ("UpdateOrders", update)):
            status, answer = await post(served, call, document.encode("utf-8", "surrogatepass"))
            tries += 1
            assert status in (200, 400), (call, value[:20], status, answer[:300])
            root = SafeET.fromstring(answer.encode())
            if status == 200:
                flags = [o.findtext("Imported") or o.findtext("StatusUpdated") for o in
                         root.findall("Response/Orders/Order")]  # fmt: skip
                assert flags and set(flags) == {"False"}, (call, value[:20], answer[:300])
        for field in ("TOKEN", "CALL", "MODE"):
            form = {"TOKEN": served.token, "CALL": "GetOrders", "MODE": "Production"}
            form[field] = value.replace("\x00", "").replace("\ud83d", "?") or "x"
            async with (
                aiohttp.ClientSession() as http,
                http.post(served.base_url + "/ws", data=form) as response,
            ):
                tries += 1
                assert response.status in (200, 400, 401), (field, value[:20])
                assert "EB-" not in await response.text()
    after = await served.snapshot()
    assert [r for r in after if r[0] == "orders"] == [r for r in before if r[0] == "orders"]
    assert served.integrity() == "ok"
    assert served.levels("error", "critical") == []
    record(GROUP, "SQL metacharacters and Unicode (/ws)", tries=tries, lost=0, duplicated=0,
           test=TEST)  # fmt: skip
