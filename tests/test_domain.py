"""The order statuses and the transitions allowed between them."""

import pytest

from sfd.domain import TRANSITIONS, InvalidTransition, OrderStatus, check_transition

S = OrderStatus


@pytest.mark.parametrize(
    ("from_status", "to_status"),
    [
        (S.CREATED, S.WAITING_STORE_ACCEPTANCE),
        (S.WAITING_STORE_ACCEPTANCE, S.WAITING_SHIPMENT),
        (S.WAITING_STORE_ACCEPTANCE, S.REFUSED),
        (S.WAITING_SHIPMENT, S.SHIPPED),
        (S.WAITING_SHIPMENT, S.PARTIALLY_SHIPPED),
        (S.PARTIALLY_SHIPPED, S.SHIPPED),
        (S.WAITING_SHIPMENT, S.CANCELLED),
        (S.SHIPPED, S.REFUNDED),
        (S.SHIPPED, S.PARTIALLY_REFUNDED),
        (S.PARTIALLY_REFUNDED, S.REFUNDED),
    ],
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
