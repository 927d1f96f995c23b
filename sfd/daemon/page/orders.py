"""The orders list, `/orders`: by default the orders that need a person."""

from __future__ import annotations

import math
from urllib.parse import urlencode

from aiohttp import web

from sfd.daemon.page.base import PageBase
from sfd.domain import OrderStatus, StoredOrder
from sfd.storage import OrderFilter

PAGE_SIZE = 50
_ACK_CHOICES = {"": None, "no": False, "yes": True}
_SHOW_CHOICES = ("attention", "all")


class OrderListPages(PageBase):
    """The list of the store's orders, filtered and paged."""

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
