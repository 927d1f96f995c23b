"""Erasing the buyer's personal data from a marketplace's raw order payload (pure: no I/O).

The raw payload is the marketplace's own JSON, so which of its keys are personal is a fact of
its wire format, and connectors own wire formats: each marketplace's key lists sit here, one
`Redaction` per connector, read from its published spec. Storage never imports connectors:
the daemon hands `redact_payload` to the storage's erasure, as it hands it the API renderer.

A redaction keeps the payload's shape, ids, amounts, statuses, dates, lines and shipments,
and blanks every text inside the personal parts (the buyer, the addresses) except the few
keys kept on purpose (postcode, city, country, ids). The allow-list fails safe: a key the
marketplace adds to its buyer tomorrow is blanked too. Then every text anywhere that is, or
contains, one of the order's known personal values (its stored names, streets, phones,
emails) is blanked as well: a Mirakl custom field holding the buyer's email goes with the rest.
A connector without a redaction, or a payload that is not JSON, is replaced by `{}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from sfd.domain.privacy import is_personal

#: What an erased payload that could not be redacted key by key becomes.
EMPTY_PAYLOAD = "{}"

# Numbers come back as they were written: amounts are decimals, never rounded through floats.
_decoder = msgspec.json.Decoder(float_hook=Decimal)
_encoder = msgspec.json.Encoder(decimal_format="number")


@dataclass(frozen=True)
class Redaction:
    """Which parts of one marketplace's order JSON are personal."""

    personal: frozenset[str]
    """Keys whose whole value is personal: every text below them is blanked…"""
    keep: frozenset[str]
    """…except the values of these keys (postcode, city, country, ids, types)."""
    blank: frozenset[str] = frozenset()
    """Keys blanked wherever they appear, outside the personal parts too."""


#: Mirakl OR11 (`mirakl-seller-orders.json`, OR11_Response_200_Orders): `customer` holds the
#: buyer's names, billing and shipping addresses, contacts and organization.
MIRAKL = Redaction(
    personal=frozenset({"customer"}),
    keep=frozenset(
        {"customer_id", "organization_id", "locale", "zip_code", "city", "state", "country"}
        | {"country_iso_code"}
    ),
    blank=frozenset({"customer_notification_email"}),
)

#: Amazon Orders v2026-01-01 (`Order`): `buyer` (name, email, company), `recipient` (the
#: delivery address and preferences) and the buyer's `taxRegistrations` (legal name, number,
#: address). The purchase order number is the buyer's business reference: it stays.
AMAZON = Redaction(
    personal=frozenset({"buyer", "recipient", "taxRegistrations"}),
    keep=frozenset(
        {"buyerPurchaseOrderNumber", "postalCode", "city", "stateOrRegion", "districtOrCounty"}
        | {"municipality", "countryCode", "addressType", "entityType", "taxRegistrationType"}
        | {"deliveryCapabilities"}
    ),
)

#: eBay Fulfillment v1 (`Order`): `buyer` (username, tax address and identifier, registration
#: address), and each `shippingStep.shipTo` (name, address, phone, email).
EBAY = Redaction(
    personal=frozenset({"buyer", "shipTo"}),
    keep=frozenset(
        {"postalCode", "city", "stateOrProvince", "countryCode", "country", "county"}
        | {"taxIdentifierType", "issuingCountry"}
    ),
    blank=frozenset({"buyerCheckoutNotes"}),
)

#: The redaction of each marketplace connector, by its name in the config.
REDACTIONS: dict[str, Redaction] = {"mirakl": MIRAKL, "amazon": AMAZON, "ebay": EBAY}


def redact_payload(connector: str, payload: str, known: frozenset[str]) -> str:
    """The payload of an order of `connector` without the buyer's personal data.

    `known` holds the order's personal values, lower-cased (`domain.privacy.known_values`).
    """
    redaction = REDACTIONS.get(connector)
    if redaction is None:
        return EMPTY_PAYLOAD
    try:
        document = _decoder.decode(payload)
    except msgspec.DecodeError:
        return EMPTY_PAYLOAD
    return _encoder.encode(_walk(document, redaction, known, personal=False)).decode()


def _walk(value: Any, redaction: Redaction, known: frozenset[str], *, personal: bool) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in redaction.blank:
                out[key] = _blank(item)
            elif personal and key in redaction.keep:
                out[key] = item
            else:
                inside = personal or key in redaction.personal
                out[key] = _walk(item, redaction, known, personal=inside)
        return out
    if isinstance(value, list):
        return [_walk(item, redaction, known, personal=personal) for item in value]
    if isinstance(value, str) and (personal or is_personal(value, known)):
        return ""
    return value


def _blank(value: Any) -> Any:
    """Every text in `value` emptied, its shape kept."""
    if isinstance(value, dict):
        return {key: _blank(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_blank(item) for item in value]
    return "" if isinstance(value, str) else value
