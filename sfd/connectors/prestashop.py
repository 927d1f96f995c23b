"""PrestaShop's Webservice API (1.7 and 8), for push mode: create orders, read back shipments.

PrestaShop has no "create an order" call that takes lines and prices: an order is made from a
cart, as a checkout makes it. So one create is a chain, each step recorded (`Steps`) before the
next starts, so that a crash in the middle resumes the chain instead of making it twice:

1. the customer (a guest, or the one already holding that email);
2. the delivery and invoice addresses;
3. the cart with its rows;
4. a private message naming the marketplace order (what `find_order` searches for);
5. one cart-bound specific price per line, so the cart totals the marketplace's prices;
6. the order (PrestaShop runs its payment module's validateOrder on the cart);
7. an order history entry moving the order to `paid_state`, without `sendemail`.

Bodies are XML, as the webservice requires, built with ElementTree; every answer is asked for
as JSON (`output_format=JSON`). The key is the HTTP Basic user, with an empty password, which
only TLS may carry (plain http is accepted for 127.0.0.1 and localhost, checked with the
settings). Reads are retried with backoff on 5xx and timeouts; a write is never resent blindly.
"""

from __future__ import annotations

import hashlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, TypeVar, Unpack
from zoneinfo import ZoneInfo

import aiohttp
import msgspec
from yarl import URL

from sfd.connectors.base import AuthFailed, ConnectorError, Rejected, Transient
from sfd.connectors.http import Answer, segment
from sfd.connectors.parsing import utc
from sfd.connectors.settings import PrestaShopSettings
from sfd.connectors.shop import (
    CreateUncertain,
    PushOrder,
    ShopHttpConnector,
    ShopOptions,
    ShopOrder,
    ShopStatus,
    ShopTracking,
    Steps,
)
from sfd.domain import Address

_T = TypeVar("_T")
_St = TypeVar("_St", bound=msgspec.Struct)

PER_PAGE: Final = 100
#: Where a customer's email goes when `customer_emails` is off: a reserved domain (RFC 2606),
#: so no email PrestaShop sends on a state change can reach anyone.
UNREACHABLE_DOMAIN: Final = "sfd.invalid"
#: How a shop date is written: PrestaShop's own format, in the shop's time zone.
_DATE: Final = "%Y-%m-%d %H:%M:%S"
#: Characters that PrestaShop's filter syntax reads as operators: a value holding one cannot
#: be searched for.
_FILTER_SYNTAX: Final = frozenset("[]|,%<>")
_CENT: Final = Decimal("0.01")
_SIX: Final = Decimal("0.000001")

#: The step names recorded in the push row.
CUSTOMER, DELIVERY, INVOICE, CART, MESSAGE, PRICES, ORDER, PAID = (
    "customer", "delivery", "invoice", "cart", "message", "prices", "order", "paid",
)  # fmt: skip


class _Error(msgspec.Struct):
    code: int | str | None = None
    message: str = ""


class _Errors(msgspec.Struct):
    errors: list[_Error] = msgspec.field(default_factory=list)


class _Id(msgspec.Struct):
    """A resource by its id; every resource read below extends it."""

    id: int


class _Product(_Id):
    reference: str = ""
    id_tax_rules_group: int = 0


class _Combination(_Id):
    id_product: int
    reference: str = ""


class _Country(_Id):
    iso_code: str = ""
    contains_states: int = 0


class _State(_Id):
    iso_code: str = ""
    name: str = ""


class _TaxRule(msgspec.Struct):
    id_tax: int
    id_state: int = 0


class _Tax(_Id):
    rate: Decimal = Decimal(0)


class _Carrier(_Id):
    name: str = ""
    url: str = ""
    is_free: int = 0


class _Message(_Id):
    id_cart: int = 0
    message: str = ""


class _SpecificPrice(_Id):
    id_product: int = 0
    id_product_attribute: int = 0


class _Order(_Id):
    current_state: int = 0
    date_upd: str = ""
    module: str = ""
    id_carrier: int = 0
    total_paid: Decimal | None = None


class _History(_Id):
    id_order_state: int = 0


class _OrderCarrier(_Id):
    id_carrier: int = 0
    tracking_number: str = ""
    date_add: str = ""


class _Line(msgspec.Struct, frozen=True):
    """A SKU as PrestaShop knows it: product, combination (0 for none) and tax rules group."""

    product: int
    combination: int
    tax_group: int


