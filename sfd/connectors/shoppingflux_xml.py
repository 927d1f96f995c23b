"""The legacy Shopping Flux XML webservice's wire format: requests read, responses written.

The old shop modules (PrestaShop's shoppingfluxexport, Magento 1, TH-XML) post form fields
TOKEN, CALL, MODE and REQUEST, the last an XML document, and read back
`<Result><Request>…</Request><Response>…</Response></Result>`. This module only reads and
writes those documents; `sfd.daemon.ws` serves them.

Requests are read with defusedxml and no DTD at all, so entity expansion ("billion laughs")
and external entities never happen; nesting and size are bounded too. Responses are built
with ElementTree, which escapes every value; characters XML 1.0 cannot carry are dropped.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from defusedxml import (
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)
from defusedxml.ElementTree import XMLParser as DefusedXMLParser

from sfd.domain import Address, StoredOrder
from sfd.domain.clock import to_api

#: The largest REQUEST document read, in bytes (UTF-8).
MAX_REQUEST_BYTES = 10 * 1024**2
#: The deepest element nesting read; the real requests need three levels.
MAX_DEPTH = 32
#: The most orders one ValidOrders or UpdateOrders may carry: each is checked and written in
#: one transaction, which holds the database's only writer for as long.
MAX_ORDERS = 1000
#: What `<Version>` says in every response's `<Request>` echo.
VERSION = "2"

_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'
# Everything outside XML 1.0's Char production: C0 controls but tab, LF and CR; surrogates;
# U+FFFE and U+FFFF.
_ILLEGAL = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class XmlWireError(ValueError):
    """A REQUEST that cannot be used; `element` names what is wrong, as an XPath-like path."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(f"{element}: {message}" if element else message)
        self.element = element
        self.message = message


class LegacyStatus(StrEnum):
    """The two statuses UpdateOrders carries."""

    SHIPPED = "Shipped"
    CANCELED = "Canceled"


@dataclass(frozen=True)
class RequestOrder:
    """What every `<Order>` of a request names its order by."""

    id_order: str
    marketplace: str


@dataclass(frozen=True)
class ValidOrder(RequestOrder):
    """One `<Order>` of ValidOrders: the shop imported it, or failed to (`error_order`)."""

    merchant_id_order: str | None = None
    """The shop's own order id; None when absent or empty."""
    error_order: str | None = None
    """The shop's error text; None when the element is absent (the import succeeded)."""


@dataclass(frozen=True)
class OrderUpdate(RequestOrder):
    """One `<Order>` of UpdateOrders: shipped (with tracking) or canceled."""

    status: LegacyStatus
    merchant_id_order: str | None = None
    tracking_number: str = ""
    carrier_name: str = ""
    tracking_url: str = ""


@dataclass(frozen=True)
class Envelope:
    """What every response echoes in `<Request>`. The token is only ever shown redacted."""

    date: datetime
    call: str
    token: str
    mode: str


@dataclass(frozen=True)
class OrderResult:
    """What became of one requested order: `ok`, or not with the `reason`."""

    id_order: str
    marketplace: str
    ok: bool
    reason: str = ""


# -- reading -------------------------------------------------------------------------------


class _TooDeep(Exception):
    pass


class _DepthLimitedBuilder(ET.TreeBuilder):
    """A tree builder that stops the parse as soon as elements nest deeper than allowed."""

    def __init__(self, max_depth: int) -> None:
        super().__init__()
        self.max_depth = max_depth
        self.depth = 0

    def start(self, tag: Any, attrs: dict[Any, Any], /) -> ET.Element:
        self.depth += 1
        if self.depth > self.max_depth:
            raise _TooDeep
        return super().start(tag, attrs)

    def end(self, tag: Any, /) -> ET.Element:
        self.depth -= 1
        return super().end(tag)


def _size(document: str | bytes) -> int:
    if isinstance(document, bytes):
        return len(document)
    if len(document) > MAX_REQUEST_BYTES:
        return len(document)  # at least that many bytes: no need to encode it all
    return len(document.encode("utf-8", "surrogatepass"))


