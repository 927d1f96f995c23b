"""The narrow interface every shop connector speaks in push mode (WooCommerce first).

sfd creates the orders to process in the shop, and reads back which ones the shop completed
(with their tracking) or cancelled. Failures are the marketplace connectors' four kinds:
AuthFailed, RateLimited, Transient and Rejected (`sfd.connectors.base`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import (
    TYPE_CHECKING,
    Final,
    Protocol,
    TypedDict,
    TypeVar,
    runtime_checkable,
)

import stamina
import stamina.instrumentation

from sfd.connectors.base import Transient
from sfd.connectors.http import HttpConnector
from sfd.connectors.parsing import refuse_oversized
from sfd.domain import Address
from sfd.logs import get_logger

if TYPE_CHECKING:
    import aiohttp

    from sfd.connectors.settings import ConnectorSettings


@dataclass(frozen=True)
class Retry:
    """How a shop's reads, and the push loop's search-then-create, are retried on Transient.

    Given to each shop connector (`retry`); the daemon uses the defaults, tests a short backoff.
    """

    attempts: int = 4
    wait_initial: float = 1.0
    wait_max: float = 30.0
    timeout: float = 120.0


#: The policy a shop connector gets when none is given.
DEFAULT_RETRY: Final = Retry()

_log = get_logger()
_T = TypeVar("_T")
_S = TypeVar("_S", bound="ConnectorSettings")


def _retried(details: stamina.instrumentation.RetryDetails) -> None:
    _log.debug(
        "shop_call_retried",
        attempt=details.retry_num,
        wait=round(details.wait_for, 2),
        reason=str(details.caused_by),
    )


# stamina's default hook warns at every retry: a shop down for an hour would flood the log.
# The push loop logs a failing shop once, when it starts failing; each retry is a debug line.
# (Its Prometheus hook is left out too: sfd's metrics live in their own registry.)
stamina.instrumentation.set_on_retry_hooks([_retried])


class CreateUncertain(Transient):
    """A create that failed without a refusal (no answer, an unreadable one, a 5xx): the shop
    may hold the order already, so it is searched for before any new create."""


def retrying(policy: Retry, on: type[Transient] = Transient) -> AsyncIterator[stamina.Attempt]:
    """Attempts of one call, retried with exponential backoff on `on` failures, per `policy`.

    Used as `async for attempt in retrying(policy): with attempt: ...`.
    """
    return stamina.retry_context(
        on=on,
        attempts=policy.attempts,
        wait_initial=policy.wait_initial,
        wait_max=policy.wait_max,
        timeout=policy.timeout,
    )


@dataclass(frozen=True)
class PushLine:
    """One order line to create: the shop finds its product by SKU."""

    sku: str
    name: str
    quantity: int
    price: Decimal
    """Unit price, taxes included."""


@dataclass(frozen=True)
class PushOrder:
    """An order as sfd hands it to a shop."""

    order_id: int
    """sfd's id for the order."""
    marketplace: str
    """The channel the order comes from, e.g. `decathlon`."""
    reference: str
    """The marketplace's reference for the order."""
    currency: str
    billing: Address
    shipping: Address
    lines: tuple[PushLine, ...]
    shipping_method: str
    shipping_amount: Decimal
    payment_method: str = ""
    customer_note: str = ""
    relay_id: str = ""
    vat_number: str = ""
    latest_ship_date: datetime | None = None
    """The marketplace's ship-by time, when it gives one."""


class ShopStatus(StrEnum):
    """What sfd reads back from a shop's order."""

    COMPLETED = "completed"
    PARTIALLY_SHIPPED = "partially_shipped"
    """Some lines shipped (`ShopOrder.shipped` says which), the rest not yet."""
    CANCELLED = "cancelled"
    OTHER = "other"


@dataclass(frozen=True)
class ShopTracking:
    """A shipment as the shop records it."""

    carrier: str = ""
    tracking_number: str = ""
    tracking_link: str = ""
    shipped_on: date | None = None