class PrestaShopConnector(ShopHttpConnector[PrestaShopSettings]):
    """One PrestaShop shop."""

    label = "PrestaShop"

    def __init__(
        self,
        settings: PrestaShopSettings,
        *,
        per_page: int = PER_PAGE,
        **options: Unpack[ShopOptions],
    ) -> None:
        super().__init__(settings, **options)
        self.per_page = per_page
        self._base = settings.base_url.strip().rstrip("/")
        self._zone = ZoneInfo(settings.timezone)
        self._auth = aiohttp.encode_basic_auth(settings.api_key, "")
        self._shipped = frozenset(settings.shipped_states)
        self._cancelled = frozenset(settings.cancelled_states)
        # Caches of what a shop's catalogue and settings say; only what was found is kept, so
        # a SKU, country or currency added later is found on a retry.
        self._lines: dict[str, _Line] = {}
        self._countries: dict[str, _Country] = {}
        self._states: dict[int, list[_State]] = {}
        self._rates: dict[tuple[int, int, int], Decimal] = {}
        self._currencies: dict[str, int] = {}
        self._carriers: dict[int, _Carrier] = {}

    def _secrets(self) -> tuple[str]:
        return (self._settings.api_key,)

    # -- create ---------------------------------------------------------------------------

    async def create_order(self, order: PushOrder) -> str:
        """Create the order with no record of its steps (each create starts the chain anew)."""
        return await self.create_order_in_steps(order, Steps())

    async def create_order_in_steps(self, order: PushOrder, steps: Steps) -> str:
        """Run the creation chain from the first step not recorded in `steps`.

        Everything is looked up first (SKUs, countries, states, currency, carrier), so an
        order PrestaShop cannot take is refused before anything is written.
        """
        lines = [await self._line(line.sku, order) for line in order.lines]
        delivery_country, delivery_state = await self._place(order.shipping, order, "shipping")
        invoice_country, invoice_state = await self._place(order.billing, order, "billing")
        currency = await self._currency(order)
        await self._free_carrier()
        # PrestaShop computes a line's price with its taxes from a price without them: each
        # specific price is the marketplace's price less the tax PrestaShop adds back.
        rates = [
            await self._rate(line.tax_group, delivery_country, delivery_state) for line in lines
        ]
        try:
            customer = await self._step(steps, CUSTOMER, lambda: self._customer(order))
            delivery = await self._step(
                steps,
                DELIVERY,
                lambda: self._address(
                    order, order.shipping, customer, delivery_country, delivery_state, "delivery"
                ),
            )
            invoice = await self._step(
                steps,
                INVOICE,
                lambda: (
                    _same(delivery)
                    if order.billing == order.shipping
                    else self._address(
                        order, order.billing, customer, invoice_country, invoice_state, "invoice"
                    )
                ),
            )
            cart = await self._step(
                steps,
                CART,
                lambda: self._cart(order, lines, customer, delivery, invoice, currency),
            )
            await self._step(steps, MESSAGE, lambda: self._message(order, customer, cart))
            await self._step(
                steps, PRICES, lambda: self._prices(order, lines, rates, customer, cart)
            )
            total = sum(
                (_with_tax(line.price, rate) * line.quantity for line, rate in zip(
                    order.lines, rates, strict=True)),
                Decimal(0),
            )  # fmt: skip
            shop_id = await self._step(
                steps,
                ORDER,
                lambda: self._order(order, customer, delivery, invoice, cart, currency, total),
            )
            await self._step(steps, PAID, lambda: self._paid(shop_id))
        except Transient as exc:
            raise CreateUncertain(str(exc)) from None
        return shop_id

    async def _step(self, steps: Steps, name: str, make: Any) -> str:
        """The id recorded for step `name`, or the one `make()` returns, recorded at once."""
        done = steps.get(name)
        if done is not None:
            return done
        made: str = await make()
        await steps.record(name, made)
        return made

    async def _customer(self, order: PushOrder) -> str:
        email = self._email(order)
        # The same buyer (the same alias) is one customer: found again, never made twice.
        found = await self._find("customers", "find customer", _Id, email=email)
        if found:
            return str(found[0].id)
        billing = order.billing
        return await self._create(
            "customers",
            "create customer",
            {
                "id_lang": self._settings.id_lang,
                "id_shop": self._settings.id_shop,
                "firstname": _name(billing.first_name, order.marketplace),
                "lastname": _name(billing.last_name, order.reference),
                "email": email,
                # A guest never signs in: its password is random and forgotten.
                "passwd": secrets.token_hex(16),
                "is_guest": 1,
                "active": 1,
                "newsletter": 0,
                "optin": 0,
                "company": billing.company,
            },
        )

    def _email(self, order: PushOrder) -> str:
        alias = order.billing.email.strip().lower()
        if self._settings.customer_emails and alias:
            return alias
        # The marketplace's alias kept out of PrestaShop's reach, yet one per buyer: a hash.
        seed = alias or f"{order.marketplace}/{order.reference}"
        digest = hashlib.sha256(seed.encode()).hexdigest()[:20]
        return f"{_slug(order.marketplace)}-{digest}@{UNREACHABLE_DOMAIN}"

    async def _address(
        self,
        order: PushOrder,
        address: Address,
        customer: str,
        country: _Country,
        state: int,
        kind: str,
    ) -> str:
        alias = f"sfd {order.order_id} {kind}"
        found = await self._find(
            "addresses", f"find {kind} address", _Id, id_customer=customer, alias=alias
        )
        if found:
            return str(found[-1].id)
        other = [f"{order.marketplace} order {order.reference}"]
        if kind == "delivery" and order.relay_id:
            other.append(f"relay point {order.relay_id}")
        return await self._create(
            "addresses",
            f"create {kind} address",
            {
                "id_customer": customer,
                "id_country": country.id,
                "id_state": state,
                "alias": alias,
                "firstname": _name(address.first_name, order.marketplace),
                "lastname": _name(address.last_name, order.reference),
                "company": address.company,
                "address1": address.street or "-",
                "address2": address.street2,
                "postcode": address.postal_code,
                "city": address.city or "-",
                "phone": address.phone,
                "phone_mobile": address.mobile_phone,
                "vat_number": order.vat_number if kind == "invoice" else "",
                "other": ", ".join(other),
            },
        )

    async def _cart(
        self,
        order: PushOrder,
        lines: list[_Line],
        customer: str,
        delivery: str,
        invoice: str,
        currency: int,
    ) -> str:
        # The delivery address is this order's own (its alias names it): a cart holding it
        # was made by an earlier attempt whose answer was lost.
        found = await self._find(
            "carts", "find cart", _Id, id_customer=customer, id_address_delivery=delivery
        )
        if found:
            return str(found[-1].id)
        rows = ET.Element("cart_rows")
        for line, wanted in zip(order.lines, lines, strict=True):
            row = ET.SubElement(rows, "cart_row")
            _fill(
                row,
                {
                    "id_product": wanted.product,
                    "id_product_attribute": wanted.combination,
                    "id_address_delivery": delivery,
                    "quantity": line.quantity,
                },
            )
        return await self._create(
            "carts",
            "create cart",
            self._checkout(customer, delivery, invoice, currency)
            | {
                "id_carrier": self._settings.carrier_id,
                "recyclable": 0,
                "gift": 0,
            },
            associations=[rows],
        )

    def _checkout(
        self, customer: str, delivery: str, invoice: str, currency: int
    ) -> dict[str, object]:
        """What the cart and the order made from it both name: shop, language, currency,
        customer and addresses."""
        return {
            "id_shop": self._settings.id_shop,
            "id_lang": self._settings.id_lang,
            "id_currency": currency,
            "id_customer": customer,
            "id_address_delivery": delivery,
            "id_address_invoice": invoice,
        }

    async def _message(self, order: PushOrder, customer: str, cart: str) -> str:
        """A private message on the cart, which the order takes over: the merchant reads the
        marketplace order in it, and `find_order` searches for it."""
        return await self._create(
            "messages",
            "create message",
            {
                "id_cart": cart,
                "id_customer": customer,
                "private": 1,
                "message": order_message(order),
            },
        )

    async def _prices(
        self,
        order: PushOrder,
        lines: list[_Line],
        rates: list[Decimal],
        customer: str,
        cart: str,
    ) -> str:
        existing = await self._find(
            "specific_prices", "find specific prices", _SpecificPrice, id_cart=cart
        )
        made = {(p.id_product, p.id_product_attribute) for p in existing}
        for line, wanted, rate in zip(order.lines, lines, rates, strict=True):
            if (wanted.product, wanted.combination) in made:
                continue  # made before a crash: a cart holds one price per product
            await self._create(
                "specific_prices",
                "create specific price",
                {
                    "id_shop": self._settings.id_shop,
                    "id_cart": cart,
                    "id_product": wanted.product,
                    "id_product_attribute": wanted.combination,
                    "id_currency": 0,
                    "id_country": 0,
                    "id_group": 0,
                    "id_customer": customer,
                    "price": _without_tax(line.price, rate),
                    "from_quantity": 1,
                    "reduction": 0,
                    "reduction_tax": 1,
                    "reduction_type": "amount",
                    "from": "0000-00-00 00:00:00",
                    "to": "0000-00-00 00:00:00",
                },
            )
            made.add((wanted.product, wanted.combination))
        return str(len(order.lines))

    async def _order(
        self,
        order: PushOrder,
        customer: str,
        delivery: str,
        invoice: str,
        cart: str,
        currency: int,
        total: Decimal,
    ) -> str:
        # PrestaShop makes the order from the cart and ignores a posted state: it lands in its
        # own "remote payment accepted"; `_paid` then moves it on. A total other than the
        # cart's would land it in "payment error", hence the prices computed above.
        amount = f"{total:.2f}"
        body = self._checkout(customer, delivery, invoice, currency) | {
            "id_cart": cart,
            "id_carrier": self._settings.carrier_id,
            "module": self._settings.payment_module,
            "payment": order.marketplace,
            "conversion_rate": 1,
            "total_paid": amount,
            "total_paid_real": amount,
            "total_paid_tax_incl": amount,
            "total_products": amount,
            "total_products_wt": amount,
        }
        try:
            return await self._create("orders", "create order", body)
        except Rejected as exc:
            raise Rejected(
                f"{exc.message} (order {order.reference} from {order.marketplace}; "
                f"payment_module is {self._settings.payment_module!r}, which must be an "
                f"installed payment module)"
            ) from None

    async def _paid(self, shop_id: str) -> str:
        """Move the order to `paid_state` once; never with `sendemail`, so no mail is sent."""
        history = await self._find(
            "order_histories", "read order history", _History, id_order=shop_id
        )
        for entry in history:
            if entry.id_order_state == self._settings.paid_state:
                return str(entry.id)
        return await self._create(
            "order_histories",
            "set order state",
            {"id_order": shop_id, "id_order_state": self._settings.paid_state},
        )

    # -- what the create needs to know ------------------------------------------------------

    async def _line(self, sku: str, order: PushOrder) -> _Line:
        cached = self._lines.get(sku)
        if cached is not None:
            return cached
        if not sku or _FILTER_SYNTAX & set(sku):
            raise Rejected(
                f"SKU {sku!r} cannot be searched through the PrestaShop webservice (order "
                f"{order.reference} from {order.marketplace})"
            )
        # Products first, then combinations: a reference is on one or the other.
        products = await self._find("products", "find product", _Product, reference=sku)
        product = next((p for p in products if p.reference == sku), None)
        if product is not None:
            found = _Line(product.id, 0, product.id_tax_rules_group)
        else:
            combinations = await self._find(
                "combinations", "find combination", _Combination, reference=sku
            )
            combination = next((c for c in combinations if c.reference == sku), None)
            if combination is None:
                raise Rejected(
                    f"PrestaShop has no product or combination with reference {sku!r} (order "
                    f"{order.reference} from {order.marketplace})"
                )
            parents = await self._find(
                "products", "read product", _Product, id=combination.id_product
            )
            group = parents[0].id_tax_rules_group if parents else 0
            found = _Line(combination.id_product, combination.id, group)
        self._lines[sku] = found
        return found

    async def _place(self, address: Address, order: PushOrder, kind: str) -> tuple[_Country, int]:
        """The country of an address, and its state where the country has states."""
        iso = address.country.strip().upper()
        where = f"order {order.reference} from {order.marketplace}, {kind} address"
        if not iso or _FILTER_SYNTAX & set(iso):
            raise Rejected(f"PrestaShop needs a country, and none was given ({where})")
        country = self._countries.get(iso)
        if country is None:
            found = await self._find("countries", "find country", _Country, iso_code=iso)
            if not found:
                raise Rejected(f"PrestaShop has no country with ISO code {iso!r} ({where})")
            country = self._countries[iso] = found[0]
        if not country.contains_states:
            return country, 0
        states = self._states.get(country.id)
        if states is None:
            states = self._states[country.id] = await self._find(
                "states", "list states", _State, id_country=country.id
            )
        province = address.province.strip().casefold()
        for state in states:
            codes = {state.iso_code.casefold(), f"{iso}-{state.iso_code}".casefold()}
            if province and (province in codes or province == state.name.casefold()):
                return country, state.id
        raise Rejected(
            f"PrestaShop needs a state for country {iso} and has none named "
            f"{address.province!r} ({where}, province)"
        )

    async def _rate(self, group: int, country: _Country, state: int) -> Decimal:
        """The tax rate, in percent, PrestaShop applies to a product of `group` there."""
        if group == 0:
            return Decimal(0)
        key = (group, country.id, state)
        cached = self._rates.get(key)
        if cached is not None:
            return cached
        rules = await self._find(
            "tax_rules", "read tax rules", _TaxRule, id_tax_rules_group=group, id_country=country.id
        )
        rule = next((r for r in rules if r.id_state == state), None) or next(
            (r for r in rules if r.id_state == 0), None
        )
        rate = Decimal(0)
        if rule is not None and rule.id_tax:
            taxes = await self._find("taxes", "read tax", _Tax, id=rule.id_tax)
            rate = taxes[0].rate if taxes else Decimal(0)
        self._rates[key] = rate
        return rate

    async def _currency(self, order: PushOrder) -> int:
        code = order.currency.strip().upper()
        cached = self._currencies.get(code)
        if cached is not None:
            return cached
        found = (
            await self._find("currencies", "find currency", _Id, iso_code=code)
            if code and not _FILTER_SYNTAX & set(code)
            else []
        )
        if not found:
            raise Rejected(
                f"PrestaShop has no currency {order.currency!r} (order {order.reference} from "
                f"{order.marketplace})"
            )
        self._currencies[code] = found[0].id
        return found[0].id

    async def _carrier(self, carrier_id: int) -> _Carrier | None:
        cached = self._carriers.get(carrier_id)
        if cached is not None:
            return cached
        found = await self._find("carriers", "read carrier", _Carrier, id=carrier_id)
        if not found:
            return None
        self._carriers[carrier_id] = found[0]
        return found[0]

    async def _free_carrier(self) -> None:
        """The configured carrier must exist and be free: PrestaShop adds a carrier's cost to
        the cart, and a cart total other than the amount paid is a payment error."""
        carrier_id = self._settings.carrier_id
        carrier = await self._carrier(carrier_id)
        if carrier is None:
            raise ConnectorError(f"PrestaShop has no carrier {carrier_id} (setting carrier_id)")
        if not carrier.is_free:
            raise ConnectorError(
                f"PrestaShop carrier {carrier_id} ({carrier.name}) is not free: its shipping "
                "cost would make the cart's total differ from the marketplace's and the order "
                "would land in payment error; set carrier_id to a free carrier"
            )

    # -- find ------------------------------------------------------------------------------

    async def find_order(self, order: PushOrder, since: datetime | None = None) -> str | None:
        """Search the private message naming the order, then the order made from its cart."""
        return await self.find_order_in_steps(order, since, Steps())

    async def find_order_in_steps(
        self, order: PushOrder, since: datetime | None, steps: Steps
    ) -> str | None:
        """The order an earlier attempt made, finished (moved to `paid_state`) if it was not.

        A cart holds at most one order (PrestaShop refuses a second), so the order made from
        this push's cart is the one: its id comes from the steps, else from the message.
        """
        shop_id = steps.get(ORDER)
        if shop_id is None:
            cart = steps.get(CART) or await self._cart_by_message(order)
            if cart is None:
                return None
            found = await self._find("orders", "find order", _Id, id_cart=cart)
            if not found:
                return None
            shop_id = str(found[0].id)
            await steps.record(ORDER, shop_id)
        if steps.get(PAID) is None:
            await steps.record(PAID, await self._paid(shop_id))
        return shop_id

    async def _cart_by_message(self, order: PushOrder) -> str | None:
        text = order_message(order)
        # The message begins with sfd's order id (digits): the begins-with filter is safe.
        prefix = text.split(":", 1)[0]
        found = await self._list(
            "messages",
            "find message",
            _Message,
            {"filter[message]": f"[{prefix}:]%", "display": "[id,id_cart,message]"},
        )
        for message in found:
            if message.message == text and message.id_cart:
                return str(message.id_cart)
        return None

    # -- read back -------------------------------------------------------------------------

    async def changed_orders(self, since: datetime | None) -> AsyncIterator[list[ShopOrder]]:
        """Orders updated after `since`, oldest change first, page by page."""
        offset = 0
        while True:
            params = {
                "display": "[id,current_state,date_upd,module,id_carrier]",
                "sort": "[date_upd_ASC]",
                "limit": f"{offset},{self.per_page}",
            }
            if since is not None:
                # PrestaShop's own operator syntax; `date=1` lets it compare times.
                params |= {"filter[date_upd]": f">[{self._shop_time(since)}]", "date": "1"}
            op = "list changed orders"
            orders = self._page(await self._list("orders", op, _Order, params), self.per_page, op)
            yield [await self._read(o) for o in orders]
            if len(orders) < self.per_page:
                break
            offset += self.per_page

    async def get_order(self, shop_id: str) -> ShopOrder | None:
        """One order with its tracking; None if the shop has no such order."""
        answer = await self._get(
            f"orders/{segment(shop_id)}",
            "read order",
            {"display": "full"},
            missing_ok=True,
        )
        if answer.status == 404:
            return None
        raw = self._http.decode(answer.body, dict[str, Any], "read order")
        return await self._read(_convert(raw.get("order"), _Order, "read order"))

    async def _read(self, order: _Order) -> ShopOrder:
        if order.current_state in self._shipped:
            status = ShopStatus.COMPLETED
        elif order.current_state in self._cancelled:
            status = ShopStatus.CANCELLED
        else:
            status = ShopStatus.OTHER
        return ShopOrder(
            shop_id=str(order.id),
            status=status,
            modified_at=self._utc(order.date_upd),
            # Only orders made with sfd's payment module can be sfd's: the merchant's web
            # orders need no tracking read.
            tracking=(
                await self._tracking(order)
                if status == ShopStatus.COMPLETED and order.module == self._settings.payment_module
                else None
            ),
        )

    async def _tracking(self, order: _Order) -> ShopTracking | None:
        carriers = await self._find(
            "order_carriers", "read order carriers", _OrderCarrier, id_order=order.id
        )
        with_number = [c for c in carriers if c.tracking_number.strip()]
        if not with_number:
            return None
        chosen = with_number[-1]
        carrier = await self._carrier(chosen.id_carrier) if chosen.id_carrier else None
        number = chosen.tracking_number.strip()
        shipped = self._utc(chosen.date_add)
        return ShopTracking(
            carrier=carrier.name if carrier else "",
            tracking_number=number,
            # A carrier's tracking URL holds `@` where the number goes.
            tracking_link=carrier.url.replace("@", number) if carrier and carrier.url else "",
            shipped_on=shipped.date() if shipped else None,
        )

    def _shop_time(self, moment: datetime) -> str:
        return utc(moment).astimezone(self._zone).strftime(_DATE)

    def _utc(self, value: str) -> datetime | None:
        """A PrestaShop date (shop time, unzoned) in UTC; None for none or zeros."""
        try:
            moment = datetime.strptime(value, _DATE)
        except ValueError:
            return None
        return utc(moment.replace(tzinfo=self._zone))

    # -- HTTP ------------------------------------------------------------------------------

    async def _list(
        self, resource: str, op: str, kind: type[_T], params: Mapping[str, str]
    ) -> list[_T]:
        """A resource's list, as `kind`; PrestaShop 1.7 answers an empty one as a bare `[]`."""
        answer = await self._get(resource, op, params)
        raw: object = self._http.decode(answer.body, object, op)
        if isinstance(raw, list):
            if raw:
                raise Transient(f"PrestaShop {op}: unexpected answer (a list of {len(raw)})")
            return []
        if not isinstance(raw, dict):
            raise Transient(f"PrestaShop {op}: unexpected answer (not an object)")
        return _convert(raw.get(resource, []), list[kind], op)  # type: ignore[valid-type]

    async def _find(self, resource: str, op: str, kind: type[_St], /, **equal: object) -> list[_St]:
        """The `resource`s whose fields hold the values `equal` gives, each read as `kind`
        (the webservice is asked to display `kind`'s fields, and only those)."""
        params = {f"filter[{field}]": f"[{value}]" for field, value in equal.items()}
        fields = ",".join(f.encode_name for f in msgspec.structs.fields(kind))
        return await self._list(resource, op, kind, params | {"display": f"[{fields}]"})

    async def _create(
        self,
        resource: str,
        op: str,
        fields: Mapping[str, object],
        *,
        associations: Iterable[ET.Element] = (),
    ) -> str:
        """POST one resource as XML (never retried here); return its id."""
        root = ET.Element("prestashop")
        node = ET.SubElement(root, _singular(resource))
        _fill(node, fields)
        links = list(associations)
        if links:
            ET.SubElement(node, "associations").extend(links)
        body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        answer = await self._send("POST", resource, op, body=body)
        raw = self._http.decode(answer.body, dict[str, Any], op)
        return str(_convert(raw.get(_singular(resource)), _Id, op).id)

    async def _get(
        self, path: str, op: str, params: Mapping[str, str], *, missing_ok: bool = False
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
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        missing_ok: bool = False,
    ) -> Answer:
        url = URL(f"{self._base}/api/{path}", encoded=True).with_query(
            {**(params or {}), "output_format": "JSON"}
        )
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/xml; charset=utf-8"
        answer = await self._http.send(method, url, op=op, headers=headers, content=body)
        if 200 <= answer.status < 300 or (missing_ok and answer.status == 404):
            return answer
        self._http.fail_common(answer, op)
        error = _error(answer.body)
        if answer.status in (401, 403):
            why = f": {error}" if error else ""
            raise AuthFailed(
                self._http.scrub(
                    f"PrestaShop {op}: HTTP {answer.status}, the webservice key was refused"
                    f"{why} (it needs the GET and POST permissions listed in docs/push-mode.md)"
                )
            )
        message = f"PrestaShop {op}: HTTP {answer.status}: {error}" if error else None
        raise Rejected(self._http.rejection(answer, message, op=op))


