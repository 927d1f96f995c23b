"""The rules for shipments, pure: what is refused locally, and how a request is normalised."""

from __future__ import annotations

import pytest

from sfd.domain import OperationKind, TicketState
from sfd.domain.rules import (
    Decision,
    OrderView,
    PriorOperation,
    ShipPayload,
    decide,
    tracking_numbers,
)
from tests.factories import order_view

K = OperationKind


def view(*, require_tracking: bool = False) -> OrderView:
    return order_view(require_tracking=require_tracking)


def ship(payload: ShipPayload, *, require_tracking: bool = False) -> Decision:
    return decide(K.SHIP, view(require_tracking=require_tracking), payload, [])


@pytest.mark.parametrize(
    ("field", "numbers"),
    [
        ("", ()),
        ("  ", ()),
        ("6A1", ("6A1",)),
        ("6A1, 6A2", ("6A1", "6A2")),
        ("6A1;6A2 ;; 6A3", ("6A1", "6A2", "6A3")),
        ("6A1\t6A2\n6A1", ("6A1", "6A2")),
    ],
)
def test_a_tracking_field_holds_several_numbers(field: str, numbers: tuple[str, ...]) -> None:
    assert tracking_numbers(field) == numbers


def test_a_default_channel_takes_a_shipment_with_nothing_known() -> None:
    decision = ship(ShipPayload())
    assert decision.state == TicketState.SCHEDULED
    assert decision.payload == ShipPayload() and decision.warnings == ()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (ShipPayload(), "channel deca requires a carrier"),
        (ShipPayload(tracking_number="6A1"), "channel deca requires a carrier"),
        (ShipPayload(carrier="DPD", tracking_number=" , "), "channel deca requires a tracking"),
    ],
)
def test_require_tracking_still_refuses(payload: ShipPayload, reason: str) -> None:
    decision = ship(payload, require_tracking=True)
    assert decision.state == TicketState.FAILED
    assert decision.reason.startswith(reason)


def test_a_link_that_is_not_http_is_dropped_with_a_warning() -> None:
    decision = ship(ShipPayload(carrier="DPD", tracking_link="www.dpd.fr/track/1"))
    assert decision.state == TicketState.SCHEDULED
    assert decision.payload == ShipPayload(carrier="DPD")
    [warning] = decision.warnings
    assert warning.startswith("trackingLink 'www.dpd.fr/track/1' is not an http(s):// URL")


def test_every_line_at_full_quantity_is_the_whole_order_and_fewer_is_not() -> None:
    whole = ship(ShipPayload(items=((12, 2), (11, 1))))
    assert whole.payload == ShipPayload()
    partial = ship(ShipPayload(items=((12, 1), (11, 1))))
    assert partial.payload == ShipPayload(items=((12, 1), (11, 1)))


def test_a_repeat_of_an_every_line_shipment_recorded_before_normalising_is_the_same() -> None:
    """Shipments stored before the rules normalised them still answer their repeats."""
    asked = ShipPayload(carrier="DPD", items=((11, 1), (12, 2)))
    old = PriorOperation(
        id=7,
        ticket_id="t7",
        kind=K.SHIP,
        state=TicketState.SUCCEED,
        payload={"carrier": "DPD", "items": [[11, 1], [12, 2]]},
    )
    decision = decide(K.SHIP, view(), asked, [old])
    assert decision.reuse == old


def test_a_repeat_of_a_partial_shipment_gets_the_same_ticket() -> None:
    """Stored payloads are read back from JSON (lists): a repeat still matches them."""
    asked = ShipPayload(carrier="DPD", tracking_number="P1", items=((12, 1),))
    prior = PriorOperation(
        id=8,
        ticket_id="t8",
        kind=K.SHIP,
        state=TicketState.SCHEDULED,
        payload={"carrier": "DPD", "tracking_number": "P1", "items": [[12, 1]]},
    )
    assert decide(K.SHIP, view(), asked, [prior]).reuse == prior
