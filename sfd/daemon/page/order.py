"""One order, `/orders/{order_id}`, and what a person can do with it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from urllib.parse import urlencode

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from sfd.daemon.api import read_part
from sfd.daemon.outbox import request_operations
from sfd.daemon.page.base import PageBase, Refused, log
from sfd.daemon.page.forms import ACTIONS, FormError, read_action
from sfd.daemon.page.sessions import Session
from sfd.daemon.push import PushError, retry_push
from sfd.domain import EventSource, OperationKind, StoredOrder, Ticket, TicketState
from sfd.domain.documents import (
    DOCUMENT_TYPES,
    MAX_DOCUMENT_BYTES,
    DocumentRefused,
    check_document,
)
from sfd.domain.rules import (
    CONFIRMED_BY,
    OrderView,
    PriorOperation,
    ReasonPayload,
    ShipPayload,
    decide,
    document_payload,
)
from sfd.storage import OperationRequest
from sfd.storage.pushes import CREATED, REJECTED

K = OperationKind
MAX_ID = 2**63 - 1
#: How long after a delivery the order's page keeps reloading to show the confirmation.
WATCH_CONFIRMATION = timedelta(minutes=15)
_LABELS = {
    K.ACCEPT: "Accept",
    K.REFUSE: "Refuse",
    K.SHIP: "Mark as shipped",
    K.CANCEL: "Cancel",
    K.ACKNOWLEDGE: "Acknowledge",
    K.UNACKNOWLEDGE: "Unacknowledge",
    K.UPLOAD_DOCUMENT: "Upload",
}


class NotFound(Exception):
    """Nothing of this store at this address."""


class OrderPages(PageBase):
    """An order's page, and its actions: operations, retries, a push again."""

    async def _order(self, request: web.Request, session: Session) -> StoredOrder:
        text = request.match_info["order_id"]
        if not (text.isascii() and text.isdigit() and 0 < int(text) <= MAX_ID):
            raise NotFound(text)
        order = await self.storage.orders.get(int(text), store_id=session.store_id)
        if order is None:
            raise NotFound(text)
        return order

    def _not_found(self, session: Session, what: str) -> web.Response:
        return self.problem(
            404, "Not found", f"There is no order {what[:40]!r} in your store.", session
        )

    async def order(self, request: web.Request) -> web.StreamResponse:
        """One order, its history, its operations and what can be done with it."""
        session = await self.require(request)
        try:
            order = await self._order(request, session)
        except NotFound as exc:
            return self._not_found(session, str(exc))
        done = None
        if ticket_id := request.query.get("done"):
            done = await self.storage.operations.ticket(session.store_id, ticket_id[:64])
        # Shown escaped, like every value; at worst a crafted link shows a wrong sentence.
        notice = request.query.get("notice", "")[:200]
        return await self._order_page(session, order, done=done, notice=notice)

    async def _order_page(
        self,
        session: Session,
        order: StoredOrder,
        *,
        status: int = 200,
        done: Ticket | None = None,
        refused: OperationKind | None = None,
        reason: str = "",
        values: Mapping[str, str] | None = None,
        notice: str = "",
    ) -> web.Response:
        now = self.clock()
        tickets = await self.storage.operations.for_order(order.id)
        pushes = await self.storage.pushes.for_order(order.id)
        view, prior = await self.storage.operations.rules_view(session.store_id, order.id)
        allowed = _allowed(view, prior) if view else set()
        in_flight = any(
            t.state in (TicketState.SCHEDULED, TicketState.RUNNING)
            or (
                # Delivered, and the marketplace should show it soon; no endless reloading
                # for one that never does.
                t.state == TicketState.SUCCEED
                and t.confirmed_at is None
                and t.kind in CONFIRMED_BY
                and t.finished_at is not None
                and now - t.finished_at < WATCH_CONFIRMATION
            )
            for t in tickets
        )
        return self.render(
            "order.html",
            status,
            session,
            active="orders",
            order=order,
            deadline=self._deadline(order, now),
            tickets=list(reversed(tickets)),
            retryable={t.operation_id for t in tickets if _retryable(t)},
            pushes=pushes,
            push_retryable=any(p.state == REJECTED for p in pushes)
            and not any(p.state == CREATED for p in pushes),
            allowed=allowed,
            labels={k.value: v for k, v in _LABELS.items()},
            in_flight=in_flight,
            done=done,
            refused=refused.value if refused else None,
            reason=reason,
            notice=notice,
            values=dict(values or {}),
            documents=await self.storage.documents.for_order(order.id),
            document_types=sorted(DOCUMENT_TYPES),
            carriers=("Chronopost", "Colissimo", "DHL", "DPD", "GLS", "Mondial Relay", "UPS"),
        )

    async def _order_post(
        self, request: web.Request
    ) -> tuple[Session, dict[str, str], StoredOrder]:
        """Session, fields and order of a changing POST on an order; raise Refused."""
        session, values = await self.changing(request)
        try:
            return session, values, await self._order(request, session)
        except NotFound as exc:
            raise Refused(self._not_found(session, str(exc))) from None

    async def _bare_order_post(self, request: web.Request) -> tuple[Session, StoredOrder]:
        """Session and order of a POST that carries nothing but its CSRF token; raise Refused."""
        session, values, order = await self._order_post(request)
        self._no_fields(values, session)
        return session, order

    async def act(self, request: web.Request) -> web.StreamResponse:
        """Accept, refuse, ship, cancel, acknowledge or unacknowledge one order."""
        session, values, order = await self._order_post(request)
        name = request.match_info["action"]
        try:
            kind = OperationKind(name)
            if kind not in ACTIONS:
                raise ValueError(name)
        except ValueError:
            return self.problem(
                404, "Not found", f"There is no action {name[:40]!r} on an order.", session
            )
        try:
            form = read_action(kind, values)
        except FormError as exc:
            return await self._order_page(
                session, order, status=400, refused=kind, reason=str(exc), values=values
            )
        ticket = await self._request(
            session, kind, OperationRequest(payload=form.payload, order_id=order.id)
        )
        if ticket.state == TicketState.FAILED:
            fresh = await self.storage.orders.get(order.id, store_id=session.store_id)
            return await self._order_page(
                session,
                fresh or order,
                status=409,
                refused=kind,
                reason=ticket.reason or "refused",
                values=form.values,
            )
        return self.redirect(f"/orders/{order.id}?done={ticket.id}")

    async def _request(
        self, session: Session, kind: OperationKind, operation: OperationRequest
    ) -> Ticket:
        """Request one operation as the signed-in token, through the API's rules: its ticket."""
        batch = await request_operations(
            self.storage,
            session.store_id,
            kind,
            [operation],
            EventSource.PAGE,
            self.clock(),
            self.on_operations,
            via=f"page:{session.token_name}",
            actor=session.token_name,
        )
        [ticket] = batch.tickets
        return ticket

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """Attach a document (an invoice) to the order: a multipart form with its CSRF token.

        The file is read whole and checked (PDF, JPEG or PNG by content, 10 MiB at most)
        before the token decides anything is stored."""
        session = await self.session(request)
        if session is None:
            return self.signed_out()
        try:
            order = await self._order(request, session)
        except NotFound as exc:
            return self._not_found(session, str(exc))
        try:
            fields, file_name, content = await _read_upload_form(request)
        except FormError as exc:
            return self.bad_form(exc, session)
        if not session.csrf_matches(fields.get("csrf")):
            return self.csrf_refused(request, session)
        try:
            if content is None:
                raise DocumentRefused(
                    file_name, f"is over {MAX_DOCUMENT_BYTES} bytes (10 MiB) a file"
                )
            document = check_document(file_name, content, fields.get("type") or "invoice")
        except DocumentRefused as exc:
            return await self._order_page(
                session, order, status=400, refused=K.UPLOAD_DOCUMENT, reason=str(exc)
            )
        ticket = await self._request(
            session,
            K.UPLOAD_DOCUMENT,
            OperationRequest(
                payload=document_payload(document), order_id=order.id, document=document
            ),
        )
        if ticket.state == TicketState.FAILED:
            return await self._order_page(
                session,
                order,
                status=409,
                refused=K.UPLOAD_DOCUMENT,
                reason=ticket.reason or "refused",
            )
        return self.redirect(f"/orders/{order.id}?done={ticket.id}")

    async def retry(self, request: web.Request) -> web.StreamResponse:
        """Make a failed operation of this order due again."""
        session, order = await self._bare_order_post(request)
        text = request.match_info["operation_id"]
        tickets = {
            str(t.operation_id): t for t in await self.storage.operations.for_order(order.id)
        }
        ticket = tickets.get(text)
        if ticket is None:
            return self.problem(
                404,
                "Not found",
                f"Order {order.reference} has no operation {text[:40]!r}.",
                session,
            )
        if not _retryable(ticket):
            return await self._order_page(
                session,
                order,
                status=409,
                refused=None,
                reason=(
                    f"operation {ticket.operation_id} is {ticket.state.value}; only an operation "
                    "the marketplace failed can be retried"
                ),
            )
        try:
            again = await self.storage.operations.retry(
                ticket.operation_id, EventSource.PAGE, self.clock(), session.token_name
            )
        except ValueError as exc:  # it changed state meanwhile
            return await self._order_page(session, order, status=409, reason=str(exc))
        log.info(
            "operation_retried", operation=again.operation_id, source=f"page:{session.token_name}"
        )
        self.on_operations()
        return self.redirect(f"/orders/{order.id}?done={again.id}")

    async def retry_push(self, request: web.Request) -> web.StreamResponse:
        """Let an order the shop refused be pushed again, at once."""
        session, order = await self._bare_order_post(request)
        shops = {p.shop for p in await self.storage.pushes.for_order(order.id)}
        try:
            said = await retry_push(
                self.storage,
                order.id,
                EventSource.PAGE,
                self.clock(),
                self.on_operations,
                actor=session.token_name,
            )
        except PushError as exc:
            return await self._order_page(session, order, status=409, reason=str(exc))
        log.info("push_retried", order=order.reference, source=f"page:{session.token_name}")
        for shop in shops:
            self.poll_now(shop)
        return self.redirect(f"/orders/{order.id}?" + urlencode({"notice": said}))


