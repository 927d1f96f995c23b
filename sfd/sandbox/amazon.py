"""A stand-in for Amazon's Selling Partner API, served over HTTP on 127.0.0.1.

It speaks what sfd's Amazon connector speaks, as the published models define it: Login with
Amazon's token endpoint, Orders v2026-01-01 `searchOrders` and `getOrder`, and Orders v0
`confirmShipment`. It enforces what real Amazon enforces and the models document: the query
parameters and their enums, exactly one of `createdAfter` / `lastUpdatedAfter`, a
`lastUpdatedBefore` at least two minutes old, pages of 1 to 100, pagination tokens that expire
after 24 hours, each operation's usage plan (429 past the burst), personal data only for the
roles the application holds, and the confirmation body's required fields. Every request is
logged (`calls`), so a test can count them.
"""

from __future__ import annotations

import base64
import random
import secrets
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from xml.sax.saxutils import escape as xml_escape

import msgspec
from aiohttp import web

from sfd.domain.clock import Clock, from_iso, utcnow
from sfd.sandbox.kit import RecordedCall, record, serve

FRANCE: Final = "A13V1IB3VIYZZH"
SEARCH_PARAMETERS: Final = frozenset(
    {
        "createdAfter",
        "createdBefore",
        "lastUpdatedAfter",
        "lastUpdatedBefore",
        "fulfillmentStatuses",
        "marketplaceIds",
        "fulfilledBy",
        "maxResultsPerPage",
        "paginationToken",
        "includedData",
    }
)
FULFILLMENT_STATUSES: Final = frozenset(
    {
        "PENDING_AVAILABILITY",
        "PENDING",
        "UNSHIPPED",
        "PARTIALLY_SHIPPED",
        "SHIPPED",
        "CANCELLED",
        "UNFULFILLABLE",
    }
)
FULFILLED_BY: Final = frozenset({"MERCHANT", "AMAZON"})
INCLUDED_DATA: Final = frozenset(
    {
        "BUYER",
        "RECIPIENT",
        "PROCEEDS",
        "EXPENSE",
        "PROMOTION",
        "CANCELLATION",
        "FULFILLMENT",
        "PACKAGES",
        "TAX",
        "PAYMENT",
        "FULFILLMENT_ORDERS",
    }
)
#: The usage plans of the models: (requests per second, burst).
USAGE_PLANS: Final = {
    "searchOrders": (0.0056, 20),
    "getOrder": (0.5, 30),
    "confirmShipment": (2.0, 10),
    "createFeedDocument": (0.5, 15),
    "createFeed": (0.0083, 15),
    "getFeed": (2.0, 15),
    "getFeedDocument": (0.0222, 10),
}
FEEDS: Final = "/feeds/2021-06-30"
#: The document types an UPLOAD_VAT_INVOICE feed takes (metadata:documenttype).
INVOICE_DOCUMENT_TYPES: Final = frozenset({"Invoice", "CreditNote"})
TOKEN_LIFE: Final = timedelta(hours=24)
#: Roles that release personal data (Amazon's "Access Orders PII" guide).
SHIPPING_ROLE: Final = "Direct-to-Consumer Shipping"
TAX_ROLES: Final = frozenset({"Tax Invoicing", "Tax Remittance"})
ALL_ROLES: Final = frozenset({SHIPPING_ROLE, *TAX_ROLES})

_FIRST = ("Camille", "Louis", "Chloé", "Hugo", "Léa", "Jules", "Manon", "Nathan")
_LAST = ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit", "Durand", "Leroy")
_CITIES = (("Lyon", "69002"), ("Paris", "75011"), ("Nantes", "44000"), ("Lille", "59000"))
_PRODUCTS = (
    ("HOUSSE-LIN-45", "Housse de coussin en lin lavé 45 x 45 cm", "19.99"),
    ("BOUGIE-CEDRE", "Bougie parfumée cèdre", "12.50"),
    ("PLAID-LAINE", "Plaid en laine 130 x 170 cm", "59.00"),
    ("VASE-GRES", "Vase en grès émaillé", "24.90"),
)


