"""The shop webservice: Shoppingfeed's order API v1, served from storage.

The shapes come from `sfd.connectors.shoppingfeed`; the rules from `sfd.domain.rules` through
storage. This module reads requests, checks tokens and stores, and answers.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from sfd.connectors import shoppingfeed as sf
from sfd.connectors import shoppingfeed_documents as sfdocs
from sfd.daemon.outbox import request_operations
from sfd.domain import EventSource, OperationKind, OrderStatus, TicketState
from sfd.domain.clock import Clock
from sfd.domain.documents import MAX_DOCUMENT_BYTES, MAX_DOCUMENTS, DocumentRefused, check_document
from sfd.domain.rules import document_payload
from sfd.logs import get_logger
from sfd.storage import OperationRequest, OrderFilter, Storage, StorageUnavailable
from sfd.storage.tokens import TokenIdentity

log = get_logger()

MAX_LIMIT = 200
MAX_BODY = 10 * 1024**2
MAX_ID = 2**63 - 1
IDENTITY = web.RequestKey("identity", TokenIdentity)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Item = TypeVar("_Item")


def problem(status: int, title: str, detail: str, field: str | None = None) -> web.Response:
    """An error body in the problem style the real API uses, naming the field at fault."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if field:
        body["field"] = field
    return web.Response(
        body=sf.encode(body), status=status, content_type="application/problem+json"
    )


#: Order-list filters of Shoppingfeed that sfd cannot honour: refused by name, never ignored,
#: so a client never takes a wider list for the one it asked for.
REFUSED_FILTERS = {
    "tag": "sfd keeps no order tags (Shoppingfeed sets them in its back office), "
    "so no order could match; list without it",
    "search": "sfd has no full-text order search; filter by reference or storeReference",
    "error": "sfd cannot filter by error type; the order page and `sfd orders list` "
    "show the orders with errors",
}

#: Seconds a client is asked to wait when the disk cannot take writes.
STORAGE_RETRY_AFTER = 60


def storage_unavailable(exc: StorageUnavailable) -> web.Response:
    """503 for a write the disk refused (full, read-only): nothing was changed, try later."""
    response = problem(
        503,
        "Service Unavailable",
        f"the order database cannot take writes ({exc.condition.kind}); "
        "nothing was changed, try again later",
    )
    response.headers["Retry-After"] = str(STORAGE_RETRY_AFTER)
    return response


async def read_part(part: BodyPartReader, limit: int) -> bytes | None:
    """A part's bytes, or None past `limit` (the rest is not kept in memory)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class BodyTimeout(TimeoutError):
    """The client did not send its whole body in time (a slow-loris): nothing is done.

    A TimeoutError, so aiohttp's draining of an unread body after the 408 stops quietly."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s")


@dataclass
class _Refused:
    count: int
    logged_at: float
    unlogged: int = 0


