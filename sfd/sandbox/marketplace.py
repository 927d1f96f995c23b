"""A sandbox marketplace speaking the Mirakl shop API's order subset, state kept in memory.

It serves OR11 (list orders), OR21 (accept or refuse), OR23 (tracking), OR24 (ship), OR28
(refund), OR29 (cancel) and SH21 (carriers) with Mirakl's paths and field names, so
`MiraklConnector` can talk to it unchanged. Orders are kept sorted by last update, so a page
costs the same at order 100,000 as at order 1.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import random
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.parser import BytesParser
from email.policy import default as email_policy
from typing import Any, Final, NamedTuple, TypeVar

from aiohttp import web
from defusedxml import ElementTree as DefusedET

from sfd.domain.clock import Clock, from_iso, utcnow
from sfd.sandbox.kit import (
    Failure,
    conclude,
    json_answer,
    read_body,
    record,
    serve,
    take_failure,
)
from sfd.sandbox.kit import (
    RecordedCall as RecordedCall,  # re-exported: tests and the demo import it from here
)

#: The operator's carriers, as SH21 lists them (sorted by label, as Mirakl does).
CARRIERS: Final[tuple[dict[str, str], ...]] = (
    {
        "code": "CHRONOPOST",
        "label": "Chronopost",
        "standard_code": "CHRONOPOST",
        "tracking_url": "https://www.chronopost.fr/tracking-no-cms/suivi-page?listeNumerosLT={trackingId}",
    },
    {
        "code": "COLISSIMO",
        "label": "Colissimo",
        "standard_code": "COLISSIMO",
        "tracking_url": "https://www.laposte.fr/outils/suivre-vos-envois?code={trackingId}",
    },
    {
        "code": "DPD",
        "label": "DPD",
        "standard_code": "DPD",
        "tracking_url": "https://trace.dpd.fr/fr/trace/{trackingId}",
    },
    {
        "code": "MONDIAL_RELAY",
        "label": "Mondial Relay",
        "standard_code": "MONDIAL_RELAY",
        "tracking_url": "https://www.mondialrelay.fr/suivi-de-colis/?numeroExpedition={trackingId}",
    },
    {
        "code": "UPS",
        "label": "UPS",
        "standard_code": "UPS",
        "tracking_url": "https://www.ups.com/track?tracknum={trackingId}",
    },
)

#: Before acceptance, Mirakl does not show the customer's addresses.
_ADDRESSES_HIDDEN: Final = frozenset(
    {"STAGING", "WAITING_ACCEPTANCE", "WAITING_DEBIT", "WAITING_DEBIT_PAYMENT", "REFUSED"}
)
_FINAL_STATES: Final = frozenset({"REFUSED", "CANCELED", "CLOSED", "REFUNDED"})
#: Line states in which OR28 may refund: the customer has been debited.
_REFUNDABLE_STATES: Final = frozenset({"SHIPPING", "SHIPPED", "TO_COLLECT", "RECEIVED", "CLOSED"})
_CENT: Final = Decimal("0.01")

_FIRST_NAMES: Final = (
    "Camille", "Léa", "Manon", "Chloé", "Inès", "Louise", "Jade", "Emma", "Lucas", "Hugo",
    "Louis", "Gabriel", "Arthur", "Jules", "Théo", "Mathilde", "Élodie", "Antoine", "Claire",
    "François", "Anaïs", "Noémie", "Benoît", "Hélène", "Lukas", "Anna", "Sofia", "Marco",
    "Giulia", "Javier", "Lucía", "Pieter", "Sanne", "Katarzyna", "João", "Mariana",
)  # fmt: skip
_LAST_NAMES: Final = (
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
    "Vincent", "Fournier", "Morel", "Girard", "André", "Mercier", "Dupont", "Lambert",
    "Bonnet", "Müller", "Schmidt", "Rossi", "Bianchi", "Fernández", "López", "Janssens",
    "De Vries", "Kowalski", "Silva",
)  # fmt: skip
#: Street, postal code, city, ISO 3166-1 alpha-3 country, phone prefix.
_PLACES: Final = (
    ("rue de la République", "69002", "Lyon", "FRA", "06"),
    ("avenue Jean Jaurès", "31000", "Toulouse", "FRA", "06"),
    ("boulevard Haussmann", "75009", "Paris", "FRA", "07"),
    ("rue Sainte-Catherine", "33000", "Bordeaux", "FRA", "06"),
    ("rue Nationale", "59000", "Lille", "FRA", "07"),
    ("cours Mirabeau", "13100", "Aix-en-Provence", "FRA", "06"),
    ("rue du Faubourg Saint-Antoine", "75011", "Paris", "FRA", "06"),
    ("quai de la Fosse", "44000", "Nantes", "FRA", "07"),
    ("rue des Francs-Bourgeois", "67000", "Strasbourg", "FRA", "06"),
    ("rue de Siam", "29200", "Brest", "FRA", "06"),
    ("rue Foch", "34000", "Montpellier", "FRA", "07"),
    ("place Stanislas", "54000", "Nancy", "FRA", "06"),
    ("Rue Neuve", "1000", "Bruxelles", "BEL", "+32 4"),
    ("Meir", "2000", "Antwerpen", "BEL", "+32 4"),
    ("Hauptstraße", "10827", "Berlin", "DEU", "+49 15"),
    ("Calle Mayor", "28013", "Madrid", "ESP", "+34 6"),
    ("Via Roma", "10121", "Torino", "ITA", "+39 3"),
    ("Grand-Rue", "1661", "Luxembourg", "LUX", "+352 6"),
    ("Kalverstraat", "1012 NX", "Amsterdam", "NLD", "+31 6"),
    ("Rua Augusta", "1100-053", "Lisboa", "PRT", "+351 9"),
)
_COUNTRY_NAMES: Final = {
    "FRA": "France", "BEL": "Belgique", "DEU": "Deutschland", "ESP": "España",
    "ITA": "Italia", "LUX": "Luxembourg", "NLD": "Nederland", "PRT": "Portugal",
}  # fmt: skip
_RELAYS: Final = (
    "Tabac de la Gare", "Presse du Marché", "Fleuriste Les Lilas", "Carrefour City",
    "Pressing du Centre", "Librairie Le Passage",
)  # fmt: skip
_COMPANIES: Final = (
    "Atelier Dumas SARL", "Boulangerie Lemaire", "Menuiserie Perrin SAS", "Studio Nordlicht GmbH",
    "Cabinet Roussel & Associés", "Hôtel Belle Rive", "Garage Fontaine",
)  # fmt: skip
_PRODUCTS: Final = (
    ("Perceuse visseuse sans fil 18V", "89.90"),
    ("Lampe de bureau LED orientable", "34.99"),
    ("Tente de camping 4 places", "129.00"),
    ("Sac à dos de randonnée 30 L", "44.95"),
    ("Cafetière italienne inox 6 tasses", "27.50"),
    ("Housse de coussin en lin lavé", "19.99"),
    ("Casque audio Bluetooth réducteur de bruit", "79.90"),
    ("Lot de 3 poêles antiadhésives", "59.99"),
    ("Ballon de football taille 5", "14.95"),
    ("Guirlande lumineuse 10 m", "12.49"),
    ("Robot pâtissier 1000 W", "199.00"),
    ("Tapis de yoga antidérapant", "24.90"),
    ("Parure de lit 240 x 220 cm", "64.00"),
    ("Montre connectée sport", "149.99"),
    ("Chaise de jardin pliante", "39.90"),
    ("Théière en fonte 1 L", "32.75"),
    ("Set de tournevis de précision", "17.80"),
    ("Plaid en laine mérinos", "89.00"),
)
#: Code, label, shipping price per order.
_SHIPPING_TYPES: Final = (
    ("STD", "Livraison standard", Decimal("4.90")),
    ("EXP", "Livraison express", Decimal("9.90")),
)
_RELAY_SHIPPING: Final = ("RELAY", "Livraison en point relais", Decimal("3.90"))
_PAYMENT_TYPES: Final = ("CB", "PAYPAL", "APPLE_PAY", "VISA")
_VAT_RATE: Final = Decimal(20)
_COMMISSION_RATE: Final = Decimal("0.15")


def mirakl_time(moment: datetime) -> str:
    """A time as Mirakl writes it: UTC, milliseconds, `Z` (2026-11-29T10:00:00.000Z)."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