async def _read_upload_form(
    request: web.Request,
) -> tuple[dict[str, str], str, bytes | None]:
    """The upload form's text fields, and its file's name and bytes (None: over the limit)."""
    if request.content_type != "multipart/form-data":
        raise FormError(f"expected a multipart form, got {request.content_type[:60]!r}")
    fields: dict[str, str] = {}
    file_name, content = "", b""
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise FormError("nested multipart parts are not taken")
            if part.name == "file":
                file_name = part.filename or "document"
                data = await read_part(part, MAX_DOCUMENT_BYTES)
                if data is None:
                    return fields, file_name, None
                content = data
            elif part.name in ("csrf", "type"):
                value = await read_part(part, 256)
                if value is None:
                    raise FormError(f"the field {part.name} is too long")
                fields[part.name] = value.decode("utf-8", errors="replace")
            else:
                raise FormError(f"unexpected field {str(part.name)[:40]!r}")
    except (ValueError, HttpProcessingError) as exc:
        raise FormError(f"the form cannot be read: {exc}") from None
    if not content:
        raise FormError("choose a file to upload")
    return fields, file_name, content


def _retryable(ticket: Ticket) -> bool:
    """Only an operation the marketplace failed: one the rules refused would still be wrong."""
    return ticket.state == TicketState.FAILED and ticket.attempts > 0


def _allowed(view: OrderView, prior: list[PriorOperation]) -> set[str]:
    """The actions the rules would take now, asked of the rules themselves."""
    allowed = set()
    for kind in (K.ACCEPT, K.REFUSE, K.CANCEL):
        decision = decide(kind, view, ReasonPayload(), prior)
        if decision.state == TicketState.SCHEDULED and decision.reuse is None:
            allowed.add(kind.value)
    # Shipping is offered if the whole order, or any one unit of a line, could ship.
    probes = [ShipPayload(carrier="-", tracking_number="-")] + [
        ShipPayload(carrier="-", tracking_number="-", items=((item, 1),)) for item in view.items
    ]
    if any(decide(K.SHIP, view, p, prior).state == TicketState.SCHEDULED for p in probes):
        allowed.add(K.SHIP.value)
    return allowed
