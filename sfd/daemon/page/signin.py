"""Signing in with an API token, and out: `/`, `/signin`, `/signout`."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from sfd.daemon.page.base import COOKIE, PageBase, log
from sfd.daemon.page.forms import FormError


class SignInPages(PageBase):
    """The sign-in form and the session's start and end."""

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
        session = await self.sessions.create(identity)
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
        session, _ = await self.changing(request)
        await self.sessions.drop(session.id)
        log.info("page_signed_out", token=session.token_name)
        response = self.redirect("/signin")
        response.del_cookie(COOKIE, path="/")
        return response