@dataclass(slots=True)
class _Record:
    """An order. Until something changes it, only what regenerates it is kept: 100,000
    untouched orders cost a few megabytes, and each is rebuilt, identical, when served."""

    order_id: str
    sequence: int
    initial_state: str
    relay: bool
    b2b: bool
    stamps: _Stamps
    updated: datetime
    data: dict[str, Any] | None = None
    """The order's JSON once it has changed (or been looked at through `orders`)."""
    ship_due: datetime | None = None

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.updated, self.order_id)

    @property
    def state(self) -> str:
        return self.initial_state if self.data is None else str(self.data["order_state"])


class _OrdersView(Mapping[str, dict[str, Any]]):
    """The marketplace's orders by id; an order read through here is kept, so edits stick."""

    def __init__(self, marketplace: SandboxMarketplace) -> None:
        self._marketplace = marketplace

    def __getitem__(self, order_id: str) -> dict[str, Any]:
        return self._marketplace.order(order_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._marketplace._orders)

    def __len__(self) -> int:
        return len(self._marketplace._orders)


_P = TypeVar("_P")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Json = dict[str, Any]
"""An order's JSON, as OR11 shows it."""
_OrderChange = Callable[
    ["SandboxMarketplace", web.Request, _Record, _Json], Awaitable[web.Response]
]
_OrderHandler = Callable[["SandboxMarketplace", web.Request], Awaitable[web.Response]]


def _changes_order(
    allowed: Callable[[_Record], bool], refusal: str
) -> Callable[[_OrderChange], _OrderHandler]:
    """A handler of the path's order, called with the order and its JSON (kept, to be
    changed) when `allowed`; else it answers 404 for an unknown order, or 400 with `refusal`
    (which may name `{order_id}` and `{state}`)."""

    def decorate(change: _OrderChange) -> _OrderHandler:
        @functools.wraps(change)
        async def handler(self: SandboxMarketplace, request: web.Request) -> web.Response:
            record = self._find(request)
            if record is None:
                return _not_found(request)
            data = self._hold(record)
            if not allowed(record):
                message = refusal.format(order_id=data["order_id"], state=data["order_state"])
                return _error(400, message)
            return await change(self, request, record, data)

        return handler

    return decorate


