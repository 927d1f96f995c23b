"""An OAuth refresh-token grant with its access token cached (Amazon LWA, eBay, Shopify next).

The access token is kept until shortly before it expires, forgotten when the API refuses it,
and the call sent once more with a fresh one. A refusal of the grant itself (invalid_grant,
invalid_client...) is the connector's to word, as AuthFailed: only new credentials help.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
from yarl import URL

from sfd.connectors.base import ConnectorError, Transient
from sfd.connectors.http import Answer, HttpClient, excerpt
from sfd.domain.clock import utcnow

#: An access token is renewed this long before the grant says it expires.
TOKEN_MARGIN: Final = timedelta(seconds=60)


class _TokenAnswer(msgspec.Struct):
    access_token: str
    expires_in: float


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: datetime


class RefreshTokenGrant:
    """Trades a refresh token for access tokens at `token_url`, one at a time, cached.

    `form` and `headers` are the grant request's (credentials included); `op` names it in
    messages; `refused` words the error of a grant answered with a 4xx other than 429 (the
    common failures, 429, 5xx, redirects, are the HttpClient's). `empty` is the message of a
    2xx answer without a usable access token.
    """

    def __init__(
        self,
        http: HttpClient,
        token_url: str | URL,
        *,
        op: str,
        form: Mapping[str, str],
        headers: Mapping[str, str],
        refused: Callable[[Answer], ConnectorError],
        empty: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._http = http
        self._url = token_url
        self._op = op
        self._form = dict(form)
        self._headers = dict(headers)
        self._refused = refused
        self._empty = empty
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()

    @property
    def current(self) -> str | None:
        """The access token of the moment, if any: a secret no message may show."""
        return self._token.value if self._token is not None else None

    async def token(self) -> str:
        """A valid access token: the cached one, or a new one from the grant."""
        async with self._lock:
            token = self._token
            if token is None or self._clock() >= token.renew_at:
                token = await self._grant()
                self._token = token
            return token.value

    def forget(self, value: str) -> None:
        """Drop `value` if it is still the cached token (the API refused it)."""
        if self._token is not None and self._token.value == value:
            self._token = None

    async def call(self, send: Callable[[str], Awaitable[Answer]], *, refused_with: int) -> Answer:
        """`send` with the access token; an answer of status `refused_with` (the API's "token
        refused") forgets the token and sends once more with a new one."""
        token = await self.token()
        answer = await send(token)
        if answer.status != refused_with:
            return answer
        self.forget(token)
        return await send(await self.token())

    async def send(
        self,
        method: str,
        url: str | URL,
        *,
        op: str,
        headers: Callable[[str], Mapping[str, str]],
        refused_with: int,
        body: Any = None,
        before: Callable[[], Awaitable[object]] | None = None,
    ) -> Answer:
        """One API request with the access token in `headers(token)`, through `call`: a token
        refused (`refused_with`) is renewed and the request sent once more. `before` is awaited
        before each try (a rate bucket)."""

        async def attempt(token: str) -> Answer:
            if before is not None:
                await before()
            return await self._http.send(method, url, op=op, headers=headers(token), body=body)

        return await self.call(attempt, refused_with=refused_with)

    async def _grant(self) -> _Token:
        minted_at = self._clock()
        answer = await self._http.send(
            "POST", self._url, op=self._op, headers=self._headers, form=self._form
        )
        if 200 <= answer.status < 300:
            granted = self._http.decode(answer.body, _TokenAnswer, self._op)
            if not granted.access_token or not math.isfinite(granted.expires_in):
                raise Transient(self._empty)
            lifetime = timedelta(seconds=max(0.0, granted.expires_in))
            return _Token(granted.access_token, minted_at + lifetime - TOKEN_MARGIN)
        self._http.fail_common(answer, self._op)
        raise self._refused(answer)


def oauth_error(body: bytes) -> tuple[str | None, str | None]:
    """The `error` and `error_description` of an OAuth error answer (RFC 6749 5.2), if any."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    found = [data.get(key) for key in ("error", "error_description")]
    error, description = (v if isinstance(v, str) and v.strip() else None for v in found)
    return error, description


def oauth_reason(body: bytes) -> str:
    """`error: description` of an OAuth error answer, else an excerpt of the body."""
    parts = [p for p in oauth_error(body) if p]
    return ": ".join(parts) if parts else (excerpt(body) or "empty body")