class _Bucket:
    """A usage plan as a token bucket on the sandbox's clock."""

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.level = float(burst)
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.at).total_seconds() * self.rate)
        self.at = now
        if self.level < 1:
            return False
        self.level -= 1
        return True


@dataclass
class _Line:
    item_id: str
    sku: str
    title: str
    quantity: int
    unit: Decimal
    shipped: int = 0


@dataclass
class _AmazonOrder:
    order_id: str
    created: datetime
    updated: datetime
    status: str
    lines: list[_Line]
    name: str
    city: str
    postcode: str
    business: bool = False
    packages: list[dict[str, Any]] = field(default_factory=list)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _item_document(line: _Line, included: set[str]) -> dict[str, Any]:
    """One order item, with the datasets asked for."""
    total = line.unit * line.quantity
    tax = (total - total / Decimal("1.2")).quantize(Decimal("0.01"))
    item: dict[str, Any] = {
        "orderItemId": line.item_id,
        "quantityOrdered": line.quantity,
        "product": {
            "asin": f"B0{zlib.crc32(line.sku.encode()) % 10**8:08d}",
            "title": line.title,
            "sellerSku": line.sku,
            "condition": {"conditionType": "NEW", "conditionSubtype": "NEW"},
            "price": {"unitPrice": _money(line.unit)},
        },
    }
    if "PROCEEDS" in included:
        item["proceeds"] = {
            "proceedsTotal": _money(total),
            "breakdowns": [
                {"type": "ITEM", "subtotal": _money(total)},
                {"type": "TAX", "subtotal": _money(tax)},
            ],
        }
    if "FULFILLMENT" in included:
        item["fulfillment"] = {
            "quantityFulfilled": line.shipped,
            "quantityUnfulfilled": line.quantity - line.shipped,
        }
    return item


def _money(amount: Decimal) -> dict[str, str]:
    return {"amount": str(amount), "currencyCode": "EUR"}


