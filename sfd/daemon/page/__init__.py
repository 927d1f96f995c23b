"""The order page: orders and channels for a person, rendered on the server, plain forms.

A person signs in with an API token and sees that token's store only. Every action goes
through `sfd.daemon.outbox.request_operations` (the rules and the outbox the API uses), with
source `page`. Sessions live in memory (`sessions.Sessions`). Every changing form carries the
session's CSRF token; the session cookie is HttpOnly, SameSite=Strict, and Secure over TLS.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web

from sfd.daemon.outbox import request_operations
from sfd.daemon.page.forms import ACTIONS, MAX_FORM, FormError, read_action, single_values
from sfd.daemon.page.sessions import Session, Sessions
from sfd.daemon.push import PushError, retry_push
from sfd.domain import EventSource, OperationKind, OrderStatus, StoredOrder, Ticket, TicketState
from sfd.domain.clock import Clock
from sfd.domain.rules import (
    CONFIRMED_BY,
    OrderView,
    PriorOperation,
    ReasonPayload,
    ShipPayload,
    decide,
    tracking_numbers,
)
from sfd.logs import get_logger
from sfd.storage import OperationRequest, OrderFilter, Storage, StorageUnavailable
from sfd.storage.pushes import CREATED, REJECTED

log = get_logger()

K = OperationKind
COOKIE = "sfd_session"
PAGE_SIZE = 50
MAX_ID = 2**63 - 1
DEFAULT_WARNING = timedelta(days=1)
#: How long after a delivery the order's page keeps reloading to show the confirmation.
WATCH_CONFIRMATION = timedelta(minutes=15)
STATIC = Path(__file__).resolve().parent.parent / "static"
#: No script runs on the page, and nothing is loaded from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_ACK_CHOICES = {"": None, "no": False, "yes": True}
_SHOW_CHOICES = ("attention", "all")
_LABELS = {
    K.ACCEPT: "Accept",
    K.REFUSE: "Refuse",
    K.SHIP: "Mark as shipped",
    K.CANCEL: "Cancel",
    K.ACKNOWLEDGE: "Acknowledge",
    K.UNACKNOWLEDGE: "Unacknowledge",
}
PollNow = Callable[[str], bool]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def duration(delta: timedelta) -> str:
    """A short human length of time: `2 d 4 h`, `3 h 20 min`, `12 min`."""
    minutes = max(0, math.floor(abs(delta).total_seconds() / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def when(moment: datetime | None) -> str:
    """A time as the page shows it, in UTC."""
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


class NotFound(Exception):
    """Nothing of this store at this address."""


class CsrfRefused(Exception):
    """A changing form without this session's CSRF token."""


