"""A fake Shopify shop on 127.0.0.1: the Admin GraphQL API subset push mode uses, in memory.

`POST /admin/api/{version}/graphql.json` answers the root fields sfd queries (`productVariants`,
`orderCreate`, `orders`, `order`), recognised by name rather than by executing GraphQL: each
answer carries every field sfd may select. What Shopify enforces, it enforces:
- the `X-Shopify-Access-Token` header (else HTTP 401, Shopify's message);
- query cost in a leaky bucket, with a standard shop's figures (2,000 points, 100 restored a
  second), Shopify's `THROTTLED` error and `extensions.cost.throttleStatus` in every answer,
  and `MAX_COST_EXCEEDED` past 1,000 points for one query (costs are estimated per root field
  from its `first`, as Shopify estimates a connection);
- orderCreate's `userErrors` (unknown variant, bad price or quantity, out of stock) and its
  options (`inventoryBehaviour` must be one of Shopify's three; `sendReceipt` and
  `sendFulfillmentReceipt` are what decide whether the buyer is mailed: `customer_emails`).

Tests and the demo fulfil (in whole or part) or cancel orders as a merchant would in the admin,
and inject failures: a status, a slow answer (after the request took effect), or a dropped
connection.
"""

from __future__ import annotations

import base64
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Unpack

import msgspec
from aiohttp import web

from sfd.domain.clock import from_iso, to_iso, utcnow
from sfd.sandbox.kit import (
    RecordedCall,
    ShopMerchant,
    ShopOptions,
    ShopSandbox,
    conclude,
    json_answer,
    read_body,
    serve,
    take_failure,
    tracking_number,
)
from sfd.sandbox.woocommerce import DEFAULT_PRODUCTS

RecordedRequest = RecordedCall

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: A standard shop's GraphQL Admin API bucket (shopify.dev, "GraphQL Admin API rate limits").
BUCKET_SIZE: Final = 2000.0
RESTORE_RATE: Final = 100.0
#: The highest requested cost Shopify accepts for one query.
MAX_QUERY_COST: Final = 1000.0
INVENTORY_BEHAVIOURS: Final = frozenset(
    {"BYPASS", "DECREMENT_IGNORING_POLICY", "DECREMENT_OBEYING_POLICY"}
)
_ROOT: Final = re.compile(r"^\s*(?:query|mutation)\b[^{]*\{\s*(\w+)", re.DOTALL)
_TERM: Final = re.compile(r"(\w+):(>=|<=|>|<)?('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)")


