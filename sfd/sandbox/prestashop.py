"""A fake PrestaShop shop on 127.0.0.1: the Webservice API subset push mode uses, in memory.

It serves `/api/<resource>` as PrestaShop 1.7 and 8 do, with their rules:
- HTTP Basic auth with the webservice key as the user (401 otherwise);
- XML bodies on POST (`<prestashop><resource>…</resource></prestashop>`), answers in JSON
  when asked with `output_format=JSON` (an empty list is a bare `[]`, as 1.7 writes it);
- filters `filter[field]=[a|b]` (any of), `[abc]%` (begins with), `>[value]` and `<[value]`
  (with `date=1` for dates), `display`, `sort=[field_ASC]` and `limit=offset,count`;
- products, combinations, countries (some with states), states, currencies, carriers,
  tax rules and taxes; customers, addresses, carts, messages, specific prices, orders,
  order histories and order carriers.

An order is made the way PrestaShop's payment module makes one from a cart: the module must be
installed, a cart holds one order only, and a `total_paid` other than the cart's total (prices
with their taxes, plus a paying carrier's cost) puts the order in the payment-error state. A
posted `current_state` is ignored: new orders land in "remote payment accepted".

Tests and the demo ship or cancel orders as a merchant does in the back office, and inject
failures: a status (with Retry-After), a slow answer (after the request took effect), or a
dropped connection. Every request is logged, with its XML body read into a dict.
"""

from __future__ import annotations

import random
import secrets
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final
from xml.etree.ElementTree import Element

import msgspec
from aiohttp import web
from defusedxml import ElementTree

