"""What counts as a buyer's personal data, and when it is erased (pure: no I/O).

Amazon's Data Protection Policy wants buyers' personal data deleted within 30 days of
delivery, and the GDPR wants a bounded retention. sfd keeps an order's history (amounts,
lines, statuses, events, operations) and erases who the buyer is and where they live: names,
companies, street lines, phones and emails. Country, postcode and city stay, as coarse as a
sales report needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from sfd.domain import CLOSED_STATUSES, OrderStatus

#: The default `[daemon] pii_retention`.
DEFAULT_RETENTION = timedelta(days=30)

#: An order settled in one of these statuses has its personal data erased once it has been
#: settled for the retention. A partial refund settles an order too (it comes after the
#: shipment, or cancels what was left to ship): without it, such orders would keep their
#: buyer's data forever.
RETENTION_STATUSES = frozenset({*CLOSED_STATUSES, OrderStatus.PARTIALLY_REFUNDED})

#: The columns of an address that say who the buyer is and where exactly they live. The
#: others (postal_code, city, province, country, relay_id: a pickup point's id) stay.
PERSONAL_ADDRESS_FIELDS = (
    "first_name",
    "last_name",
    "company",
    "street",
    "street2",
    "other",
    "phone",
    "mobile_phone",
    "email",
)

#: The keys of an order's `additional_fields` that carry personal data, as the connectors
#: name them: Mirakl's organization, Amazon's business buyer and delivery preferences,
#: eBay's buyer. They are removed from the order.
PERSONAL_ORDER_FIELDS = frozenset(
    {
        "organization_name",  # Mirakl customer.organization.name
        "company_legal_name",  # Amazon tax.taxRegistrations[BUYER].legalName
        "vat_number",  # Mirakl and Amazon: the buyer's tax number
        "delivery_instructions",  # Amazon recipient.deliveryPreference.addressInstruction
        "drop_off_location",  # Amazon recipient.deliveryPreference.dropOffLocation
        "buyer_username",  # eBay buyer.username
        "buyer_checkout_notes",  # eBay buyerCheckoutNotes
        "buyer_tax_address",  # eBay buyer.taxAddress
    }
)

#: A personal value shorter than this is not searched for inside other texts (an initial,
#: "Li"): too many unrelated words would contain it.
MIN_SEARCHED = 4


def known_values(addresses: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The personal values of an order's addresses, lower-cased: what no erased copy keeps."""
    found = set()
    for address in addresses:
        for name in PERSONAL_ADDRESS_FIELDS:
            value = str(address.get(name) or "").strip().lower()
            if value:
                found.add(value)
                # "Camille Dubois" is also found as "Camille" and "Dubois" elsewhere.
                found.update(part for part in value.split() if len(part) >= MIN_SEARCHED)
    return frozenset(found)


def is_personal(text: str, known: frozenset[str]) -> bool:
    """Whether `text` is, or contains, one of the `known` personal values."""
    folded = text.strip().lower()
    if not folded:
        return False
    if folded in known:
        return True
    return any(len(value) >= MIN_SEARCHED and value in folded for value in known)


def erase_fields(fields: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """An order's `additional_fields` without its personal ones, nor any holding a known value."""
    return {
        key: value
        for key, value in fields.items()
        if key not in PERSONAL_ORDER_FIELDS
        and not (isinstance(value, str) and is_personal(value, known))
    }
