"""The order page: orders and channels for a person, rendered on the server, plain forms.

A person signs in with an API token and sees that token's store only. Every action goes
through `sfd.daemon.outbox.request_operations` (the rules and the outbox the API uses), with
source `page`. Sessions live in the database, hashed (`sessions.Sessions`). Every changing
form carries the session's CSRF token; the session cookie is HttpOnly, SameSite=Strict, and
Secure over TLS.

The handlers are split by resource: `signin` (the session), `orders` (the list), `order` (one
order and its actions), `channels`; `base` holds what they share.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from sfd.daemon.page.base import PageBase, duration, when
from sfd.daemon.page.channels import ChannelPages
from sfd.daemon.page.order import OrderPages
from sfd.daemon.page.orders import OrderListPages
from sfd.daemon.page.signin import SignInPages

__all__ = ["OrderPage", "duration", "when"]

STATIC = Path(__file__).resolve().parent.parent / "static"


class OrderPage(SignInPages, OrderListPages, OrderPages, ChannelPages, PageBase):
    """The page's handlers over one storage."""

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
        r.add_post("/orders/{order_id}/documents", g(self.upload))
        r.add_post("/orders/{order_id}/{action}", g(self.act))
        r.add_get("/channels", g(self.channels))
        r.add_post("/channels/{name}/poll", g(self.poll))
        r.add_static("/static/", STATIC, append_version=False)