def parse_document(document: str | bytes, root_name: str) -> ET.Element:
    """Parse a REQUEST safely and check its root element; raise XmlWireError.

    Refused: more than MAX_REQUEST_BYTES, any DOCTYPE (so no entity can be declared, let
    alone expanded or fetched), nesting deeper than MAX_DEPTH, and anything not well-formed.
    A str is parsed as it is; bytes follow their XML declaration's encoding (UTF-8 if none).
    """
    size = _size(document)
    if size > MAX_REQUEST_BYTES:
        raise XmlWireError(
            "REQUEST", f"is over {MAX_REQUEST_BYTES} bytes ({size}); send fewer orders per call"
        )
    if not document.strip():
        raise XmlWireError("REQUEST", f"is empty: expected a <{root_name}> document")
    parser = DefusedXMLParser(
        target=_DepthLimitedBuilder(MAX_DEPTH),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        parser.feed(document)
        root = parser.close()
    except _TooDeep:
        raise XmlWireError(
            "REQUEST", f"elements are nested deeper than {MAX_DEPTH} levels"
        ) from None
    except DTDForbidden:
        raise XmlWireError(
            "REQUEST", "a DOCTYPE is not allowed: DTDs and entity declarations are refused"
        ) from None
    except EntitiesForbidden:
        raise XmlWireError("REQUEST", "entity declarations are not allowed") from None
    except ExternalReferenceForbidden:
        raise XmlWireError("REQUEST", "external references are not allowed") from None
    except DefusedXmlException as exc:
        raise XmlWireError("REQUEST", f"refused: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise XmlWireError("REQUEST", f"is not well-formed XML: {exc}") from None
    if not isinstance(root, ET.Element):
        raise XmlWireError("REQUEST", f"is not a <{root_name}> document")
    name = _local(root.tag)
    if name != root_name:
        raise XmlWireError("REQUEST", f"expected a <{root_name}> document, got <{_clip(name)}>")
    return root


def _local(tag: object) -> str:
    """An element's name without any namespace."""
    text = tag if isinstance(tag, str) else ""
    return text.rpartition("}")[2]


def _clip(text: str, limit: int = 60) -> str:
    text = clean_text(text)
    return text if len(text) <= limit else text[:limit] + "…"


def _fields(order: ET.Element, where: str) -> dict[str, str]:
    """The order's child elements by name, their text trimmed; a repeated one is an error."""
    found: dict[str, str] = {}
    for child in order:
        name = _local(child.tag)
        if not name:
            continue  # a comment or processing instruction
        if name in found:
            raise XmlWireError(f"{where}/{name}", "appears more than once")
        found[name] = "".join(child.itertext()).strip()
    return found


def _orders(root: ET.Element) -> list[tuple[str, dict[str, str]]]:
    """(path, fields) of each `<Order>`, the path 1-based like XPath: `ValidOrders/Order[2]`."""
    root_name = _local(root.tag)
    count = sum(1 for c in root if _local(c.tag) == "Order")
    if count > MAX_ORDERS:
        raise XmlWireError(
            root_name,
            f"has {count} <Order> elements; at most {MAX_ORDERS} a request: "
            "send them in several calls",
        )
    entries = []
    for index, order in enumerate((c for c in root if _local(c.tag) == "Order"), start=1):
        where = f"{root_name}/Order[{index}]"
        fields = _fields(order, where)
        for required in ("IdOrder", "Marketplace"):
            if not fields.get(required):
                raise XmlWireError(f"{where}/{required}", "is required")
        entries.append((where, fields))
    return entries


def parse_valid_orders(document: str | bytes) -> list[ValidOrder]:
    """Read a ValidOrders REQUEST, validated whole; raise XmlWireError."""
    return [
        ValidOrder(
            id_order=fields["IdOrder"],
            marketplace=fields["Marketplace"],
            merchant_id_order=fields.get("MerchantIdOrder") or None,
            error_order=fields.get("ErrorOrder"),
        )
        for _where, fields in _orders(parse_document(document, "ValidOrders"))
    ]


_STATUSES = {s.value.lower(): s for s in LegacyStatus}


def parse_update_orders(document: str | bytes) -> list[OrderUpdate]:
    """Read an UpdateOrders REQUEST, validated whole; raise XmlWireError.

    A TrackingNumber that is a link, with no TrackingUrl, becomes the TrackingUrl: Magento 1
    sends links as tracking numbers.
    """
    updates = []
    for where, fields in _orders(parse_document(document, "UpdateOrders")):
        text = fields.get("Status", "")
        if not text:
            raise XmlWireError(f"{where}/Status", "is required: Shipped or Canceled")
        status = _STATUSES.get(text.lower())
        if status is None:
            raise XmlWireError(
                f"{where}/Status", f"expected Shipped or Canceled, got {_clip(text, 40)!r}"
            )
        number = fields.get("TrackingNumber", "")
        url = fields.get("TrackingUrl", "")
        if number.lower().startswith("http") and not url:
            number, url = "", number
        updates.append(
            OrderUpdate(
                id_order=fields["IdOrder"],
                marketplace=fields["Marketplace"],
                status=status,
                merchant_id_order=fields.get("MerchantIdOrder") or None,
                tracking_number=number,
                carrier_name=fields.get("CarrierName", ""),
                tracking_url=url,
            )
        )
    return updates


# -- writing -------------------------------------------------------------------------------


def clean_text(value: str) -> str:
    """The text without the characters XML 1.0 cannot carry."""
    return _ILLEGAL.sub("", value)


def redact_token(token: str) -> str:
    """A token as a response may echo it: its first four characters at most, never whole."""
    token = clean_text(token.strip())
    if not token:
        return ""
    return (token[:4] if len(token) >= 16 else "") + "…"


def money(value: Decimal) -> str:
    """An exact amount with a dot and at least two decimals: `12.30`, `0.00`, `1.125`."""
    exponent = value.as_tuple().exponent
    if value.is_finite() and isinstance(exponent, int) and exponent > -2:
        value = value.quantize(Decimal("0.01"))  # only adds zeros: still exact
    if value.is_zero():
        value = value.copy_abs()  # never "-0.00"
    return format(value, "f")


def _sub(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, name)
    if text is not None:
        element.text = clean_text(text)
    return element


def _document(
    envelope: Envelope, extra: Iterable[ET.Element] = ()
) -> tuple[ET.Element, ET.Element]:
    """The `<Result>` root with its `<Request>` echo, and the empty `<Response>`."""
    root = ET.Element("Result")
    request = _sub(root, "Request")
    _sub(request, "Date", to_api(envelope.date))
    _sub(request, "Call", _clip(envelope.call, 64))
    _sub(request, "Token", redact_token(envelope.token))
    _sub(request, "Mode", _clip(envelope.mode, 64))
    _sub(request, "Version", VERSION)
    response = _sub(root, "Response")
    root.extend(extra)
    return root, response


def _serialize(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return _DECLARATION + body


def render_error(
    envelope: Envelope, type_: str, message: str, *, root_error: bool = False
) -> bytes:
    """`<Response><Error><Type/><Message/></Error></Response>`.

    With `root_error`, also a root-level `<error>`: Magento 1 reads only that one, as "the
    token is not valid".
    """
    extra = []
    if root_error:
        flag = ET.Element("error")
        flag.text = clean_text(message)
        extra.append(flag)
    root, response = _document(envelope, extra)
    error = _sub(response, "Error")
    _sub(error, "Type", type_)
    _sub(error, "Message", message)
    return _serialize(root)


def render_is_client(envelope: Envelope) -> bytes:
    """IsClient's answer for a valid token: `<Status>Client</Status>`."""
    root, response = _document(envelope)
    _sub(response, "Status", "Client")
    return _serialize(root)


_FEE_FIELDS = ("FRAISTRAITEMENT",)


def _fees(order: StoredOrder) -> Decimal:
    """Fees the marketplace charged on top, when an additional field says so; else 0."""
    for name in _FEE_FIELDS:
        value = order.additional_fields.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                amount = Decimal(str(value).replace(",", "."))
            except InvalidOperation:
                continue
            if amount.is_finite():
                return amount
    return Decimal("0.00")


def _address(parent: ET.Element, name: str, address: Address | None, *, shipping: bool) -> None:
    a = address or Address()
    element = _sub(parent, name)
    for tag, value in (
        ("LastName", a.last_name),
        ("FirstName", a.first_name),
        ("Phone", a.phone),
        ("PhoneMobile", a.mobile_phone),
        ("Street", a.street),
        ("Street1", a.street),
        ("Street2", a.street2),
        ("Company", a.company),
        ("PostalCode", a.postal_code),
        ("Town", a.city),
        ("Country", a.country),
        ("Email", a.email),
    ):
        _sub(element, tag, value)
    if shipping and a.relay_id:
        _sub(element, "RelayID", a.relay_id)


#: An additional field becomes an element only when its key is an XML name the modules can
#: read as `$order->AdditionalFields->key`.
_XML_NAME = re.compile(r"(?!(?i:xml))[A-Za-z_][A-Za-z0-9_.-]{0,127}")


def _field_text(value: object) -> str:
    """An additional field as Shoppingfeed writes it: true is `1`, false and null are empty."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, str | int | float | Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _additional_fields(parent: ET.Element, order: StoredOrder) -> None:
    """`<AdditionalFields>`: the marketplace's own fields (`is_business_order`, ...), one each."""
    element = _sub(parent, "AdditionalFields")
    for key in sorted(order.additional_fields):
        if _XML_NAME.fullmatch(key):
            _sub(element, key, _field_text(order.additional_fields[key]))


def _order(parent: ET.Element, order: StoredOrder) -> None:
    element = _sub(parent, "Order")
    shipping = order.shipping_address or Address()
    for tag, value in (
        ("IdOrder", order.reference),
        ("Marketplace", order.channel),
        ("Currency", order.currency),
        ("TotalAmount", money(order.total_amount)),
        ("TotalProducts", money(order.product_amount)),
        ("TotalShipping", money(order.shipping_amount)),
        ("TotalFees", money(_fees(order))),
        ("NumberOfProducts", str(len(order.items))),
        ("OrderDate", to_api(order.created_at)),
        ("Other", shipping.other),
        ("ShippingMethod", order.carrier or order.shipping_method),
    ):
        _sub(element, tag, value)
    _address(element, "BillingAddress", order.billing_address, shipping=False)
    _address(element, "ShippingAddress", order.shipping_address, shipping=True)
    products = _sub(element, "Products")
    for item in order.items:
        product = _sub(products, "Product")
        _sub(product, "SKU", item.reference)
        _sub(product, "Quantity", str(item.quantity))
        _sub(product, "Price", money(item.price))
        _sub(product, "Ecotax", money(item.ecotax_amount))
    _additional_fields(element, order)


def render_orders(envelope: Envelope, orders: Iterable[StoredOrder]) -> bytes:
    """GetOrders' answer: `<Orders>` with one `<Order>` each, in the schema's element order.

    The orders need their lines and addresses (`find(..., details=True)`).
    """
    root, response = _document(envelope)
    listing = _sub(response, "Orders")
    for order in orders:
        _order(listing, order)
    return _serialize(root)


def render_carriers(envelope: Envelope, names: Iterable[str]) -> bytes:
    """GetCarriers' answer: `<Carriers><Carrier>name</Carrier>...</Carriers>`."""
    root, response = _document(envelope)
    listing = _sub(response, "Carriers")
    for name in names:
        _sub(listing, "Carrier", name)
    return _serialize(root)


def _results(envelope: Envelope, results: Sequence[OrderResult], flag: str) -> bytes:
    root, response = _document(envelope)
    listing = _sub(response, "Orders")
    for result in results:
        element = _sub(listing, "Order")
        _sub(element, "IdOrder", result.id_order)
        _sub(element, "Marketplace", result.marketplace)
        _sub(element, flag, "True" if result.ok else "False")
        if not result.ok:
            error = _sub(element, "Error")
            _sub(
                error,
                "Message",
                f"order {result.id_order} on {result.marketplace}: {result.reason or 'refused'}",
            )
    return _serialize(root)


def render_valid_orders(envelope: Envelope, results: Sequence[OrderResult]) -> bytes:
    """ValidOrders' answer: `<Imported>True|False</Imported>` per order, with the reason."""
    return _results(envelope, results, "Imported")


def render_update_orders(envelope: Envelope, results: Sequence[OrderResult]) -> bytes:
    """UpdateOrders' answer: `<StatusUpdated>True|False</StatusUpdated>` per order."""
    return _results(envelope, results, "StatusUpdated")
