"""The rules for requested operations: what a partially refunded or unpaid order may ship,
and which marketplace statuses confirm an operation."""

from __future__ import annotations

import pytest

from sfd.domain import OperationKind, OrderStatus, TicketState
from sfd.domain.rules import OrderView, ShipPayload, confirms, decide
from tests.factories import order_view

K = OperationKind
S = OrderStatus


def view(
    status: S = S.PARTIALLY_REFUNDED, *, closed: frozenset[int] = frozenset({1}), **more: bool
) -> OrderView:
    """An order of two lines, the first refunded unless told otherwise."""
    return order_view(
        id=7,
        reference="EB-7",
        channel="ebay",
        status=status,
        items={1: 2, 2: 1},
        closed_items=closed,
        **more,
    )


def test_a_partially_refunded_order_ships_what_is_left() -> None:
    whole = decide(K.SHIP, view(), ShipPayload(carrier="DHL"), [])
    assert whole.state == TicketState.SCHEDULED
    left = decide(K.SHIP, view(), ShipPayload(carrier="DHL", items=((2, 1),)), [])
    assert left.state == TicketState.SCHEDULED


def test_a_refunded_line_cannot_ship() -> None:
    decision = decide(K.SHIP, view(), ShipPayload(carrier="DHL", items=((1, 1),)), [])
    assert decision.state == TicketState.FAILED
    assert decision.reason == (
        "item 1 of order EB-7 is refunded or cancelled; nothing of it is left to ship"
    )


def test_an_order_whose_every_line_is_refunded_has_nothing_to_ship() -> None:
    decision = decide(K.SHIP, view(closed=frozenset({1, 2})), ShipPayload(carrier="DHL"), [])
    assert (decision.state, decision.reason) == (
        TicketState.FAILED,
        "every line of order EB-7 is refunded or cancelled",
    )


def test_an_order_waiting_for_payment_cannot_ship() -> None:
    order = view(S.WAITING_SHIPMENT, closed=frozenset(), payment_pending=True)
    decision = decide(K.SHIP, order, ShipPayload(carrier="DHL"), [])
    assert (decision.state, decision.reason) == (
        TicketState.FAILED,
        "order EB-7 is waiting for the buyer's payment; it ships once ebay releases it",
    )


@pytest.mark.parametrize(
    ("kind", "status", "confirmed"),
    [
        (K.ACCEPT, S.WAITING_SHIPMENT, True),
        (K.ACCEPT, S.SHIPPED, True),
        (K.ACCEPT, S.WAITING_STORE_ACCEPTANCE, False),
        (K.ACCEPT, S.REFUSED, False),
        (K.SHIP, S.PARTIALLY_SHIPPED, True),
        (K.SHIP, S.SHIPPED, True),
        (K.SHIP, S.REFUNDED, True),
        (K.SHIP, S.PARTIALLY_REFUNDED, False),
        (K.SHIP, S.CANCELLED, False),
        (K.REFUSE, S.REFUSED, True),
        (K.REFUSE, S.CANCELLED, False),
        (K.CANCEL, S.CANCELLED, True),
        (K.CANCEL, S.REFUNDED, False),
        (K.REFUND, S.REFUNDED, True),
        (K.REFUND, S.SHIPPED, False),
    ],
)
def test_a_status_at_or_beyond_the_expected_one_confirms(
    kind: K, status: S, confirmed: bool
) -> None:
    assert confirms(kind, status) is confirmed