from sfd.domain.clock import Clock, utcnow
from sfd.sandbox.kit import (
    Failure,
    FailurePlan,
    ShopMerchant,
    basic_credentials,
    conclude,
    serve,
    take_failure,
    tracking_number,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: PrestaShop's default order states.
STATE_WS_PAYMENT: Final = 11
"""PS_OS_WS_PAYMENT, "Remote payment accepted": where a webservice order lands."""
STATE_PAYMENT_ACCEPTED: Final = 2
STATE_SHIPPED: Final = 4
STATE_DELIVERED: Final = 5
STATE_CANCELLED: Final = 6
STATE_PAYMENT_ERROR: Final = 8
#: States whose change mails the customer, as PrestaShop's defaults do.
MAILING_STATES: Final = frozenset({2, 4, 5, 6, 8})
DEFAULT_MODULES: Final = frozenset({"ps_wirepayment", "ps_checkpayment"})
#: The catalogue the sandbox marketplace sells from: SKU-0001 ... SKU-0018, 19.90 with 20% tax.
DEFAULT_PRODUCTS: Final = tuple((f"SKU-{n:04d}", f"Product {n}", "16.583333") for n in range(1, 19))
FREE_CARRIER: Final = 1
PAYING_CARRIER: Final = 2
_ENCODER: Final = msgspec.json.Encoder(decimal_format="string")
_SINGULAR: Final = {"addresses": "address", "order_histories": "order_history", "taxes": "tax"}


def ps_time(moment: datetime) -> str:
    """A time as PrestaShop writes it (the shop's zone: the sandbox runs in UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def singular(resource: str) -> str:
    """The element name of one item of `resource`."""
    return _SINGULAR.get(resource, resource.removesuffix("s"))


@dataclass
class RecordedRequest:
    """One request the fake received, and how it was answered."""

    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None
    raw: str
    resource: str
    status: int | None = None
    responded: bool = False

    @property
    def operation(self) -> str:
        """`resource.list`, `resource.get` or `resource.create`."""
        if self.method == "POST":
            return f"{self.resource}.create"
        return (
            f"{self.resource}.get"
            if self.path.rstrip("/").split("/")[-1].isdigit()
            else (f"{self.resource}.list")
        )


@dataclass
class SandboxPrestaShop(FailurePlan):
    """A PrestaShop shop in memory: its tables, the payment modules, and a request log."""

    api_key: str
    products: Iterable[tuple[str, str, str]] = DEFAULT_PRODUCTS
    modules: frozenset[str] = DEFAULT_MODULES
    latency: float = 0.0
    """Seconds added to every answer, after the request took effect."""
    clock: Clock = utcnow
    requests: list[RecordedRequest] = field(default_factory=list)
    tables: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    emails: list[tuple[int, str, int]] = field(default_factory=list)
    """(order id, address, state) of each email PrestaShop would send the customer."""
    _failures: list[Failure] = field(default_factory=list)
    _next: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(5)  # noqa: S311 - order references, not secrets
        self.add("currencies", {"iso_code": "EUR", "name": "Euro"})
        for iso, name, rate in _COUNTRIES:
            country = self.add("countries", {"iso_code": iso, "name": name, "contains_states": 0})
            tax = self.add("taxes", {"rate": rate, "name": f"VAT {iso} {rate}%"})
            rule = {"id_tax_rules_group": 1, "id_country": country, "id_state": 0, "id_tax": tax}
            self.add("tax_rules", rule)
        us = self.add(
            "countries", {"iso_code": "US", "name": "United States", "contains_states": 1}
        )
        for iso, name in (("NY", "New York"), ("CA", "California"), ("TX", "Texas")):
            self.add("states", {"id_country": us, "iso_code": iso, "name": name})
        self.add("carriers", {"name": "Marketplace", "is_free": 1, "url": "", "cost": "0"})
        self.add(
            "carriers",
            {
                "name": "Colissimo",
                "is_free": 0,
                "url": "https://www.laposte.fr/outils/suivre-vos-envois?code=@",
                "cost": "4.90",
            },
        )
        for sku, name, price in self.products:
            self.add_product(sku, name, price)

    # -- state, for tests and the demo ----------------------------------------------------

    def add(self, resource: str, item: dict[str, Any]) -> int:
        """Store an item; return its id."""
        table = self.tables.setdefault(resource, {})
        self._next[resource] = self._next.get(resource, 0) + 1
        item_id = self._next[resource]
        table[item_id] = {"id": item_id} | item
        return item_id

    def find(self, resource: str, **match: Any) -> list[dict[str, Any]]:
        """The items of `resource` whose fields equal `match` (compared as text)."""
        return [
            item
            for item in self.tables.get(resource, {}).values()
            if all(str(item.get(k)) == str(v) for k, v in match.items())
        ]

    def add_product(self, sku: str, name: str, price: str, *, tax_group: int = 1) -> int:
        """Add a product: `price` is without taxes, as PrestaShop stores it."""
        return self.add(
            "products",
            {"reference": sku, "name": name, "price": price, "id_tax_rules_group": tax_group},
        )

    def add_combination(self, sku: str, product_id: int) -> int:
        """Add a combination (a variant) of a product."""
        return self.add("combinations", {"id_product": product_id, "reference": sku})

    def remove_product(self, sku: str) -> None:
        """Take a reference out of the catalogue."""
        for resource in ("products", "combinations"):
            table = self.tables.get(resource, {})
            for item_id in [i for i, p in table.items() if p["reference"] == sku]:
                del table[item_id]

    @property
    def orders(self) -> dict[int, dict[str, Any]]:
        """The shop's orders by id."""
        return self.tables.get("orders", {})

    def states_of(self, order_id: int) -> list[int]:
        """Every state the order went through, oldest first."""
        return [
            int(h["id_order_state"])
            for h in self.tables.get("order_histories", {}).values()
            if int(h["id_order"]) == order_id
        ]

    def reference_of(self, order_id: int) -> str:
        """The marketplace reference in the order's private message, if any."""
        order = self.orders[order_id]
        for message in self.find("messages", id_cart=order["id_cart"]):
            text = str(message["message"])
            if " order " in text:
                return text.split(";")[0].split(" order ")[-1]
        return ""

    def ship(
        self, order_id: int, tracking_number: str = "", *, carrier: int = PAYING_CARRIER
    ) -> None:
        """Ship an order as the merchant does in the back office: state, carrier, tracking."""
        for row in self.find("order_carriers", id_order=order_id):
            row |= {"id_carrier": carrier, "tracking_number": tracking_number}
        self.change_state(order_id, STATE_SHIPPED, email=True)

    def cancel(self, order_id: int) -> None:
        """Cancel an order, as the merchant does in the back office."""
        self.change_state(order_id, STATE_CANCELLED, email=True)

    def change_state(self, order_id: int, state: int, *, email: bool) -> int:
        """Add an order history entry; PrestaShop mails the customer when asked to."""
        order = self.orders[order_id]
        now = ps_time(self.clock())
        history = self.add(
            "order_histories",
            {"id_order": order_id, "id_order_state": state, "id_employee": 0, "date_add": now},
        )
        order |= {"current_state": state, "date_upd": now}
        if email and state in MAILING_STATES:
            customer = self.tables["customers"][int(order["id_customer"])]
            self.emails.append((order_id, str(customer["email"]), state))
        return history

    def calls(self, operation: str) -> list[RecordedRequest]:
        """The recorded requests of one operation (`orders.create`, `products.list`...)."""
        return [r for r in self.requests if r.operation == operation]

    # -- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving this shop."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("GET", "/api/{resource}", self._list)
        app.router.add_route("GET", r"/api/{resource}/{id:\d+}", self._get)
        app.router.add_route("POST", "/api/{resource}", self._create)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = (await request.read()).decode("utf-8", errors="replace")
        resource = request.path.removeprefix("/api/").split("/")[0]
        record = RecordedRequest(
            request.method, request.path, dict(request.query), None, raw, resource
        )
        self.requests.append(record)
        failure = take_failure(self._failures, record.operation)
        if failure is not None and failure.status is not None:
            response: web.StreamResponse = _error(failure.status, "Injected failure")
            if failure.retry_after is not None:
                response.headers["Retry-After"] = failure.retry_after
        elif not self._authorized(request):
            response = _error(401, "Unauthorized")
            response.headers["WWW-Authenticate"] = 'Basic realm="Welcome to PrestaShop Webservice"'
        elif request.query.get("output_format") != "JSON":
            response = _error(400, "this sandbox answers JSON only: ask output_format=JSON")
        elif resource not in _RESOURCES:
            response = _error(404, f'Resource of type "{resource}" does not exists.')
        else:
            try:
                if raw:
                    record.body = _read_xml(raw, resource)
                response = await handler(request)
            except _PsError as exc:
                response = _error(exc.status, exc.message)
        return await conclude(request, record, response, failure, latency=self.latency)

    def _authorized(self, request: web.Request) -> bool:
        return basic_credentials(request) == (self.api_key, "")

    async def _list(self, request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        items = [
            item for item in self.tables.get(resource, {}).values() if _matches(item, request.query)
        ]
        sort = request.query.get("sort", "").strip("[]")
        if sort:
            name, _, direction = sort.rpartition("_")
            items.sort(key=lambda i: (str(i.get(name, "")), i["id"]), reverse=direction == "DESC")
        limit = request.query.get("limit")
        if limit:
            start, _, count = limit.partition(",")
            if not count:
                start, count = "0", start
            items = items[int(start) : int(start) + int(count)]
        if not items:
            return _json([])  # PrestaShop 1.7 writes an empty list so
        display = request.query.get("display", "")
        return _json({resource: [_shown(i, display) for i in items]})

    async def _get(self, request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        item = self.tables.get(resource, {}).get(int(request.match_info["id"] or 0))
        if item is None:
            raise _PsError(404, f"Id(s) not exists: {request.match_info['id']}")
        return _json({singular(resource): item})

    async def _create(self, request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        body = _read_xml((await request.read()).decode(), resource)
        if resource not in _WRITABLE:
            raise _PsError(405, f"Method POST is not allowed for resource {resource}")
        for required in _REQUIRED.get(resource, ()):
            if str(body.get(required, "")) == "":
                raise _PsError(400, f"Property {singular(resource)}->{required} is empty")
        if resource == "orders":
            item = self._make_order(body)
        else:
            if resource == "addresses":
                self._check_address(body)
            if resource == "order_histories":
                order_id = int(body["id_order"])
                if order_id not in self.orders:
                    raise _PsError(400, f"Order {order_id} does not exist")
                sendemail = request.query.get("sendemail") == "1"
                history = self.change_state(order_id, int(body["id_order_state"]), email=sendemail)
                item = self.tables["order_histories"][history]
            else:
                if resource in ("customers", "addresses", "carts"):
                    body |= {"date_add": ps_time(self.clock()), "date_upd": ps_time(self.clock())}
                item_id = self.add(resource, body)
                item = self.tables[resource][item_id]
        return _json({singular(resource): item}, status=201)

    def _check_address(self, body: dict[str, Any]) -> None:
        country = self.tables["countries"].get(int(body.get("id_country") or 0))
        if country is None:
            raise _PsError(400, "Property Address->id_country is empty")
        if country["contains_states"]:
            state = self.tables["states"].get(int(body.get("id_state") or 0))
            if state is None or state["id_country"] != country["id"]:
                raise _PsError(400, "This country requires you to choose a State.")

    def _make_order(self, body: dict[str, Any]) -> dict[str, Any]:
        """PaymentModule::validateOrder, as the webservice runs it."""
        module = str(body["module"])
        if module not in self.modules:
            raise _PsError(400, f'Module "{module}" is not installed or not a payment module')
        cart_id = int(body["id_cart"])
        cart = self.tables.get("carts", {}).get(cart_id)
        if cart is None or self.find("orders", id_cart=cart_id):
            raise _PsError(
                500, "Cart cannot be loaded or an order has already been placed using this cart"
            )
        total = self.cart_total(cart_id)
        paid = _decimal(body.get("total_paid"))
        # validateOrder compares the two at the shop's precision: any other amount is an error.
        state = STATE_WS_PAYMENT if paid == total else STATE_PAYMENT_ERROR
        now = ps_time(self.clock())
        order_id = self.add(
            "orders",
            {
                "id_cart": cart_id,
                "id_customer": int(cart["id_customer"]),
                "id_address_delivery": int(cart["id_address_delivery"]),
                "id_address_invoice": int(cart["id_address_invoice"]),
                "id_currency": int(cart["id_currency"]),
                "id_carrier": int(cart["id_carrier"]),
                "id_shop": int(body.get("id_shop") or 1),
                "current_state": 0,
                "module": module,
                "payment": body["payment"],
                "reference": "".join(self.rng.choices(string.ascii_uppercase, k=9)),
                "total_paid": f"{total:.6f}",
                "total_paid_real": f"{paid:.6f}",
                "date_add": now,
                "date_upd": now,
            },
        )
        self.add(
            "order_carriers",
            {"id_order": order_id, "id_carrier": cart["id_carrier"], "tracking_number": "",
             "date_add": now},
        )  # fmt: skip
        for message in self.find("messages", id_cart=cart_id):
            message["id_order"] = order_id
        self.change_state(order_id, state, email=True)
        return self.orders[order_id]

    def cart_total(self, cart_id: int) -> Decimal:
        """The cart's total with taxes, as PrestaShop computes it: each unit price with its
        tax, rounded, times the quantity; plus the carrier's cost unless it is free."""
        cart = self.tables["carts"][cart_id]
        address = self.tables["addresses"][int(cart["id_address_delivery"])]
        total = Decimal(0)
        for row in cart.get("associations", {}).get("cart_rows", []):
            product = self.tables["products"][int(row["id_product"])]
            price = _decimal(product["price"])
            for special in self.find("specific_prices", id_cart=cart_id):
                if (int(special["id_product"]), int(special["id_product_attribute"])) == (
                    int(row["id_product"]),
                    int(row.get("id_product_attribute") or 0),
                ):
                    price = _decimal(special["price"])
            rate = self._rate(int(product["id_tax_rules_group"]), int(address["id_country"]))
            unit = (price * (100 + rate) / 100).quantize(Decimal("0.01"), ROUND_HALF_UP)
            total += unit * int(row["quantity"])
        carrier = self.tables["carriers"][int(cart["id_carrier"])]
        if not int(carrier["is_free"]):
            total += _decimal(carrier["cost"])
        return total

    def _rate(self, group: int, country: int) -> Decimal:
        for rule in self.find("tax_rules", id_tax_rules_group=group, id_country=country):
            return _decimal(self.tables["taxes"][int(rule["id_tax"])]["rate"])
        return Decimal(0)


#: The countries of the sandbox marketplace's buyers, with their standard VAT rate.
_COUNTRIES: Final = (
    ("FR", "France", "20.000"), ("BE", "Belgium", "21.000"), ("DE", "Germany", "19.000"),
    ("ES", "Spain", "21.000"), ("IT", "Italy", "22.000"), ("LU", "Luxembourg", "17.000"),
    ("NL", "Netherlands", "21.000"), ("PT", "Portugal", "23.000"),
)  # fmt: skip
_RESOURCES: Final = frozenset(
    {
        "products", "combinations", "countries", "states", "currencies", "carriers",
        "tax_rules", "taxes", "customers", "addresses", "carts", "messages",
        "specific_prices", "orders", "order_histories", "order_carriers",
    }
)  # fmt: skip
_WRITABLE: Final = frozenset(
    {"customers", "addresses", "carts", "messages", "specific_prices", "orders",
     "order_histories"}
)  # fmt: skip
_REQUIRED: Final = {
    "customers": ("lastname", "firstname", "email", "passwd"),
    "addresses": ("id_country", "alias", "lastname", "firstname", "address1", "city"),
    "carts": ("id_currency", "id_lang"),
    "messages": ("message",),
    "specific_prices": ("id_shop", "id_product", "price", "from_quantity", "reduction"),
    "orders": ("id_address_delivery", "id_address_invoice", "id_cart", "id_currency",
               "id_lang", "id_customer", "id_carrier", "module", "payment", "total_paid",
               "total_paid_real", "total_products", "total_products_wt", "conversion_rate"),
    "order_histories": ("id_order", "id_order_state"),
}  # fmt: skip


class _PsError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _read_xml(raw: str, resource: str) -> dict[str, Any]:
    """A POSTed body: XML whose root is `prestashop` holding one `resource` item."""
    try:
        root = ElementTree.fromstring(raw)
    except Exception:  # defusedxml raises several kinds: each is a bad body
        raise _PsError(400, "Invalid XML") from None
    item = root.find(singular(resource)) if root.tag == "prestashop" else None
    if item is None:
        raise _PsError(400, f"XML error: expected <prestashop><{singular(resource)}>")
    return _element(item)


def _element(node: Element) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for child in node:
        if child.tag == "associations":
            fields["associations"] = {
                group.tag: [_element(entry) for entry in group] for group in child
            }
        else:
            fields[child.tag] = child.text or ""
    return fields


def _matches(item: dict[str, Any], query: Any) -> bool:
    dated = query.get("date") == "1"
    for key, wanted in query.items():
        if not key.startswith("filter[") or not key.endswith("]"):
            continue
        value = str(item.get(key[7:-1], ""))
        if wanted[:1] in "<>" and wanted[1:2] == "[":
            bound = wanted[2:].rstrip("]")
            if key[7:-1].startswith("date_") and not dated:
                raise _PsError(400, "date filters need date=1")
            if not (value > bound if wanted[0] == ">" else value < bound):
                return False
        elif wanted.endswith("]%") and wanted.startswith("["):
            if not value.lower().startswith(wanted[1:-2].lower()):
                return False
        elif wanted.startswith("[") and wanted.endswith("]"):
            if value.lower() not in {v.lower() for v in wanted[1:-1].split("|")}:
                return False
        else:
            raise _PsError(400, f"The filter {key} is malformed")
    return True


def _shown(item: dict[str, Any], display: str) -> dict[str, Any]:
    if display in ("", "full"):
        return item
    names = display.strip("[]").split(",")
    return {name: item[name] for name in names if name in item}


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except InvalidOperation:
        raise _PsError(400, f"Invalid price {value!r}") from None


def _json(payload: Any, status: int = 200) -> web.Response:
    response = web.Response(
        status=status, body=_ENCODER.encode(payload), content_type="application/json"
    )
    response.headers["PSWS-Version"] = "8.1.7"
    return response


def _error(status: int, message: str) -> web.Response:
    """An error the way the webservice writes one in JSON."""
    return _json({"errors": [{"code": 0, "message": message}]}, status)


class PrestaShopMerchant(ShopMerchant):
    """A merchant in the fake PrestaShop back office: each paid order sfd pushed is shipped a
    few seconds later, with a tracking number on its order carrier."""

    def __init__(self, shop: SandboxPrestaShop, ship_after: float) -> None:
        super().__init__(ship_after)
        self.shop = shop

    def waiting(self) -> list[int]:
        """The paid orders."""
        return [
            order_id
            for order_id, order in self.shop.orders.items()
            if order["current_state"] == STATE_PAYMENT_ACCEPTED
        ]

    def ship(self, order_id: int) -> tuple[str | None, str, str]:
        """Ship the order with a Colissimo tracking number."""
        tracking = tracking_number(self.shop.rng)
        self.shop.ship(order_id, tracking)
        return self.shop.reference_of(order_id), "Colissimo", tracking


@asynccontextmanager
async def prestashop_demo(
    ship_after: float,
) -> AsyncIterator[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
    """A fake PrestaShop for `sfd demo --push prestashop`: its `[[shops]]` TOML and merchant."""
    key = secrets.token_hex(16).upper()
    shop = SandboxPrestaShop(key)
    async with run_prestashop(shop) as url:
        toml = (
            f'connector = "prestashop"\n[shops.settings]\nbase_url = "{url}"\n'
            f'api_key = "{key}"\npayment_module = "ps_wirepayment"\ncarrier_id = {FREE_CARRIER}\n'
            'timezone = "UTC"\n'
        )
        yield toml, PrestaShopMerchant(shop, ship_after).run


def run_prestashop(
    shop: SandboxPrestaShop, *, host: str = "127.0.0.1", port: int = 0
) -> AbstractAsyncContextManager[str]:
    """Serve `shop` on `host` (a free port by default) and yield its base URL."""
    return serve(shop.app(), host=host, port=port)
