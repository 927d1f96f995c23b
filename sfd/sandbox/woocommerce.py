"""A fake WooCommerce shop on 127.0.0.1: the REST API v3 subset push mode uses, in memory.

It serves, with WooCommerce's paths, field names and error shapes:
- `GET /wp-json/wc/v3/products` (`sku`, `page`, `per_page`);
- `POST /wp-json/wc/v3/orders`, `GET /wp-json/wc/v3/orders` (`status`, `search`, `after`,
  `modified_after`, `dates_are_gmt`, `orderby`, `order`, `page`, `per_page`, with the
  `X-WP-Total` and `X-WP-TotalPages` headers) and `GET /wp-json/wc/v3/orders/{id}`;
- the Shipment Tracking extension's `GET /wp-json/wc-shipment-tracking/v3/orders/{id}/
  shipment-trackings`, unless built without it (then WordPress answers `rest_no_route`).

Requests need the consumer key and secret as HTTP Basic auth. Tests and the demo complete or
cancel orders as a merchant would in the admin, and inject failures: a status, a slow answer
(after the request took effect), or a dropped connection.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, TypedDict, Unpack

from aiohttp import web

from sfd.domain.clock import from_iso
from sfd.sandbox.kit import (
    Failure,
    RecordedCall,
    ShopOptions,
    ShopSandbox,
    basic_credentials,
    conclude,
    json_answer,
    record,
    serve,
    take_failure,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The catalogue the sandbox marketplace sells from: SKU-0001 ... SKU-0018.
DEFAULT_PRODUCTS: Final = tuple((f"SKU-{n:04d}", f"Product {n}", "19.90") for n in range(1, 19))
ORDER_STATUSES: Final = frozenset(
    {"pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed", "trash"}
)


def wc_time(moment: datetime) -> str:
    """A time as WooCommerce writes it: seconds, no zone (the `_gmt` fields are UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


class Tracking(TypedDict, total=False):
    """How `add_tracking` records a shipment (`complete` passes them on)."""

    provider: str
    link: str
    as_meta: bool


RecordedRequest = RecordedCall
"""One request the fake received, and how it was answered (`order_id`: the path's `id`)."""


class SandboxWooCommerce(ShopSandbox):
    """A WooCommerce shop in memory: products, orders, tracking and a request log."""

    def __init__(
        self,
        consumer_key: str,
        consumer_secret: str,
        *,
        products: Iterable[tuple[str, str, str]] = DEFAULT_PRODUCTS,
        tracking_extension: bool = True,
        **options: Unpack[ShopOptions],
    ) -> None:
        super().__init__(first_id=100, **options)
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.tracking_extension = tracking_extension
        self.products: dict[int, dict[str, Any]] = {}
        self.trackings: dict[int, list[dict[str, Any]]] = {}
        for sku, name, price in products:
            self.add_product(sku, name, price)

    # -- state, for tests and the demo ----------------------------------------------------

    def add_product(self, sku: str, name: str, price: str, *, parent_id: int = 0) -> int:
        """Add a product (a variation of `parent_id` if given); return its id."""
        product_id = self._id()
        self.products[product_id] = {
            "id": product_id,
            "name": name,
            "type": "variation" if parent_id else "simple",
            "parent_id": parent_id,
            "status": "publish",
            "sku": sku,
            "price": price,
            "regular_price": price,
        }
        return product_id

    def remove_product(self, sku: str) -> None:
        """Take a SKU out of the catalogue."""
        self.products = {k: p for k, p in self.products.items() if p["sku"] != sku}

    def orders_for(self, reference: str) -> list[dict[str, Any]]:
        """The shop's orders whose meta data names this marketplace reference."""
        return [
            o for o in self.orders.values() if _meta(o, "sfd_marketplace_reference") == reference
        ]

    def complete(
        self, order_id: int, *, tracking_number: str = "", **tracking: Unpack[Tracking]
    ) -> None:
        """Mark an order completed, as the merchant does once it shipped, with its tracking
        (recorded as `add_tracking` records it)."""
        order = self.orders[order_id]
        now = self.clock()
        order["status"] = "completed"
        order["date_completed"] = order["date_completed_gmt"] = wc_time(now)
        self._mail_customer(order)
        if tracking_number:
            self.add_tracking(order_id, tracking_number, **tracking)
        self._touch(order, now)

    def add_tracking(
        self,
        order_id: int,
        tracking_number: str,
        *,
        provider: str = "Colissimo",
        link: str = "",
        as_meta: bool = False,
    ) -> None:
        """Record a shipment's tracking: through the extension, or as plain order meta data."""
        order = self.orders[order_id]
        now = self.clock()
        link = link or f"https://www.laposte.fr/outils/suivre-vos-envois?code={tracking_number}"
        if as_meta or not self.tracking_extension:
            for key, value in (
                ("_tracking_number", tracking_number),
                ("_tracking_provider", provider),
                ("_tracking_link", link),
            ):
                order["meta_data"].append({"id": self._id(), "key": key, "value": value})
        else:
            self.trackings.setdefault(order_id, []).append(
                {
                    "tracking_id": f"{self._id():032x}",
                    "tracking_provider": provider,
                    "tracking_link": link,
                    "tracking_number": tracking_number,
                    "date_shipped": now.date().isoformat(),
                }
            )
        self._touch(order, now)

    def cancel(self, order_id: int) -> None:
        """Cancel an order, as the merchant does in the admin."""
        order = self.orders[order_id]
        order["status"] = "cancelled"
        self._touch(order, self.clock())

    def _mail_customer(self, order: dict[str, Any]) -> None:
        """WooCommerce's customer emails (processing, on-hold, completed order)."""
        address = str((order.get("billing") or {}).get("email") or "")
        if address and order["status"] in ("processing", "on-hold", "completed"):
            email = f"customer_{order['status'].replace('-', '_')}_order"
            self.customer_emails.append((order["id"], address, email))

    @staticmethod
    def _touch(order: dict[str, Any], now: datetime) -> None:
        order["date_modified"] = order["date_modified_gmt"] = wc_time(now)

    # -- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving this shop."""
        app = web.Application(middlewares=[self._middleware])
        add = app.router.add_route
        add("GET", "/wp-json/wc/v3/products", self._list_products, name="products.list")
        add("POST", "/wp-json/wc/v3/orders", self._create_order, name="orders.create")
        add("GET", "/wp-json/wc/v3/orders", self._list_orders, name="orders.list")
        add("GET", "/wp-json/wc/v3/orders/{id}", self._get_order, name="orders.get")
        add(
            "GET",
            "/wp-json/wc-shipment-tracking/v3/orders/{id}/shipment-trackings",
            self._list_trackings,
            name="trackings.list",
        )
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        call = await record(request, self.clock(), order_key="id")
        self.requests.append(call)
        failure = self._take_failure(call.operation)
        if failure is not None and failure.status is not None:
            response: web.StreamResponse = _injected(failure.status)
        elif not self._authorized(request):
            response = _error(
                401, "woocommerce_rest_authentication_error", "Consumer key is invalid."
            )
        elif call.operation is None or (
            call.operation == "trackings.list" and not self.tracking_extension
        ):
            response = _error(
                404, "rest_no_route", "No route was found matching the URL and request method."
            )
        else:
            try:
                response = await handler(request)
            except _WcError as exc:
                response = _error(exc.status, exc.code, exc.message)
        return await conclude(request, call, response, failure, latency=self.latency)

    def _take_failure(self, operation: str | None) -> Failure | None:
        return take_failure(self._failures, operation)

    def _authorized(self, request: web.Request) -> bool:
        return basic_credentials(request) == (self.consumer_key, self.consumer_secret)

    # -- products -------------------------------------------------------------------------

    async def _list_products(self, request: web.Request) -> web.Response:
        found = list(self.products.values())
        sku = request.query.get("sku")
        if sku is not None:
            wanted = set(sku.split(","))
            found = [p for p in found if p["sku"] in wanted]
        return _page(request, found)

    # -- orders ---------------------------------------------------------------------------

    async def _create_order(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise _WcError(400, "rest_invalid_json", "Invalid JSON body passed.")
        status = body.get("status", "pending")
        if status not in ORDER_STATUSES:
            raise _WcError(400, "rest_invalid_param", "Invalid parameter(s): status")
        now = self.clock()
        lines = [self._line_item(entry) for entry in body.get("line_items") or []]
        shipping_lines = [
            {
                "id": self._id(),
                "method_title": s.get("method_title", ""),
                "method_id": s.get("method_id", ""),
                "total": f"{_decimal(s.get('total'), Decimal(0)):.2f}",
            }
            for s in body.get("shipping_lines") or []
        ]
        shipping_total = sum((Decimal(s["total"]) for s in shipping_lines), Decimal(0))
        total = sum((Decimal(line["total"]) for line in lines), shipping_total)
        order_id = self._id()
        stamp = wc_time(now)
        paid = bool(body.get("set_paid"))
        order = {
            "id": order_id,
            "parent_id": 0,
            "number": str(order_id),
            "order_key": f"wc_order_{order_id:013x}",
            "created_via": "rest-api",
            "status": status,
            "currency": body.get("currency", "EUR"),
            "date_created": stamp,
            "date_created_gmt": stamp,
            "date_modified": stamp,
            "date_modified_gmt": stamp,
            "discount_total": "0.00",
            "shipping_total": f"{shipping_total:.2f}",
            "total": f"{total:.2f}",
            "customer_id": 0,
            "customer_note": body.get("customer_note", ""),
            "billing": dict(body.get("billing") or {}),
            "shipping": dict(body.get("shipping") or {}),
            "payment_method": body.get("payment_method", ""),
            "payment_method_title": body.get("payment_method_title", ""),
            "transaction_id": "",
            "date_paid": stamp if paid else None,
            "date_paid_gmt": stamp if paid else None,
            "date_completed": None,
            "date_completed_gmt": None,
            "meta_data": [
                {"id": self._id(), "key": m.get("key"), "value": m.get("value")}
                for m in body.get("meta_data") or []
            ],
            "line_items": lines,
            "shipping_lines": shipping_lines,
        }
        self.orders[order_id] = order
        self._mail_customer(order)
        return json_answer(order, 201)

    def _line_item(self, entry: dict[str, Any]) -> dict[str, Any]:
        """One line item as WooCommerce stores it; an unknown product is refused."""
        product = self.products.get(int(entry.get("product_id") or 0))
        variation_id = int(entry.get("variation_id") or 0)
        if variation_id:
            product = self.products.get(variation_id)
        if product is None:
            raise _WcError(
                400,
                "woocommerce_rest_invalid_product_id",
                f"Product ID {entry.get('product_id')} is invalid.",
            )
        quantity = int(entry.get("quantity") or 1)
        total = _decimal(entry.get("total"), Decimal(product["price"]) * quantity)
        return {
            "id": self._id(),
            "name": product["name"],
            "product_id": entry.get("product_id"),
            "variation_id": variation_id,
            "quantity": quantity,
            "subtotal": f"{_decimal(entry.get('subtotal'), total):.2f}",
            "total": f"{total:.2f}",
            "sku": product["sku"],
            "price": float(total / quantity) if quantity else 0.0,
        }

    async def _get_order(self, request: web.Request) -> web.Response:
        return json_answer(self._find(request))

    def _find(self, request: web.Request) -> dict[str, Any]:
        order_id = request.match_info["id"]
        order = self.orders.get(int(order_id)) if order_id.isdigit() else None
        if order is None:
            raise _WcError(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        return order

    async def _list_orders(self, request: web.Request) -> web.Response:
        query = request.query
        found = list(self.orders.values())
        if query.get("status") and query["status"] != "any":
            wanted = set(query["status"].split(","))
            found = [o for o in found if o["status"] in wanted]
        gmt = query.get("dates_are_gmt") in ("true", "1")
        for name, field in (("after", "date_created"), ("modified_after", "date_modified")):
            if query.get(name):
                try:
                    bound = from_iso(query[name])
                except ValueError:
                    raise _WcError(
                        400, "rest_invalid_param", f"Invalid parameter(s): {name}"
                    ) from None
                key = field + ("_gmt" if gmt else "")
                found = [o for o in found if _moment(o[key]) > bound]
        search = query.get("search", "").casefold()
        if search:
            # Like WooCommerce: the id, names, e-mail and addresses; not the meta data.
            found = [o for o in found if search in _searchable(o)]
        orderby = {"date": "date_created_gmt", "modified": "date_modified_gmt", "id": "id"}.get(
            query.get("orderby", "date"), "date_created_gmt"
        )
        found.sort(key=lambda o: (o[orderby], o["id"]), reverse=query.get("order") != "asc")
        return _page(request, found)

    async def _list_trackings(self, request: web.Request) -> web.Response:
        order = self._find(request)
        return json_answer(self.trackings.get(order["id"], []))


class _WcError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _meta(order: dict[str, Any], key: str) -> Any:
    for entry in order.get("meta_data") or []:
        if entry.get("key") == key:
            return entry.get("value")
    return None


def _searchable(order: dict[str, Any]) -> str:
    parts = [str(order["id"])]
    for kind in ("billing", "shipping"):
        address = order.get(kind) or {}
        parts.extend(str(v) for v in address.values() if v)
    return " ".join(parts).casefold()


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _decimal(value: Any, default: Decimal) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else default
    except InvalidOperation:
        return default


def _page(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    """One page of a collection, with WordPress's X-WP-Total and X-WP-TotalPages."""
    try:
        page = int(request.query.get("page", "1"))
        per_page = int(request.query.get("per_page", "10"))
    except ValueError:
        raise _WcError(400, "rest_invalid_param", "Invalid parameter(s): page, per_page") from None
    if page < 1 or not 1 <= per_page <= 100:
        raise _WcError(400, "rest_invalid_param", "Invalid parameter(s): page, per_page")
    pages = max(1, math.ceil(len(items) / per_page))
    chosen = items[(page - 1) * per_page : page * per_page]
    response = json_answer(chosen)
    response.headers["X-WP-Total"] = str(len(items))
    response.headers["X-WP-TotalPages"] = str(pages)
    return response


def _error(status: int, code: str, message: str) -> web.Response:
    """An error the way the WordPress REST API writes one."""
    return json_answer({"code": code, "message": message, "data": {"status": status}}, status)


def _injected(status: int) -> web.Response:
    if status >= 500:
        return web.Response(
            status=status,
            text="<html><body><h1>Error establishing a database connection</h1></body></html>",
            content_type="text/html",
        )
    if status == 401:
        return _error(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
    return _error(status, "injected_failure", "Injected failure")


def run_woocommerce(
    shop: SandboxWooCommerce, *, host: str = "127.0.0.1", port: int = 0
) -> AbstractAsyncContextManager[str]:
    """Serve `shop` on `host` (a free port by default) and yield its base URL."""
    return serve(shop.app(), host=host, port=port)
