"""The daemon's HTTP server: /healthz, /metrics, the v1 API, the legacy webservice, the page."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from sfd.daemon.api import MAX_BODY, BodyTimeout, ShopApi
from sfd.daemon.metrics import Metrics
from sfd.daemon.page import OrderPage
from sfd.daemon.ws import LegacyWebservice

HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: A client has this long to send a request's headers; an idle keep-alive connection is
#: closed after as long. A slow-loris holding connections open gets nothing for it.
HEADER_TIMEOUT = 30.0
#: Once the headers are in, the body has this long to arrive whole (10 MB at 90 kB/s).
BODY_TIMEOUT = 120.0

_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response encoded by msgspec (datetimes in ISO 8601 with their offset)."""
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def build_app(
    health: HealthProbe,
    api: ShopApi | None = None,
    legacy: LegacyWebservice | None = None,
    *,
    metrics: Metrics | None = None,
    page: OrderPage | None = None,
    client_max_size: int = MAX_BODY,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
) -> web.Application:
    """The aiohttp application the daemon serves."""
    _quiet_malformed_requests()
    app = web.Application(
        client_max_size=client_max_size,
        # aiohttp closes a connection that has not sent a whole request by its keep-alive
        # deadline, which counts from the connection's start: that bounds the headers' time.
        handler_args={"keepalive_timeout": header_timeout},
        middlewares=[body_deadline(body_timeout)],
    )
    if api is not None:
        api.routes(app)
    if legacy is not None:
        legacy.routes(app)
        if api is not None:
            legacy.refusals = api.refusals  # one count per client, whichever door it knocks
    if page is not None:
        page.routes(app)  # GET / and its own paths; POST / stays the legacy webservice's

    async def healthz(_request: web.Request) -> web.Response:
        ok, detail = health()
        return json_response(
            {"status": "ok" if ok else "unhealthy", **detail}, status=200 if ok else 503
        )

    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app.router.add_get("/metrics", metrics.handler)
    return app


def body_deadline(seconds: float) -> Middleware:
    """A middleware giving each request `seconds` to send its body, then 408 and close."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = request.content
        if not request.body_exists or body.is_eof():
            return await handler(request)

        def expire() -> None:
            if not body.is_eof():
                body.set_exception(BodyTimeout(seconds))

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            return await handler(request)
        except BodyTimeout as exc:
            response = web.Response(status=408, text=f"{exc}\n")
            response.force_close()
            return response
        finally:
            timer.cancel()

    return middleware


class _MalformedRequests(logging.Filter):
    """Drops aiohttp's error line, with traceback, for each request it could not parse.

    Such a request is answered 400 (or 431) and is the client's fault: a scanner or a broken
    client must not fill the daemon's log with errors. Errors of our own still get through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, HttpProcessingError)


def _quiet_malformed_requests() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in logger.filters):
        logger.addFilter(_MalformedRequests())
