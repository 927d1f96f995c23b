"""The HTTP plumbing the marketplace connectors share.

One session per connector (opened on first use unless one is lent), one timeout, redirects never
followed, and the failures every marketplace means alike mapped to the connector errors, with the
marketplace's secrets masked in every message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Generic, NoReturn, TypedDict, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
from multidict import CIMultiDict
from yarl import URL

from sfd.connectors.base import AuthFailed, ConnectorError, RateLimited, Rejected, Transient
from sfd.domain.clock import utcnow

_T = TypeVar("_T")
_E = TypeVar("_E", bound=ConnectorError)
_S = TypeVar("_S")

#: The largest answer read, in bytes: a full page of any marketplace is far below it.
MAX_BODY = 32 * 1024**2


@dataclass
class Answer:
    """An answer read whole: status, body and headers, and the request it answers (its URL
    with the secrets masked)."""

    status: int
    body: bytes
    headers: CIMultiDict[str]
    method: str = ""
    url: str = ""


class HttpClient:
    """Sends one marketplace's requests, and judges what all marketplaces fail alike.

    `label` starts every message ("Mirakl OR11 ...: ..."); `secrets` gives, at each call, the
    values to mask (a token may change between calls). `retry_after_fallback` reads the wait a
    429 implies from its headers when Retry-After is missing or unreadable. An answer longer
    than `max_body` bytes is refused unread (Transient). `error_message` reads the service's
    own error out of a 4xx body, for `fail`.
    """

    def __init__(
        self,
        label: str,
        *,
        secrets: Callable[[], Iterable[str | None]],
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry_after_fallback: Callable[[CIMultiDict[str]], float | None] | None = None,
        max_body: int = MAX_BODY,
        error_message: Callable[[bytes], str | None] = lambda body: None,
    ) -> None:
        self.label = label
        self.error_message = error_message
        self.max_body = max_body
        self._secrets = secrets
        self._session = session
        self._owns_session = False
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_after_fallback = retry_after_fallback

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The session in use, if one is open."""
        return self._session

    async def send(
        self,
        method: str,
        url: str | URL,
        *,
        op: str,
        headers: Mapping[str, str],
        body: Any = None,
        form: Mapping[str, str] | aiohttp.FormData | bytes | None = None,
        content: bytes | None = None,
    ) -> Answer:
        """Send one request (`body` as JSON, `form` urlencoded, multipart or raw bytes, `content`
        as given, its type in `headers`); no answer at all is Transient."""
        where = self.scrub(str(url))
        try:
            async with self._open().request(
                method,
                url,
                headers=headers,
                json=body,
                data=form if form is not None else content,
                allow_redirects=False,
                timeout=self._client_timeout,
            ) as response:
                payload = await self._read(response, op)
                return Answer(response.status, payload, response.headers.copy(), method, where)
        except TimeoutError:
            message = f"{self.label} {op}: no answer within {self._timeout:g} s"
            raise Transient(message, method=method, url=where) from None
        except aiohttp.ClientError as exc:
            # aiohttp's messages may quote the URL or headers, so a credential with them.
            detail = self.scrub(str(exc)) or "no detail"
            message = f"{self.label} {op}: {type(exc).__name__}: {detail}"
            raise Transient(message, method=method, url=where) from None
        except Transient as exc:
            raise tagged(exc, method, where) from None

    async def _read(self, response: aiohttp.ClientResponse, op: str) -> bytes:
        """The whole body, refused past `max_body`: a broken or hostile server cannot make
        the daemon hold more than that in memory for one answer."""
        limit = self.max_body
        if response.content_length is not None and response.content_length > limit:
            raise Transient(
                f"{self.label} {op}: answer of {response.content_length} bytes refused "
                f"(over the {limit} byte limit)"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise Transient(
                    f"{self.label} {op}: answer refused past {limit} bytes (over the limit)"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def ok(
        self, answer: Answer, op: str, *, refused: str, detail: bool = True, with_op: bool = False
    ) -> Answer:
        """`answer` if it is a 2xx, else its failure raised (`fail`)."""
        if 200 <= answer.status < 300:
            return answer
        self.fail(answer, op, refused=refused, detail=detail, with_op=with_op)

    def fail(
        self, answer: Answer, op: str, *, refused: str, detail: bool = True, with_op: bool = False
    ) -> NoReturn:
        """Raise the error an answer other than 2xx means: the common failures
        (`fail_common`), a 401 or 403 as AuthFailed ("HTTP 401, `refused`", with the service's
        own message when `detail`), any other 4xx as Rejected with the service's message (else
        the status and body, after the label and op when `with_op`)."""
        self.fail_common(answer, op)
        message = self.error_message(answer.body)
        if answer.status in (401, 403):
            why = f": {message}" if detail and message else ""
            text = f"{self.label} {op}: HTTP {answer.status}, {refused}{why}"
            raise self.error(AuthFailed(self.scrub(text)), answer)
        raise self.error(self.refusal(answer, op, with_op=with_op), answer)

    def refusal(
        self, answer: Answer, op: str, *, with_op: bool = False, kind: type[Rejected] = Rejected
    ) -> Rejected:
        """A 4xx answer as Rejected (or `kind`), with the service's own message if it has one."""
        found = self.error_message(answer.body)
        return self.error(kind(self.rejection(answer, found, op=op if with_op else None)), answer)

    def error(self, exc: _E, answer: Answer) -> _E:
        """`exc` naming the request `answer` answers, and its status."""
        exc.status = answer.status
        return tagged(exc, answer.method, answer.url)

    def fail_common(
        self,
        answer: Answer,
        op: str,
        fallback: Callable[[CIMultiDict[str]], float | None] | None = None,
    ) -> None:
        """Raise for what every marketplace means alike: a redirect, a 429, a 5xx (or any other
        status but a 4xx). Return for a 4xx other than 429, which only the connector can read.
        A 429, and a 503 that says when to come back, are RateLimited with that wait (for a 429
        without a readable Retry-After, what `fallback`, else the client's, reads instead)."""
        try:
            self._fail_common(answer, op, fallback or self._retry_after_fallback)
        except ConnectorError as exc:
            raise self.error(exc, answer) from None

    def _fail_common(
        self,
        answer: Answer,
        op: str,
        fallback: Callable[[CIMultiDict[str]], float | None] | None,
    ) -> None:
        status = answer.status
        if 300 <= status < 400:
            # A redirect would carry the credentials to wherever it points: never followed.
            location = answer.headers.get("Location", "")
            host = (urlsplit(location).hostname or location) if location else "nowhere"
            raise Transient(f"{self.label} {op}: HTTP {status} redirect to {host} refused")
        if status == 429:
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            if retry_after is None and fallback is not None:
                retry_after = fallback(answer.headers)
            wait = f", retry after {retry_after:g} s" if retry_after is not None else ""
            raise RateLimited(f"{self.label} {op}: HTTP 429 rate limited{wait}", retry_after)
        if 400 <= status < 500:
            return
        if status == 503:
            # RFC 9110: a 503's Retry-After says how long the service expects to be down.
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            if retry_after is not None:
                raise RateLimited(
                    f"{self.label} {op}: HTTP 503 unavailable, retry after {retry_after:g} s",
                    retry_after,
                )
        raise Transient(
            f"{self.label} {op}: HTTP {status}: {self.scrub(excerpt(answer.body)) or 'empty body'}"
        )

    def rejection(self, answer: Answer, message: str | None, *, op: str | None = None) -> str:
        """Why a 4xx was refused: the marketplace's own `message`, else the status and a body
        excerpt (after the label and `op` when given); secrets masked."""
        if message is None:
            message = f"HTTP {answer.status}: {excerpt(answer.body) or 'empty body'}"
            if op is not None:
                message = f"{self.label} {op}: {message}"
        return self.scrub(message)

    def decode(self, body: bytes, kind: type[_T], op: str) -> _T:
        """A 2xx answer's JSON as `kind`; an answer of another shape is Transient."""
        try:
            return msgspec.json.decode(body, type=kind)
        except msgspec.ValidationError as exc:
            raise Transient(f"{self.label} {op}: unexpected answer ({exc})") from None
        except msgspec.DecodeError:
            raise Transient(
                f"{self.label} {op}: the answer is not JSON: {excerpt(body) or 'empty body'}"
            ) from None

    def scrub(self, text: str) -> str:
        """`text` with every secret of the marketplace masked."""
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text

    async def aclose(self) -> None:
        """Close the session if this client opened it; a lent one stays open."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._owns_session = False

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._client_timeout)
            self._owns_session = True
        return self._session


class HttpConnector(Generic[_S]):
    """A connector speaking HTTP through its `_http` client, which closes with it.

    `settings` are the channel's or shop's; `name` its name; `session` one to lend (else one is
    opened on first use, and closed with the connector); `timeout` that of one call, in seconds.
    """

    #: The service as messages name it ("eBay").
    label: ClassVar[str]

    def __init__(
        self,
        settings: _S,
        *,
        name: str,
        session: aiohttp.ClientSession | None,
        timeout: float,
    ) -> None:
        self.name = name
        self._settings = settings
        self._http = HttpClient(
            self.label,
            secrets=self._secrets,
            session=session,
            timeout=timeout,
            error_message=self._service_error,
        )

    def _secrets(self) -> Iterable[str | None]:
        """What no message may show (asked at each message: a token may change)."""
        raise NotImplementedError

    def _service_error(self, body: bytes) -> str | None:
        """The service's own error message in a 4xx answer's body, for `HttpClient.fail`; none
        by default (a connector that reads its errors itself)."""
        return None

    async def aclose(self) -> None:
        """Close the HTTP session if this connector opened it."""
        await self._http.aclose()

    @property
    def _session(self) -> aiohttp.ClientSession | None:
        # Lets the tests check that an owned session is closed and a lent one left open.
        return self._http.session


class ConnectorOptions(TypedDict, total=False):
    """What a marketplace connector takes besides its settings (see `MarketplaceHttp`)."""

    name: str
    session: aiohttp.ClientSession | None
    timeout: float
    clock: Callable[[], datetime]


class MarketplaceHttp(HttpConnector[_S]):
    """A marketplace connector over HTTP, built alike for every marketplace.

    `settings`, `name` (the marketplace's own by default), `session` and `timeout` as for any
    `HttpConnector`; `clock` what the connector reads the time from. What else a marketplace
    needs (a token grant, rate buckets) `_open` sets up.
    """

    #: A channel's default name ("ebay").
    default_name: ClassVar[str]

    #: No marketplace sfd speaks sorts its listing by update time (each says why): the cursor
    #: moves only after a complete pass.
    pages_sorted_by_update: bool = False

    def __init__(
        self,
        settings: _S,
        *,
        name: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        name = self.default_name if name is None else name
        super().__init__(settings, name=name, session=session, timeout=timeout)
        self._clock = clock
        self._open()

    def _open(self) -> None:
        """Set up what the marketplace needs besides its HTTP client."""


async def unless_done(call: Awaitable[_T], done: Callable[[], Awaitable[bool]]) -> _T | None:
    """`call`'s result; when the service refuses it, None if `done()` says the order is in the
    state the call was to bring it to already (by an earlier try whose answer was lost, or by
    someone else), else the refusal raised. No service documents an "already done" error:
    only the order's state decides."""
    try:
        return await call
    except Rejected:
        if await done():
            return None
        raise


def tagged(exc: _E, method: str, url: str) -> _E:
    """`exc` naming the request that failed: its method and (secrets masked) URL."""
    exc.method = method
    exc.url = url
    return exc


#: The longest wait a Retry-After may impose; a broken or hostile value must not stop a
#: channel, and its shipments, for days.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, given as seconds or as an HTTP date, at most MAX_RETRY_AFTER;
    None if unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return min(max(0.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), MAX_RETRY_AFTER)


def excerpt(body: bytes, limit: int = 200) -> str:
    """The start of a body on one line, for a message."""
    text = re.sub(r"\s+", " ", body.decode("utf-8", errors="replace")).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def segment(value: str) -> str:
    """`value` as one URL path segment: every reserved character percent-encoded."""
    return quote(value, safe="")
