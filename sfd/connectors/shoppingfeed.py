"""Shoppingfeed's order API v1 wire format: order documents, tickets, operation bodies, HAL.

Shop modules and the official SDK read these shapes by exact key, so every key is always
present (null or "" when empty), ids are JSON integers and dates carry their offset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import msgspec

from sfd.domain import Address, OperationKind, OrderStatus, StoredOrder, Ticket
from sfd.domain.clock import from_iso, to_api
from sfd.domain.rules import (
    AcknowledgePayload,
    Payload,
    ReasonPayload,
    RefundPayload,
    ShipPayload,
)

K = OperationKind

_encoder = msgspec.json.Encoder(decimal_format="number")

TICKET_TYPES = {
    K.ACCEPT: "order.notify.acceptance",
    K.REFUSE: "order.notify.refusal",
    K.CANCEL: "order.notify.cancellation",
    K.SHIP: "order.notify.shipment",
    K.REFUND: "order.notify.refund",
    K.DELIVER: "order.notify.delivery",
    K.ACKNOWLEDGE: "order.acknowledge",
    K.UNACKNOWLEDGE: "order.unacknowledge",
    K.UPLOAD_DOCUMENT: "order.upload.documents",
}


class WireError(ValueError):
    """A request that does not follow the wire format; names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def encode(value: Any) -> bytes:
    """JSON with exact decimals written as numbers."""
    return _encoder.encode(value)


def _date(moment: datetime | None) -> str | None:
    return to_api(moment) if moment else None


def _address(address: Address | None, *, shipping: bool) -> dict[str, Any]:
    a = address or Address()
    document = {
        "firstName": a.first_name,
        "lastName": a.last_name,
        "company": a.company,
        "street": a.street,
        "street2": a.street2,
        "other": a.other,
        "postalCode": a.postal_code,
        "city": a.city,
        "province": a.province,
        "country": a.country,
        "phone": a.phone,
        "mobilePhone": a.mobile_phone,
        "email": a.email,
    }
    if shipping:
        document["relayId"] = a.relay_id
    return document


def channel_document(channel_id: int, name: str) -> dict[str, Any]:
    """A channel as orders embed it."""
    return {
        "id": channel_id,
        "name": name,
        "type": "marketplace",
        "segment": "all",
        "countries": [],
        "_links": {"self": {"href": f"/v1/channel/{channel_id}"}, "image": {"href": ""}},
    }


def render_order(order: StoredOrder) -> bytes:
    """An order's v1 document, rendered once each time the order changes."""
    base = f"/v1/store/{order.store_id}"
    commission = sum((i.commission * i.quantity for i in order.items), Decimal(0))
    document = {
        "id": order.id,
        "reference": order.reference,
        "storeReference": order.store_reference,
        "status": order.status.value,
        "channelId": order.channel_id,
        "storeId": order.store_id,
        "createdAt": to_api(order.created_at),
        "updatedAt": to_api(order.updated_at),
        "acknowledgedAt": _date(order.acknowledged_at),
        "latestShipDate": _date(order.latest_ship_date),
        "isTest": order.is_test,
        "anonymized": False,
        "fulfilledBy": order.fulfilled_by,
        "commission": commission,
        "payment": {
            "shippingAmount": order.shipping_amount,
            "productAmount": order.product_amount,
            "totalAmount": order.total_amount,
            "currency": order.currency,
            "method": order.payment_method,
            "taxMode": "undefined",
        },
        "shipment": {
            "carrier": order.carrier or order.shipping_method,
            "trackingNumber": order.tracking_number,
            "trackingLink": order.tracking_link,
            "returnInfo": {"carrier": None, "trackingNumber": None},
        },
        "additionalFields": order.additional_fields,
        # An object, as Shoppingfeed sends it; sfd keeps no SKU aliases, so always empty.
        "itemsReferencesAliases": {},
        "errors": [
            {"type": e.type, "message": e.message, "occurredAt": to_api(e.occurred_at)}
            for e in order.errors
        ],
        "billingAddress": _address(order.billing_address, shipping=False),
        "shippingAddress": _address(order.shipping_address, shipping=True),
        "items": [
            {
                "id": i.id,
                "reference": i.reference,
                "status": i.status,
                "quantity": i.quantity,
                "price": i.price,
                "commission": i.commission,
                "taxAmount": i.tax_amount,
                "ecotaxAmount": i.ecotax_amount,
                "channelReference": i.channel_reference,
                "additionalFields": i.additional_fields,
                "name": i.name,
                "image": i.image or None,
            }
            for i in order.items
        ],
        "_links": {
            "self": {"href": f"{base}/order/{order.id}"},
            "store": {"href": base},
        },
        "_embedded": {"channel": channel_document(order.channel_id, order.channel), "tag": []},
    }
    return encode(document)


