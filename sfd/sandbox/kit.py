"""What every sandbox shares: the request log, JSON answers, failures to inject, serving.

A new stand-in (a marketplace or a shop) records each request as a `RecordedCall`, answers
with `json_answer`, plans failures with `Failure` and `take_failure`, and is served on
loopback by `serve`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol, TypedDict

import msgspec
from aiohttp import web

from sfd.domain.clock import Clock, utcnow
from sfd.logs import get_logger
from sfd.sandbox.failures import take_failure

__all__ = [
    "Failure",
    "FailurePlan",
    "RecordedCall",
    "ShopMerchant",
    "ShopOptions",
    "ShopSandbox",
    "conclude",
    "json_answer",
    "read_body",
    "record",
    "serve",
    "take_failure",
    "tracking_number",
]

_ENCODERS: Final = {
    "string": msgspec.json.Encoder(decimal_format="string"),
    "number": msgspec.json.Encoder(decimal_format="number"),
}


@dataclass
class RecordedCall:
    """One request a sandbox received, as it arrived, and whether it was answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    at: datetime
    operation: str | None = None
    """The name of the route (OR11, orders.create, searchOrders...); None for a path the
    sandbox does not serve."""
    order_id: str | None = None
    status: int | None = None
    responded: bool = False
    """False when the sandbox dropped the connection instead of answering."""


@dataclass
class Failure:
    """A failure planned for the next `remaining` requests of `operation` (None: any)."""

    remaining: int
    operation: str | None
    status: int | None = None
    """The status answered instead of serving the request; None serves it."""
    retry_after: str | None = None
    delay: float = 0.0
    """Seconds to wait, once the request took effect, before answering."""
    drop: bool = False
    """Serve the request, then close the connection unanswered (an unknown outcome)."""


class FailurePlan:
    """The failures a shop sandbox injects, planned by tests and kept in `_failures`."""

    _failures: list[Failure]

    def fail_next(
        self,
        n: int,
        status: int,
        *,
        operation: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Answer the next `n` requests (of `operation`, e.g. `orders.create`) with `status`."""
        self._failures.append(Failure(n, operation, status=status, retry_after=retry_after))

    def slow_next(self, n: int, seconds: float, *, operation: str | None = None) -> None:
        """Serve the next `n` requests, then wait `seconds` before answering."""
        self._failures.append(Failure(n, operation, delay=seconds))

    def drop_next(self, n: int, *, operation: str | None = None) -> None:
        """Serve the next `n` requests, then close the connection unanswered."""
        self._failures.append(Failure(n, operation, drop=True))

    def clear_failures(self) -> None:
        """Stop injecting failures: every request is served normally again."""
        self._failures.clear()


class ShopOptions(TypedDict, total=False):
    """The keyword arguments a shop sandbox passes on to `ShopSandbox`."""

    latency: float
    clock: Clock


class ShopSandbox(FailurePlan):
    """What the WooCommerce and Shopify sandboxes keep alike: the request log, the orders by
    id, the emails the buyer would get, the failures planned, and ids from `first_id` on."""

    def __init__(self, *, first_id: int, latency: float = 0.0, clock: Clock = utcnow) -> None:
        self.latency = latency
        """Seconds added to every answer, after the request took effect."""
        self.clock = clock
        self.requests: list[RecordedCall] = []
        self.orders: dict[int, dict[str, Any]] = {}
        self.customer_emails: list[tuple[int, str, str]] = []
        """(order id, address, which email) of each email the shop would send the buyer."""
        self._failures: list[Failure] = []
        self._next_id = first_id

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def calls(self, operation: str) -> list[RecordedCall]:
        """The recorded requests of one operation (`orders.create`, `orderCreate`...)."""
        return [r for r in self.requests if r.operation == operation]


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """The user and password of the request's HTTP Basic authorization; None without one."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


async def read_body(request: web.Request) -> Any:
    """The request's JSON body; its text if it is not JSON; None if there is none."""
    raw = await request.read()
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw.decode("utf-8", errors="replace")


async def record(
    request: web.Request, at: datetime, *, order_key: str = "order_id"
) -> RecordedCall:
    """The log entry of `request`, received at `at`; its order id is the path's `order_key`."""
    return RecordedCall(
        method=request.method,
        path=request.path,
        query=dict(request.query),
        body=await read_body(request),
        at=at,
        operation=request.match_info.route.name,
        order_id=request.match_info.get(order_key),
    )


class Answered(Protocol):
    """A log entry `conclude` completes: a `RecordedCall` or a sandbox's own record."""

    status: int | None
    responded: bool


async def conclude(
    request: web.Request,
    call: Answered,
    response: web.StreamResponse,
    failure: Failure | None,
    *,
    latency: float = 0.0,
) -> web.StreamResponse:
    """Log how `call` is answered: after any planned delay, sent, or dropped unanswered."""
    call.status = response.status
    delay = latency + (failure.delay if failure is not None else 0.0)
    if delay:
        await asyncio.sleep(delay)
    if failure is not None and failure.drop:
        if request.transport is not None:
            request.transport.close()
        return response
    # A client already gone (killed, or its call cut short) never gets this answer.
    call.responded = request.transport is not None and not request.transport.is_closing()
    return response


def json_answer(
    payload: Any, status: int = 200, *, decimals: Literal["string", "number"] = "string"
) -> web.Response:
    """A JSON answer, its decimals written as the real API writes them."""
    body = _ENCODERS[decimals].encode(payload)
    return web.Response(status=status, body=body, content_type="application/json")


@asynccontextmanager
async def serve(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve `app` on `host` (a free port by default) and yield its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def tracking_number(rng: random.Random | None = None) -> str:
    """A Colissimo-shaped tracking number, drawn from `rng` (the module's by default)."""
    choices = rng.choices if rng is not None else random.choices
    return "6A" + "".join(choices(string.digits, k=11))


class ShopMerchant:
    """A merchant working in a fake shop's admin: each order waiting to ship is shipped
    `ship_after` seconds after the merchant first saw it, and logged as `shop_shipped`.

    A shop's merchant says which orders wait (`waiting`) and how one ships (`ship`).
    """

    def __init__(self, ship_after: float) -> None:
        self.ship_after = ship_after
        self.seen: dict[int, float] = {}
        self.log = get_logger(component="shop")

    def waiting(self) -> list[int]:
        """The shop's order ids that wait to be shipped."""
        raise NotImplementedError

    def ship(self, order_id: int) -> tuple[str | None, str, str]:
        """Ship one order; its marketplace reference, carrier and tracking number."""
        raise NotImplementedError

    async def run(self) -> None:
        """Ship orders until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for order_id in self.waiting():
                if now - self.seen.setdefault(order_id, now) < self.ship_after:
                    continue
                reference, carrier, tracking = self.ship(order_id)
                self.log.info(
                    "shop_shipped",
                    order=reference,
                    shop_order=order_id,
                    carrier=carrier,
                    tracking_number=tracking,
                )
