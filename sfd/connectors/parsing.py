"""What the marketplace connectors (Mirakl, Amazon, eBay) share to read orders.

Each order is decoded on its own into typed msgspec structs: a field of the wrong type or a
missing required field fails that order alone, as a MalformedOrder naming the field by its path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, TypeVar

import msgspec

from sfd.connectors.base import OrderPage, Rejected, SkippedOrder, Transient
from sfd.domain import Address, MarketplaceOrder
from sfd.domain.clock import from_iso

#: A count that cannot be negative (a line's quantity).
Quantity = Annotated[int, msgspec.Meta(ge=0)]

_MISSING: Final = re.compile(
    r"Object missing required field `(?P<field>[^`]+)`(?: - at `\$\.?(?P<at>.*)`)?$"
)
_AT: Final = re.compile(r"(?P<problem>.*) - at `\$\.?(?P<at>.*)`$")

_H = TypeVar("_H", bound=msgspec.Struct)


class MalformedOrder(Exception):
    """An order that cannot be read: which field, and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def malformed(
    exc: msgspec.ValidationError, prefix: str = "", *, lower_unlocated: bool = False
) -> MalformedOrder:
    """msgspec's "Expected `str`, got `int` - at `$.x[0].y`" as `x[0].y: expected ...`.

    `prefix` goes before the path (a part decoded on its own, such as `OrderItems[0]`); a
    message msgspec locates nowhere names the prefix, else `order`, and is kept as written unless
    `lower_unlocated` asks for its first letter in lower case.
    """

    def where(at: str | None, name: str = "") -> str:
        path = ".".join(p for p in (prefix, at or "") if p)
        if name:
            path = f"{path}.{name}" if path else name
        return path or "order"

    message = str(exc)
    missing = _MISSING.match(message)
    if missing:
        return MalformedOrder(where(missing["at"], missing["field"]), "missing")
    located = _AT.match(message)
    if located:
        problem = located["problem"]
        return MalformedOrder(where(located["at"]), problem[:1].lower() + problem[1:])
    if lower_unlocated:
        message = message[:1].lower() + message[1:]
    return MalformedOrder(where(None), message)


def finite(amount: Decimal | None, path: str) -> None:
    """Raise MalformedOrder at `path` for an amount that is infinite or not a number."""
    if amount is not None and not amount.is_finite():
        raise MalformedOrder(path, f"expected a finite number, got {amount}")


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive time is taken as UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_moment(value: Any) -> datetime | None:
    """An ISO 8601 time read from an order that may not decode, or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return from_iso(value)
    except ValueError:
        return None


def reference_or_position(value: Any, index: int) -> str:
    """An order's id when it has a usable one, else its position in the listing, `#index`."""
    return value if isinstance(value, str) and value else f"#{index}"


def skipped(index: int, reason: str, reference: Any = None, updated_at: Any = None) -> SkippedOrder:
    """A skipped order, from what could still be read of it (its id and update time, if any)."""
    return SkippedOrder(reference_or_position(reference, index), reason, parse_moment(updated_at))


def read_into(
    page: OrderPage,
    index: int,
    raw: bytes,
    parse: Callable[[bytes], MarketplaceOrder | None],
    skip: Callable[[int, bytes, str], SkippedOrder],
) -> None:
    """Normalize one order of a page into `page`, or record why it was skipped.

    `parse` returns None for an order not to import; `skip` names an order it found malformed.
    """
    try:
        order = parse(raw)
    except MalformedOrder as exc:
        page.skipped.append(skip(index, raw, str(exc)))
        return
    if order is not None:
        page.orders.append(order)


def refuse_oversized(label: str, op: str, count: int, most: int) -> None:
    """Raise Transient for a page of `count` orders where at most `most` were asked for: the
    service ignored the page size (and maybe the offset), so paging on could skip or repeat
    orders, loop forever or hold a whole catalogue in memory."""
    if count > most:
        raise Transient(
            f"{label} {op}: {count} orders in a page where at most {most} were asked for; "
            "page refused"
        )


@dataclass(frozen=True)
class PageReader:
    """Reads one marketplace's listing pages of at most `most` orders: each order normalized
    by `parse` (None: not to import) or, found malformed, skipped as `skip` names it."""

    label: str
    most: int
    parse: Callable[[bytes], MarketplaceOrder | None]
    skip: Callable[[int, bytes, str], SkippedOrder]

    def read(self, op: str, orders: Sequence[msgspec.Raw], offset: int) -> OrderPage:
        """One page's orders, numbered from `offset`.

        A page of more than the orders asked for is refused whole (`refuse_oversized`); the
        cursor holds until the service pages again.
        """
        refuse_oversized(self.label, op, len(orders), self.most)
        page = OrderPage(orders=[])
        for index, raw in enumerate(orders, start=offset):
            read_into(page, index, bytes(raw), self.parse, self.skip)
        return page


def head(decoder: msgspec.json.Decoder[_H], raw: bytes) -> _H | None:
    """What `decoder` (a struct of optional `Any` fields) reads of an order, or None if it
    is not a JSON object."""
    try:
        return decoder.decode(raw)
    except msgspec.MsgspecError:
        return None


def skipper(
    decoder: msgspec.json.Decoder[_H], reference: str, updated_at: str
) -> Callable[[int, bytes, str], SkippedOrder]:
    """How to skip an order that does not decode: named by the head's `reference` and
    `updated_at` fields when it has them, else by its position."""

    def skip(index: int, raw: bytes, reason: str) -> SkippedOrder:
        found = head(decoder, raw)
        if found is None:
            return skipped(index, reason)
        return skipped(index, reason, getattr(found, reference), getattr(found, updated_at))

    return skip


def format_date(moment: datetime) -> str:
    """A time as Mirakl and SP-API read it: UTC, whole seconds, `Z` (2026-11-29T10:00:00Z).

    Seconds are cut, never rounded up, so no change is ever missed.
    """
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def requested_lines(
    items: dict[str, int], *, empty: str, blank: str, bad: Callable[[str, object], str]
) -> list[tuple[str, int]]:
    """A partial shipment's (line id, quantity) pairs, checked: Rejected with `empty` when it
    names no line, `blank` for an empty line id, `bad(line id, quantity)` for a quantity that
    is not a positive whole number."""
    if not items:
        raise Rejected(empty)
    lines: list[tuple[str, int]] = []
    for line_id, quantity in items.items():
        if not line_id.strip():
            raise Rejected(blank)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
            raise Rejected(bad(line_id, quantity))
        lines.append((line_id, quantity))
    return lines


_ADDRESS_FIELDS: Final = frozenset(Address.__struct_fields__)


def address(found: msgspec.Struct, **given: str) -> Address:
    """An Address from a wire struct whose fields bear Address's names (the service's own
    names are the struct's `msgspec.field(name=...)`), a missing value empty; `given` values
    win over the struct's."""
    fields = {
        name: getattr(found, name) or ""
        for name in found.__struct_fields__
        if name in _ADDRESS_FIELDS
    }
    return Address(**{**fields, **given})