def _sf_payload(ticket: Ticket) -> dict[str, Any]:
    p = ticket.payload
    out: dict[str, Any] = {
        "id": ticket.order_id if ticket.order_id is not None else p.get("orderId"),
        "reference": ticket.order_reference,
        "channelName": ticket.channel,
    }
    if ticket.kind == K.SHIP:
        out |= {
            "carrier": p.get("carrier", ""),
            "trackingNumber": p.get("tracking_number", ""),
            "trackingLink": p.get("tracking_link", ""),
            "items": [{"id": i, "quantity": q} for i, q in p.get("items", [])],
            "warehouseId": p.get("warehouse_id"),
        }
        if "return_carrier" in p or "return_tracking_number" in p:
            out["returnInfo"] = {
                "carrier": p.get("return_carrier"),
                "trackingNumber": p.get("return_tracking_number"),
            }
    elif ticket.kind == K.ACKNOWLEDGE:
        out |= {
            "status": p.get("status", "success"),
            "storeReference": p.get("store_reference"),
            "message": p.get("message", ""),
            "acknowledgedAt": _date(from_iso(p["acknowledged_at"]))
            if p.get("acknowledged_at")
            else None,
        }
    elif ticket.kind == K.REFUND:
        out["refund"] = {
            "shipping": p.get("shipping", True),
            "products": [{"reference": r, "quantity": q} for r, q in p.get("products", [])],
        }
    elif ticket.kind == K.UPLOAD_DOCUMENT:
        out["documents"] = [
            {
                "type": p.get("type", "invoice"),
                "fileName": p.get("file_name", ""),
                "contentType": p.get("content_type", ""),
                "size": p.get("size", 0),
                "sha256": p.get("sha256", ""),
            }
        ]
    elif "reason" in p:
        out["reason"] = p["reason"]
    return out


def render_ticket(ticket: Ticket) -> dict[str, Any]:
    """A ticket as the SDK's TicketResource reads it."""
    document: dict[str, Any] = {
        "id": ticket.id,
        "batchId": ticket.batch_id,
        "type": TICKET_TYPES[ticket.kind],
        "state": ticket.state.value,
        "payload": _sf_payload(ticket),
        "scheduledAt": to_api(ticket.created_at),
        "startedAt": _date(ticket.started_at),
        "finishedAt": _date(ticket.finished_at),
        "result": _ticket_result(ticket),
        "_links": {"self": {"href": f"/v1/store/{ticket.store_id}/ticket/{ticket.id}"}},
    }
    return document


def render_shipment(ticket: Ticket) -> dict[str, Any]:
    """A shipment (a ship operation that has not failed) as getShipmentsByOrder reads it."""
    p = _sf_payload(ticket)
    return {
        "id": ticket.operation_id,
        "carrier": p["carrier"],
        "trackingNumber": p["trackingNumber"],
        "trackingLink": p["trackingLink"],
        "returnInfo": p.get("returnInfo", {"carrier": None, "trackingNumber": None}),
        "items": p["items"] or None,
        "state": ticket.state.value,
        "createdAt": to_api(ticket.created_at),
    }


