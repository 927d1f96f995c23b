"""The legacy Shopping Flux XML webservice, `POST /ws`, for the old shop modules.

The wire format is `sfd.connectors.shoppingflux_xml`; the rules are the same as the v1 API's,
through `storage.operations.submit`. Every answer is a well-formed XML document, errors too:
the old modules parse whatever comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from aiohttp import web
from aiohttp.web_request import FileField

from sfd.connectors import shoppingflux_xml as wsx
from sfd.connectors.base import CarrierLister, ConnectorError
from sfd.daemon.api import BodyTimeout, TokenRefusals
from sfd.daemon.outbox import request_operations
from sfd.domain import EventSource, OperationKind, StoredOrder, Ticket, TicketState
from sfd.domain.clock import Clock
from sfd.domain.rules import AcknowledgePayload, ReasonPayload, ShipPayload
from sfd.logs import get_logger
from sfd.storage import (
    Batch,
    OperationRequest,
    OrderFilter,
    Storage,
    StorageError,
    StorageUnavailable,
)
from sfd.storage.tokens import TokenIdentity

log = get_logger()

#: The largest form body read: a REQUEST at its limit, URL-encoded (up to 3 bytes per byte).
MAX_FORM_BYTES = 3 * wsx.MAX_REQUEST_BYTES + 1024**2
#: GetOrders reads the orders to process in pages of this many.
PAGE = 200
CONTENT_TYPE = "text/xml"
CALLS = ("GetOrders", "ValidOrders", "UpdateOrders", "GetCarriers", "IsClient")
#: MODE value of a module in test mode: its writes are answered as done, and nothing changes.
SANDBOX_MODE = "sandbox"
#: Ticket states that mean the request was taken.
_TAKEN = frozenset({TicketState.SCHEDULED, TicketState.RUNNING, TicketState.SUCCEED})


def xml_response(body: bytes, status: int = 200) -> web.Response:
    """An XML answer, UTF-8."""
    return web.Response(body=body, status=status, content_type=CONTENT_TYPE, charset="utf-8")


_CALLS = {c.lower(): c for c in CALLS}
#: What a write call's REQUEST holds: the orders to acknowledge, or to ship or cancel.
_Entry = TypeVar("_Entry", bound=wsx.RequestOrder)


@dataclass(frozen=True)
class _Form:
    token: str
    call: str
    mode: str
    request: str | bytes


class _Refused(Exception):
    """A request answered with an XML error."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