def _convert(value: Any, kind: type[_T], op: str) -> _T:
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise Transient(f"PrestaShop {op}: unexpected answer ({exc})") from None


def _error(body: bytes) -> str:
    """PrestaShop's error messages, joined; empty if the body holds none."""
    try:
        errors = msgspec.json.decode(body, type=_Errors).errors
    except (msgspec.ValidationError, msgspec.DecodeError):
        return ""
    return "; ".join(e.message for e in errors if e.message)


def _fill(node: ET.Element, fields: Mapping[str, object]) -> None:
    """One child element per field, its text escaped by ElementTree."""
    for key, value in fields.items():
        ET.SubElement(node, key).text = "" if value is None else str(value)


def _singular(resource: str) -> str:
    irregular = {"addresses": "address", "order_histories": "order_history", "taxes": "tax"}
    return irregular.get(resource, resource.removesuffix("s"))


async def _same(value: str) -> str:
    return value


def order_message(order: PushOrder) -> str:
    """The private message naming the marketplace order; it begins with sfd's order id."""
    parts = [f"sfd order {order.order_id}: {order.marketplace} order {order.reference}"]
    if order.shipping_method:
        parts.append(f"shipping: {order.shipping_method}")
    if order.shipping_amount:
        parts.append(f"shipping paid on the marketplace: {order.shipping_amount} {order.currency}")
    if order.relay_id:
        parts.append(f"relay point {order.relay_id}")
    if order.vat_number:
        parts.append(f"buyer VAT number {order.vat_number}")
    return "; ".join(parts)


def _name(value: str, fallback: str) -> str:
    """A name PrestaShop accepts (it refuses digits and some signs in names)."""
    cleaned = "".join(c for c in value if not c.isdigit() and c not in '!<>,;?=+()@#"°{}_$%:')
    return cleaned.strip()[:255] or "".join(c for c in fallback if c.isalpha())[:255] or "Buyer"


def _slug(value: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in value.lower()).strip("-") or "marketplace"


def _without_tax(price: Decimal, rate: Decimal) -> str:
    """The price PrestaShop is given so that, its tax added and rounded, it is `price`."""
    return str((price * 100 / (100 + rate)).quantize(_SIX, rounding=ROUND_HALF_UP))


def _with_tax(price: Decimal, rate: Decimal) -> Decimal:
    """What PrestaShop makes of `_without_tax(price)`: the unit price it charges."""
    excl = Decimal(_without_tax(price, rate))
    return (excl * (100 + rate) / 100).quantize(_CENT, rounding=ROUND_HALF_UP)


__all__ = ["PrestaShopConnector"]
