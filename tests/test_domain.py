"""The order statuses and the transitions allowed between them."""

import pytest

from sfd.domain import (
    TRANSITIONS,
    InvalidTransition,
    OrderStatus,
    check_transition,
    describe_change,
    line_open,
    reached,
    skipped_steps,
)

S = OrderStatus


#: The normal steps of the circuit: from each status, the statuses it may go to.
CIRCUIT = {
    S.CREATED: (S.WAITING_STORE_ACCEPTANCE,),
    S.WAITING_STORE_ACCEPTANCE: (S.WAITING_SHIPMENT, S.REFUSED),
    S.WAITING_SHIPMENT: (S.SHIPPED, S.PARTIALLY_SHIPPED, S.CANCELLED),
    S.PARTIALLY_SHIPPED: (S.SHIPPED,),
    S.SHIPPED: (S.REFUNDED, S.PARTIALLY_REFUNDED),
    S.PARTIALLY_REFUNDED: (S.REFUNDED,),
}


@pytest.mark.parametrize(
    ("from_status", "to_status"), [(a, b) for a, steps in CIRCUIT.items() for b in steps]
)
def test_the_circuit_allows_its_normal_steps(from_status: S, to_status: S) -> None:
    check_transition("A-1", from_status, to_status)


@pytest.mark.parametrize(
    ("from_status", "to_status"),
    [
        (S.SHIPPED, S.WAITING_SHIPMENT),
        (S.CANCELLED, S.WAITING_SHIPMENT),
        (S.REFUSED, S.WAITING_SHIPMENT),
        (S.SHIPPED, S.CANCELLED),
        (S.WAITING_SHIPMENT, S.WAITING_STORE_ACCEPTANCE),
        (S.REFUNDED, S.SHIPPED),
        (S.WAITING_SHIPMENT, S.WAITING_SHIPMENT),
    ],
)
def test_an_invalid_transition_names_the_order_and_both_statuses(
    from_status: S, to_status: S
) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_transition("A-1", from_status, to_status)
    assert str(caught.value) == f"order A-1: cannot go from {from_status} to {to_status}"
    assert (caught.value.from_status, caught.value.to_status) == (from_status, to_status)


def test_every_status_has_a_rule_and_closed_statuses_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(OrderStatus)
    for closed in (S.REFUSED, S.CANCELLED, S.REFUNDED):
        assert TRANSITIONS[closed] == frozenset()


@pytest.mark.parametrize(
    ("from_status", "to_status", "skipped", "message"),
    [
        (S.WAITING_SHIPMENT, S.SHIPPED, (), ""),
        (
            S.WAITING_STORE_ACCEPTANCE,
            S.SHIPPED,
            (S.WAITING_SHIPMENT,),
            "waiting_store_acceptance → shipped, skipping waiting_shipment",
        ),
        (
            S.CREATED,
            S.SHIPPED,
            (S.WAITING_SHIPMENT,),
            "created → shipped, skipping waiting_shipment",
        ),
        (
            S.WAITING_STORE_ACCEPTANCE,
            S.REFUNDED,
            (S.WAITING_SHIPMENT,),
            "waiting_store_acceptance → refunded, skipping waiting_shipment",
        ),
        (S.PARTIALLY_REFUNDED, S.SHIPPED, (), ""),
        (
            S.REFUNDED,
            S.SHIPPED,
            None,
            "refunded → shipped, a change the transition table has no path for",
        ),
    ],
)
def test_a_change_says_which_steps_it_skipped(
    from_status: S, to_status: S, skipped: tuple[S, ...] | None, message: str
) -> None:
    assert skipped_steps(from_status, to_status) == skipped
    assert describe_change(from_status, to_status) == message


#: Whether a reported status is at or beyond the expected one, along the way forward.
BEYOND = {
    (S.WAITING_SHIPMENT, S.WAITING_SHIPMENT): True,
    (S.SHIPPED, S.WAITING_SHIPMENT): True,
    (S.PARTIALLY_REFUNDED, S.WAITING_SHIPMENT): True,
    (S.REFUNDED, S.SHIPPED): True,
    (S.SHIPPED, S.PARTIALLY_SHIPPED): True,
    (S.PARTIALLY_REFUNDED, S.PARTIALLY_SHIPPED): False,
    (S.REFUNDED, S.PARTIALLY_REFUNDED): True,
    (S.SHIPPED, S.PARTIALLY_REFUNDED): False,
    (S.CANCELLED, S.WAITING_SHIPMENT): False,
    (S.WAITING_SHIPMENT, S.SHIPPED): False,
    (S.SHIPPED, S.CANCELLED): False,
}


@pytest.mark.parametrize(
    ("reported", "expected", "beyond"), [(r, e, b) for (r, e), b in BEYOND.items()]
)
def test_beyond_follows_the_way_forward(reported: S, expected: S, beyond: bool) -> None:
    assert reached(reported, expected) is beyond


def test_refunded_and_cancelled_lines_are_closed_in_any_spelling() -> None:
    assert [line_open(s) for s in ("REFUNDED", "canceled", "Cancelled", "REFUSED")] == [False] * 4
    assert [line_open(s) for s in ("", "SHIPPING", "NOT_STARTED", "FULFILLED")] == [True] * 4
