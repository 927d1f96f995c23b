"""What every page shares: sessions and their cookie, forms and CSRF, rendering, headers."""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import jinja2
from aiohttp import web

from sfd.daemon.carriers import CarrierView, CarrierViews
from sfd.daemon.page.forms import MAX_FORM, FormError, single_values
from sfd.daemon.page.sessions import Session, Sessions
from sfd.domain import OrderStatus, StoredOrder
from sfd.domain.clock import Clock
from sfd.domain.rules import tracking_numbers
from sfd.logs import get_logger
from sfd.storage import Storage, StorageUnavailable

log = get_logger()

COOKIE = "sfd_session"
DEFAULT_WARNING = timedelta(days=1)
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


class CsrfRefused(Exception):
    """A changing form without this session's CSRF token."""


class Refused(Exception):
    """A request refused with a page, deep in a handler; the guarded handler answers it."""

    def __init__(self, page: web.Response) -> None:
        super().__init__(page.status)
        self.page = page


async def _no_carriers(_channel: str) -> CarrierView | None:
    return None


class PageBase:
    """The page's state over one storage, and what every handler uses."""

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        on_operations: Callable[[], None] = lambda: None,
        *,
        poll_now: PollNow = lambda _channel: False,
        warnings: Mapping[str, timedelta] | None = None,
        sessions: Sessions | None = None,
        carriers: CarrierViews | None = None,
    ) -> None:
        self.storage = storage
        self.carrier_view: CarrierViews = carriers or _no_carriers
        """Channel name → its carriers (the marketplace's list, the mapping in force)."""
        self.clock = clock
        self.on_operations = on_operations
        self.poll_now = poll_now
        self.warnings = dict(warnings or {})
        self.sessions = sessions or Sessions(storage.sessions)
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

    # -- plumbing ---------------------------------------------------------------------------

    def _guarded(self, handler: Handler) -> Handler:
        """The handler, answering its refusals' pages, and a page that says so when the disk
        refuses a write."""

        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except Refused as refused:
                return refused.page
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
        session = await self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return None
        if not await self.storage.tokens.is_active(session.token_id):
            await self.sessions.drop(session.id)
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

    async def changing(self, request: web.Request) -> tuple[Session, dict[str, str]]:
        """Session and fields of a changing POST; raise Refused with the page refusing it."""
        session = await self.session(request)
        if session is None:
            raise Refused(self.signed_out())
        try:
            return session, await self.form(request, session)
        except CsrfRefused:
            raise Refused(self.csrf_refused(request, session)) from None
        except FormError as exc:
            raise Refused(self.bad_form(exc, session)) from None

    def signed_out(self) -> web.Response:
        """The refusal of a changing POST without a live session."""
        return self.problem(403, "Not signed in", "Sign in again; nothing was changed.", None)

    def bad_form(self, error: FormError, session: Session) -> web.Response:
        """The refusal of a form that cannot be read."""
        return self.problem(400, "Bad form", f"{error}. Nothing was changed.", session)

    def csrf_refused(self, request: web.Request, session: Session) -> web.Response:
        """The refusal, logged, of a form without the page's security token."""
        log.warning("page_csrf_refused", path=request.path, token=session.token_name)
        return self.problem(
            403,
            "Form refused",
            "This form did not carry the page's security token (it may be from an old "
            "page or another site). Nothing was changed; reload the page and try again.",
            session,
        )

    def _no_fields(self, values: Mapping[str, str], session: Session) -> None:
        """Raise Refused when a form that should carry nothing but its CSRF token has more."""
        if values:
            name = next(iter(values))[:40]
            raise Refused(self.problem(400, "Bad form", f"unexpected field {name!r}.", session))

    async def _channel_names(self, store_id: int) -> list[str]:
        return [c.name for c in await self.storage.channels.states(store_id=store_id)]

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