class SandboxMarketplace:
    """A Mirakl operator in memory: orders, carriers, a call log and injectable failures."""

    def __init__(
        self,
        api_key: str,
        *,
        seed: int = 0,
        ship_confirm_delay: float = 0.0,
        clock: Clock = utcnow,
        carriers: Iterable[Mapping[str, str]] = CARRIERS,
    ) -> None:
        self.api_key = api_key
        self.ship_confirm_delay = ship_confirm_delay
        self.clock = clock
        self.carriers = sorted((dict(c) for c in carriers), key=lambda c: c["label"])
        self.calls: list[RecordedCall] = []
        self.seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
        self._order_rng = random.Random()  # noqa: S311 - reseeded for each order
        self._orders: dict[str, _Record] = {}
        self._index: list[tuple[datetime, str]] = []
        """(last update, order id) of every order, sorted: OR11's order."""
        self._due: list[tuple[datetime, str]] = []
        """Shipments confirmed by OR24 that Mirakl has not applied yet, soonest first."""
        self._failures: list[Failure] = []
        self._sequence = 0
        self.document_types = set(DOCUMENT_TYPE_CODES)
        """The OR74 type codes this operator takes."""
        self.documents: dict[str, list[dict[str, Any]]] = {}
        """Order id → the documents OR74 attached to it, in order."""

    # -- state, for tests and the demo ----------------------------------------------------

    @property
    def orders(self) -> Mapping[str, dict[str, Any]]:
        """Every order by id, in Mirakl's JSON shape (addresses unmasked)."""
        self._settle()
        return _OrdersView(self)

    def order(self, order_id: str) -> dict[str, Any]:
        """One order in Mirakl's JSON shape, as the marketplace holds it."""
        self._settle()
        return self._hold(self._orders[order_id])

    def state(self, order_id: str) -> str:
        """One order's `order_state`."""
        self._settle()
        return self._orders[order_id].state

    def calls_to(self, operation: str, order_id: str | None = None) -> list[RecordedCall]:
        """The recorded calls of one operation (e.g. "OR24"), for one order if given."""
        return [
            c
            for c in self.calls
            if c.operation == operation and (order_id is None or c.order_id == order_id)
        ]

    def add_orders(
        self,
        n: int,
        *,
        waiting_acceptance_ratio: float = 0.5,
        relay_ratio: float = 0.2,
        b2b_ratio: float = 0.1,
        unpaid_ratio: float = 0.0,
    ) -> list[str]:
        """Create `n` orders placed now, and return their ids.

        Each is WAITING_ACCEPTANCE with probability `waiting_acceptance_ratio`, else SHIPPING
        (accepted and paid); `unpaid_ratio` of them wait for payment (WAITING_DEBIT_PAYMENT).
        """
        now = self._now()
        stamps = _Stamps.at(now)
        rand = self._rng.random
        created: list[str] = []
        for _ in range(n):
            if rand() < unpaid_ratio:
                state = "WAITING_DEBIT_PAYMENT"
            elif rand() < waiting_acceptance_ratio:
                state = "WAITING_ACCEPTANCE"
            else:
                state = "SHIPPING"
            self._sequence += 1
            order_id = f"SBX{self._sequence:07d}-A"
            record = _Record(
                order_id,
                self._sequence,
                state,
                rand() < relay_ratio,
                rand() < b2b_ratio,
                stamps,
                now,
            )
            self._orders[order_id] = record
            if not self._index or self._index[-1] <= record.key:
                self._index.append(record.key)
            else:
                bisect.insort(self._index, record.key)
            created.append(order_id)
        return created

    def cancel(self, order_id: str) -> None:
        """Cancel an order on the marketplace's side (the customer or the operator did)."""
        self._settle()
        record = self._orders[order_id]
        record.ship_due = None
        self._set_state(record, "CANCELED", self._now())

    def set_state(self, order_id: str, state: str) -> None:
        """Put an order and its lines in `state`, now."""
        self._settle()
        record = self._orders[order_id]
        record.ship_due = None
        self._set_state(record, state, self._now())

    def fail_next(
        self,
        n: int,
        status: int,
        retry_after: float | str | None = None,
        *,
        operation: str | None = None,
    ) -> None:
        """Answer the next `n` requests (of `operation`, if given) with `status`, unprocessed."""
        after = None if retry_after is None else str(retry_after)
        self._failures.append(Failure(n, operation, status, retry_after=after))

    def clear_failures(self) -> None:
        """Stop injecting failures: every request is served normally again."""
        self._failures.clear()

    def drop_next(self, n: int, *, operation: str | None = None) -> None:
        """Process the next `n` requests (of `operation`), then close the connection unanswered.

        The caller cannot know whether its request took effect: an unknown outcome.
        """
        self._failures.append(Failure(n, operation, drop=True))

    def app(self) -> web.Application:
        """The aiohttp application serving this marketplace."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/orders", self._list_orders, name="OR11")
        app.router.add_put("/api/orders/{order_id}/accept", self._accept, name="OR21")
        app.router.add_put("/api/orders/{order_id}/tracking", self._tracking, name="OR23")
        app.router.add_put("/api/orders/{order_id}/ship", self._ship, name="OR24")
        app.router.add_put("/api/orders/refund", self._refund, name="OR28")
        app.router.add_put("/api/orders/{order_id}/cancel", self._cancel, name="OR29")
        app.router.add_get("/api/shipping/carriers", self._list_carriers, name="SH21")
        app.router.add_post("/api/orders/{order_id}/documents", self._documents, name="OR74")
        return app

    # -- HTTP -----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        call = await record(request, self.clock())
        self.calls.append(call)
        self._settle()
        failure = self._take_failure(call.operation)
        response: web.StreamResponse
        if failure is not None and failure.status is not None:
            response = self._injected(failure)
        elif request.headers.get("Authorization") != self.api_key:
            response = _error(401, "Unauthorized")
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                call.status, call.responded = exc.status, True
                raise
        return await conclude(request, call, response, failure)

    def _take_failure(self, operation: str | None) -> Failure | None:
        return take_failure(self._failures, operation)

    @staticmethod
    def _injected(failure: Failure) -> web.Response:
        assert failure.status is not None
        status = failure.status
        headers = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = failure.retry_after
        if 300 <= status < 400:
            headers["Location"] = "https://login.sandbox.invalid/"
            return web.Response(status=status, headers=headers)
        if status >= 500:
            return web.Response(
                status=status,
                text="<html><body><h1>Service unavailable</h1></body></html>",
                content_type="text/html",
                headers=headers,
            )
        response = _error(status, "Injected failure")
        response.headers.update(headers)
        return response

    async def _list_orders(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            paginate = query.get("paginate", "true").lower() != "false"
            size = min(max(int(query.get("max", "10")), 1), 100)
            offset = max(int(query.get("offset", "0")), 0)
        except ValueError:
            return _error(400, "max and offset must be whole numbers")
        keys: list[tuple[datetime, str]]
        if query.get("order_ids"):
            wanted = {i for i in query["order_ids"].split(",") if i}
            keys = sorted(self._orders[i].key for i in wanted if i in self._orders)
            start = 0
        else:
            keys = self._index
            start = 0
            if query.get("start_update_date"):
                try:
                    since = from_iso(query["start_update_date"])
                except ValueError:
                    return _error(400, "Invalid date for parameter start_update_date")
                start = bisect.bisect_left(keys, (since,))
        if query.get("order_state_codes"):
            states = set(query["order_state_codes"].split(","))
            keys = [k for k in keys[start:] if self._orders[k[1]].state in states]
            start = 0
        total = len(keys) - start
        chosen = keys[start + offset : start + offset + size] if paginate else keys[start:]
        orders = [self._render(self._orders[oid]) for _, oid in chosen]
        return _json({"orders": orders, "total_count": total})

    @_changes_order(
        lambda record: record.state == "WAITING_ACCEPTANCE",
        "The order {order_id} is not in WAITING_ACCEPTANCE state (current state: {state})",
    )
    async def _accept(self, request: web.Request, record: _Record, data: _Json) -> web.Response:
        body = await read_body(request)
        decisions = body.get("order_lines") if isinstance(body, dict) else None
        if not isinstance(decisions, list):
            return _error(400, "order_lines is required")
        accepted: dict[str, bool] = {}
        for decision in decisions:
            if not (
                isinstance(decision, dict)
                and isinstance(decision.get("id"), str)
                and isinstance(decision.get("accepted"), bool)
            ):
                return _error(400, "Each order line needs an id and accepted (true or false)")
            accepted[decision["id"]] = decision["accepted"]
        line_ids = {line["order_line_id"] for line in data["order_lines"]}
        if set(accepted) != line_ids:
            return _error(400, "Every order line of the order must be accepted or refused")
        now = self._now()
        for line in data["order_lines"]:
            line["order_line_state"] = "SHIPPING" if accepted[line["order_line_id"]] else "REFUSED"
        data["order_state"] = "SHIPPING" if any(accepted.values()) else "REFUSED"
        data["acceptance_decision_date"] = mirakl_time(now)
        data["can_cancel"] = data["order_state"] == "SHIPPING"
        data["can_shop_ship"] = data["order_state"] == "SHIPPING"
        self._touch(record, now)
        return web.Response(status=204)

    @_changes_order(
        lambda record: record.state in ("SHIPPING", "SHIPPED"),
        "The tracking of order {order_id} cannot be updated in state {state}",
    )
    async def _tracking(self, request: web.Request, record: _Record, data: _Json) -> web.Response:
        body = await read_body(request)
        if not isinstance(body, dict):
            return _error(400, "A JSON object is required")
        code, name = body.get("carrier_code"), body.get("carrier_name")
        number = body.get("tracking_number") or None
        if code:
            carrier = next((c for c in self.carriers if c["code"] == code), None)
            if carrier is None:
                return _error(400, f"The carrier code {code} is unknown")
            data["shipping_carrier_code"] = carrier["code"]
            data["shipping_company"] = carrier["label"]
            data["shipping_tracking_url"] = (
                carrier["tracking_url"].replace("{trackingId}", str(number)) if number else None
            )
        elif name:
            data["shipping_carrier_code"] = None
            data["shipping_company"] = name
            data["shipping_tracking_url"] = body.get("carrier_url") or None
        else:
            return _error(400, "carrier_code or carrier_name is required")
        data["shipping_tracking"] = number
        self._touch(record, self._now())
        return web.Response(status=204)

    @_changes_order(
        lambda record: record.state == "SHIPPING",
        "The order {order_id} is not in SHIPPING state (current state: {state})",
    )
    async def _ship(self, request: web.Request, record: _Record, data: _Json) -> web.Response:
        if record.ship_due is not None:
            return web.Response(status=204)  # confirmed already, not applied yet
        now = self._now()
        if self.ship_confirm_delay <= 0:
            self._set_state(record, "SHIPPED", now)
        else:
            record.ship_due = now + timedelta(seconds=self.ship_confirm_delay)
            heapq.heappush(self._due, (record.ship_due, data["order_id"]))
            data["can_cancel"] = False
            self._touch(record, now)
        return web.Response(status=204)

    @_changes_order(
        # A shipment confirmed (OR24) but not applied yet cannot be undone either.
        lambda record: record.state == "SHIPPING" and record.ship_due is None,
        "The order {order_id} cannot be canceled (current state: {state})",
    )
    async def _cancel(self, request: web.Request, record: _Record, data: _Json) -> web.Response:
        self._set_state(record, "CANCELED", self._now())
        return web.Response(status=204)

    async def _refund(self, request: web.Request) -> web.Response:
        """OR28: refund order lines. A line whose quantity is all refunded becomes REFUNDED, and
        the order too once every line is refunded, refused or cancelled."""
        body = await read_body(request)
        asked = body.get("refunds") if isinstance(body, dict) else None
        if not isinstance(asked, list) or not asked:
            return _error(400, "refunds is required")
        lines: dict[str, tuple[_Record, dict[str, Any]]] = {}
        for refund in asked:
            # The sandbox names its lines "<order id>-<index>".
            order_id = _line_id(refund).rpartition("-")[0]
            record = self._orders.get(order_id)
            if record is not None:
                for line in self._hold(record)["order_lines"]:
                    lines[line["order_line_id"]] = (record, line)
        for refund in asked:
            if not isinstance(refund, dict) or refund.get("order_line_id") not in lines:
                return _error(400, f"Unknown order line {_line_id(refund)}")
            amount, shipping = refund.get("amount"), refund.get("shipping_amount", 0)
            if not all(
                isinstance(a, int | float) and not isinstance(a, bool) and a >= 0
                for a in (amount, shipping)
            ):
                return _error(400, "amount and shipping_amount must be positive numbers")
            record, line = lines[refund["order_line_id"]]
            if line["order_line_state"] not in _REFUNDABLE_STATES:
                return _error(
                    400,
                    f"The order line {line['order_line_id']} cannot be refunded "
                    f"(current state: {line['order_line_state']})",
                )
        now = self._now()
        created: list[dict[str, Any]] = []
        touched: dict[str, _Record] = {}
        for refund in asked:
            record, line = lines[refund["order_line_id"]]
            self._sequence += 1
            entry = {
                "id": f"R{self._sequence}",
                "amount": refund["amount"],
                "shipping_amount": refund.get("shipping_amount", 0),
                "quantity": int(refund.get("quantity") or 0),
                "reason_code": refund.get("reason_code"),
                "refund_state": "REFUNDED",
                "created_date": mirakl_time(now),
                "transaction_date": mirakl_time(now),
            }
            line.setdefault("refunds", []).append(entry)
            if sum(r["quantity"] for r in line["refunds"]) >= line["quantity"]:
                line["order_line_state"] = "REFUNDED"
            created.append({"order_line_id": line["order_line_id"], "refund_id": entry["id"]})
            touched[record.order_id] = record
        for record in touched.values():
            data = self._hold(record)
            if all(line["order_line_state"] in _FINAL_STATES for line in data["order_lines"]):
                data["order_state"] = "REFUNDED"
                data["can_cancel"] = data["can_shop_ship"] = False
            self._touch(record, now)
        return _json({"refunds": created})

    async def _documents(self, request: web.Request) -> web.Response:
        """OR74: multipart `files` and an `order_documents` XML naming each file's type."""
        record = self._find(request)
        if record is None:
            return _not_found(request)
        try:
            files, details = _or74_parts(
                request.headers.get("Content-Type", ""), await request.read()
            )
        except ValueError as exc:
            return _error(400, str(exc))
        self.calls[-1].body = {
            "files": [name for name, _, _ in files],
            "order_documents": details,
        }
        try:
            named = _or74_details(details)
        except ValueError as exc:
            return _error(400, f"order_documents: {exc}")
        order_id = request.match_info["order_id"]
        kept = self.documents.setdefault(order_id, [])
        taken, errors = [], []
        for file_name, content_type, content in files:
            type_code = named.get(file_name)
            if type_code is None:
                errors.append({"file_name": file_name, "message": "no order_document names it"})
            elif type_code not in self.document_types:
                errors.append(
                    {"file_name": file_name, "message": f"unknown document type {type_code}"}
                )
            elif any(d["file_name"] == file_name for d in kept):
                errors.append({"file_name": file_name, "message": "file name already used"})
            else:
                document = {
                    "id": sum(len(d) for d in self.documents.values()) + 1,
                    "file_name": file_name,
                    "type_code": type_code,
                    "file_size": len(content),
                    "content_type": content_type,
                    "content": content,
                }
                kept.append(document)
                taken.append({k: document[k] for k in ("id", "file_name", "type_code")})
        return _json(
            {"errors_count": len(errors), "document_errors": errors, "order_documents": taken}
        )

    async def _list_carriers(self, request: web.Request) -> web.Response:
        return _json({"carriers": self.carriers})

    # -- orders ---------------------------------------------------------------------------

    def _find(self, request: web.Request) -> _Record | None:
        return self._orders.get(request.match_info["order_id"])

    def _now(self) -> datetime:
        now = self.clock().astimezone(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    def _settle(self) -> None:
        """Apply the OR24 confirmations whose delay has passed."""
        if not self._due:
            return
        now = self.clock()
        while self._due and self._due[0][0] <= now:
            due, order_id = heapq.heappop(self._due)
            record = self._orders.get(order_id)
            if record is None or record.ship_due != due:
                continue
            record.ship_due = None
            if record.state == "SHIPPING":
                self._set_state(record, "SHIPPED", max(due, record.updated))

    def _set_state(self, record: _Record, state: str, when: datetime) -> None:
        data = self._hold(record)
        data["order_state"] = state
        stamp = mirakl_time(when)
        for line in data["order_lines"]:
            if line["order_line_state"] not in _FINAL_STATES or state in _FINAL_STATES:
                line["order_line_state"] = state
                if state == "SHIPPED":
                    line["shipped_date"] = stamp
        data["can_cancel"] = state == "SHIPPING"
        data["can_shop_ship"] = state == "SHIPPING"
        self._touch(record, when)

    def _touch(self, record: _Record, when: datetime) -> None:
        """Move the order to its new place in the update order."""
        old = record.key
        at = bisect.bisect_left(self._index, old)
        if at < len(self._index) and self._index[at] == old:
            del self._index[at]
        record.updated = when
        self._hold(record)["last_updated_date"] = mirakl_time(when)
        bisect.insort(self._index, record.key)

    def _hold(self, record: _Record) -> dict[str, Any]:
        """The order's JSON, kept from now on because it is about to change or be shown."""
        if record.data is None:
            record.data = self._generate(record)
        return record.data

    def _render(self, record: _Record) -> dict[str, Any]:
        """The order as OR11 shows it; an untouched order is rebuilt and not kept."""
        data = record.data if record.data is not None else self._generate(record)
        if data["order_state"] not in _ADDRESSES_HIDDEN:
            return data
        customer = dict(data["customer"])
        customer["billing_address"] = None
        customer["shipping_address"] = None
        return {**data, "customer": customer}

    def _generate(self, record: _Record) -> dict[str, Any]:
        """Build an order's JSON from its seed and sequence: the same every time."""
        self._order_rng.seed(self.seed * 10_000_019 + record.sequence)
        dice = _Dice(self._order_rng.random)
        pick, number = dice.pick, dice.number
        stamps, state = record.stamps, record.initial_state
        order_id = record.order_id
        commercial_id = order_id.removesuffix("-A")
        stamp = stamps.now
        first, last = pick(_FIRST_NAMES), pick(_LAST_NAMES)
        place = pick(_PLACES)
        country = place[3]
        civility = pick(("M.", "Mme"))
        buyer = _buyer(dice, first, last, civility, place, b2b=record.b2b, relay=record.relay)
        billing, shipping, organization, additional_fields, pudo_id = buyer
        if record.relay:
            type_code, type_label, shipping_price = _RELAY_SHIPPING
        else:
            type_code, type_label, shipping_price = pick(_SHIPPING_TYPES)
        lines = _order_lines(dice, order_id, state, stamp, shipping_price)
        price_total = sum((line["price"] for line in lines), Decimal(0))
        commission_total = sum((line["total_commission"] for line in lines), Decimal(0))
        accepted = state != "WAITING_ACCEPTANCE"
        return {
            "order_id": order_id,
            "commercial_id": commercial_id,
            "order_state": state,
            "order_state_reason_code": None,
            "created_date": stamp,
            "last_updated_date": stamp,
            "acceptance_decision_date": stamp if accepted else None,
            "customer_debited_date": stamp if state == "SHIPPING" else None,
            "shipping_deadline": pick(stamps.deadlines),
            "currency_iso_code": "EUR",
            "price": price_total,
            "shipping_price": shipping_price,
            "total_price": price_total + shipping_price,
            "total_commission": commission_total,
            "order_tax_mode": "TAX_INCLUDED",
            "payment_type": pick(_PAYMENT_TYPES),
            "payment_workflow": "PAY_ON_ACCEPTANCE",
            "channel": None,
            "customer": {
                "customer_id": f"C{number(10**6, 10**7)}",
                "civility": civility,
                "firstname": first,
                "lastname": last,
                "locale": "fr_FR" if country == "FRA" else "en_GB",
                "billing_address": billing,
                "shipping_address": shipping,
                "organization": organization,
            },
            "customer_notification_email": (
                f"{number(0, 1 << 48):012x}@notifications.sandbox.invalid"
            ),
            "order_additional_fields": additional_fields,
            "order_lines": lines,
            "references": {"order_reference_for_customer": commercial_id},
            "shipping_type_code": type_code,
            "shipping_type_label": type_label,
            "shipping_zone_code": f"ZONE-{country}",
            "shipping_zone_label": _COUNTRY_NAMES[country],
            "shipping_pudo_id": pudo_id,
            "shipping_carrier_code": None,
            "shipping_company": None,
            "shipping_tracking": None,
            "shipping_tracking_url": None,
            "can_cancel": state == "SHIPPING",
            "can_shop_ship": state == "SHIPPING",
            "has_incident": False,
            "has_customer_message": False,
        }


def channel_toml(
    base_url: str,
    api_key: str,
    *,
    name: str = "sandbox",
    store: int = 1,
    poll_interval: str = "1h",
    **keys: str | bool | int,
) -> str:
    """A `[[channels]]` entry for a Mirakl channel at `base_url` (this sandbox, say), with the
    channel keys given, for the configs of the demo, the tests and the benches."""
    lines = [
        "",
        "[[channels]]",
        f'name = "{name}"',
        f"store = {store}",
        'connector = "mirakl"',
        f'poll_interval = "{poll_interval}"',
        *(f"{key} = {_toml_value(value)}" for key, value in keys.items()),
        "[channels.settings]",
        f'base_url = "{base_url}"',
        f'api_key = "{api_key}"',
        "",
    ]
    return "\n".join(lines)


def _toml_value(value: str | bool | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else f'"{value}"'


class _Dice:
    """The draws an order is built from, all from one seeded generator, in a fixed order."""

    def __init__(self, rand: Callable[[], float]) -> None:
        self._rand = rand

    def pick(self, options: Sequence[_P]) -> _P:
        return options[int(self._rand() * len(options))]

    def number(self, low: int, high: int) -> int:
        """A whole number in [low, high)."""
        return low + int(self._rand() * (high - low))


class _Buyer(NamedTuple):
    billing: dict[str, Any]
    shipping: dict[str, Any]
    organization: dict[str, Any] | None
    additional_fields: list[dict[str, Any]]
    pudo_id: str | None


def _buyer(
    dice: _Dice,
    first: str,
    last: str,
    civility: str,
    place: tuple[str, str, str, str, str],
    *,
    b2b: bool,
    relay: bool,
) -> _Buyer:
    """The buyer's addresses: a company's for B2B, a pick-up point's for relay delivery."""
    pick, number = dice.pick, dice.number
    street, postal_code, city, country, phone_prefix = place
    address: dict[str, Any] = {
        "civility": civility,
        "firstname": first,
        "lastname": last,
        "company": None,
        "company_2": None,
        "street_1": f"{number(1, 181)} {street}",
        "street_2": pick(_STREET_2),
        "zip_code": postal_code,
        "city": city,
        "state": None,
        "country": _COUNTRY_NAMES[country],
        "country_iso_code": country,
        "phone": f"{phone_prefix}{number(10**7, 10**8)}",
        "phone_secondary": None,
    }
    billing = address
    shipping = dict(address, additional_info=None)
    additional_fields: list[dict[str, Any]] = []
    organization = None
    if b2b:
        company = pick(_COMPANIES)
        vat = f"FR{number(10**10, 10**11)}"
        billing["company"] = shipping["company"] = company
        organization = {
            "name": company,
            "identification_number": f"{number(10**13, 10**14)}",
            "tax_identification_number": vat,
            "organization_id": None,
            "address": None,
        }
        additional_fields.append({"code": "vat-number", "type": "STRING", "value": vat})
    pudo_id = None
    if relay:
        pudo_id = f"{number(1, 10**6):06d}"
        shipping.update(
            company=pick(_RELAYS),
            street_1=f"{number(1, 91)} {pick(_PLACES)[0]}",
            street_2=None,
            additional_info=f"Point relais {pudo_id}",
        )
    return _Buyer(billing, shipping, organization, additional_fields, pudo_id)


def _order_lines(
    dice: _Dice, order_id: str, state: str, stamp: str, shipping_price: Decimal
) -> list[dict[str, Any]]:
    """One to three lines; the first carries the shipping price."""
    lines: list[dict[str, Any]] = []
    for index in range(dice.number(1, 4)):
        template = dice.pick(_LINE_TEMPLATES)
        line_shipping = shipping_price if index == 0 else _ZERO
        line = dict(template)
        line.update(
            order_line_id=f"{order_id}-{index + 1}",
            order_line_index=index + 1,
            order_line_state=state,
            shipping_price=line_shipping,
            total_price=template["price"] + line_shipping,
            shipping_taxes=_SHIPPING_TAXES[line_shipping],
            created_date=stamp,
            shipped_date=None,
        )
        lines.append(line)
    return lines


@dataclass(frozen=True)
class _Stamps:
    """The times every order created in one `add_orders` call shares, written once."""

    now: str
    deadlines: tuple[str, ...]

    @classmethod
    def at(cls, now: datetime) -> _Stamps:
        days = range(2, 6)
        return cls(mirakl_time(now), tuple(mirakl_time(now + timedelta(days=d)) for d in days))


def _line_templates() -> tuple[dict[str, Any], ...]:
    """Every product at every quantity, with its amounts worked out once."""
    templates = []
    for product, (title, base) in enumerate(_PRODUCTS):
        sku = f"SKU-{product + 1:04d}"
        medias = [
            {
                "media_url": f"https://img.sandbox.invalid/{sku}/large.jpg",
                "mime_type": "IMAGE/JPEG",
                "type": "LARGE",
            }
        ]
        for quantity in (1, 1, 1, 2, 3):
            unit = Decimal(base)
            price = unit * quantity
            commission = (price * _COMMISSION_RATE).quantize(_CENT, ROUND_HALF_UP)
            commission_vat = (commission * _VAT_RATE / 100).quantize(_CENT, ROUND_HALF_UP)
            templates.append(
                {
                    "offer_id": 2000 + product,
                    "offer_sku": sku,
                    "product_sku": f"P{product + 1:05d}",
                    "product_shop_sku": sku,
                    "product_title": title,
                    "category_code": "sandbox",
                    "quantity": quantity,
                    "price_unit": unit,
                    "price": price,
                    "commission_fee": commission,
                    "total_commission": commission + commission_vat,
                    "taxes": [{"code": "TVA", "rate": _VAT_RATE, "amount": _tax_in(price)}],
                    "product_medias": medias,
                }
            )
    return tuple(templates)


def _tax_in(amount: Decimal) -> Decimal:
    """The VAT included in a tax-inclusive amount."""
    return (amount - amount / (1 + _VAT_RATE / 100)).quantize(_CENT, ROUND_HALF_UP)


_ZERO: Final = Decimal("0.00")
_STREET_2: Final = (None, None, None, "Bâtiment B", "2e étage")
_LINE_TEMPLATES: Final = _line_templates()
_SHIPPING_TAXES: Final = {
    price: [{"code": "TVA", "rate": _VAT_RATE, "amount": _tax_in(price)}]
    for price in {_ZERO, _RELAY_SHIPPING[2], *(t[2] for t in _SHIPPING_TYPES)}
}


def run_sandbox(
    marketplace: SandboxMarketplace, *, host: str = "127.0.0.1", port: int = 0
) -> AbstractAsyncContextManager[str]:
    """Serve `marketplace` on `host` (a free port by default) and yield its base URL."""
    return serve(marketplace.app(), host=host, port=port)


#: The OR74 type codes a sandbox operator takes (Mirakl's defaults for shops).
DOCUMENT_TYPE_CODES = ("CUSTOMER_INVOICE", "CUSTOMER_CREDIT_NOTE", "SHIPPING_LABEL")


def _or74_parts(content_type: str, raw: bytes) -> tuple[list[tuple[str, str, bytes]], str]:
    """OR74's files (name, content type, bytes) and its order_documents XML; ValueError."""
    if not content_type.startswith("multipart/form-data"):
        raise ValueError(f"expected multipart/form-data, not {content_type or 'nothing'}")
    message = BytesParser(policy=email_policy).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    if not message.is_multipart():
        raise ValueError("the multipart body cannot be read")
    files: list[tuple[str, str, bytes]] = []
    details: str | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            raise ValueError(f"part {name!r} is empty")
        if name == "files":
            filename = part.get_filename()
            if not filename:
                raise ValueError("a files part has no filename")
            files.append((filename, part.get_content_type(), payload))
        elif name == "order_documents":
            details = payload.decode("utf-8")
        else:
            raise ValueError(f"unexpected part {name!r}")
    if not files:
        raise ValueError("files is required")
    if details is None:
        raise ValueError("order_documents is required")
    return files, details


def _or74_details(xml: str) -> dict[str, str]:
    """file_name → type_code, from `<body><order_documents><order_document>…`."""
    root = DefusedET.fromstring(xml)
    if root.tag != "body" or root.find("order_documents") is None:
        raise ValueError("expected <body><order_documents>")
    named = {}
    for doc in root.iter("order_document"):
        file_name, type_code = doc.findtext("file_name"), doc.findtext("type_code")
        if not file_name or not type_code:
            raise ValueError("each order_document needs a file_name and a type_code")
        named[file_name] = type_code
    return named


def _json(payload: Any, status: int = 200) -> web.Response:
    """Mirakl writes its amounts as JSON numbers."""
    return json_answer(payload, status, decimals="number")


def _error(status: int, message: str) -> web.Response:
    """An error the way Mirakl writes one."""
    return _json({"status": status, "message": message}, status)


def _line_id(refund: Any) -> str:
    return str(refund.get("order_line_id")) if isinstance(refund, dict) else repr(refund)


def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"The order {request.match_info['order_id']} does not exist")