class TokenRefusals:
    """Counts the wrong tokens each source (client address) sent, and warns once per source.

    A source guessing tokens gets one `token_refused` warning, then another at most every
    `window` seconds with how many more it sent: a thousand guesses are one log line, not a
    thousand. At most `max_sources` sources are remembered, the least recent forgotten first.
    """

    def __init__(
        self,
        window: float = 3600.0,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_sources = max_sources
        self.clock = clock
        self._sources: OrderedDict[str, _Refused] = OrderedDict()

    def refused(self, source: str, where: str) -> None:
        """One more wrong token from `source`, at `where` (v1, auth or ws)."""
        now = self.clock()
        entry = self._sources.get(source)
        if entry is None:
            entry = self._sources[source] = _Refused(count=0, logged_at=now - self.window)
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        entry.count += 1
        entry.unlogged += 1
        if now - entry.logged_at >= self.window:
            log.warning(
                "token_refused",
                source=source,
                count=entry.count,
                since_last_warning=entry.unlogged,
                where=where,
            )
            entry.logged_at = now
            entry.unlogged = 0

    def count(self, source: str) -> int:
        """How many wrong tokens `source` sent while remembered."""
        entry = self._sources.get(source)
        return entry.count if entry else 0


def hal(body: Any, status: int = 200) -> web.Response:
    """A JSON answer; bytes are sent as they are (pre-rendered documents)."""
    data = body if isinstance(body, bytes) else sf.encode(body)
    return web.Response(body=data, status=status, content_type="application/json")


def bearer(request: web.Request) -> str | None:
    """The token from `Authorization: Bearer <token>` (or the bare token some modules send)."""
    header = request.headers.get("Authorization", "").strip()
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if value and scheme.lower() == "bearer":
        return value.strip()
    return header if not value else None


class ShopApi:
    """The v1 handlers over one storage."""

    def __init__(
        self, storage: Storage, clock: Clock, on_operations: Callable[[], None] = lambda: None
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.on_operations = on_operations
        self.refusals = TokenRefusals()

    def routes(self, app: web.Application) -> None:
        """Add the v1 routes and their middleware."""
        app.middlewares.append(self._middleware)
        r = app.router
        r.add_get("/v1/ping", self.ping)
        r.add_post("/v1/auth", self.auth)
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_get("/v1/me", self.me)
        store = "/v1/store/{store_id:\\d+}"
        r.add_get(store, self.store)
        r.add_get(store + "/order", self.orders)
        r.add_get(store + "/order/", self.orders)
        r.add_get(store + "/order/{order_id:\\d+}", self.order)
        r.add_get(store + "/order/{order_id:\\d+}/shipment", self.shipments)
        r.add_post(store + "/order/" + sfdocs.OPERATION, self.upload_documents)
        r.add_post(store + "/order/{operation}", self.operate)
        r.add_get(store + "/ticket", self.tickets)
        r.add_get(store + "/ticket/{ticket_id}", self.ticket)
        r.add_get(store + "/channel", self.channels)
        r.add_get("/v1/channel/{channel_id:\\d+}", self.channel)
        r.add_route("*", "/v1/catalog/{store_id:\\d+}/{resource}", self.catalog)

    # -- plumbing ---------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        public = request.path in ("/v1/ping", "/v1/auth", "/v1/openapi.json")
        try:
            if not public:
                token = bearer(request)
                identity = await self.storage.tokens.verify(token) if token else None
                if identity is None:
                    if token:
                        self.refusals.refused(request.remote or "unknown", "v1")
                    return problem(
                        401,
                        "Unauthorized",
                        "a valid API token is required: Authorization: Bearer <token>",
                    )
                request[IDENTITY] = identity
                store_id = request.match_info.get("store_id")
                if store_id is not None and int(store_id) != identity.store_id:
                    return problem(404, "Not Found", f"no store {store_id[:20]}")
            return await handler(request)
        except sf.WireError as exc:
            return problem(400, "Bad Request", str(exc), exc.field)
        except StorageUnavailable as exc:
            return storage_unavailable(exc)
        except web.HTTPRequestEntityTooLarge:
            return problem(
                400, "Bad Request", f"the body is over the {MAX_BODY} byte limit", "body"
            )
        except web.HTTPNotFound:
            return problem(404, "Not Found", f"nothing at {request.path}")
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            response = problem(
                405, "Method Not Allowed", f"{request.method} is not allowed here; use {allowed}"
            )
            response.headers["Allow"] = allowed
            return response

    @staticmethod
    def _identity(request: web.Request) -> TokenIdentity:
        return request[IDENTITY]

    @staticmethod
    def _path_id(request: web.Request, name: str) -> int:
        """A numeric id from the path; one SQLite cannot hold names nothing, so 404."""
        value = int(request.match_info[name])
        if value > MAX_ID:
            raise web.HTTPNotFound()
        return value

    @staticmethod
    def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
        text = request.query.get(name)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise sf.WireError(name, f"expected an integer, got {text[:40]!r}") from None
        if not low <= value <= high:
            raise sf.WireError(name, f"expected {low} to {high}, got {value}")
        return value

    def _page(self, request: web.Request) -> tuple[int, int]:
        return (
            self._int(request, "page", 1, 1, 10**9),
            self._int(request, "limit", MAX_LIMIT, 1, MAX_LIMIT),
        )

    def _listed(
        self,
        request: web.Request,
        key: str,
        everything: Sequence[_Item],
        document: Callable[[_Item], Any],
    ) -> web.Response:
        """The requested page of a list read whole, as a collection of `key` documents."""
        page, limit = self._page(request)
        chosen = everything[(page - 1) * limit : page * limit]
        return hal(
            sf.collection(
                key,
                [sf.encode(document(item)) for item in chosen],
                path=request.path,
                query={},
                page=page,
                limit=limit,
                total=len(everything),
            )
        )

    # -- session ----------------------------------------------------------------------------

    async def ping(self, _request: web.Request) -> web.Response:
        """Unauthenticated liveness, as the SDK's ping expects."""
        return hal({"timestamp": int(self.clock().timestamp())})

    async def auth(self, request: web.Request) -> web.Response:
        """Password grant: the username is a token's name, the password the token."""
        if request.content_type == "application/json":
            body = sf.decode_json(await request.read())
        else:
            try:
                body = dict(await request.post())
            except ValueError as exc:  # a malformed form: no or a wrong multipart boundary
                raise sf.WireError("body", f"not a readable form: {exc}") from None
        if not isinstance(body, dict):
            raise sf.WireError("body", "expected an object")
        if body.get("grant_type") != "password":
            raise sf.WireError("grant_type", "expected 'password'")
        username, password = body.get("username"), body.get("password")
        for field, value in (("username", username), ("password", password)):
            if not isinstance(value, str) or not value.strip():
                raise sf.WireError(field, "is required")
        assert isinstance(username, str)
        assert isinstance(password, str)
        identity = await self.storage.tokens.verify(password.strip(), name=username.strip())
        if identity is None:
            self.refusals.refused(request.remote or "unknown", "auth")
            return problem(401, "Not Authorized", "Invalid username or password")
        return hal({"token_type": "Bearer", "access_token": password.strip()})

    async def openapi(self, _request: web.Request) -> web.Response:
        """The OpenAPI 3.1 description of this API."""
        document = resources.files("sfd.daemon").joinpath("openapi.json").read_bytes()
        return hal(document)

    def _store_document(self, store_id: int, name: str) -> dict[str, Any]:
        base = f"/v1/store/{store_id}"
        return {
            "id": store_id,
            "name": name,
            "country": "FR",
            "status": "active",
            "deletedAt": None,
            "organization": None,
            "_links": {
                "self": {"href": base},
                "order": {"href": base + "/order{/operation}", "templated": True},
                "ticket": {"href": base + "/ticket"},
                "channel": {"href": base + "/channel"},
                # sfd keeps no catalog; the links exist so SDK clients get a 404, not a crash.
                "inventory": {"href": f"/v1/catalog/{store_id}/inventory"},
                "pricing": {"href": f"/v1/catalog/{store_id}/pricing"},
            },
        }

    async def me(self, request: web.Request) -> web.Response:
        """The session: the token's account and its one store."""
        identity = self._identity(request)
        name = await self.storage.channels.store_name(identity.store_id) or ""
        return hal(
            {
                "token": bearer(request),
                "login": identity.name,
                "email": "",
                "language": "en_US",
                "roles": ["user"],
                "_links": {"self": {"href": "/v1/me"}},
                "_embedded": {
                    "account": {"id": identity.id, "login": identity.name},
                    "store": [self._store_document(identity.store_id, name)],
                },
            }
        )

    async def store(self, request: web.Request) -> web.Response:
        """One store."""
        identity = self._identity(request)
        name = await self.storage.channels.store_name(identity.store_id) or ""
        return hal(self._store_document(identity.store_id, name))

    # -- orders -----------------------------------------------------------------------------

    async def _order_filter(self, request: web.Request, store_id: int) -> OrderFilter:
        q = request.query
        for name, why in REFUSED_FILTERS.items():
            if name in q:
                raise sf.WireError(name, f"this filter is not supported: {why}")
        statuses = sf.parse_statuses(q["status"]) if q.get("status") else None
        ack_text = q.get("acknowledgment", q.get("acknowledgement", ""))
        if ack_text not in ("", "acknowledged", "unacknowledged"):
            raise sf.WireError(
                "acknowledgment", f"expected 'acknowledged' or 'unacknowledged', got {ack_text!r}"
            )
        acknowledged = None if not ack_text else ack_text == "acknowledged"
        channel_id: int | None = None
        channel_name: str | None = None
        channel = q.get("channelId") or q.get("channel")
        if channel:
            if channel.isascii() and channel.isdigit():
                channel_id = int(channel) if len(channel) < 19 else 0  # 0: no such channel
            else:
                channel_name = channel
        common: dict[str, Any] = {
            "channel": channel_name,
            "channel_id": channel_id,
            "reference": q.get("reference") or None,
            "store_reference": q.get("storeReference") or None,
            "created_since": sf.parse_date(q["since"], "since") if q.get("since") else None,
            "created_until": sf.parse_date(q["until"], "until") if q.get("until") else None,
            "sort": "updated",
        }
        now = self.clock()
        if acknowledged is False and statuses == [OrderStatus.WAITING_SHIPMENT]:
            # The orders to process: the same set GetOrders and the order page offer.
            return OrderFilter.to_process(now, store_id=store_id, **common)
        # Unacknowledged orders are offered for 7 days, whatever statuses are asked for: a
        # module asking for several statuses must not be handed older orders.
        window = OrderFilter.to_process(now).updated_since if acknowledged is False else None
        return OrderFilter(
            store_id=store_id,
            statuses=statuses,
            acknowledged=acknowledged,
            updated_since=window,
            # An order waiting for the buyer's payment is not offered until it is released.
            payment_pending=False if acknowledged is False else None,
            **common,
        )

    async def orders(self, request: web.Request) -> web.Response:
        """A page of orders, filtered exactly as the client asks."""
        identity = self._identity(request)
        page, limit = self._page(request)
        query = await self._order_filter(request, identity.store_id)
        query = replace(query, limit=limit, offset=(page - 1) * limit)
        total, documents = await self.storage.orders.documents(query)
        kept = {k: v for k, v in request.query.items() if k not in ("page", "limit")}
        return hal(
            sf.collection(
                "order",
                documents,
                path=request.path.rstrip("/"),
                query=kept,
                page=page,
                limit=limit,
                total=total,
            )
        )

    async def order(self, request: web.Request) -> web.Response:
        """One order of the token's store."""
        identity = self._identity(request)
        order_id = self._path_id(request, "order_id")
        _, documents = await self.storage.orders.documents(
            OrderFilter(store_id=identity.store_id, order_id=order_id, limit=1)
        )
        if not documents:
            return problem(404, "Not Found", f"no order {order_id} in store {identity.store_id}")
        return hal(documents[0])

    async def shipments(self, request: web.Request) -> web.Response:
        """The order's shipments."""
        identity = self._identity(request)
        order_id = self._path_id(request, "order_id")
        if (
            await self.storage.orders.get(order_id, store_id=identity.store_id, details=False)
            is None
        ):
            return problem(404, "Not Found", f"no order {order_id} in store {identity.store_id}")
        shipments = await self.storage.operations.shipments(order_id)
        return self._listed(request, "shipment", shipments, sf.render_shipment)

    async def operate(self, request: web.Request) -> web.Response:
        """Validate the whole request, then write every entry and its ticket in one go: 202."""
        identity = self._identity(request)
        name = request.match_info["operation"]
        try:
            kind = OperationKind(name)
        except ValueError:
            kind = None
        if kind is None or kind == OperationKind.UPLOAD_DOCUMENT:
            known = ", ".join(k.value for k in OperationKind if k != OperationKind.UPLOAD_DOCUMENT)
            raise sf.WireError(
                "operation",
                f"unknown operation {name[:40]!r} (known: {known}, {sfdocs.OPERATION})",
            ) from None
        entries = sf.parse_operation(kind, await request.read())
        requests = [
            OperationRequest(
                payload=payload,
                order_id=entry.id,
                reference=entry.reference,
                channel=entry.channel_name,
            )
            for entry, payload in entries
        ]
        return await self._accept(identity, kind, requests)

    async def upload_documents(self, request: web.Request) -> web.Response:
        """Documents (invoices) for orders, as the SDK's uploadDocument sends them: 202.

        Every file is read and checked (PDF, JPEG or PNG by content, 10 MiB at most) before
        anything is stored; one refused file refuses the request, naming it."""
        identity = self._identity(request)
        try:
            files, body = await self._read_upload(request)
        except (ValueError, HttpProcessingError) as exc:
            if isinstance(exc, sf.WireError):
                raise
            # A part whose headers or encoding cannot be read: the whole request is refused.
            raise sf.WireError("body", f"not a readable multipart body: {exc}") from None
        if body is None:
            raise sf.WireError("body", 'the "body" part is missing')
        entries = sfdocs.parse_upload_body(body, len(files))
        requests = []
        for entry in entries:
            file_name, content = files[entry.file]
            try:
                document = check_document(file_name, content, entry.type)
            except DocumentRefused as exc:
                raise sf.WireError(f"files[{entry.file}]", str(exc)) from None
            requests.append(
                OperationRequest(
                    payload=document_payload(document),
                    order_id=entry.order_id,
                    reference=entry.reference,
                    channel=entry.channel_name,
                    document=document,
                )
            )
        return await self._accept(identity, OperationKind.UPLOAD_DOCUMENT, requests)

    async def _accept(
        self, identity: TokenIdentity, kind: OperationKind, requests: Sequence[OperationRequest]
    ) -> web.Response:
        """Write the batch of operations and its ticket, and answer 202 with the ticket's link."""
        batch = await request_operations(
            self.storage,
            identity.store_id,
            kind,
            requests,
            EventSource.API,
            self.clock(),
            self.on_operations,
            actor=identity.name,
        )
        base = f"/v1/store/{identity.store_id}"
        return hal(
            {
                "id": batch.id,
                "_links": {"ticket": {"href": f"{base}/ticket?batchId={batch.id}"}},
            },
            status=202,
        )

    @staticmethod
    async def _read_upload(request: web.Request) -> tuple[list[tuple[str, bytes]], bytes | None]:
        """The `files[]` parts (name, bytes) and the `body` part of a multipart upload."""
        if request.content_type != "multipart/form-data":
            raise sf.WireError(
                "body",
                f"expected multipart/form-data (files[] and body parts), "
                f"not {request.content_type or 'no content type'}",
            )
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise sf.WireError("body", f"not a readable multipart body: {exc}") from None
        files: list[tuple[str, bytes]] = []
        body: bytes | None = None
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise sf.WireError("body", "nested multipart parts are not taken")
            if part.name in ("files[]", "files"):
                if len(files) >= MAX_DOCUMENTS:
                    raise sf.WireError(
                        "files[]", f"more than {MAX_DOCUMENTS} files; at most {MAX_DOCUMENTS}"
                    )
                name = part.filename or f"file {len(files) + 1}"
                content = await read_part(part, MAX_DOCUMENT_BYTES)
                if content is None:
                    raise sf.WireError(
                        f"files[{len(files)}]",
                        f"{name}: is over {MAX_DOCUMENT_BYTES} bytes (10 MiB) a file",
                    )
                files.append((name, content))
            elif part.name == "body":
                body = await read_part(part, 1024**2)
                if body is None:
                    raise sf.WireError("body", "the body part is over 1 MiB")
            else:
                raise sf.WireError(
                    "body", f"unexpected part {str(part.name)[:40]!r}: expected files[] and body"
                )
        return files, body

    # -- tickets and channels ---------------------------------------------------------------

    async def tickets(self, request: web.Request) -> web.Response:
        """Tickets, by batch or all; `meta.processing` is true while any is unfinished."""
        identity = self._identity(request)
        page, limit = self._page(request)
        batch_id = request.query.get("batchId")
        states: list[TicketState] | None = None
        if request.query.get("state"):
            try:
                states = [TicketState(s) for s in request.query["state"].split(",")]
            except ValueError:
                raise sf.WireError(
                    "state", "expected scheduled, running, succeed, failed or canceled"
                ) from None
        if batch_id:
            everything = await self.storage.operations.batch(identity.store_id, batch_id)
            if states:
                everything = [t for t in everything if t.state in states]
            total, chosen = len(everything), everything[(page - 1) * limit : page * limit]
            processing = any(
                t.state in (TicketState.SCHEDULED, TicketState.RUNNING) for t in everything
            )
        else:
            total, chosen = await self.storage.operations.tickets(
                identity.store_id, states=states, limit=limit, offset=(page - 1) * limit
            )
            processing = any(
                t.state in (TicketState.SCHEDULED, TicketState.RUNNING) for t in chosen
            )
        kept = {k: v for k, v in request.query.items() if k not in ("page", "limit")}
        return hal(
            sf.collection(
                "ticket",
                [sf.encode(sf.render_ticket(t)) for t in chosen],
                path=request.path,
                query=kept,
                page=page,
                limit=limit,
                total=total,
                meta={"processing": processing},
            )
        )

    async def ticket(self, request: web.Request) -> web.Response:
        """One ticket."""
        identity = self._identity(request)
        ticket = await self.storage.operations.ticket(
            identity.store_id, request.match_info["ticket_id"]
        )
        if ticket is None:
            return problem(404, "Not Found", "no such ticket in this store")
        return hal(sf.render_ticket(ticket))

    async def catalog(self, request: web.Request) -> web.Response:
        """Inventory and pricing are the shop's business, not the order hub's."""
        return problem(404, "Not Found", "sfd manages orders only; it keeps no catalog")

    async def channels(self, request: web.Request) -> web.Response:
        """The store's channels, as the SDK's StoreChannel resources."""
        identity = self._identity(request)
        channels = await self.storage.channels.states(store_id=identity.store_id)
        return self._listed(
            request,
            "storeChannel",
            channels,
            lambda c: {
                "id": c.id,
                "installed": True,
                "_links": {"self": {"href": f"/v1/channel/{c.id}"}},
                "_embedded": {"channel": sf.channel_document(c.id, c.name)},
            },
        )

    async def channel(self, request: web.Request) -> web.Response:
        """One channel of the token's store."""
        identity = self._identity(request)
        wanted = self._path_id(request, "channel_id")
        for c in await self.storage.channels.states(store_id=identity.store_id):
            if c.id == wanted:
                return hal(sf.channel_document(c.id, c.name))
        return problem(404, "Not Found", f"no channel {wanted} in this store")
