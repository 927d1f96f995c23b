"""Reading the order page's forms: every field checked, anything unexpected refused.

These checks only catch what no rule needs to judge (a tampered or oversized field); whether
an action is allowed is decided by `sfd.domain.rules`, through the outbox, like every other source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sfd.domain import OperationKind
from sfd.domain.rules import (
    MAX_FIELD,
    MAX_LINK,
    MAX_TRACKING,
    AcknowledgePayload,
    Payload,
    ReasonPayload,
    ShipPayload,
)

K = OperationKind

#: A page form is a few fields; anything bigger is not from the page.
MAX_FORM = 64 * 1024
#: The actions a person can take on an order from the page.
ACTIONS = (K.ACCEPT, K.REFUSE, K.SHIP, K.CANCEL, K.ACKNOWLEDGE, K.UNACKNOWLEDGE)
_QUANTITY_PREFIX = "qty_"
_FIELDS: dict[OperationKind, frozenset[str]] = {
    K.ACCEPT: frozenset(),
    K.REFUSE: frozenset({"reason", "confirm"}),
    K.CANCEL: frozenset({"reason", "confirm"}),
    K.SHIP: frozenset({"carrier", "tracking_number", "tracking_link"}),
    K.ACKNOWLEDGE: frozenset({"store_reference"}),
    K.UNACKNOWLEDGE: frozenset(),
}
_LABELS = {
    "carrier": "Carrier",
    "tracking_number": "Tracking number",
    "tracking_link": "Tracking link",
    "reason": "Reason",
    "store_reference": "Store reference",
}
_LIMITS = {"tracking_link": MAX_LINK, "tracking_number": MAX_TRACKING}


class FormError(Exception):
    """A form that cannot be read as sent; the message names the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ActionForm:
    """An action's form as sent: its payload, and the values to show again if refused."""

    kind: OperationKind
    payload: Payload
    values: dict[str, str] = field(default_factory=dict)


def single_values(form: Mapping[str, object]) -> dict[str, str]:
    """Each field once, as text; a field sent twice or a file is refused."""
    values: dict[str, str] = {}
    getall = getattr(form, "getall", None)
    for name in form:
        if name in values:
            continue
        sent = getall(name) if getall is not None else [form[name]]
        if len(sent) != 1:
            raise FormError(f"field {name[:40]!r} was sent {len(sent)} times", name[:40])
        if not isinstance(sent[0], str):
            raise FormError(f"field {name[:40]!r} must be text", name[:40])
        values[name] = sent[0]
    return values


def _text(values: Mapping[str, str], name: str) -> str:
    value = values.get(name, "").strip()
    limit = _LIMITS.get(name, MAX_FIELD)
    if len(value) > limit:
        raise FormError(f"{_LABELS[name]} is {len(value)} characters long; at most {limit}", name)
    return value


def read_action(kind: OperationKind, values: Mapping[str, str]) -> ActionForm:
    """The payload of one action's form (the CSRF field already taken out)."""
    allowed = _FIELDS[kind]
    for name in values:
        if name not in allowed and not (kind == K.SHIP and name.startswith(_QUANTITY_PREFIX)):
            raise FormError(f"unexpected field {name[:40]!r}", name[:40])
    kept = dict(values)
    payload: Payload
    if kind == K.SHIP:
        payload = ShipPayload(
            carrier=_text(values, "carrier"),
            tracking_number=_text(values, "tracking_number"),
            tracking_link=_text(values, "tracking_link"),
            items=_quantities(values),
        )
    elif kind == K.ACKNOWLEDGE:
        payload = AcknowledgePayload(store_reference=_text(values, "store_reference") or None)
    elif kind in (K.REFUSE, K.CANCEL):
        if values.get("confirm") != "yes":
            raise FormError(f"tick the box to confirm the {kind.value}", "confirm")
        payload = ReasonPayload(reason=_text(values, "reason"))
    else:
        payload = ReasonPayload()
    return ActionForm(kind, payload, kept)


def _quantities(values: Mapping[str, str]) -> tuple[tuple[int, int], ...]:
    """(item id, quantity) of a partial shipment; empty when no quantity is given."""
    chosen = []
    for name, text in values.items():
        if not name.startswith(_QUANTITY_PREFIX):
            continue
        item = name.removeprefix(_QUANTITY_PREFIX)
        # Which items exist and how many are left is the rules' decision; here only the
        # shape, so a tampered name or value is a precise error rather than a crash.
        if not (item.isascii() and item.isdigit() and len(item) <= 18):
            raise FormError(f"unexpected field {name[:40]!r}", name[:40])
        text = text.strip()
        if not text:
            continue
        if not (text.isascii() and text.isdigit() and len(text) <= 9):
            raise FormError(
                f"quantity of item {item}: expected a whole number, got {text[:20]!r}", name
            )
        quantity = int(text)
        if quantity:
            chosen.append((int(item), quantity))
    return tuple(chosen)