def collection(
    key: str,
    items: Sequence[bytes],
    *,
    path: str,
    query: Mapping[str, str],
    page: int,
    limit: int,
    total: int,
    meta: Mapping[str, Any] | None = None,
) -> bytes:
    """A paginated HAL collection. Items are already-encoded JSON documents, joined as bytes."""
    pages = max(1, -(-total // limit))
    kept = urlencode(query)
    prefix = f"{path}?{kept}&" if kept else f"{path}?"

    def link(number: int) -> dict[str, str]:
        return {"href": f"{prefix}page={number}&limit={limit}"}

    links = {"self": link(page), "first": link(1), "last": link(pages)}
    if page > 1:
        links["prev"] = link(page - 1)
    if page < pages:
        links["next"] = link(page + 1)
    head: dict[str, Any] = {
        "total": total,
        "count": len(items),
        "page": page,
        "pages": pages,
        "limit": limit,
    }
    if meta is not None:
        head["meta"] = meta
    head["_links"] = links
    start = encode(head)[:-1]
    return start + b',"_embedded":{"' + key.encode() + b'":[' + b",".join(items) + b"]}}"


# -- operation bodies ----------------------------------------------------------------------


class _Entry(msgspec.Struct, rename="camel"):
    id: int | None = None
    reference: str | None = None
    channel_name: str | None = None


class _Item(msgspec.Struct):
    id: int
    quantity: int


class _ReturnInfo(msgspec.Struct, rename="camel"):
    carrier: str | None = None
    tracking_number: str | None = None


class _ShipEntry(_Entry, rename="camel"):
    # null is "not known" as much as "" is: shop modules send either.
    carrier: str | None = None
    tracking_number: str | None = None
    tracking_link: str | None = None
    items: list[_Item] = msgspec.field(default_factory=list)
    warehouse_id: str | int | None = None
    return_info: _ReturnInfo | None = None


class _AckEntry(_Entry, rename="camel"):
    status: str = "success"
    store_reference: str | int | None = None
    message: str | None = None
    acknowledged_at: str | None = None


class _ReasonEntry(_Entry, rename="camel"):
    reason: str | None = None


class _RefundProduct(msgspec.Struct):
    reference: str
    quantity: int


class _Refund(msgspec.Struct):
    shipping: bool = True
    # The SDK's manual writes products as {"SKU": quantity}; its code as a list of objects.
    products: list[_RefundProduct] | dict[str, int] = msgspec.field(default_factory=list)


class _RefundEntry(_Entry, rename="camel"):
    refund: _Refund | None = None


_ENTRY_TYPES: dict[OperationKind, type[_Entry]] = {
    K.SHIP: _ShipEntry,
    K.ACKNOWLEDGE: _AckEntry,
    K.REFUND: _RefundEntry,
    K.ACCEPT: _ReasonEntry,
    K.REFUSE: _ReasonEntry,
    K.CANCEL: _ReasonEntry,
    K.DELIVER: _ReasonEntry,
    K.UNACKNOWLEDGE: _ReasonEntry,
}

_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "array": "an array",
    "object": "an object",
    "null": "null",
    "float": "a number",
}


def _field_error(error: msgspec.ValidationError) -> WireError:
    text = str(error)
    match = re.match(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", text, re.DOTALL)
    assert match is not None
    msg, path = match["msg"], (match["path"] or "").lstrip(".")
    missing = re.fullmatch(r"Object missing required field `(.+)`", msg)
    if missing:
        return WireError(f"{path}.{missing[1]}".lstrip("."), "is required")

    def words(m: re.Match[str]) -> str:
        return " or ".join(_TYPE_WORDS.get(k, k) for k in m[1].split(" | "))

    return WireError(path, re.sub(r"`([^`]*)`", words, msg[0].lower() + msg[1:]))


def parse_date(text: str, field: str) -> datetime:
    """Read a date leniently, as shop modules send them.

    Accepts ISO 8601 with or without offset, a space instead of `T`, and PrestaShop's
    `2024-05-01CEST14:31:05`, where PHP wrote a time zone abbreviation in place of `T`.
    A date without an offset is taken as UTC.
    """
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2})(?:(?:T|\s+|[A-Za-z]{1,5}|[+-]\d{2}(?::?\d{2})?)"
        r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?))?\s*(Z|[+-]\d{2}:?\d{2})?",
        text.strip(),
    )
    if match is None:
        raise WireError(
            field, f"expected an ISO 8601 date such as 2026-11-29T10:00:00+01:00, got {text[:60]!r}"
        )
    day, time, offset = match.groups()
    try:
        moment = datetime.fromisoformat(f"{day}T{time or '00:00:00'}")
    except ValueError:
        raise WireError(field, f"not a real date: {text[:60]!r}") from None
    zone: timezone = UTC
    if offset and offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise WireError(field, f"not a real UTC offset: {offset!r}")
        zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return moment.replace(tzinfo=zone).astimezone(UTC)
    except OverflowError:
        raise WireError(field, f"out of range: {text[:60]!r}") from None


