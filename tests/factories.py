"""Orders built for tests: realistic, our own, independent of ../shared."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sfd.domain import Address, FulfilledBy, MarketplaceOrder, OrderItem, OrderStatus
from sfd.domain.rules import OrderView
from tests.conftest import NOW


def camille(street: str, **fields: str) -> Address:
    """Camille Dupont's address in Lyon, at `street`."""
    return Address(
        first_name="Camille",
        last_name="Dupont",
        street=street,
        postal_code="69003",
        city="Lyon",
        country="FR",
        **fields,
    )


def make_order(
    reference: str,
    status: OrderStatus = OrderStatus.WAITING_SHIPMENT,
    *,
    updated_at: datetime = NOW,
    lines: int = 2,
    ship_by: datetime | None = None,
    relay_id: str = "",
) -> MarketplaceOrder:
    """A Mirakl-like order of `lines` lines, paid in euros."""
    items = tuple(
        OrderItem(
            reference=f"SKU-{n:04d}",
            channel_reference=f"{reference}-{n}",
            quantity=n,
            price=Decimal("19.99") + n,
            name=f"Lampe de bureau {n}",
            commission=Decimal("2.40"),
            tax_amount=Decimal("3.33"),
        )
        for n in range(1, lines + 1)
    )
    products = sum((i.price * i.quantity for i in items), Decimal(0))
    raw = json.dumps({"order_id": reference, "order_state": "SHIPPING"}).encode()
    return MarketplaceOrder(
        reference=reference,
        status=status,
        created_at=updated_at - timedelta(hours=1),
        updated_at=updated_at,
        currency="EUR",
        product_amount=products,
        shipping_amount=Decimal("4.90"),
        total_amount=products + Decimal("4.90"),
        payment_method="CB",
        shipping_method="Colissimo",
        latest_ship_date=ship_by or updated_at + timedelta(days=2),
        raw=raw,
        billing_address=camille(street="12 rue des Lilas", email="camille@example.org"),
        shipping_address=camille(street="Relais Tabac du Centre", relay_id=relay_id),
        items=items,
        additional_fields={"channel_code": "decathlon-fr"},
    )


def order_view(**fields: Any) -> OrderView:
    """What the rules see of an order: one awaiting shipment from the store, two lines,
    with `fields` told otherwise."""
    defaults: dict[str, Any] = {
        "id": 1,
        "reference": "R-1",
        "channel": "deca",
        "status": OrderStatus.WAITING_SHIPMENT,
        "fulfilled_by": FulfilledBy.STORE,
        "require_tracking": False,
        "items": {11: 1, 12: 2},
    }
    return OrderView(**(defaults | fields))
