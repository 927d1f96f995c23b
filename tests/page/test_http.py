"""The order page over plain HTTP: sessions, cookies, CSRF, bad input and escaping.

The browser tests (test_browser.py) show the flows a person goes through; these show,
quicker and more exhaustively, that nothing changes unless a valid, signed-in form asks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from markupsafe import escape
from yarl import URL

from sfd.daemon.http import build_app
from sfd.daemon.page import OrderPage
from sfd.daemon.ws import LegacyWebservice
from sfd.domain import EventSource, OperationKind, OrderStatus
from sfd.domain.rules import AcknowledgePayload
from sfd.storage import OperationRequest, Storage
from tests import lookups
from tests.conftest import NOW
from tests.factories import make_order
from tests.page.conftest import PageClient

pytestmark = pytest.mark.both_backends

S = OrderStatus


@dataclass
class Site:
    """The page served over real HTTP from a real database, with a store-1 and store-2 token."""

    storage: Storage
    url: str
    token1: str
    token2: str
    polls: list[str]
    woken: list[int]
    clients: list[PageClient] = field(default_factory=list)

    def client(self) -> PageClient:
        client = PageClient(self.url)
        self.clients.append(client)
        return client

    async def signed_in(self, token: str | None = None) -> PageClient:
        client = self.client()
        await client.sign_in(token or self.token1)
        return client

    async def order_id(self, reference: str) -> int:
        return await lookups.order_id(self.storage, reference)

    async def operations(self) -> int:
        return await lookups.operation_count(self.storage)

    async def events(self) -> int:
        row = await self.storage.db.fetchrow("SELECT count(*) FROM order_events")
        assert row is not None
        return int(row[0])


async def serve(
    storage: Storage, *, https: bool = False
) -> tuple[TestServer, list[str], list[int]]:
    polls: list[str] = []
    woken: list[int] = []

    def poll_now(name: str) -> bool:
        polls.append(name)
        return True

    page = OrderPage(
        storage,
        lambda: NOW,
        lambda: woken.append(1),
        poll_now=poll_now,
        warnings={"decathlon": timedelta(hours=6)},
    )
    app = build_app(lambda: (True, {}), legacy=LegacyWebservice(storage, lambda: NOW), page=page)
    if https:
        # What a TLS-terminating proxy that aiohttp trusts would make of the request.
        @web.middleware
        async def as_https(request: web.Request, handler: Any) -> web.StreamResponse:
            return await handler(request.clone(scheme="https"))  # type: ignore[no-any-return]

        app.middlewares.insert(0, as_https)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, polls, woken


@pytest.fixture
async def site(storage: Storage) -> AsyncIterator[Site]:
    ids = await storage.channels.channel_ids()
    await storage.orders.import_page(
        ids["decathlon"],
        1,
        [
            make_order("DEC-LATE", ship_by=NOW - timedelta(hours=3)),
            make_order("DEC-SOON", ship_by=NOW + timedelta(hours=2)),
            make_order("DEC-LATER", ship_by=NOW + timedelta(days=3)),
            make_order("DEC-ACCEPT", S.WAITING_STORE_ACCEPTANCE),
            make_order("DEC-SHIPPED", S.SHIPPED),
        ],
        NOW,
    )
    await storage.orders.import_page(ids["ebay-de"], 2, [make_order("EBAY-1")], NOW)
    _, token1 = await storage.tokens.create(1, "one", NOW)
    _, token2 = await storage.tokens.create(2, "two", NOW)
    server, polls, woken = await serve(storage)
    running = Site(storage, str(server.make_url("")).rstrip("/"), token1, token2, polls, woken)
    yield running
    for client in running.clients:
        await client.close()
    await server.close()


# -- sessions -------------------------------------------------------------------------------


async def test_the_session_cookie_is_httponly_and_samesite_strict_and_not_secure_over_http(
    site: Site,
) -> None:
    response = await site.client().sign_in(site.token1)
    cookie = response.cookies["sfd_session"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert not cookie["secure"], "a Secure cookie would never come back over plain http"
    assert site.token1 not in response.headers["Set-Cookie"], "the token is never the cookie"


async def test_the_session_cookie_is_secure_when_the_page_is_served_over_tls(
    storage: Storage,
) -> None:
    _, token = await storage.tokens.create(1, "tls", NOW)
    server, _, _ = await serve(storage, https=True)
    client = PageClient(str(server.make_url("")).rstrip("/"))
    try:
        status, _, response = await client.request("POST", "/signin", data={"token": token})
        assert status == 303
        set_cookie = response.headers["Set-Cookie"]
        assert "Secure" in set_cookie and "HttpOnly" in set_cookie
        assert "SameSite=Strict" in set_cookie
    finally:
        await client.close()
        await server.close()


async def test_without_a_session_every_view_sends_to_the_sign_in_form(site: Site) -> None:
    client = site.client()
    for path in ("/", "/orders", "/orders/1", "/channels"):
        status, _, response = await client.request("GET", path)
        assert (status, response.headers["Location"]) == (303, "/signin"), path
    status, text = await client.get("/signin")
    assert status == 200
    assert '<label for="token">API token</label>' in text


async def test_a_wrong_token_is_refused_and_never_shown_back(site: Site) -> None:
    wrong = site.token1[:-4] + "AAAA"
    status, text, response = await site.client().request("POST", "/signin", data={"token": wrong})
    assert status == 401
    assert "That token is not valid" in text
    assert wrong not in text
    assert "sfd_session" not in response.cookies


async def test_signing_out_ends_the_session_for_good(site: Site) -> None:
    client = await site.signed_in()
    old_cookie = client.http.cookie_jar.filter_cookies(URL(client.url))["sfd_session"].value
    status, _, location = await client.post("/signout", {})
    assert (status, location) == (303, "/signin")
    assert (await client.request("GET", "/orders"))[0] == 303
    replay = PageClient(site.url)
    site.clients.append(replay)
    replay.http.cookie_jar.update_cookies({"sfd_session": old_cookie})
    assert (await replay.request("GET", "/orders"))[0] == 303, "the old session id is dead"


async def test_a_token_revoked_with_the_cli_ends_its_sessions_at_the_next_request(
    site: Site,
) -> None:
    client = await site.signed_in()
    assert (await client.get("/orders"))[0] == 200
    await site.storage.tokens.revoke("one", NOW)
    status, _, response = await client.request("GET", "/orders")
    assert (status, response.headers["Location"]) == (303, "/signin")
    order = await site.order_id("DEC-ACCEPT")
    before = await site.operations()
    status, _, _ = await client.post(f"/orders/{order}/accept", {})
    assert status == 403
    assert await site.operations() == before


# -- CSRF -----------------------------------------------------------------------------------


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(site: Site) -> None:
    client = await site.signed_in()
    order = await site.order_id("DEC-ACCEPT")
    operations, events = await site.operations(), await site.events()
    status, text, _ = await client.post(f"/orders/{order}/accept", {}, csrf=False)
    assert status == 403
    assert "did not carry the page&#39;s security token" in text
    status, _, _ = await client.post(f"/orders/{order}/accept", [("csrf", "x" * 43)], csrf=False)
    assert status == 403
    other = await site.signed_in()  # another session's token is no better
    status, _, _ = await client.post(f"/orders/{order}/accept", [("csrf", other.csrf)], csrf=False)
    assert status == 403
    assert (await client.post("/signout", {}, csrf=False))[0] == 403
    assert (await client.post("/channels/decathlon/poll", {}, csrf=False))[0] == 403
    assert (await site.operations(), await site.events()) == (operations, events)
    assert site.polls == []


# -- store scoping --------------------------------------------------------------------------


async def test_a_store_one_session_gets_a_404_for_store_two_orders_and_channels(
    site: Site,
) -> None:
    client = await site.signed_in()
    theirs = await site.order_id("EBAY-1")
    status, text = await client.get(f"/orders/{theirs}")
    assert status == 404
    assert "EBAY-1" not in text
    before = await site.operations()
    assert (await client.post(f"/orders/{theirs}/cancel", {"confirm": "yes"}))[0] == 404
    assert (await client.post("/channels/ebay-de/poll", {}))[0] == 404
    assert await site.operations() == before
    assert site.polls == []
    status, text = await client.get("/orders?show=all&q=EBAY")
    assert status == 200 and "EBAY-1" not in text
    status, text = await client.get("/orders?channel=ebay-de")
    assert status == 400 and "no channel &#39;ebay-de&#39; in this store" in text
    _, text = await client.get("/channels")
    assert "decathlon" in text and "ebay-de" not in text


@pytest.mark.parametrize("order_id", ["999999", "0", "99999999999999999999999", "abc", "-1"])
async def test_an_unknown_order_id_is_a_404_page(site: Site, order_id: str) -> None:
    client = await site.signed_in()
    status, text = await client.get(f"/orders/{order_id}")
    assert status == 404
    assert "There is no order" in text
    assert (await client.post(f"/orders/{order_id}/accept", {}))[0] == 404


# -- the list -------------------------------------------------------------------------------


async def test_the_default_list_shows_what_needs_a_person_soonest_deadline_first(
    site: Site,
) -> None:
    client = await site.signed_in()
    _, text = await client.get("/orders")
    shown = [r for r in ("DEC-LATE", "DEC-SOON", "DEC-ACCEPT", "DEC-LATER") if r in text]
    assert sorted(shown, key=text.index) == ["DEC-LATE", "DEC-SOON", "DEC-ACCEPT", "DEC-LATER"]
    assert "DEC-SHIPPED" not in text
    assert '<tr class="late" data-reference="DEC-LATE">' in text
    assert '<tr class="near" data-reference="DEC-SOON">' in text, "2 h left, warned 6 h before"
    assert '<tr class="" data-reference="DEC-LATER">' in text
    _, text = await client.get("/orders?show=all&status=shipped")
    assert "DEC-SHIPPED" in text and "DEC-LATE" not in text
    _, text = await client.get("/orders?late=1")
    assert "DEC-LATE" in text and "DEC-SOON" not in text
    _, text = await client.get("/orders?q=dec-acc")
    assert "DEC-ACCEPT" in text and "DEC-LATE" not in text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=lost", "status: no status &#39;lost&#39;"),
        ("ack=maybe", "acknowledged: expected yes or no"),
        ("show=everything", "show: expected attention or all"),
        ("late=yes", "late: expected 1"),
        ("page=0", "page: expected a page number"),
    ],
)
async def test_a_tampered_filter_is_named_on_the_page(site: Site, query: str, message: str) -> None:
    client = await site.signed_in()
    status, text = await client.get("/orders?" + query)
    assert status == 400
    assert message in text


# -- actions: bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "fields", "message"),
    [
        ("ship", {"carrier": "DPD", "admin": "1"}, "unexpected field &#39;admin&#39;"),
        ("ship", {"carrier": "DPD", "qty_abc": "1"}, "unexpected field &#39;qty_abc&#39;"),
        ("ship", {"carrier": "DPD", "qty_1": "two"}, "quantity of item 1: expected a whole"),
        ("ship", {"carrier": "DPD", "qty_1": "-1"}, "quantity of item 1: expected a whole"),
        ("accept", {"reason": "x"}, "unexpected field &#39;reason&#39;"),
        ("cancel", {"reason": "x"}, "tick the box to confirm the cancel"),
        ("acknowledge", {"store_reference": "R" * 256}, "Store reference is 256 characters"),
    ],
)
async def test_a_tampered_action_form_is_refused_with_the_field_named_and_changes_nothing(
    site: Site, action: str, fields: dict[str, str], message: str
) -> None:
    client = await site.signed_in()
    order = await site.order_id("DEC-LATE")
    operations, events = await site.operations(), await site.events()
    status, text, _ = await client.post(f"/orders/{order}/{action}", fields)
    assert status == 400
    assert message in text
    assert (await site.operations(), await site.events()) == (operations, events)


async def test_a_field_sent_twice_or_an_unknown_action_changes_nothing(site: Site) -> None:
    client = await site.signed_in()
    order = await site.order_id("DEC-LATE")
    before = await site.operations()
    status, text, _ = await client.post(
        f"/orders/{order}/ship", [("carrier", "DPD"), ("carrier", "UPS")]
    )
    assert status == 400 and "field &#39;carrier&#39; was sent 2 times" in text
    status, text, _ = await client.post(f"/orders/{order}/refund", {})
    assert status == 404 and "no action &#39;refund&#39;" in text
    status, text, _ = await client.post(f"/orders/{order}/explode", {})
    assert status == 404
    status, text, _ = await client.request(
        "POST", f"/orders/{order}/accept", json={"csrf": client.csrf}
    )
    assert status == 400 and "expected a form" in text
    assert await site.operations() == before


async def test_an_oversized_tracking_number_is_refused_before_anything_is_written(
    site: Site,
) -> None:
    client = await site.signed_in()
    order = await site.order_id("DEC-LATE")
    operations, events = await site.operations(), await site.events()
    status, text, _ = await client.post(
        f"/orders/{order}/ship", {"carrier": "Colissimo", "tracking_number": "9 " * 550}
    )
    assert status == 400
    assert "Tracking number is 1099 characters long; at most 1024" in text
    assert 'value="Colissimo"' in text, "the entered values are kept"
    assert (await site.operations(), await site.events()) == (operations, events)


async def test_an_item_of_another_order_is_refused_by_the_rules_and_shown(site: Site) -> None:
    client = await site.signed_in()
    order = await site.order_id("DEC-LATE")
    foreign = await site.storage.db.fetchrow(
        "SELECT i.id FROM order_items i JOIN orders o ON o.id = i.order_id "
        "WHERE o.reference = 'EBAY-1' LIMIT 1"
    )
    assert foreign is not None
    status, text, _ = await client.post(
        f"/orders/{order}/ship",
        {"carrier": "DPD", "tracking_number": "T1", f"qty_{foreign[0]}": "1"},
    )
    assert status == 409
    assert f"item {foreign[0]} is not a line of order DEC-LATE" in text
    assert f'name="qty_{foreign[0]}"' not in text, "only the order's own lines are offered"
    assert site.woken == [], "nothing was scheduled"


# -- actions that work ----------------------------------------------------------------------


async def test_an_accept_goes_through_the_outbox_with_source_page(site: Site) -> None:
    client = await site.signed_in()
    order = await site.order_id("DEC-ACCEPT")
    _, text = await client.get(f"/orders/{order}")
    assert f'action="/orders/{order}/accept"' in text
    assert f'action="/orders/{order}/ship"' not in text, "not shippable before acceptance"
    status, _, location = await client.post(f"/orders/{order}/accept", {})
    assert status == 303 and location.startswith(f"/orders/{order}?done=")
    row = await site.storage.db.fetchrow(
        "SELECT kind, state, source FROM operations WHERE order_id = $1", (order,)
    )
    assert row is not None and tuple(row) == ("accept", "scheduled", "page")
    assert site.woken == [1]
    _, text = await client.get(location)
    assert "accept requested: ticket" in text and "now scheduled" in text
    assert f'action="/orders/{order}/accept"' not in text, "a pending accept is not offered again"


async def test_html_and_script_in_any_field_are_escaped(site: Site) -> None:
    client = await site.signed_in()
    order = await site.order_id("DEC-LATER")
    script = '<script>alert("x")</script>'
    status, _, _ = await client.post(f"/orders/{order}/acknowledge", {"store_reference": script})
    assert status == 303
    _, text = await client.get(f"/orders/{order}")
    assert script not in text
    assert str(escape(script)) in text
    _, text = await client.get("/orders?show=all&q=" + script)
    assert script not in text and str(escape(script)) in text
    status, text = await client.get("/orders/%3Cscript%3E")
    assert status == 404 and "<script>" not in text
    status, text, _ = await client.post(
        f"/orders/{order}/ship",
        {"carrier": script, "tracking_number": "T", "tracking_link": "javascript:alert(1)"},
    )
    assert status == 303, "the link is dropped with a warning; the shipment goes"
    _, text = await client.get(f"/orders/{order}")
    assert script not in text and "is not an http(s):// URL: dropped" in text
    assert 'href="javascript:' not in text


async def test_every_page_forbids_scripts_and_framing(site: Site) -> None:
    client = await site.signed_in()
    for path in ("/orders", "/channels", "/signin"):
        _, _, response = await client.request("GET", path)
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy


async def test_a_failed_operation_can_be_retried_but_a_refused_one_cannot(site: Site) -> None:
    client = await site.signed_in()
    order = await site.order_id("DEC-SOON")
    status, _, _ = await client.post(f"/orders/{order}/ship", {"carrier": "DPD"})
    assert status == 409, "decathlon requires a tracking number"
    [refused] = await site.storage.operations.for_order(order)
    status, text, _ = await client.post(
        f"/orders/{order}/operations/{refused.operation_id}/retry", {}
    )
    assert status == 409 and "only an operation the marketplace failed" in text
    # The marketplace fails a shipment: the worker's claim, then its failure.
    await client.post(f"/orders/{order}/ship", {"carrier": "DPD", "tracking_number": "T-1"})
    [claim] = await site.storage.queue.claim(NOW, timedelta(minutes=1), 10)
    await site.storage.queue.failed(claim, NOW, "OR23: 400 unknown carrier code")
    _, text = await client.get(f"/orders/{order}")
    assert "OR23: 400 unknown carrier code" in text
    assert f"/operations/{claim.operation_id}/retry" in text
    status, _, location = await client.post(
        f"/orders/{order}/operations/{claim.operation_id}/retry", {}
    )
    assert (status, location) == (303, f"/orders/{order}?done={claim.ticket_id}")
    ticket = await site.storage.operations.ticket(1, claim.ticket_id)
    assert ticket is not None and ticket.state == "scheduled"
    event = await site.storage.db.fetchrow(
        "SELECT source FROM order_events WHERE kind = 'ship_retried' AND order_id = $1", (order,)
    )
    assert event is not None and event[0] == "page"


async def test_poll_now_asks_the_channels_poller(site: Site) -> None:
    client = await site.signed_in()
    status, text = await client.get("/channels")
    assert status == 200
    assert 'action="/channels/decathlon/poll"' in text
    status, _, location = await client.post("/channels/decathlon/poll", {})
    assert (status, location) == (303, "/channels?polled=decathlon")
    assert site.polls == ["decathlon"]


async def test_the_legacy_webservice_still_answers_a_post_to_the_bare_host(site: Site) -> None:
    client = site.client()
    status, text, _ = await client.request("POST", "/", data=b"<xml/>")
    assert status != 303 and "<html" not in text
    status, _, response = await client.request("GET", "/")
    assert (status, response.headers["Location"]) == (303, "/signin")


async def test_a_sign_in_posted_from_another_site_is_refused(site: Site) -> None:
    client = site.client()
    status, text, response = await client.request(
        "POST",
        "/signin",
        data={"token": site.token1},
        headers={"Origin": "https://attacker.example"},
    )
    assert status == 403 and "sent from another site" in text
    assert "sfd_session" not in response.cookies


# -- push mode and storage outages ----------------------------------------------------------


async def test_an_order_the_shop_refused_can_be_pushed_again_from_its_page(site: Site) -> None:
    order = await site.order_id("DEC-SOON")
    await site.storage.pushes.register("woo", 1, "woocommerce", NOW)
    await site.storage.pushes.begin("woo", order, NOW)
    await site.storage.pushes.rejected("woo", order, "unknown SKU <b>SKU-9</b>", NOW)
    error = AcknowledgePayload(status="error", message="unknown SKU <b>SKU-9</b>")
    await site.storage.operations.submit(
        1,
        OperationKind.ACKNOWLEDGE,
        [OperationRequest(payload=error, order_id=order)],
        EventSource.SHOP,
        NOW,
        actor="woo",
    )
    client = await site.signed_in()
    status, text = await client.get(f"/orders/{order}")
    assert status == 200
    assert "woo: rejected: unknown SKU &lt;b&gt;SKU-9&lt;/b&gt;" in text
    assert f'action="/orders/{order}/retry-push"' in text

    status, _, location = await client.post(f"/orders/{order}/retry-push", {})
    assert status == 303 and location.startswith(f"/orders/{order}?notice=")
    assert await site.storage.pushes.for_order(order) == [], "the failed push is forgotten"
    assert site.polls == ["woo"], "the shop's push loop is woken to push at once"
    status, text = await client.get(location)
    assert "will be pushed again at the next sync" in text
    assert "retry-push" not in text, "nothing left to retry"
    shown = await site.storage.orders.get(order)
    assert shown is not None
    trail = [(e.kind, e.source, e.actor) for e in shown.events]
    assert trail[-2:] == [("acknowledge", "shop", "woo"), ("unacknowledge", "page", "one")]


async def test_retrying_a_push_that_did_not_fail_is_refused_on_the_page(site: Site) -> None:
    order = await site.order_id("DEC-SOON")
    await site.storage.pushes.register("woo", 1, "woocommerce", NOW)
    await site.storage.pushes.begin("woo", order, NOW)
    await site.storage.pushes.created("woo", order, "1234", NOW)
    client = await site.signed_in()
    status, text, _ = await client.post(f"/orders/{order}/retry-push", {})
    assert status == 409
    assert "already in shop woo as order 1234" in text
    assert [p.state for p in await site.storage.pushes.for_order(order)] == ["created"]


@pytest.mark.sqlite_only
async def test_a_database_that_refuses_writes_gives_a_page_that_says_so(site: Site) -> None:
    order = await site.order_id("DEC-ACCEPT")
    client = await site.signed_in()
    db = site.storage.db
    async with db._write_lock:
        await db._writer.execute("PRAGMA query_only = 1")
    try:
        before = await site.operations()
        status, text, _ = await client.post(f"/orders/{order}/accept", {})
        assert status == 503
        assert "cannot take writes (read_only)" in text and "Nothing was changed" in text
        assert await site.operations() == before
    finally:
        async with db._write_lock:
            await db._writer.execute("PRAGMA query_only = 0")