#: The most orders one operation request may name: each is checked and written in the one
#: transaction, which holds the database's only writer for as long.
MAX_ENTRIES = 1000


def decode_json(body: bytes) -> Any:
    """A request body read as JSON, any shape; raise WireError on the `body` field."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise WireError("body", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise WireError("body", "not valid JSON: nested too deeply") from None


def parse_operation(kind: OperationKind, body: bytes) -> list[tuple[_Entry, Payload]]:
    """Read `{"order": [...]}` for one operation, validated whole; raise WireError."""
    document = decode_json(body)
    if not isinstance(document, dict) or "order" not in document:
        raise WireError("order", 'is required: the body is {"order": [...]}')
    if not isinstance(document["order"], list):
        raise WireError("order", "expected an array of orders")
    if not document["order"]:
        raise WireError("order", "is empty: name at least one order")
    if len(document["order"]) > MAX_ENTRIES:
        raise WireError(
            "order",
            f"has {len(document['order'])} entries; at most {MAX_ENTRIES} a request: "
            "send them in several requests",
        )
    entry_type = _ENTRY_TYPES[kind]
    try:
        entries: list[_Entry] = msgspec.convert(
            document["order"],
            list[entry_type],  # type: ignore[valid-type]
        )
    except msgspec.ValidationError as exc:
        error = _field_error(exc)
        raise WireError(
            f"order{error.field}" if error.field.startswith("[") else error.field, error.message
        ) from None
    parsed = []
    for index, entry in enumerate(entries):
        where = f"order[{index}]"
        if entry.id is None and not (entry.reference and entry.channel_name):
            raise WireError(
                f"{where}.id", "is required (or reference with channelName) to name the order"
            )
        parsed.append((entry, _payload(kind, entry, where)))
    return parsed


def _text(value: str | int | None) -> str | None:
    return None if value is None else str(value)


def _payload(kind: OperationKind, entry: _Entry, where: str) -> Payload:
    if isinstance(entry, _ShipEntry):
        info = entry.return_info
        return ShipPayload(
            carrier=entry.carrier or "",
            tracking_number=entry.tracking_number or "",
            tracking_link=entry.tracking_link or "",
            items=tuple((i.id, i.quantity) for i in entry.items),
            return_carrier=info.carrier if info else None,
            return_tracking_number=info.tracking_number if info else None,
            warehouse_id=_text(entry.warehouse_id),
        )
    if isinstance(entry, _AckEntry):
        if entry.status not in ("success", "error"):
            raise WireError(
                f"{where}.status", f"expected 'success' or 'error', got {entry.status!r}"
            )
        return AcknowledgePayload(
            status=entry.status,
            store_reference=_text(entry.store_reference),
            message=entry.message or "",
            acknowledged_at=parse_date(entry.acknowledged_at, f"{where}.acknowledgedAt")
            if entry.acknowledged_at
            else None,
        )
    if isinstance(entry, _RefundEntry):
        refund = entry.refund or _Refund()
        products = (
            tuple(refund.products.items())
            if isinstance(refund.products, dict)
            else tuple((p.reference, p.quantity) for p in refund.products)
        )
        return RefundPayload(shipping=refund.shipping, products=products)
    assert isinstance(entry, _ReasonEntry)
    return ReasonPayload(reason=entry.reason or "")


def parse_statuses(text: str) -> list[OrderStatus]:
    """`status=waiting_shipment,shipped` → statuses; raise WireError on an unknown one."""
    statuses = []
    for value in (v.strip() for v in text.split(",") if v.strip()):
        try:
            statuses.append(OrderStatus(value))
        except ValueError:
            known = ", ".join(s.value for s in OrderStatus)
            raise WireError("status", f"unknown status {value!r} (known: {known})") from None
    return statuses


def _ticket_result(ticket: Ticket) -> dict[str, str] | None:
    """Why a ticket failed, or what its delivered operation sent; None while there is neither."""
    message = ticket.reason or ticket.result
    return {"message": message} if message else None
