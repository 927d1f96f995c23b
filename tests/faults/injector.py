"""A fault injector for any aiohttp upstream: a marketplace's or a shop's fake misbehaves on cue.

`FaultInjector` puts one middleware in front of an app's own, so the faults are the same for
every fake (the Mirakl sandbox, a WooCommerce shop...). Switch a fault on with `inject`, off with
`heal`; `hits` counts the requests it spoiled. `serve` runs the app on 127.0.0.1, over TLS when a
certificate is given, and `use_certificate` swaps the certificate while it serves.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Fault = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

HTML_ERROR = (
    b"<!DOCTYPE html><html><head><title>Maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1></body></html>"
)


@dataclass
class _Active:
    fault: Fault
    path: str | None


class FaultInjector:
    """Spoils the answers of an aiohttp app while a fault is on; passes them through otherwise."""

    def __init__(self) -> None:
        self._active: _Active | None = None
        self._healed = asyncio.Event()
        self.hits = 0
        """Requests answered by a fault since the injector was made."""
        self.requests = 0
        self._tls: ssl.SSLContext | None = None
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    # -- switching ------------------------------------------------------------------------

    def inject(self, fault: Fault, *, path: str | None = None) -> None:
        """Answer every request (whose path starts with `path`, if given) through `fault`."""
        self._healed = asyncio.Event()
        self._active = _Active(fault, path)

    def heal(self) -> None:
        """Serve normally again; requests held by a slow fault are released at once."""
        self._active = None
        self._healed.set()

    @property
    def healed(self) -> asyncio.Event:
        """Set when the fault stops: a fault that holds a request waits on it."""
        return self._healed

    # -- serving --------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The outermost middleware: applies the fault in force, if any."""
        self.requests += 1
        if request.transport is not None:
            self._transports.add(request.transport)
        active = self._active
        if active is None or (active.path is not None and not request.path.startswith(active.path)):
            return await handler(request)
        self.hits += 1
        return await active.fault(request, handler)

    def wrap(self, app: web.Application) -> web.Application:
        """`app` with the injector in front of its own middlewares (before it is frozen)."""
        app.middlewares.insert(0, self.middleware)
        return app

    @asynccontextmanager
    async def serve(
        self, app: web.Application, *, certificate: tuple[Path, Path] | None = None
    ) -> AsyncIterator[str]:
        """Serve `app` on 127.0.0.1 with the injector in front; yield its base URL.

        `certificate` (a PEM certificate and its key) serves it over TLS.
        """
        self._tls = None
        if certificate is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*certificate)
        runner = web.AppRunner(self.wrap(app), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._tls)
            await site.start()
            port = runner.addresses[0][1]
            scheme = "https" if self._tls else "http"
            yield f"{scheme}://127.0.0.1:{port}"
        finally:
            self.heal()
            await runner.cleanup()

    def use_certificate(self, certificate: Path, key: Path) -> None:
        """Present this certificate from now on: open connections are closed, so every client
        shakes hands again, as after a server restart."""
        assert self._tls is not None, "not served over TLS"
        self._tls.load_cert_chain(certificate, key)
        for transport in list(self._transports):
            transport.close()


# -- the faults ---------------------------------------------------------------------------


def slow(injector: FaultInjector, seconds: float = 30.0) -> Fault:
    """Answer only after `seconds` (or when the fault stops): past any sane client timeout.

    The request is read whole first, so a write held here takes effect when released, as on a
    server that received it and was slow to process it."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        await request.read()
        with suppress(TimeoutError):
            await asyncio.wait_for(injector.healed.wait(), seconds)
        return await handler(request)

    return fault


async def reset_mid_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Send the status, headers and half the body, then reset the connection."""
    answer = await handler(request)
    body = answer.body if isinstance(answer, web.Response) and answer.body else b"{}" * 64
    assert isinstance(body, bytes)
    stream = web.StreamResponse(status=answer.status, headers={"Content-Type": "application/json"})
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.abort()
    return stream


async def truncated_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The real answer cut in half, sent whole and well framed (the Content-Length matches)."""
    answer = await handler(request)
    body = answer.body if isinstance(answer, web.Response) and answer.body else b"{}"
    assert isinstance(body, bytes)
    return web.Response(
        status=answer.status, body=body[: max(1, len(body) // 2)], content_type="application/json"
    )


def replace_body(
    body: bytes, *, status: int = 200, content_type: str = "application/json"
) -> Fault:
    """Answer `body` with `status`, whatever was asked."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.Response(status=status, body=body, content_type=content_type)

    return fault


def status(code: int, retry_after: str | None = None) -> Fault:
    """An error status with an HTML body, as proxies and load balancers send one."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return web.Response(status=code, body=HTML_ERROR, content_type="text/html", headers=headers)

    return fault


def redirect(location: str, code: int = 302) -> Fault:
    """A redirect elsewhere: a client that followed it would carry its credentials there."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": location})

    return fault


def rewrite_query(**changes: str) -> Fault:
    """Serve the request as if its query said `changes` (e.g. a server ignoring `max`)."""

    async def fault(request: web.Request, handler: Handler) -> web.StreamResponse:
        query = request.rel_url.query.copy()
        query.update(changes)
        return await handler(request.clone(rel_url=request.rel_url.with_query(query)))

    return fault
