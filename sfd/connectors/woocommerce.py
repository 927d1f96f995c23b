"""WooCommerce's REST API v3, for push mode: create orders, read back shipments and cancels.

Auth is the consumer key and secret as HTTP Basic, which only TLS may carry (plain http is
accepted for 127.0.0.1 and localhost, checked with the settings). Reads are retried with
backoff on 5xx and timeouts; a create is never resent blindly: the push loop searches first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Unpack

import aiohttp
import msgspec
from yarl import URL

from sfd.connectors.base import Rejected, Transient
from sfd.connectors.http import Answer, segment
from sfd.connectors.parsing import parse_moment, utc
from sfd.connectors.settings import WooCommerceSettings
from sfd.connectors.shop import (
    CreateUncertain,
    PushOrder,
    ShopHttpConnector,
    ShopOptions,
    ShopOrder,
    ShopStatus,
    ShopTracking,
)
from sfd.domain import Address
from sfd.domain.clock import to_iso

PER_PAGE: Final = 100
#: How many pages of recent orders `find_order` reads when the search found nothing.
FIND_PAGES: Final = 20

#: Order meta keys sfd writes on every order it creates.
META_MARKETPLACE: Final = "sfd_marketplace"
META_REFERENCE: Final = "sfd_marketplace_reference"
META_ORDER_ID: Final = "sfd_order_id"
META_RELAY: Final = "sfd_relay_point_id"
META_VAT: Final = "sfd_buyer_vat_number"
#: The buyer's email when `customer_emails` is off: private meta (leading `_`), which
#: WooCommerce never mails, unlike the billing email.
META_BUYER_EMAIL: Final = "_sfd_buyer_email"

_ORDERS: Final = "/wp-json/wc/v3/orders"
_PRODUCTS: Final = "/wp-json/wc/v3/products"
_TRACKING: Final = "/wp-json/wc-shipment-tracking/v3/orders/{id}/shipment-trackings"


class _Error(msgspec.Struct):
    code: str = ""
    message: str = ""


class _Product(msgspec.Struct):
    id: int
    sku: str = ""
    parent_id: int = 0
    type: str = ""


class _Meta(msgspec.Struct):
    key: str = ""
    value: Any = None


class _ShippingLine(msgspec.Struct):
    method_title: str = ""


class _Order(msgspec.Struct):
    id: int
    status: str = ""
    date_modified_gmt: str | None = None
    meta_data: list[_Meta] = msgspec.field(default_factory=list)
    shipping_lines: list[_ShippingLine] = msgspec.field(default_factory=list)

    def meta(self, key: str) -> str:
        for entry in self.meta_data:
            if entry.key == key and entry.value is not None:
                return str(entry.value)
        return ""


class _Created(msgspec.Struct):
    id: int


class _TrackingItem(msgspec.Struct):
    tracking_provider: str | None = None
    custom_tracking_provider: str | None = None
    tracking_number: str | None = None
    tracking_link: str | None = None
    custom_tracking_link: str | None = None
    date_shipped: str | int | None = None


_STATUSES: Final = {"completed": ShopStatus.COMPLETED, "cancelled": ShopStatus.CANCELLED}


class WooCommerceConnector(ShopHttpConnector[WooCommerceSettings]):
    """One WooCommerce shop."""

    label = "WooCommerce"

    def __init__(
        self,
        settings: WooCommerceSettings,
        *,
        per_page: int = PER_PAGE,
        **options: Unpack[ShopOptions],
    ) -> None:
        super().__init__(settings, **options)
        self.per_page = per_page
        self._base = settings.base_url.strip().rstrip("/")
        self._auth = aiohttp.encode_basic_auth(settings.consumer_key, settings.consumer_secret)
        self._products: dict[str, tuple[int, int]] = {}
        """SKU → (product id, variation id or 0), for SKUs found once."""
        self._tracking_extension: bool | None = None
        """Whether Shipment Tracking answers; None until the first call tells."""

    def _secrets(self) -> tuple[str, str]:
        return (self._settings.consumer_key, self._settings.consumer_secret)

    def _service_error(self, body: bytes) -> str | None:
        return _error_message(body)

    # -- create ---------------------------------------------------------------------------

    async def create_order(self, order: PushOrder) -> str:
        """POST the order once (never retried here: the caller searches before a repeat)."""
        body = await self.order_body(order)
        try:
            answer = await self._send("POST", _ORDERS, "create order", body=body)
            return str(self._http.decode(answer.body, _Created, "create order").id)
        except Transient as exc:
            raise CreateUncertain(str(exc)) from None

    async def order_body(self, order: PushOrder) -> dict[str, Any]:
        """The create body: every SKU looked up first, so an unknown one creates nothing."""
        lines = []
        for line in order.lines:
            product_id, variation_id = await self._product(line.sku, order)
            entry: dict[str, Any] = {
                "product_id": product_id,
                "quantity": line.quantity,
                # The marketplace's price, not the catalogue's: the buyer paid this.
                "subtotal": _money(line.price * line.quantity),
                "total": _money(line.price * line.quantity),
            }
            if variation_id:
                entry["variation_id"] = variation_id
            lines.append(entry)
        meta = [
            {"key": META_MARKETPLACE, "value": order.marketplace},
            {"key": META_REFERENCE, "value": order.reference},
            {"key": META_ORDER_ID, "value": str(order.order_id)},
        ]
        if order.relay_id:
            meta.append({"key": META_RELAY, "value": order.relay_id})
        if order.vat_number:
            meta.append({"key": META_VAT, "value": order.vat_number})
        billing = _address(order.billing, billing=True)
        if not self._settings.customer_emails:
            # Marketplaces forbid mailing their buyers, and WooCommerce mails the billing
            # email at every status change: the address is kept where no email goes.
            email = billing.pop("email")
            if email:
                meta.append({"key": META_BUYER_EMAIL, "value": email})
        return {
            "status": self._settings.order_status,
            "set_paid": True,
            "currency": order.currency,
            "payment_method": "sfd",
            "payment_method_title": order.marketplace,
            "billing": billing,
            "shipping": _address(order.shipping, billing=False),
            "line_items": lines,
            "shipping_lines": [
                {
                    "method_id": "sfd",
                    "method_title": order.shipping_method or order.marketplace,
                    "total": _money(order.shipping_amount),
                }
            ],
            "customer_note": order.customer_note,
            "meta_data": meta,
        }

    async def _product(self, sku: str, order: PushOrder) -> tuple[int, int]:
        cached = self._products.get(sku)
        if cached is not None:
            return cached
        answer = await self._get(_PRODUCTS, "find product", {"sku": sku})
        found = [
            p
            for p in self._http.decode(answer.body, list[_Product], "find product")
            if p.sku == sku
        ]
        if not found:
            raise Rejected(
                f"WooCommerce has no product with SKU {sku!r} (order {order.reference} "
                f"from {order.marketplace})"
            )
        product = found[0]
        if product.type == "variation" and product.parent_id:
            cached = (product.parent_id, product.id)
        else:
            cached = (product.id, 0)
        # Only found SKUs are kept: one added to the catalogue later is found on a retry.
        self._products[sku] = cached
        return cached

    # -- find ------------------------------------------------------------------------------

    async def find_order(self, order: PushOrder, since: datetime | None = None) -> str | None:
        """Search by the marketplace reference; then, as WooCommerce's search does not read
        meta data everywhere, read the orders created since the first attempt."""
        answer = await self._get(
            _ORDERS, "search orders", {"search": order.reference, "per_page": str(self.per_page)}
        )
        found = self._match(self._orders(answer, "search orders"), order)
        if found is not None or since is None:
            return found
        after = to_iso(utc(since) - timedelta(hours=1))
        for page in range(1, FIND_PAGES + 1):
            params = {
                "after": after,
                "dates_are_gmt": "true",
                "orderby": "date",
                "order": "asc",
                "per_page": str(self.per_page),
                "page": str(page),
            }
            answer = await self._get(_ORDERS, "list recent orders", params)
            orders = self._orders(answer, "list recent orders")
            found = self._match(orders, order)
            if found is not None or page >= _total_pages(answer) or not orders:
                return found
        return None

    def _orders(self, answer: Answer, op: str) -> list[_Order]:
        """A page of orders, at most `per_page` of them (see `_page`)."""
        return self._page(self._http.decode(answer.body, list[_Order], op), self.per_page, op)

    @staticmethod
    def _match(orders: list[_Order], order: PushOrder) -> str | None:
        for candidate in orders:
            if (
                candidate.meta(META_REFERENCE) == order.reference
                and candidate.meta(META_MARKETPLACE) == order.marketplace
            ):
                return str(candidate.id)
        return None

    # -- read back -------------------------------------------------------------------------

    async def changed_orders(self, since: datetime | None) -> AsyncIterator[list[ShopOrder]]:
        """Completed, then cancelled orders modified after `since`, oldest change first."""
        for status in ("completed", "cancelled"):
            page = 1
            while True:
                params = {
                    "status": status,
                    "dates_are_gmt": "true",
                    "orderby": "modified",
                    "order": "asc",
                    "per_page": str(self.per_page),
                    "page": str(page),
                }
                if since is not None:
                    params["modified_after"] = to_iso(utc(since))
                answer = await self._get(_ORDERS, f"list {status} orders", params)
                orders = self._orders(answer, f"list {status} orders")
                yield [await self._read(o) for o in orders]
                if not orders or page >= _total_pages(answer):
                    break
                page += 1

    async def get_order(self, shop_id: str) -> ShopOrder | None:
        """One order with its tracking; None if the shop has no such order."""
        answer = await self._get(f"{_ORDERS}/{segment(shop_id)}", "read order", missing_ok=True)
        if answer.status == 404:
            return None
        return await self._read(self._http.decode(answer.body, _Order, "read order"))

    async def _read(self, order: _Order) -> ShopOrder:
        status = _STATUSES.get(order.status, ShopStatus.OTHER)
        sfd_id = order.meta(META_ORDER_ID)
        modified = parse_moment(order.date_modified_gmt) if order.date_modified_gmt else None
        return ShopOrder(
            shop_id=str(order.id),
            status=status,
            modified_at=utc(modified) if modified else None,
            marketplace_reference=order.meta(META_REFERENCE) or None,
            sfd_order_id=int(sfd_id) if sfd_id.isdigit() else None,
            # Only sfd's own orders need their tracking: the merchant's web orders do not.
            tracking=(
                await self._tracking(order)
                if status == ShopStatus.COMPLETED and order.meta(META_REFERENCE)
                else None
            ),
            shipping_method=order.shipping_lines[0].method_title if order.shipping_lines else "",
        )

    async def _tracking(self, order: _Order) -> ShopTracking | None:
        if self._tracking_extension is not False:
            path = _TRACKING.format(id=order.id)
            answer = await self._get(path, "read shipment trackings", missing_ok=True)
            if answer.status == 404:
                error = _error(answer.body)
                if error is not None and error.code == "rest_no_route":
                    # The extension is not installed: read the order's meta data instead.
                    self._tracking_extension = False
            else:
                self._tracking_extension = True
                items = self._http.decode(
                    answer.body, list[_TrackingItem], "read shipment trackings"
                )
                with_number = [i for i in items if i.tracking_number]
                if with_number:
                    item = with_number[-1]
                    return ShopTracking(
                        carrier=item.tracking_provider or item.custom_tracking_provider or "",
                        tracking_number=item.tracking_number or "",
                        tracking_link=item.tracking_link or item.custom_tracking_link or "",
                        shipped_on=_day(item.date_shipped),
                    )
                return None
        number = order.meta(self._settings.tracking_number_meta)
        if not number:
            return None
        return ShopTracking(
            carrier=order.meta(self._settings.carrier_meta),
            tracking_number=number,
            tracking_link=order.meta(self._settings.tracking_link_meta),
        )

    # -- HTTP ------------------------------------------------------------------------------

    async def _get(
        self, path: str, op: str, params: dict[str, str] | None = None, *, missing_ok: bool = False
    ) -> Answer:
        """A read, retried with backoff on 5xx, timeouts and dropped connections."""
        return await self._retried(
            lambda: self._send("GET", path, op, params=params, missing_ok=missing_ok)
        )

    async def _send(
        self,
        method: str,
        path: str,
        op: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        missing_ok: bool = False,
    ) -> Answer:
        url = URL(self._base + path, encoded=True)
        if params:
            url = url.with_query(params)
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        answer = await self._http.send(method, url, op=op, headers=headers, body=body)
        if 200 <= answer.status < 300 or (missing_ok and answer.status == 404):
            return answer
        if answer.status in (401, 403):
            return self._http.ok(answer, op, refused="the consumer key was refused")
        self._http.fail_common(answer, op)
        # WooCommerce's own message, after the operation, so the ticket says what was refused.
        error = _error_message(answer.body)
        message = f"WooCommerce {op}: {error}" if error else None
        raise self._http.error(Rejected(self._http.rejection(answer, message, op=op)), answer)


def _error(body: bytes) -> _Error | None:
    try:
        return msgspec.json.decode(body, type=_Error)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _error_message(body: bytes) -> str | None:
    """WooCommerce's own error message (`{"code": ..., "message": ...}`), if there is one."""
    error = _error(body)
    return error.message or None if error is not None else None


def _total_pages(answer: Answer) -> int:
    value = answer.headers.get("X-WP-TotalPages", "")
    return int(value) if value.isdigit() else 1


def _money(amount: Decimal) -> str:
    return f"{amount:.2f}"


def _day(value: str | int | None) -> date | None:
    if isinstance(value, int):
        return datetime.fromtimestamp(value).date()
    if value:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _address(address: Address, *, billing: bool) -> dict[str, str]:
    second = ", ".join(p for p in (address.street2, address.other) if p)
    fields = {
        "first_name": address.first_name,
        "last_name": address.last_name,
        "company": address.company,
        "address_1": address.street,
        "address_2": second,
        "city": address.city,
        "state": address.province,
        "postcode": address.postal_code,
        "country": address.country,
        "phone": address.phone or address.mobile_phone,
    }
    if billing:
        fields["email"] = address.email
    return fields