class OrderPage:
    """The page's handlers over one storage."""

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        on_operations: Callable[[], None] = lambda: None,
        *,
        poll_now: PollNow = lambda _channel: False,
        warnings: Mapping[str, timedelta] | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.on_operations = on_operations
        self.poll_now = poll_now
        self.warnings = dict(warnings or {})
        self.sessions = sessions or Sessions()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("sfd.daemon", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = when
        self.templates.filters["duration"] = duration
        self.templates.filters["tracking_numbers"] = tracking_numbers

    def routes(self, app: web.Application) -> None:
        """Add the page's routes. `POST /` stays the legacy webservice's."""
        r = app.router
        g = self._guarded
        r.add_get("/", g(self.home))
        r.add_get("/signin", g(self.signin_form))
        r.add_post("/signin", g(self.signin))
        r.add_post("/signout", g(self.signout))
        r.add_get("/orders", g(self.orders))
        r.add_get("/orders/{order_id}", g(self.order))
        r.add_post("/orders/{order_id}/operations/{operation_id}/retry", g(self.retry))
        r.add_post("/orders/{order_id}/retry-push", g(self.retry_push))
        r.add_post("/orders/{order_id}/{action}", g(self.act))
        r.add_get("/channels", g(self.channels))
        r.add_post("/channels/{name}/poll", g(self.poll))
        r.add_static("/static/", STATIC, append_version=False)

    # -- plumbing ---------------------------------------------------------------------------

    def _guarded(self, handler: Handler) -> Handler:
        """The handler, answering a page that says so when the disk refuses a write."""

        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except StorageUnavailable as exc:
                return self.problem(
                    503,
                    "Database unavailable",
                    f"The order database cannot take writes ({exc.condition.kind}). Nothing was "
                    "changed; try again once the disk has room or is writable again.",
                    None,
                )

        return guarded

    def render(
        self,
        template: str,
        status: int = 200,
        session: Session | None = None,
        **context: Any,
    ) -> web.Response:
        """A page from its template, with the security headers every page carries."""
        context.setdefault("active", template.removesuffix(".html"))
        body = self.templates.get_template(template).render(session=session, **context)
        return web.Response(
            text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS
        )

    def problem(
        self, status: int, title: str, detail: str, session: Session | None
    ) -> web.Response:
        """An error page: what went wrong, and that nothing was changed."""
        return self.render("error.html", status, session, title=title, detail=detail)

    @staticmethod
    def redirect(location: str) -> web.Response:
        # 303: after a POST the browser GETs the result, so a reload never resubmits.
        return web.Response(status=303, headers={"Location": location, **SECURITY_HEADERS})

    async def session(self, request: web.Request) -> Session | None:
        """The request's live session, if its token is still valid (not revoked since)."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        if not await self.storage.tokens.is_active(session.token_id):
            self.sessions.drop(session.id)
            log.info("page_session_ended", token=session.token_name, reason="token revoked")
            return None
        return session

    async def require(self, request: web.Request) -> Session:
        """The session, or a redirect to the sign-in form."""
        session = await self.session(request)
        if session is None:
            raise web.HTTPSeeOther("/signin", headers=SECURITY_HEADERS)
        return session

    async def form(self, request: web.Request, session: Session | None) -> dict[str, str]:
        """A posted form's fields, each once; the CSRF token checked and taken out."""
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise FormError(f"the form is over {MAX_FORM} bytes")
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise FormError(f"expected a form, got {request.content_type[:60]!r}")
        if len(await request.read()) > MAX_FORM:
            raise FormError(f"the form is over {MAX_FORM} bytes")
        values = single_values(await request.post())
        csrf = values.pop("csrf", None)
        if session is not None and not session.csrf_matches(csrf):
            raise CsrfRefused(request.path)
        return values

    async def changing(
        self, request: web.Request
    ) -> tuple[Session, dict[str, str]] | web.StreamResponse:
        """Session and fields of a changing POST, or the page that refuses it."""
        session = await self.session(request)
        if session is None:
            return self.problem(403, "Not signed in", "Sign in again; nothing was changed.", None)
        try:
            return session, await self.form(request, session)
        except CsrfRefused:
            log.warning("page_csrf_refused", path=request.path, token=session.token_name)
            return self.problem(
                403,
                "Form refused",
                "This form did not carry the page's security token (it may be from an old "
                "page or another site). Nothing was changed; reload the page and try again.",
                session,
            )
        except FormError as exc:
            return self.problem(400, "Bad form", f"{exc}. Nothing was changed.", session)

    # -- sign-in ----------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        """`GET /`: the orders, or the sign-in form."""
        target = "/orders" if await self.session(request) else "/signin"
        return self.redirect(target)

    async def signin_form(self, request: web.Request) -> web.StreamResponse:
        """The sign-in form."""
        if await self.session(request):
            return self.redirect("/orders")
        return self.render("signin.html", error=None)

    async def signin(self, request: web.Request) -> web.StreamResponse:
        """Check the pasted token; start a session."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            return self.problem(403, "Form refused", "This form was sent from another site.", None)
        try:
            values = await self.form(request, None)
        except FormError as exc:
            return self.render("signin.html", 400, error=str(exc))
        values.pop("csrf", None)
        token = values.get("token", "").strip()
        identity = await self.storage.tokens.verify(token) if token else None
        if identity is None:
            # The token is never shown back or logged.
            return self.render(
                "signin.html",
                401,
                error="That token is not valid: unknown, revoked, or not copied whole.",
            )
        session = self.sessions.create(identity)
        log.info("page_signed_in", token=identity.name, store=identity.store_id)
        response = self.redirect("/orders")
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        """End the session."""
        checked = await self.changing(request)
        if isinstance(checked, web.StreamResponse):
            return checked
        session, _ = checked
        self.sessions.drop(session.id)
        log.info("page_signed_out", token=session.token_name)
        response = self.redirect("/signin")
        response.del_cookie(COOKIE, path="/")
        return response

    # -- orders -----------------------------------------------------------------------------

    async def _channel_names(self, store_id: int) -> list[str]:
        return [c.name for c in await self.storage.channels.states(store_id=store_id)]

    async def orders(self, request: web.Request) -> web.StreamResponse:
        """The list: by default the orders that need a person, soonest deadline first."""
        session = await self.require(request)
        now = self.clock()
        channels = await self._channel_names(session.store_id)
        q = request.query
        chosen = {
            name: q.get(name, "")[:100]
            for name in ("show", "status", "channel", "ack", "late", "q")
        }
        errors = []
        show = chosen["show"] or "attention"
        if show not in _SHOW_CHOICES:
            errors.append(f"show: expected attention or all, got {show[:40]!r}")
        statuses = None
        if chosen["status"]:
            try:
                statuses = [OrderStatus(chosen["status"])]
            except ValueError:
                errors.append(f"status: no status {chosen['status'][:40]!r}")
        if chosen["channel"] and chosen["channel"] not in channels:
            errors.append(f"channel: no channel {chosen['channel'][:40]!r} in this store")
        if chosen["ack"] not in _ACK_CHOICES:
            errors.append(f"acknowledged: expected yes or no, got {chosen['ack'][:40]!r}")
        if chosen["late"] not in ("", "1"):
            errors.append(f"late: expected 1, got {chosen['late'][:40]!r}")
        page_text = q.get("page", "1")
        page = int(page_text) if page_text.isascii() and page_text.isdigit() else 0
        if not 1 <= page <= 10**6:
            errors.append(f"page: expected a page number, got {page_text[:20]!r}")
            page = 1
        total, rows, failed = 0, list[StoredOrder](), set[int]()
        if not errors:
            query = OrderFilter(
                store_id=session.store_id,
                statuses=statuses,
                channel=chosen["channel"] or None,
                acknowledged=_ACK_CHOICES[chosen["ack"]],
                late_at=now if chosen["late"] else None,
                needs_person=show == "attention",
                search=chosen["q"].strip() or None,
                limit=PAGE_SIZE,
                offset=(page - 1) * PAGE_SIZE,
                sort="ship_by",
            )
            total = await self.storage.orders.count(query)
            rows = await self.storage.orders.find(query)
            failed = await self.storage.operations.failed_orders([o.id for o in rows])
        kept = {k: v for k, v in chosen.items() if v}

        def page_url(number: int) -> str:
            return "/orders?" + urlencode({**kept, "page": str(number)})

        return self.render(
            "orders.html",
            400 if errors else 200,
            session,
            errors=errors,
            chosen=chosen,
            show=show,
            channels=channels,
            statuses=[s.value for s in OrderStatus],
            orders=[self._deadline(o, now) | {"order": o, "failed": o.id in failed} for o in rows],
            total=total,
            page=page,
            pages=max(1, math.ceil(total / PAGE_SIZE)),
            page_url=page_url,
        )

    def _deadline(self, order: StoredOrder, now: datetime) -> dict[str, Any]:
        """How the ship-by date stands: late, near, or fine; and the time left or past."""
        to_ship = order.status in (
            OrderStatus.WAITING_SHIPMENT,
            OrderStatus.PARTIALLY_SHIPPED,
        ) and (order.fulfilled_by == "store")
        if order.latest_ship_date is None or not to_ship:
            return {"urgency": "", "left": ""}
        left = order.latest_ship_date - now
        if left <= timedelta(0):
            return {"urgency": "late", "left": f"late by {duration(left)}"}
        warning = self.warnings.get(order.channel, DEFAULT_WARNING)
        return {"urgency": "near" if left <= warning else "", "left": f"{duration(left)} left"}

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
            carriers=("Chronopost", "Colissimo", "DHL", "DPD", "GLS", "Mondial Relay", "UPS"),
        )

    async def _order_post(
        self, request: web.Request
    ) -> tuple[Session, dict[str, str], StoredOrder] | web.StreamResponse:
        """Session, fields and order of a changing POST on an order, or the refusing page."""
        checked = await self.changing(request)
        if isinstance(checked, web.StreamResponse):
            return checked
        session, values = checked
        try:
            return session, values, await self._order(request, session)
        except NotFound as exc:
            return self._not_found(session, str(exc))

    def _unexpected(self, values: Mapping[str, str], session: Session) -> web.Response | None:
        """The refusal of a form that should carry nothing but its CSRF token."""
        if not values:
            return None
        name = next(iter(values))[:40]
        return self.problem(400, "Bad form", f"unexpected field {name!r}.", session)

    async def act(self, request: web.Request) -> web.StreamResponse:
        """Accept, refuse, ship, cancel, acknowledge or unacknowledge one order."""
        checked = await self._order_post(request)
        if isinstance(checked, web.StreamResponse):
            return checked
        session, values, order = checked
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
        batch = await request_operations(
            self.storage,
            session.store_id,
            kind,
            [OperationRequest(payload=form.payload, order_id=order.id)],
            EventSource.PAGE,
            self.clock(),
            self.on_operations,
            via=f"page:{session.token_name}",
            actor=session.token_name,
        )
        [ticket] = batch.tickets
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

    async def retry(self, request: web.Request) -> web.StreamResponse:
        """Make a failed operation of this order due again."""
        checked = await self._order_post(request)
        if isinstance(checked, web.StreamResponse):
            return checked
        session, values, order = checked
        if refusal := self._unexpected(values, session):
            return refusal
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
        checked = await self._order_post(request)
        if isinstance(checked, web.StreamResponse):
            return checked
        session, values, order = checked
        if refusal := self._unexpected(values, session):
            return refusal
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

    # -- channels ---------------------------------------------------------------------------

    async def channels(self, request: web.Request) -> web.StreamResponse:
        """Each channel of the store: its polls, its orders by status, its operations."""
        session = await self.require(request)
        states = await self.storage.channels.states(store_id=session.store_id)
        counts = await self.storage.orders.status_counts(session.store_id)
        polled = request.query.get("polled", "")[:100]
        return self.render(
            "channels.html",
            200,
            session,
            channels=states,
            counts=counts,
            polled=polled if polled in {c.name for c in states} else "",
        )

    async def poll(self, request: web.Request) -> web.StreamResponse:
        """Ask a channel's poller to poll now."""
        checked = await self.changing(request)
        if isinstance(checked, web.StreamResponse):
            return checked
        session, values = checked
        name = request.match_info["name"]
        if name not in await self._channel_names(session.store_id):
            return self.problem(
                404, "Not found", f"There is no channel {name[:40]!r} in your store.", session
            )
        if refusal := self._unexpected(values, session):
            return refusal
        if not self.poll_now(name):
            return self.problem(
                409, "Not running", f"Channel {name} has no running poller.", session
            )
        log.info("poll_requested", channel=name, source=f"page:{session.token_name}")
        return self.redirect("/channels?" + urlencode({"polled": name}))


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