class SandboxAmazon:
    """Amazon's SP-API for one seller with one marketplace (Amazon.fr)."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        *,
        seed: int = 0,
        clock: Clock = utcnow,
        roles: frozenset[str] = ALL_ROLES,
        enforce_usage_plans: bool = True,
    ) -> None:
        self.client_id, self.client_secret, self.refresh_token = (
            client_id,
            client_secret,
            refresh_token,
        )
        self.clock = clock
        self.roles = roles
        self.calls: list[RecordedCall] = []
        self._random = random.Random(seed)  # noqa: S311 - sample data, not security
        self._orders: dict[str, _AmazonOrder] = {}
        self._access: set[str] = set()
        self._tokens: dict[str, tuple[dict[str, str], int, datetime]] = {}
        self._buckets = {
            op: _Bucket(rate, burst, clock) for op, (rate, burst) in USAGE_PLANS.items()
        }
        self.enforce_usage_plans = enforce_usage_plans
        self.feed_documents: dict[str, dict[str, Any]] = {}
        """Feed document id → its content type and, once uploaded or written, its bytes."""
        self.feeds: dict[str, dict[str, Any]] = {}
        """Feed id → the feed as created, its status and its report's document."""
        self.invoices: dict[str, list[dict[str, Any]]] = {}
        """Order id → the VAT invoices its feeds delivered."""

    # -- the seller's side ----------------------------------------------------------------

    def add_orders(
        self, n: int, *, age: timedelta = timedelta(hours=1), status: str = "UNSHIPPED"
    ) -> list[str]:
        """Create `n` orders placed `age` ago, one to three lines each; return their ids."""
        created = self.clock() - age
        ids: list[str] = []
        for _ in range(n):
            rnd = self._random
            order_id = (
                f"40{rnd.randint(2, 8)}-{rnd.randint(0, 9999999):07d}-{len(self._orders):07d}"
            )
            lines = [
                _Line(
                    item_id=f"{rnd.randint(10**13, 10**14 - 1)}",
                    sku=sku,
                    title=title,
                    quantity=rnd.randint(1, 3),
                    unit=Decimal(price),
                )
                for sku, title, price in rnd.sample(_PRODUCTS, rnd.randint(1, 3))
            ]
            city, postcode = rnd.choice(_CITIES)
            moment = created + timedelta(seconds=len(self._orders))
            self._orders[order_id] = _AmazonOrder(
                order_id=order_id,
                created=moment,
                updated=moment,
                status=status,
                lines=lines,
                name=f"{rnd.choice(_FIRST)} {rnd.choice(_LAST)}",
                city=city,
                postcode=postcode,
                business=rnd.random() < 0.1,
            )
            ids.append(order_id)
        return ids

    def status(self, order_id: str) -> str:
        """An order's fulfilment status."""
        return self._orders[order_id].status

    def expire_tokens(self) -> None:
        """Age every pagination token past its 24 hours."""
        for token, (query, offset, _) in self._tokens.items():
            self._tokens[token] = (query, offset, self.clock() - TOKEN_LIFE - timedelta(1))

    def calls_to(self, operation: str) -> list[RecordedCall]:
        """The recorded calls of one operation (searchOrders, getOrder, confirmShipment...)."""
        return [c for c in self.calls if c.operation == operation]

    # -- the order as Amazon writes it ----------------------------------------------------

    def document(self, order: _AmazonOrder, included: set[str]) -> dict[str, Any]:
        """One order in the v2026-01-01 shape, with the datasets asked for and allowed."""
        doc: dict[str, Any] = {
            "orderId": order.order_id,
            "createdTime": _stamp(order.created),
            "lastUpdatedTime": _stamp(order.updated),
            "programs": ["AMAZON_BUSINESS"] if order.business else [],
            "salesChannel": {
                "channelName": "AMAZON",
                "marketplaceId": FRANCE,
                "marketplaceName": "Amazon.fr",
            },
            "orderItems": [_item_document(line, included) for line in order.lines],
        }
        shipping_role = SHIPPING_ROLE in self.roles
        if "BUYER" in included:
            buyer: dict[str, Any] = {}
            if shipping_role or self.roles & TAX_ROLES:
                buyer["buyerName"] = order.name
            if shipping_role:
                buyer["buyerEmail"] = f"{order.order_id[-7:]}@marketplace.amazon.fr"
            if order.business:
                buyer["buyerCompanyName"] = f"{order.name.split()[1]} SARL"
            doc["buyer"] = buyer
        if "RECIPIENT" in included:
            address: dict[str, Any] = {
                "city": order.city,
                "countryCode": "FR",
                "addressType": "COMMERCIAL" if order.business else "RESIDENTIAL",
            }
            if shipping_role:
                address.update(
                    name=order.name,
                    addressLine1=f"{self._street(order)} rue de la République",
                    postalCode=order.postcode,
                    phone="+33 4 72 00 00 00",
                )
            doc["recipient"] = {"deliveryAddress": address}
        if "PROCEEDS" in included:
            total = sum((line.unit * line.quantity for line in order.lines), Decimal(0))
            doc["proceeds"] = {
                "grandTotal": _money(total),
                "breakdowns": [{"type": "ITEM", "subtotal": _money(total)}],
            }
        if "FULFILLMENT" in included:
            doc["fulfillment"] = {
                "fulfillmentStatus": order.status,
                "fulfilledBy": "MERCHANT",
                "fulfillmentServiceLevel": "STANDARD",
                "shipByWindow": {
                    "earliestDateTime": _stamp(order.created),
                    "latestDateTime": _stamp(order.created + timedelta(days=2)),
                },
            }
        if "PACKAGES" in included and order.packages:
            doc["packages"] = order.packages
        return doc

    @staticmethod
    def _street(order: _AmazonOrder) -> int:
        return int(order.order_id[-3:]) % 90 + 1

    # -- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application: LWA's token endpoint and the orders operations."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/auth/o2/token", self._lwa, name="lwa")
        app.router.add_get("/orders/2026-01-01/orders", self._search, name="searchOrders")
        app.router.add_get("/orders/2026-01-01/orders/{order_id}", self._get, name="getOrder")
        app.router.add_post(
            "/orders/v0/orders/{order_id}/shipmentConfirmation",
            self._confirm,
            name="confirmShipment",
        )
        app.router.add_post(f"{FEEDS}/documents", self._create_document, name="createFeedDocument")
        app.router.add_get(
            f"{FEEDS}/documents/{{document_id}}", self._get_document, name="getFeedDocument"
        )
        app.router.add_post(f"{FEEDS}/feeds", self._create_feed, name="createFeed")
        app.router.add_get(f"{FEEDS}/feeds/{{feed_id}}", self._get_feed, name="getFeed")
        # The presigned URLs: no access token, as Amazon's S3 URLs carry their own signature.
        app.router.add_put("/presigned/{document_id}", self._upload, name="uploadFeedDocument")
        app.router.add_get("/presigned/{document_id}", self._download, name="downloadDocument")
        return app

    # -- feeds (UPLOAD_VAT_INVOICE) --------------------------------------------------------

    def _presigned(self, request: web.Request, document_id: str) -> str:
        return f"{request.url.origin()}/presigned/{document_id}"

    async def _create_document(self, request: web.Request) -> web.Response:
        body = _json_body(await request.read())
        content_type = body.get("contentType") if isinstance(body, dict) else None
        if not isinstance(content_type, str) or not content_type:
            return _errors(400, "InvalidInput", "contentType is required.")
        document_id = "amzn1.tortuga.4." + secrets.token_hex(8)
        self.feed_documents[document_id] = {"contentType": content_type, "content": None}
        return web.json_response(
            {"feedDocumentId": document_id, "url": self._presigned(request, document_id)},
            status=201,
        )

    async def _upload(self, request: web.Request) -> web.Response:
        document = self.feed_documents.get(request.match_info["document_id"])
        if document is None or document["content"] is not None:
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        if request.headers.get("Content-Type") != document["contentType"]:
            return web.Response(
                status=403, text="<Error><Code>SignatureDoesNotMatch</Code></Error>"
            )
        document["content"] = await request.read()
        return web.Response(status=200)

    async def _download(self, request: web.Request) -> web.Response:
        document = self.feed_documents.get(request.match_info["document_id"])
        if document is None or document["content"] is None:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        return web.Response(body=document["content"], content_type="text/xml")

    async def _get_document(self, request: web.Request) -> web.Response:
        document_id = request.match_info["document_id"]
        if document_id not in self.feed_documents:
            return _errors(404, "NotFound", "The feed document was not found.")
        return web.json_response(
            {"feedDocumentId": document_id, "url": self._presigned(request, document_id)}
        )

    async def _create_feed(self, request: web.Request) -> web.Response:
        body = _json_body(await request.read())
        if not isinstance(body, dict):
            return _errors(400, "InvalidInput", "The body is not a CreateFeedSpecification.")
        for name in ("feedType", "marketplaceIds", "inputFeedDocumentId"):
            if not body.get(name):
                return _errors(400, "InvalidInput", f"{name} is required.")
        document = self.feed_documents.get(body["inputFeedDocumentId"])
        if document is None or document["content"] is None:
            return _errors(400, "InvalidInput", "The input feed document was not uploaded.")
        if body["feedType"] != "UPLOAD_VAT_INVOICE":
            return _errors(400, "InvalidInput", f"Feed type {body['feedType']} is not served.")
        feed_id = str(50000 + len(self.feeds))
        self.feeds[feed_id] = {
            "spec": body,
            "status": "IN_QUEUE",
            "created": _stamp(self.clock()),
            "result": None,
        }
        return web.json_response({"feedId": feed_id}, status=202)

    async def _get_feed(self, request: web.Request) -> web.Response:
        feed_id = request.match_info["feed_id"]
        feed = self.feeds.get(feed_id)
        if feed is None:
            return _errors(404, "NotFound", "The feed was not found.")
        # Each look moves it on: IN_QUEUE, IN_PROGRESS, then DONE with its report.
        if feed["status"] == "IN_QUEUE":
            feed["status"] = "IN_PROGRESS"
        elif feed["status"] == "IN_PROGRESS":
            feed["status"] = "DONE"
            feed["result"] = self._process_invoice(feed_id, feed["spec"])
        answer = {
            "feedId": feed_id,
            "feedType": feed["spec"]["feedType"],
            "marketplaceIds": feed["spec"]["marketplaceIds"],
            "createdTime": feed["created"],
            "processingStatus": feed["status"],
        }
        if feed["result"] is not None:
            answer["resultFeedDocumentId"] = feed["result"]
        return web.json_response(answer)

    def _process_invoice(self, feed_id: str, spec: dict[str, Any]) -> str:
        """Process an UPLOAD_VAT_INVOICE feed; its report is a feed document of its own."""
        options = spec.get("feedOptions") or {}
        order_id = options.get("metadata:orderid")
        content = self.feed_documents[spec["inputFeedDocumentId"]]["content"]
        error = None
        if order_id not in self._orders:
            error = f"Order {order_id} was not found."
        elif not options.get("metadata:invoicenumber"):
            error = "metadata:invoicenumber is required."
        elif options.get("metadata:documenttype") not in INVOICE_DOCUMENT_TYPES:
            error = f"Invalid document type {options.get('metadata:documenttype')}."
        elif not content.startswith(b"%PDF-"):
            error = "The invoice must be a PDF file."
        else:
            self.invoices.setdefault(order_id, []).append(
                {
                    "feed_id": feed_id,
                    "invoice_number": options["metadata:invoicenumber"],
                    "document_type": options["metadata:documenttype"],
                    "content": content,
                }
            )
        report_id = "amzn1.tortuga.4.report." + secrets.token_hex(8)
        result = (
            "<Result><MessageID>1</MessageID><ResultCode>Error</ResultCode>"
            f"<ResultDescription>{xml_escape(error)}</ResultDescription></Result>"
            if error
            else ""
        )
        report = (
            '<?xml version="1.0" encoding="UTF-8"?><AmazonEnvelope><Message><ProcessingReport>'
            f"<DocumentTransactionID>{feed_id}</DocumentTransactionID>"
            "<StatusCode>Complete</StatusCode><ProcessingSummary>"
            "<MessagesProcessed>1</MessagesProcessed>"
            f"<MessagesSuccessful>{0 if error else 1}</MessagesSuccessful>"
            f"<MessagesWithError>{1 if error else 0}</MessagesWithError>"
            f"</ProcessingSummary>{result}</ProcessingReport></Message></AmazonEnvelope>"
        )
        self.feed_documents[report_id] = {"contentType": "text/xml", "content": report.encode()}
        return report_id

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        call = await record(request, self.clock())
        self.calls.append(call)
        operation = call.operation
        response: web.StreamResponse
        if operation in USAGE_PLANS:
            rate = USAGE_PLANS[operation][0]
            if request.headers.get("x-amz-access-token") not in self._access:
                response = _errors(403, "Unauthorized", "Access to requested resource is denied.")
            elif self.enforce_usage_plans and not self._buckets[operation].take():
                response = _errors(429, "QuotaExceeded", "You exceeded your quota.")
            else:
                response = await handler(request)
            response.headers["x-amzn-RateLimit-Limit"] = str(rate)
        else:
            response = await handler(request)
        response.headers["x-amzn-RequestId"] = secrets.token_hex(8)
        call.status = response.status
        call.responded = True
        return response

    async def _lwa(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("refresh_token") != self.refresh_token:
            return web.json_response({"error": "invalid_grant"}, status=400)
        token = "Atza|sandbox-" + secrets.token_urlsafe(16)
        self._access.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "bearer", "expires_in": 3600}
        )

    async def _search(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        problem = self._check_search(query)
        if problem:
            return _errors(400, "InvalidInput", problem)
        offset = 0
        token = query.pop("paginationToken", None)
        if token is not None:
            found = self._tokens.get(token)
            if found is None:
                return _errors(400, "InvalidInput", "Invalid paginationToken.")
            first, offset, issued = found
            if self.clock() - issued > TOKEN_LIFE:
                return _errors(400, "InvalidInput", "The paginationToken has expired.")
            if first != query:
                return _errors(400, "InvalidInput", "The paginationToken belongs to another query.")
        size = int(query.get("maxResultsPerPage", "100"))
        matching = sorted(
            (o for o in self._orders.values() if self._matches(o, query)),
            key=lambda o: (o.updated, o.order_id),
        )
        included = set(_list(query.get("includedData")))
        page = matching[offset : offset + size]
        answer: dict[str, Any] = {"orders": [self.document(o, included) for o in page]}
        if offset + size < len(matching):
            # Real tokens are base64: `+`, `/` and `=` included, so clients must encode them.
            nxt = base64.b64encode(b"\xfb\xff" + secrets.token_bytes(7)).decode()
            self._tokens[nxt] = (query, offset + size, self.clock())
            answer["pagination"] = {"nextToken": nxt}
        if "lastUpdatedBefore" in query:
            answer["lastUpdatedBefore"] = query["lastUpdatedBefore"]
        return web.json_response(answer)

    def _check_search(self, query: dict[str, str]) -> str | None:
        unknown = sorted(set(query) - SEARCH_PARAMETERS)
        if unknown:
            return f"Unknown parameter: {', '.join(unknown)}."
        if ("createdAfter" in query) == ("lastUpdatedAfter" in query):
            return "Exactly one of createdAfter and lastUpdatedAfter must be provided."
        if "createdAfter" in query and ({"lastUpdatedAfter", "lastUpdatedBefore"} & set(query)):
            return "createdAfter cannot be combined with lastUpdatedAfter or lastUpdatedBefore."
        if "lastUpdatedAfter" in query and "createdBefore" in query:
            return "lastUpdatedAfter cannot be combined with createdBefore."
        for name, allowed in (
            ("fulfillmentStatuses", FULFILLMENT_STATUSES),
            ("fulfilledBy", FULFILLED_BY),
            ("includedData", INCLUDED_DATA),
        ):
            bad = [v for v in _list(query.get(name)) if v not in allowed]
            if bad:
                return f"Invalid {name} value: {bad[0]}."
        if len(_list(query.get("marketplaceIds"))) > 50:
            return "marketplaceIds: at most 50."
        size = query.get("maxResultsPerPage", "100")
        if not size.isdigit() or not 1 <= int(size) <= 100:
            return "maxResultsPerPage must be between 1 and 100."
        try:
            moments = {
                k: from_iso(v)
                for k, v in query.items()
                if k in ("createdAfter", "createdBefore", "lastUpdatedAfter", "lastUpdatedBefore")
            }
        except ValueError:
            return "Dates must be in ISO 8601 format."
        latest = self.clock() - timedelta(minutes=2)
        for after, before in (
            ("createdAfter", "createdBefore"),
            ("lastUpdatedAfter", "lastUpdatedBefore"),
        ):
            if before in moments:
                if moments[before] > latest:
                    return f"{before} must be at least two minutes before the request."
                if after in moments and moments[before] < moments[after]:
                    return f"{before} must be equal to or after {after}."
        return None

    def _matches(self, order: _AmazonOrder, query: dict[str, str]) -> bool:
        if "createdAfter" in query:
            moment, after, before = order.created, "createdAfter", "createdBefore"
        else:
            moment, after, before = order.updated, "lastUpdatedAfter", "lastUpdatedBefore"
        if moment < from_iso(query[after]):
            return False
        if before in query and moment > from_iso(query[before]):
            return False
        marketplaces = _list(query.get("marketplaceIds"))
        if marketplaces and FRANCE not in marketplaces:
            return False
        if "MERCHANT" not in (_list(query.get("fulfilledBy")) or ["MERCHANT"]):
            return False
        statuses = _list(query.get("fulfillmentStatuses"))
        return not statuses or order.status in statuses

    async def _get(self, request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"includedData"})
        if unknown:
            return _errors(400, "InvalidInput", f"Unknown parameter: {', '.join(unknown)}.")
        included = _list(request.query.get("includedData"))
        bad = [v for v in included if v not in INCLUDED_DATA]
        if bad:
            return _errors(400, "InvalidInput", f"Invalid includedData value: {bad[0]}.")
        order = self._orders.get(request.match_info["order_id"])
        if order is None:
            return _errors(404, "NotFound", "Order not found.")
        return web.json_response({"order": self.document(order, set(included))})

    async def _confirm(self, request: web.Request) -> web.Response:
        order = self._orders.get(request.match_info["order_id"])
        if order is None:
            return _errors(404, "NotFound", "Order not found.")
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _errors(400, "InvalidInput", "The body is not JSON.")
        problem = _check_confirmation(body, order)
        if problem:
            return _errors(400, "InvalidInput", problem)
        if order.status in ("CANCELLED", "UNFULFILLABLE", "PENDING"):
            return _errors(400, "InvalidInput", f"The order is {order.status}.")
        detail = body["packageDetail"]
        by_id = {line.item_id: line for line in order.lines}
        for entry in detail["orderItems"]:
            by_id[entry["orderItemId"]].shipped += entry["quantity"]
        order.status = (
            "SHIPPED" if all(x.shipped >= x.quantity for x in order.lines) else "PARTIALLY_SHIPPED"
        )
        order.updated = self.clock()
        order.packages.append(
            {
                "packageReferenceId": detail["packageReferenceId"],
                "createdTime": _stamp(order.updated),
                "packageStatus": {"status": "SHIPPED"},
                "carrier": detail.get("carrierName") or detail["carrierCode"],
                "shipTime": detail["shipDate"],
                "trackingNumber": detail["trackingNumber"],
                "packageItems": [
                    {"orderItemId": e["orderItemId"], "quantity": e["quantity"]}
                    for e in detail["orderItems"]
                ],
            }
        )
        return web.Response(status=204)


