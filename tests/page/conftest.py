"""The order page's test support: a signed-in HTTP client, and the page's CSRF token."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class PageClient:
    """A person's browser, without the browser: cookies kept, redirects not followed."""

    url: str
    http: aiohttp.ClientSession = field(
        default_factory=lambda: aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    )
    csrf: str = ""

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        kwargs.setdefault("allow_redirects", False)
        async with self.http.request(method, self.url + path, **kwargs) as response:
            return response.status, await response.text(), response

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        status, text, _ = await self.request("GET", path, **kwargs)
        return status, text

    async def post(self, path: str, data: Any, *, csrf: bool = True) -> tuple[int, str, str]:
        """Post a form (with the session's CSRF token unless told not to): status, body,
        and where it redirects."""
        if csrf:
            data = [("csrf", self.csrf), *(data.items() if isinstance(data, dict) else data)]
        status, text, response = await self.request("POST", path, data=data)
        return status, text, response.headers.get("Location", "")

    async def sign_in(self, token: str) -> aiohttp.ClientResponse:
        """Sign in with a token and pick up the page's CSRF token."""
        status, _, response = await self.request("POST", "/signin", data={"token": token})
        assert status == 303, f"sign-in refused: {status}"
        assert response.headers["Location"] == "/orders"
        status, text = await self.get("/orders")
        assert status == 200, text
        match = CSRF.search(text)
        assert match is not None
        self.csrf = match.group(1)
        return response

    async def close(self) -> None:
        await self.http.close()