@dataclass(frozen=True)
class ShopOrder:
    """A shop's order as read back: which sfd order it is, its status and its tracking."""

    shop_id: str
    status: ShopStatus
    modified_at: datetime | None
    marketplace_reference: str | None = None
    sfd_order_id: int | None = None
    tracking: ShopTracking | None = None
    shipping_method: str = ""
    shipped: tuple[tuple[str, int], ...] = ()
    """(SKU, quantity) shipped so far, for a shop that ships in parts; `tracking` is then the
    latest shipment's. Empty when the shop says only "completed"."""


class ShopConnector(Protocol):
    """What sfd asks of a shop it pushes orders into."""

    name: str
    retry: Retry
    """How its reads, and the push loop's search-then-create, are retried."""

    async def create_order(self, order: PushOrder) -> str:
        """Create the order in the shop and return the shop's id for it.

        Rejected when the shop refuses it (an unknown SKU, a field it does not accept);
        CreateUncertain when it failed in a way that may have left the order created.
        """

    async def find_order(self, order: PushOrder, since: datetime | None = None) -> str | None:
        """The shop's id of an order sfd may have created already for `order`, or None.

        `since` is when the first attempt began: the order, if created, is not older.
        """

    def changed_orders(self, since: datetime | None) -> AsyncIterator[list[ShopOrder]]:
        """Yield, page by page, the orders the shop completed or cancelled since `since`."""
        ...

    async def get_order(self, shop_id: str) -> ShopOrder | None:
        """One order as the shop holds it now, with its tracking; None if it is gone."""

    async def aclose(self) -> None:
        """Release the connector's HTTP session."""


class Steps:
    """The steps of one order's create made so far, by name → the shop's id for each.

    A connector whose create takes several calls records each id as soon as it has it; the
    push loop keeps them with the push row, so a crash in the middle resumes the chain.
    """

    def __init__(
        self,
        done: Mapping[str, str] | None = None,
        save: Callable[[dict[str, str]], Awaitable[None]] | None = None,
    ) -> None:
        self._done = dict(done or {})
        self._save = save

    def get(self, step: str) -> str | None:
        """The id recorded for `step`, or None if it was not made yet."""
        return self._done.get(step)

    async def record(self, step: str, value: str) -> None:
        """Record `step` as made, before the next one starts."""
        self._done[step] = value
        if self._save is not None:
            await self._save(dict(self._done))

    def as_dict(self) -> dict[str, str]:
        """Every step recorded, by name."""
        return dict(self._done)


@runtime_checkable
class StepwiseShop(Protocol):
    """A shop connector whose create takes several calls (PrestaShop), each one recorded."""

    async def create_order_in_steps(self, order: PushOrder, steps: Steps) -> str:
        """`create_order`, skipping the steps already recorded and recording each new one."""
        ...

    async def find_order_in_steps(
        self, order: PushOrder, since: datetime | None, steps: Steps
    ) -> str | None:
        """`find_order`, helped by the steps recorded; an order found is finished (its state)."""
        ...


class ShopOptions(TypedDict, total=False):
    """What a shop connector takes besides its settings (see `ShopHttpConnector`)."""

    name: str
    session: aiohttp.ClientSession | None
    timeout: float | None
    retry: Retry


class ShopHttpConnector(HttpConnector[_S]):
    """What every shop connector sets up alike: its name, retry policy, settings and client.

    `settings`, `name`, `session` and `timeout` as for any `HttpConnector`: the name is the
    label in lower case by default ("woocommerce"), the timeout the settings'. `retry` says how
    reads are retried.
    """

    def __init__(
        self,
        settings: _S,
        *,
        name: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = None,
        retry: Retry = DEFAULT_RETRY,
    ) -> None:
        name = self.label.lower() if name is None else name
        timeout = settings.timeout if timeout is None else timeout
        super().__init__(settings, name=name, session=session, timeout=timeout)
        self.retry = retry

    async def _retried(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call()`'s result, retried with backoff on 5xx, timeouts and dropped connections."""
        async for attempt in retrying(self.retry):
            with attempt:
                return await call()
        raise AssertionError("unreachable: stamina raises after the last attempt")

    def _page(self, orders: list[_T], size: int, op: str) -> list[_T]:
        """A page of orders; one longer than `size` is refused (Transient), as for marketplaces."""
        refuse_oversized(self._http.label, op, len(orders), size)
        return orders