def _check_confirmation(body: Any, order: _AmazonOrder) -> str | None:
    """What the v0 ConfirmShipmentRequest model refuses, else None."""
    if not isinstance(body, dict) or not isinstance(body.get("marketplaceId"), str):
        return "marketplaceId is required."
    detail = body.get("packageDetail")
    if not isinstance(detail, dict):
        return "packageDetail is required."
    for name in ("packageReferenceId", "carrierCode", "trackingNumber", "shipDate"):
        if not isinstance(detail.get(name), str) or not detail[name]:
            return f"packageDetail.{name} is required (a string)."
    if detail["carrierCode"] == "Other" and not detail.get("carrierName"):
        return "packageDetail.carrierName is required when carrierCode is Other."
    items = detail.get("orderItems")
    if not isinstance(items, list) or not items:
        return "packageDetail.orderItems is required."
    lines = {line.item_id: line for line in order.lines}
    for entry in items:
        line = lines.get(str(entry.get("orderItemId"))) if isinstance(entry, dict) else None
        if line is None:
            return "packageDetail.orderItems: unknown orderItemId."
        quantity = entry.get("quantity")
        if not isinstance(quantity, int) or not 0 < quantity <= line.quantity - line.shipped:
            return f"orderItemId {line.item_id}: invalid quantity."
    return None


def _list(value: str | None) -> list[str]:
    """An array parameter in the models' default `csv` format."""
    return [v for v in (value or "").split(",") if v]


def _json_body(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return None


def _errors(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"errors": [{"code": code, "message": message, "details": ""}]}, status=status
    )


@asynccontextmanager
async def run_amazon(
    amazon: SandboxAmazon, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve `amazon` on `host` (a free port by default) and yield its base URL.

    LWA's token endpoint is at BASE/auth/o2/token, the orders operations under BASE.
    """
    async with serve(amazon.app(), host=host, port=port) as url:
        yield url