class LegacyWebservice:
    """The `/ws` handler over one storage."""

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        on_operations: Callable[[], None] = lambda: None,
        carriers: Mapping[int, Sequence[CarrierLister]] | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.on_operations = on_operations
        self.carriers = carriers or {}
        """Store id → its channels' connectors that can list their marketplace's carriers."""
        self.refusals = TokenRefusals()
        """Shared with the v1 API's when both are served (see `build_app`)."""

    def routes(self, app: web.Application) -> None:
        """Add `POST /ws`, `/ws/` and `/`: old modules post to the bare host name."""
        app.router.add_post("/ws", self.handle)
        app.router.add_post("/ws/", self.handle)
        app.router.add_post("/", self.handle)

    # -- plumbing ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """Read the form, check the token, run the CALL; answer XML whatever happens."""
        now = self.clock()
        envelope = wsx.Envelope(date=now, call="", token="", mode="")
        try:
            form = await self._form(request)
            envelope = wsx.Envelope(date=now, call=form.call, token=form.token, mode=form.mode)
            return await self._dispatch(form, envelope, request.remote or "unknown")
        except _Refused as exc:
            return xml_response(
                wsx.render_error(envelope, exc.type, exc.message, root_error=exc.status == 401),
                status=exc.status,
            )
        except wsx.XmlWireError as exc:
            return xml_response(wsx.render_error(envelope, "Request", str(exc)), status=400)
        except StorageUnavailable as exc:
            message = (
                f"the order database cannot take writes ({exc.condition.kind}); "
                "nothing was changed, try again later"
            )
            return xml_response(wsx.render_error(envelope, "Server", message), status=503)
        except StorageError as exc:
            log.warning("ws_storage_error", call=envelope.call, error=str(exc))
            return xml_response(
                wsx.render_error(envelope, "Server", "the order database is busy; try again"),
                status=503,
            )
        except BodyTimeout:
            raise  # answered 408 by the server's body deadline
        except Exception:
            log.exception("ws_failed", call=envelope.call)
            return xml_response(
                wsx.render_error(envelope, "Server", "internal error; see the sfd log"),
                status=500,
            )

    async def _form(self, request: web.Request) -> _Form:
        """TOKEN, CALL, MODE and REQUEST, from a multipart or URL-encoded body."""
        # The app's body limit suits JSON; a REQUEST may be up to MAX_REQUEST_BYTES, encoded.
        sized = request.clone(client_max_size=MAX_FORM_BYTES)
        try:
            post = await sized.post()
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(
                400,
                "Request",
                f"REQUEST: the form is over {MAX_FORM_BYTES} bytes; "
                f"a REQUEST may be up to {wsx.MAX_REQUEST_BYTES} bytes",
            ) from None
        except ValueError as exc:
            raise _Refused(400, "Request", f"the form cannot be read: {exc}") from None
        values: dict[str, str | bytes] = {}
        for name in ("TOKEN", "CALL", "MODE", "REQUEST"):
            value = post.get(name)
            if isinstance(value, FileField):
                values[name] = await asyncio.to_thread(value.file.read)
            elif value is not None:
                values[name] = value if isinstance(value, str) else bytes(value)

        def text(name: str) -> str:
            value = values.get(name, "")
            if isinstance(value, str):
                return value
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise _Refused(400, "Request", f"{name}: is not UTF-8") from None

        # REQUEST may stay bytes: the parser then follows the document's XML declaration.
        return _Form(
            token=text("TOKEN"),
            call=text("CALL"),
            mode=text("MODE"),
            request=values.get("REQUEST", ""),
        )

    async def _dispatch(self, form: _Form, envelope: wsx.Envelope, source: str) -> web.Response:
        token = form.token.strip()
        call = form.call.strip()
        if not token:
            raise _Refused(400, "Request", "TOKEN: is required")
        if not call:
            raise _Refused(400, "Request", f"CALL: is required ({', '.join(CALLS)})")
        identity = await self.storage.tokens.verify(token)
        if identity is None:
            self.refusals.refused(source, "ws")
            raise _Refused(401, "Authentication", "invalid token")
        now = envelope.date
        sandbox = form.mode.strip().lower() == SANDBOX_MODE
        match _CALLS.get(call.lower()):
            case "GetOrders":
                orders = await self._to_process(identity, now)
                return xml_response(wsx.render_orders(envelope, orders))
            case "ValidOrders":
                acks = wsx.parse_valid_orders(form.request)
                results = await self._write(
                    identity, "ValidOrders", sandbox, acks, now, self._valid_orders
                )
                return xml_response(wsx.render_valid_orders(envelope, results))
            case "UpdateOrders":
                updates = wsx.parse_update_orders(form.request)
                results = await self._write(
                    identity, "UpdateOrders", sandbox, updates, now, self._update_orders
                )
                return xml_response(wsx.render_update_orders(envelope, results))
            case "GetCarriers":
                return xml_response(wsx.render_carriers(envelope, await self._carriers(identity)))
            case "IsClient":
                return xml_response(wsx.render_is_client(envelope))
        raise _Refused(
            400,
            "Request",
            f"CALL: unknown call {wsx.clean_text(call[:40])!r} (known: {', '.join(CALLS)})",
        )

    # -- calls ------------------------------------------------------------------------------

    async def _to_process(self, identity: TokenIdentity, now: datetime) -> list[StoredOrder]:
        """Every order to process of the token's store, read a page at a time."""
        orders: list[StoredOrder] = []
        offset = 0
        while True:
            query = OrderFilter.to_process(
                now, store_id=identity.store_id, limit=PAGE, offset=offset, sort="updated"
            )
            page = await self.storage.orders.find(query, details=True)
            orders.extend(page)
            if len(page) < PAGE:
                return orders
            offset += PAGE

    @staticmethod
    async def _write(
        identity: TokenIdentity,
        call: str,
        sandbox: bool,
        entries: list[_Entry],
        now: datetime,
        write: Callable[[TokenIdentity, list[_Entry], datetime], Awaitable[list[wsx.OrderResult]]],
    ) -> list[wsx.OrderResult]:
        """Write the request's entries, read and checked whole; with MODE=Sandbox (a module's
        test mode) answer every one as done and write nothing."""
        if not sandbox:
            return await write(identity, entries, now)
        log.info("ws_sandbox_call", call=call, store=identity.store_id, orders=len(entries))
        return [
            wsx.OrderResult(id_order=e.id_order, marketplace=e.marketplace, ok=True)
            for e in entries
        ]

    async def _carriers(self, identity: TokenIdentity) -> list[str]:
        """The store's marketplaces' carriers where sfd can list them, and every name its
        orders carry as ShippingMethod; one of each, whatever the case, sorted."""
        names = await self.storage.orders.carrier_names(identity.store_id)
        for connector in self.carriers.get(identity.store_id, ()):
            try:
                names.extend(await connector.carriers())
            except ConnectorError as exc:
                # The names sfd holds still answer; the marketplace's list comes next time.
                log.warning("ws_carriers_unavailable", channel=connector.name, reason=str(exc))
        unique: dict[str, str] = {}
        for name in names:
            unique.setdefault(name.strip().casefold(), name.strip())
        return sorted((n for k, n in unique.items() if k), key=str.casefold)

    async def _valid_orders(
        self, identity: TokenIdentity, entries: list[wsx.ValidOrder], now: datetime
    ) -> list[wsx.OrderResult]:
        """Acknowledge each order: success with the shop's id, or error with its message."""
        requests = [
            OperationRequest(
                payload=AcknowledgePayload(
                    status="error" if e.error_order is not None else "success",
                    store_reference=e.merchant_id_order,
                    message=e.error_order or "",
                ),
                reference=e.id_order,
                channel=e.marketplace,
            )
            for e in entries
        ]
        tickets = await self._submit(identity, OperationKind.ACKNOWLEDGE, requests, now)
        return [
            self._result(e.id_order, e.marketplace, t)
            for e, t in zip(entries, tickets, strict=True)
        ]

    async def _update_orders(
        self, identity: TokenIdentity, updates: list[wsx.OrderUpdate], now: datetime
    ) -> list[wsx.OrderResult]:
        """Ship or cancel each order, one batch per kind; the answer follows the request."""
        tickets: dict[int, Ticket] = {}
        for status, kind in (
            (wsx.LegacyStatus.SHIPPED, OperationKind.SHIP),
            (wsx.LegacyStatus.CANCELED, OperationKind.CANCEL),
        ):
            chosen = [i for i, u in enumerate(updates) if u.status == status]
            requests = [
                OperationRequest(
                    payload=_payload(updates[i]),
                    reference=updates[i].id_order,
                    channel=updates[i].marketplace,
                )
                for i in chosen
            ]
            got = await self._submit(identity, kind, requests, now)
            tickets.update(zip(chosen, got, strict=True))
        return [self._result(u.id_order, u.marketplace, tickets[i]) for i, u in enumerate(updates)]

    async def _submit(
        self,
        identity: TokenIdentity,
        kind: OperationKind,
        requests: Sequence[OperationRequest],
        now: datetime,
    ) -> list[Ticket]:
        """One batch for these requests, logged per ticket; nothing when there are none."""
        if not requests:
            return []
        batch: Batch = await request_operations(
            self.storage,
            identity.store_id,
            kind,
            requests,
            EventSource.API,
            now,
            self.on_operations,
            via="ws",
            actor=identity.name,
        )
        return batch.tickets

    @staticmethod
    def _result(id_order: str, marketplace: str, ticket: Ticket) -> wsx.OrderResult:
        ok = ticket.state in _TAKEN
        reason = "" if ok else ticket.reason or f"the {ticket.kind.value} was {ticket.state.value}"
        return wsx.OrderResult(id_order=id_order, marketplace=marketplace, ok=ok, reason=reason)


def _payload(update: wsx.OrderUpdate) -> ShipPayload | ReasonPayload:
    if update.status == wsx.LegacyStatus.SHIPPED:
        return ShipPayload(
            carrier=update.carrier_name,
            tracking_number=update.tracking_number,
            tracking_link=update.tracking_url,
        )
    return ReasonPayload()