class SandboxShopify(ShopSandbox):
    """A Shopify shop in memory: variants, orders, fulfilments, a cost bucket, a request log."""

    def __init__(
        self,
        access_token: str,
        *,
        products: Iterable[tuple[str, str, str]] = DEFAULT_PRODUCTS,
        bucket_size: float = BUCKET_SIZE,
        restore_rate: float = RESTORE_RATE,
        stock: int = 1000,
        **options: Unpack[ShopOptions],
    ) -> None:
        super().__init__(first_id=5_000_000, **options)
        self.access_token = access_token
        self.bucket_size = bucket_size
        self.restore_rate = restore_rate
        self.variants: dict[str, dict[str, Any]] = {}
        self.throttled = 0
        """How many calls were answered THROTTLED."""
        self._available = bucket_size
        self._at = time.monotonic()
        self._number = 1000
        for sku, name, price in products:
            self.add_variant(sku, name, price, stock=stock)

    # -- state, for tests and the demo ----------------------------------------------------

    def add_variant(self, sku: str, title: str, price: str, *, stock: int = 1000) -> str:
        """Add a product variant; return its GID."""
        gid = f"gid://shopify/ProductVariant/{self._id()}"
        self.variants[gid] = {
            "id": gid,
            "sku": sku,
            "title": title,
            "price": price,
            "inventoryQuantity": stock,
            "inventoryPolicy": "DENY",
        }
        return gid

    def remove_variant(self, sku: str) -> None:
        """Take a SKU out of the catalogue."""
        self.variants = {k: v for k, v in self.variants.items() if v["sku"] != sku}

    def orders_for(self, reference: str) -> list[dict[str, Any]]:
        """The shop's orders whose sourceIdentifier is this marketplace reference."""
        return [o for o in self.orders.values() if o["sourceIdentifier"] == reference]

    def fulfil(
        self,
        order_id: int,
        *,
        lines: dict[str, int] | None = None,
        company: str = "Colissimo",
        number: str = "",
        url: str = "",
    ) -> None:
        """Fulfil an order as the merchant does, `lines` (SKU → quantity) or all that is left."""
        order = self.orders[order_id]
        now = self.clock()
        left = self._unfulfilled(order)
        wanted = left if lines is None else lines
        fulfilled = []
        for sku, quantity in wanted.items():
            if quantity > left.get(sku, 0):
                raise ValueError(f"{quantity} of {sku} is more than the {left.get(sku, 0)} left")
            line = next(li for li in order["lineItems"]["nodes"] if li["sku"] == sku)
            fulfilled.append({"quantity": quantity, "lineItem": {"id": line["id"], "sku": sku}})
        tracking = []
        if number or company:
            url = url or (
                f"https://www.laposte.fr/outils/suivre-vos-envois?code={number}" if number else ""
            )
            tracking.append({"company": company or None, "number": number or None, "url": url})
        order["fulfillments"].append(
            {
                "id": f"gid://shopify/Fulfillment/{self._id()}",
                "status": "SUCCESS",
                "createdAt": to_iso(now),
                "trackingInfo": tracking,
                "fulfillmentLineItems": {"nodes": fulfilled},
            }
        )
        done = not any(self._unfulfilled(order).values())
        order["displayFulfillmentStatus"] = "FULFILLED" if done else "PARTIALLY_FULFILLED"
        if order["sendFulfillmentReceipt"] and order.get("email"):
            self.customer_emails.append((order_id, order["email"], "shipping_confirmation"))
        order["updatedAt"] = to_iso(now)

    def cancel(self, order_id: int) -> None:
        """Cancel an order, as the merchant does in the admin."""
        order = self.orders[order_id]
        now = self.clock()
        order["cancelledAt"] = order["updatedAt"] = to_iso(now)

    def drain(self) -> None:
        """Empty the cost bucket, as a burst of other calls would."""
        self._available = 0.0
        self._at = time.monotonic()

    @staticmethod
    def _unfulfilled(order: dict[str, Any]) -> dict[str, int]:
        left = {li["sku"]: li["quantity"] for li in order["lineItems"]["nodes"]}
        for fulfillment in order["fulfillments"]:
            for line in fulfillment["fulfillmentLineItems"]["nodes"]:
                left[line["lineItem"]["sku"]] -= line["quantity"]
        return left

    # -- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving this shop."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/admin/api/{version}/graphql.json", self._graphql)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await read_body(request)
        document = body.get("query", "") if isinstance(body, dict) else ""
        root = _ROOT.match(document) if isinstance(document, str) else None
        record = RecordedCall(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            body=body,
            at=utcnow(),
            operation=root[1] if root else None,
        )
        self.requests.append(record)
        failure = take_failure(self._failures, record.operation)
        if failure is not None and failure.status is not None:
            response: web.StreamResponse = _injected(failure.status)
        elif request.headers.get("X-Shopify-Access-Token") != self.access_token:
            response = _json(
                {"errors": "[API] Invalid API key or access token (unrecognized login or wrong "
                 "password)"},
                401,
            )  # fmt: skip
        else:
            response = await handler(request)
        return await conclude(request, record, response, failure, latency=self.latency)

    async def _graphql(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return _json({"errors": [{"message": "No query string was present"}]}, 400)
        variables = body.get("variables") or {}
        root = _ROOT.match(body["query"])
        field = root[1] if root else ""
        handler = {
            "productVariants": self._product_variants,
            "orderCreate": self._order_create,
            "orders": self._orders,
            "order": self._order,
        }.get(field)
        if handler is None:
            return _errors(f"Field '{field}' doesn't exist on type 'QueryRoot'", "undefinedField")
        requested = _requested_cost(field, variables)
        if requested > MAX_QUERY_COST:
            return _errors(
                f"Query cost is {requested:g}, which exceeds the single query max cost limit "
                f"({MAX_QUERY_COST:g}).",
                "MAX_COST_EXCEEDED",
                cost=self._cost(requested, None),
            )
        self._restore()
        if self._available < requested:
            self.throttled += 1
            return _errors("Throttled", "THROTTLED", cost=self._cost(requested, None))
        self._available -= requested
        try:
            data, actual = handler(variables)
        except _VariableError as exc:
            self._available += requested
            return _errors(str(exc), "INVALID_VARIABLE")
        # Shopify charges what the query really cost: the rest goes back into the bucket.
        self._available = min(self.bucket_size, self._available + max(0.0, requested - actual))
        return _json({"data": data, "extensions": {"cost": self._cost(requested, actual)}})

    def _restore(self) -> None:
        now = time.monotonic()
        self._available = min(
            self.bucket_size, self._available + (now - self._at) * self.restore_rate
        )
        self._at = now

    def _cost(self, requested: float, actual: float | None) -> dict[str, Any]:
        self._restore()
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": self.bucket_size,
                "currentlyAvailable": round(self._available, 3),
                "restoreRate": self.restore_rate,
            },
        }

    # -- root fields ----------------------------------------------------------------------

    def _product_variants(self, variables: dict[str, Any]) -> tuple[dict[str, Any], float]:
        terms = _terms(str(variables.get("query") or ""))
        found = list(self.variants.values())
        for name, _, value in terms:
            if name == "sku":
                found = [v for v in found if v["sku"].casefold() == value.casefold()]
        found = found[: int(variables.get("first") or 10)]
        nodes = [{"id": v["id"], "sku": v["sku"], "title": v["title"]} for v in found]
        return {"productVariants": {"nodes": nodes}}, 2 + len(nodes)

    def _order_create(self, variables: dict[str, Any]) -> tuple[dict[str, Any], float]:
        order = variables.get("order")
        options = variables.get("options") or {}
        if not isinstance(order, dict):
            raise _VariableError("Variable $order of type OrderCreateOrderInput! was not provided")
        behaviour = options.get("inventoryBehaviour", "BYPASS")
        if behaviour not in INVENTORY_BEHAVIOURS:
            raise _VariableError(
                f"Variable $options of type OrderCreateOptionsInput was provided invalid value "
                f'for inventoryBehaviour (Expected "{behaviour}" to be one of: '
                f"{', '.join(sorted(INVENTORY_BEHAVIOURS))})"
            )
        currency = str(order.get("currency") or "EUR")
        lines, errors = self._line_items(order.get("lineItems") or [], behaviour, currency)
        if not order.get("lineItems"):
            errors.append(_user_error(["order", "lineItems"], "must have at least one", "BLANK"))
        if errors:
            return {"orderCreate": {"order": None, "userErrors": errors}}, 10
        if behaviour != "BYPASS":
            for line in lines:
                self.variants[line["variant"]["id"]]["inventoryQuantity"] -= line["quantity"]
        now = to_iso(self.clock())
        order_id = self._id()
        self._number += 1
        stored = {
            "id": f"gid://shopify/Order/{order_id}",
            "legacyResourceId": str(order_id),
            "name": f"#{self._number}",
            "createdAt": now,
            "updatedAt": now,
            "cancelledAt": None,
            "displayFulfillmentStatus": "UNFULFILLED",
            "displayFinancialStatus": order.get("financialStatus") or "PENDING",
            "currencyCode": currency,
            "email": order.get("email"),
            "phone": order.get("phone"),
            "sourceName": order.get("sourceName"),
            "sourceIdentifier": order.get("sourceIdentifier"),
            "tags": list(order.get("tags") or []),
            "note": order.get("note"),
            "customAttributes": list(order.get("customAttributes") or []),
            "shippingAddress": order.get("shippingAddress"),
            "billingAddress": order.get("billingAddress"),
            "shippingLine": (order.get("shippingLines") or [None])[0],
            "transactions": list(order.get("transactions") or []),
            "lineItems": {"nodes": lines},
            "fulfillments": [],
            "sendFulfillmentReceipt": bool(options.get("sendFulfillmentReceipt")),
        }
        self.orders[order_id] = stored
        if options.get("sendReceipt") and stored["email"]:
            self.customer_emails.append((order_id, stored["email"], "order_confirmation"))
        answer = {"id": stored["id"], "name": stored["name"]}
        return {"orderCreate": {"order": answer, "userErrors": []}}, 10

    def _line_items(
        self, entries: list[dict[str, Any]], behaviour: str, currency: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The order's lines as stored, and the user errors of those Shopify refuses."""
        errors: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        for index, entry in enumerate(entries):
            at = ["order", "lineItems", str(index)]
            variant = self.variants.get(str(entry.get("variantId")))
            quantity = entry.get("quantity")
            price = _amount((entry.get("priceSet") or {}).get("shopMoney"))
            if variant is None:
                errors.append(_user_error([*at, "variantId"], "invalid variant", "INVALID"))
                continue
            if not isinstance(quantity, int) or quantity < 1:
                errors.append(
                    _user_error([*at, "quantity"], "must be greater than 0", "GREATER_THAN")
                )
                continue
            if price is None or price < 0:
                errors.append(_user_error([*at, "priceSet"], "price is invalid", "INVALID"))
                continue
            if behaviour == "DECREMENT_OBEYING_POLICY" and variant["inventoryQuantity"] < quantity:
                errors.append(
                    _user_error(
                        [*at, "quantity"],
                        f"Unable to reserve inventory: {variant['sku']} is out of stock",
                        "INVENTORY_NOT_AVAILABLE",
                    )
                )
                continue
            lines.append(
                {
                    "id": f"gid://shopify/LineItem/{self._id()}",
                    "sku": variant["sku"],
                    "title": variant["title"],
                    "quantity": quantity,
                    "variant": {"id": variant["id"]},
                    "originalUnitPriceSet": {"shopMoney": {"amount": f"{price}",
                                                           "currencyCode": currency}},
                }
            )  # fmt: skip
        return lines, errors

    def _orders(self, variables: dict[str, Any]) -> tuple[dict[str, Any], float]:
        first = int(variables.get("first") or 0)
        if not 1 <= first <= 250:
            raise _VariableError("first: you must provide a value between 1 and 250")
        found = [o for o in self.orders.values() if _matches(o, str(variables.get("query") or ""))]
        found.sort(key=lambda o: (o["updatedAt"], o["id"]))
        after = variables.get("after")
        if after:
            key = tuple(msgspec.json.decode(base64.b64decode(after)))
            found = [o for o in found if (o["updatedAt"], o["id"]) > key]
        page = found[:first]
        end = (
            base64.b64encode(msgspec.json.encode([page[-1]["updatedAt"], page[-1]["id"]])).decode()
            if page
            else None
        )
        info = {"hasNextPage": len(found) > first, "endCursor": end}
        nodes = [_public(o) for o in page]
        return {"orders": {"pageInfo": info, "nodes": nodes}}, 2 + len(nodes) * _ORDER_COST

    def _order(self, variables: dict[str, Any]) -> tuple[dict[str, Any], float]:
        gid = str(variables.get("id") or "")
        number = gid.rsplit("/", 1)[-1]
        order = self.orders.get(int(number)) if number.isdigit() else None
        return {"order": _public(order) if order else None}, 1 + (_DETAIL_COST if order else 0)


#: Estimated costs: an order of a page (with its fulfilments and their tracking), and one
#: order read with its fulfilments' lines.
_ORDER_COST: Final = 32
_DETAIL_COST: Final = 540


def _requested_cost(field: str, variables: dict[str, Any]) -> float:
    """Shopify's estimate before running: a connection costs as if full."""
    first = variables.get("first")
    size = first if isinstance(first, int) and first > 0 else 10
    return {
        "productVariants": 2 + size,
        "orderCreate": 10,
        "orders": 2 + size * _ORDER_COST,
        "order": 1 + _DETAIL_COST,
    }.get(field, 1)


class _VariableError(Exception):
    """A variable the schema refuses: a top-level error, nothing runs."""


def _public(order: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in order.items() if k != "sendFulfillmentReceipt"}


def _user_error(field: list[str], message: str, code: str) -> dict[str, Any]:
    return {"field": field, "message": message, "code": code}


def _amount(money: Any) -> Decimal | None:
    if not isinstance(money, dict):
        return None
    try:
        amount = Decimal(str(money.get("amount")))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _terms(query: str) -> list[tuple[str, str, str]]:
    """Shopify search syntax as (field, comparison, value), quotes and escapes undone."""
    terms = []
    for match in _TERM.finditer(query):
        value = match[3]
        if value[:1] in "'\"" and value[-1:] == value[:1]:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        terms.append((match[1], match[2] or "", value))
    return terms


def _matches(order: dict[str, Any], query: str) -> bool:
    for name, comparison, value in _terms(query):
        if name == "tag":
            if value not in order["tags"]:
                return False
        elif name == "source_identifier":
            if order["sourceIdentifier"] != value:
                return False
        elif name in ("updated_at", "created_at"):
            moment = from_iso(order["updatedAt" if name == "updated_at" else "createdAt"])
            if not _compare(moment, comparison, from_iso(value)):
                return False
    return True


def _compare(moment: datetime, comparison: str, bound: datetime) -> bool:
    return {
        ">": moment > bound,
        ">=": moment >= bound,
        "<": moment < bound,
        "<=": moment <= bound,
        "": moment == bound,
    }[comparison]


_json = json_answer


def _errors(message: str, code: str, *, cost: dict[str, Any] | None = None) -> web.Response:
    """A top-level GraphQL error, with HTTP 200 as Shopify sends it."""
    payload: dict[str, Any] = {"errors": [{"message": message, "extensions": {"code": code}}]}
    if cost is not None:
        payload["extensions"] = {"cost": cost}
    return _json(payload)


def _injected(status: int) -> web.Response:
    if status == 401:
        return _json({"errors": "[API] Invalid API key or access token"}, 401)
    if status >= 500:
        return web.Response(
            status=status,
            text="<html><body><h1>There was an error processing your request</h1></body></html>",
            content_type="text/html",
        )
    return _json({"errors": "Injected failure"}, status)


def run_shopify(
    shop: SandboxShopify, *, host: str = "127.0.0.1", port: int = 0
) -> AbstractAsyncContextManager[str]:
    """Serve `shop` on `host` (a free port by default) and yield its shop URL."""
    return serve(shop.app(), host=host, port=port)


class ShopifyMerchant(ShopMerchant):
    """A merchant working in the fake Shopify admin, for `sfd demo --push shopify`: each order
    sfd pushed is fulfilled a few seconds later, with a tracking number."""

    def __init__(
        self, shop: SandboxShopify, *, ship_after: float, carriers: tuple[str, ...]
    ) -> None:
        super().__init__(ship_after)
        self.shop = shop
        self.carriers = carriers

    def waiting(self) -> list[int]:
        """The orders neither cancelled nor fulfilled."""
        return [
            order_id
            for order_id, order in self.shop.orders.items()
            if not order["cancelledAt"] and order["displayFulfillmentStatus"] != "FULFILLED"
        ]

    def ship(self, order_id: int) -> tuple[str | None, str, str]:
        """Fulfil the whole order with a tracking number."""
        tracking = tracking_number()
        carrier = random.choice(self.carriers)  # noqa: S311
        self.shop.fulfil(order_id, company=carrier, number=tracking)
        return self.shop.orders[order_id]["sourceIdentifier"], carrier, tracking
