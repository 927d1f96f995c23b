"""Mirakl's shop API: list orders (OR11), accept or refuse (OR21), ship (OR23, OR24), refund (OR28),
cancel (OR29).

Every operator running Mirakl (Decathlon, Leroy Merlin, Carrefour, La Redoute...) serves the same
shop API under its own host. Amounts are read as exact decimals, never binary floats.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, Final, Unpack
from xml.sax.saxutils import escape as xml_escape

import aiohttp
import msgspec
from yarl import URL

from sfd.connectors.base import (
    OrderPage,
    RefundRequest,
    Rejected,
    ShipmentReceipt,
    ShipmentRequest,
    Transient,
)
from sfd.connectors.http import ConnectorOptions, MarketplaceHttp, segment, unless_done
from sfd.connectors.parsing import (
    MalformedOrder,
    PageReader,
    Quantity,
    address,
    finite,
    format_date,
    head,
    malformed,
    skipper,
    utc,
)
from sfd.connectors.settings import MiraklSettings
from sfd.domain import Address, MarketplaceOrder, OrderItem, OrderStatus, Shipment
from sfd.domain.carriers import MarketplaceCarrier, match_carrier
from sfd.domain.documents import Document

if TYPE_CHECKING:
    from sfd.connectors.base import MarketplaceConnector

#: OR11 serves at most 100 orders a page.
PAGE_SIZE: Final = 100
#: How long the operator's carrier list (SH21) is trusted before it is read again.
CARRIERS_TTL: Final = 3600.0

#: Order states of orders not released to the shop yet (the operator's fraud check): not
#: imported.
UNRELEASED_STATES: Final = frozenset({"STAGING"})
#: Order states of accepted orders whose buyer Mirakl has not debited yet. They are imported
#: as `waiting_shipment` with `payment_pending`: the acceptance is done (and confirmed), but
#: the order is neither offered to the shop nor shippable until Mirakl moves it to SHIPPING.
#: Shoppingfeed's status vocabulary has no word for this, and shop modules know only that
#: vocabulary, hence a flag beside the status rather than a status of sfd's own.
PAYMENT_PENDING_STATES: Final = frozenset({"WAITING_DEBIT", "WAITING_DEBIT_PAYMENT"})
#: Order states of orders that have left the shop.
SHIPPED_STATES: Final = frozenset({"SHIPPED", "TO_COLLECT", "RECEIVED", "CLOSED"})
#: Order states an accepted order can be in.
ACCEPTED_STATES: Final = PAYMENT_PENDING_STATES | {"SHIPPING"} | SHIPPED_STATES
#: Mirakl order state → sfd status, for released orders.
STATUS_BY_STATE: Final[Mapping[str, OrderStatus]] = {
    "WAITING_ACCEPTANCE": OrderStatus.WAITING_STORE_ACCEPTANCE,
    "WAITING_DEBIT": OrderStatus.WAITING_SHIPMENT,
    "WAITING_DEBIT_PAYMENT": OrderStatus.WAITING_SHIPMENT,
    "SHIPPING": OrderStatus.WAITING_SHIPMENT,
    "SHIPPED": OrderStatus.SHIPPED,
    "TO_COLLECT": OrderStatus.SHIPPED,
    "RECEIVED": OrderStatus.SHIPPED,
    "CLOSED": OrderStatus.SHIPPED,
    "REFUSED": OrderStatus.REFUSED,
    "CANCELED": OrderStatus.CANCELLED,
    "REFUNDED": OrderStatus.REFUNDED,
}

PARTIAL_SHIPMENT = (
    "Mirakl ships whole orders (OR24): a partial shipment cannot be sent; ship every line "
    "(list every line at its full quantity, or none)"
)

NO_DELIVERY: Final = (
    "Mirakl has no delivery confirmation from the shop; the customer confirms receipt"
)
#: Line states in which nothing is left to refund.
_UNREFUNDABLE_LINE_STATES: Final = frozenset({"REFUSED", "CANCELED", "REFUNDED"})
_CENT: Final = Decimal("0.01")

# ISO 3166-1 alpha-3 → alpha-2: Mirakl writes alpha-3 codes, the shop API speaks alpha-2.
_COUNTRY_PAIRS: Final = (
    "ABWAW AFGAF AGOAO AIAAI ALAAX ALBAL ANDAD AREAE ARGAR ARMAM ASMAS ATAAQ ATFTF ATGAG "
    "AUSAU AUTAT AZEAZ BDIBI BELBE BENBJ BESBQ BFABF BGDBD BGRBG BHRBH BHSBS BIHBA BLMBL "
    "BLRBY BLZBZ BMUBM BOLBO BRABR BRBBB BRNBN BTNBT BVTBV BWABW CAFCF CANCA CCKCC CHECH "
    "CHLCL CHNCN CIVCI CMRCM CODCD COGCG COKCK COLCO COMKM CPVCV CRICR CUBCU CUWCW CXRCX "
    "CYMKY CYPCY CZECZ DEUDE DJIDJ DMADM DNKDK DOMDO DZADZ ECUEC EGYEG ERIER ESHEH ESPES "
    "ESTEE ETHET FINFI FJIFJ FLKFK FRAFR FROFO FSMFM GABGA GBRGB GEOGE GGYGG GHAGH GIBGI "
    "GINGN GLPGP GMBGM GNBGW GNQGQ GRCGR GRDGD GRLGL GTMGT GUFGF GUMGU GUYGY HKGHK HMDHM "
    "HNDHN HRVHR HTIHT HUNHU IDNID IMNIM INDIN IOTIO IRLIE IRNIR IRQIQ ISLIS ISRIL ITAIT "
    "JAMJM JEYJE JORJO JPNJP KAZKZ KENKE KGZKG KHMKH KIRKI KNAKN KORKR KWTKW LAOLA LBNLB "
    "LBRLR LBYLY LCALC LIELI LKALK LSOLS LTULT LUXLU LVALV MACMO MAFMF MARMA MCOMC MDAMD "
    "MDGMG MDVMV MEXMX MHLMH MKDMK MLIML MLTMT MMRMM MNEME MNGMN MNPMP MOZMZ MRTMR MSRMS "
    "MTQMQ MUSMU MWIMW MYSMY MYTYT NAMNA NCLNC NERNE NFKNF NGANG NICNI NIUNU NLDNL NORNO "
    "NPLNP NRUNR NZLNZ OMNOM PAKPK PANPA PCNPN PERPE PHLPH PLWPW PNGPG POLPL PRIPR PRKKP "
    "PRTPT PRYPY PSEPS PYFPF QATQA REURE ROURO RUSRU RWARW SAUSA SDNSD SENSN SGPSG SGSGS "
    "SHNSH SJMSJ SLBSB SLESL SLVSV SMRSM SOMSO SPMPM SRBRS SSDSS STPST SURSR SVKSK SVNSI "
    "SWESE SWZSZ SXMSX SYCSC SYRSY TCATC TCDTD TGOTG THATH TJKTJ TKLTK TKMTM TLSTL TONTO "
    "TTOTT TUNTN TURTR TUVTV TWNTW TZATZ UGAUG UKRUA UMIUM URYUY USAUS UZBUZ VATVA VCTVC "
    "VENVE VGBVG VIRVI VNMVN VUTVU WLFWF WSMWS YEMYE ZAFZA ZMBZM ZWEZW"
)
_ALPHA3_TO_ALPHA2: Final = {pair[:3]: pair[3:] for pair in _COUNTRY_PAIRS.split()}

_ANY_DECODER: Final = msgspec.json.Decoder(float_hook=Decimal)


class _Listing(msgspec.Struct):
    """OR11's answer, each order kept as the exact bytes Mirakl sent."""

    orders: list[msgspec.Raw]
    total_count: int | None = None


class _Carrier(msgspec.Struct):
    code: str
    label: str | None = None


class _Carriers(msgspec.Struct):
    carriers: list[_Carrier]


class MiraklConnector(MarketplaceHttp[MiraklSettings]):
    """One Mirakl operator's shop API, for one shop.

    OR11 lists by creation date and offers no sort by update date (pages not sorted by update).
    """

    label = "Mirakl"
    default_name = "mirakl"
    min_poll_interval: float | None = 60.0

    def __init__(
        self,
        settings: MiraklSettings,
        *,
        refund_reason_code: str | None = None,
        **options: Unpack[ConnectorOptions],
    ) -> None:
        super().__init__(settings, **options)
        #: The operator's refund reason code sent with OR28; the spec documents no default.
        self.refund_reason_code = refund_reason_code
        # The operator's "API URL" often ends in /api already; our paths carry it.
        self._base = settings.base_url.strip().rstrip("/").removesuffix("/api")
        self._carriers: list[_Carrier] | None = None
        self._carriers_read_at = 0.0

    def _secrets(self) -> tuple[str]:
        return (self._settings.api_key,)

    def _service_error(self, body: bytes) -> str | None:
        return _error_message(body)

    # -- the connector protocol -------------------------------------------------------------

    async def fetch_orders(self, since: datetime | None) -> AsyncIterator[OrderPage]:
        """Yield the orders changed since `since`, one page per OR11 call."""
        offset = 0
        while True:
            params = {
                "paginate": "true",
                "max": str(PAGE_SIZE),
                "offset": str(offset),
                "order": "asc",
            }
            if since is not None:
                params["start_update_date"] = format_date(since)
            op = f"OR11 list orders (offset {offset})"
            listing = self._listing(await self._call("GET", "/api/orders", op, params=params), op)
            yield _PAGES.read(op, listing.orders, offset)
            count = len(listing.orders)
            offset += count
            if count < PAGE_SIZE or (
                listing.total_count is not None and offset >= listing.total_count
            ):
                return

    async def accept(self, reference: str) -> None:
        """Accept every line of an order waiting for acceptance (OR21)."""
        await self._decide(reference, accepted=True)

    async def refuse(self, reference: str) -> None:
        """Refuse every line of an order waiting for acceptance (OR21)."""
        await self._decide(reference, accepted=False)

    async def ship(self, reference: str, shipment: ShipmentRequest) -> ShipmentReceipt:
        """Send the tracking (OR23), then confirm the shipment (OR24); a repeat succeeds.

        OR23 needs a carrier (a registered one's code, else its name) and takes one tracking
        number: without a carrier it is skipped and only OR24 is sent, and numbers after the
        first are not sent. The receipt says so.
        """
        if shipment.items is not None:
            raise Rejected(PARTIAL_SHIPMENT)
        path = f"/api/orders/{segment(reference)}"
        tracking, receipt = await self._tracking_body(shipment)

        async def send() -> None:
            if tracking is not None:
                await self._call(
                    "PUT", f"{path}/tracking", f"OR23 tracking of {reference}", body=tracking
                )
            await self._call("PUT", f"{path}/ship", f"OR24 ship {reference}")

        # After an unknown outcome the order may have shipped already: Mirakl then refuses
        # OR23/OR24 (the order is no longer SHIPPING).
        check = f"OR11 check shipment of {reference}"
        await unless_done(send(), lambda: self._in_state(reference, check, SHIPPED_STATES))
        return receipt

    async def cancel(self, reference: str) -> None:
        """Cancel the whole order (OR29); an order Mirakl shows cancelled already succeeds."""
        path = f"/api/orders/{segment(reference)}/cancel"
        check = f"OR11 check cancellation of {reference}"
        await unless_done(
            self._call("PUT", path, f"OR29 cancel {reference}"),
            lambda: self._in_state(reference, check, {"CANCELED"}),
        )

    async def refund(self, reference: str, refund: RefundRequest) -> None:
        """Refund order lines (OR28), their amounts read from the order (OR11) first.

        `refund.items` names lines by `offer_sku`; what earlier refunds on a line already cover
        is never refunded again, so a repeat after an unknown outcome refunds nothing twice.
        """
        order = await self._read_order(reference, f"OR11 read {reference} before OR28")
        if order is None:
            raise Rejected(f"Mirakl has no released order {reference} to refund")
        if order.get("order_state") == "REFUNDED":
            return
        refunds = refund_lines(reference, order, refund, reason_code=self.refund_reason_code)
        if not refunds:
            return  # refunded already, by us on an earlier try or by someone else
        body: dict[str, Any] = {"refunds": refunds}
        if isinstance(order.get("order_tax_mode"), str):
            body["order_tax_mode"] = order["order_tax_mode"]
        try:
            await self._call("PUT", "/api/orders/refund", f"OR28 refund {reference}", body=body)
        except Rejected as exc:
            if self.refund_reason_code is None:
                raise Rejected(
                    f"{exc.message} (no reason_code was sent: if the operator requires one, "
                    "a refund reason code must be configured)"
                ) from None
            raise

    async def deliver(self, reference: str) -> None:
        """Mirakl's customer confirms receipt; the shop cannot: refused."""
        raise Rejected(NO_DELIVERY)

    async def upload_document(self, reference: str, document: Document) -> None:
        """Attach an invoice to the order (OR74), as Mirakl's own shop SDK sends it.

        Multipart: the file as `files`, and `order_documents` naming it with its type code
        (the channel's `invoice_type_code`, CUSTOMER_INVOICE by default)."""
        op = f"OR74 upload {document.file_name} to {reference}"
        form = aiohttp.FormData()
        form.add_field(
            "files", document.content, filename=document.file_name,
            content_type=document.content_type,
        )  # fmt: skip
        form.add_field(
            "order_documents",
            or74_details(document.file_name, self._settings.invoice_type_code),
            content_type="application/xml",
        )
        path = f"/api/orders/{segment(reference)}/documents"
        answer = _or74_answer(await self._call("POST", path, op, form=form), op)
        if answer.errors_count:
            why = "; ".join(
                f"{e.file_name or document.file_name}: {e.message or 'refused'}"
                for e in answer.document_errors
            )
            raise Rejected(f"Mirakl {op}: {why or 'refused'}")

    async def order_status(self, reference: str) -> OrderStatus | None:
        """The order's status on Mirakl now, or None if Mirakl has not released it.

        An accepted order waiting for the buyer's payment answers None too: a bare status
        cannot carry `payment_pending`, and `waiting_shipment` alone would offer it to the shop.
        The next poll reads the whole order, and confirms the acceptance.
        """
        order = await self._read_order(reference, f"OR11 read status of {reference}")
        if order is None:
            return None
        state = order.get("order_state")
        if not isinstance(state, str):
            raise Transient(f"Mirakl OR11: order {reference} has no order_state")
        if state in UNRELEASED_STATES or state in PAYMENT_PENDING_STATES:
            return None
        status = STATUS_BY_STATE.get(state)
        if status is None:
            raise Rejected(f"Mirakl order {reference} is in an unknown state {state!r}")
        return status

    # -- operations -----------------------------------------------------------------------

    async def _decide(self, reference: str, *, accepted: bool) -> None:
        verb, done = ("accept", "accepted") if accepted else ("refuse", "refused")
        order = await self._read_order(reference, f"OR11 read {reference} before OR21")
        if order is None:
            raise Rejected(f"Mirakl has no released order {reference} to {verb}")
        state = order.get("order_state")
        if (accepted and state in ACCEPTED_STATES) or (not accepted and state == "REFUSED"):
            return  # done already, by us on an earlier try or by someone else
        if state != "WAITING_ACCEPTANCE":
            raise Rejected(
                f"Mirakl order {reference} is {state}: only an order in WAITING_ACCEPTANCE "
                f"can be {done}"
            )
        lines = order.get("order_lines")
        ids = (
            [line.get("order_line_id") for line in lines if isinstance(line, dict)]
            if isinstance(lines, list)
            else []
        )
        if not ids or not all(isinstance(i, str) and i for i in ids):
            raise Rejected(f"Mirakl order {reference} has no readable order_lines to {verb}")
        body = {"order_lines": [{"id": i, "accepted": accepted} for i in ids]}
        await self._call(
            "PUT",
            f"/api/orders/{segment(reference)}/accept",
            f"OR21 {verb} {reference}",
            body=body,
        )

    async def _tracking_body(
        self, shipment: ShipmentRequest
    ) -> tuple[dict[str, str] | None, ShipmentReceipt]:
        """OR23's body (None: OR23 is skipped), and the receipt of what it sends."""
        carrier = shipment.carrier.strip()
        numbers = shipment.tracking_numbers
        link = shipment.tracking_link.strip()
        if not carrier:
            notes = []
            if numbers:
                notes.append("Mirakl records a tracking number only with a carrier (OR23)")
            if link:
                notes.append("the tracking link was not sent: Mirakl needs a carrier with it")
            return None, ShipmentReceipt(not_forwarded=numbers, notes=tuple(notes))
        matched = match_carrier(carrier, await self.carrier_catalogue(), shipment.carriers)
        code = matched.code
        body: dict[str, str] = {}
        if code is not None:
            body["carrier_code"] = code
        else:
            body["carrier_name"] = carrier
            if link:
                body["carrier_url"] = link
        if numbers:
            body["tracking_number"] = numbers[0]
        receipt = ShipmentReceipt(
            carrier=code or carrier,
            tracking_numbers=numbers[:1],
            not_forwarded=numbers[1:],
            notes=("Mirakl takes one tracking number per order (OR23)",) if numbers[1:] else (),
            carrier_match=matched,
        )
        return body, receipt

    async def carriers(self) -> list[str]:
        """The operator's carriers (SH21), by label, else code; read at most once an hour."""
        return [(known.label or "").strip() or known.code for known in await self._carrier_list()]

    async def _carrier_list(self) -> list[_Carrier]:
        now = time.monotonic()
        if self._carriers is None or now - self._carriers_read_at >= CARRIERS_TTL:
            op = "SH21 list carriers"
            body = await self._call("GET", "/api/shipping/carriers", op)
            self._carriers = self._http.decode(body, _Carriers, op).carriers
            self._carriers_read_at = now
        return self._carriers

    async def carrier_catalogue(self) -> list[MarketplaceCarrier]:
        """The operator's carriers (SH21) by code and label; read at most once an hour."""
        return [
            MarketplaceCarrier(known.code, (known.label or "").strip() or known.code)
            for known in await self._carrier_list()
        ]

    async def _read_order(self, reference: str, op: str) -> dict[str, Any] | None:
        """One order as OR11 shows it, or None when Mirakl has no such order."""
        body = await self._call("GET", "/api/orders", op, order_ids=reference)
        for raw in self._listing(body, op).orders:
            order = _ANY_DECODER.decode(raw)
            if isinstance(order, dict) and order.get("order_id") == reference:
                return order
        return None

    async def _in_state(self, reference: str, op: str, states: Collection[str]) -> bool:
        """Whether OR11 shows the order in one of `states`."""
        order = await self._read_order(reference, op)
        return order is not None and order.get("order_state") in states

    def _listing(self, body: bytes, op: str) -> _Listing:
        return self._http.decode(body, _Listing, op)

    # -- HTTP -----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        op: str,
        *,
        body: Any = None,
        form: aiohttp.FormData | None = None,
        params: Mapping[str, str] | None = None,
        **query: str,
    ) -> bytes:
        """Send one request (`params` and `query` its URL's query) and return the body of a 2xx
        answer; map every failure."""
        query = {**(params or {}), **query}
        if self._settings.shop_id:
            query["shop_id"] = self._settings.shop_id
        url = URL(self._base + path, encoded=True).with_query(query)
        headers = {"Authorization": self._settings.api_key, "Accept": "application/json"}
        answer = await self._http.send(method, url, op=op, headers=headers, body=body, form=form)
        return self._http.ok(answer, op, refused="the API key was refused", detail=False).body


# -- documents ----------------------------------------------------------------------------


class _DocumentError(msgspec.Struct):
    file_name: str | None = None
    message: str | None = None


class _Or74Answer(msgspec.Struct):
    errors_count: int = 0
    document_errors: list[_DocumentError] = msgspec.field(default_factory=list)


def _or74_answer(body: bytes, op: str) -> _Or74Answer:
    if not body.strip():
        return _Or74Answer()
    try:
        return msgspec.json.decode(body, type=_Or74Answer)
    except msgspec.DecodeError as exc:
        raise Transient(f"Mirakl {op}: unexpected answer ({exc})") from None


def or74_details(file_name: str, type_code: str) -> str:
    """OR74's `order_documents` part: the XML Mirakl's shop SDK writes for one document."""
    return (
        "<body><order_documents><order_document>"
        f"<file_name>{xml_escape(file_name)}</file_name>"
        f"<type_code>{xml_escape(type_code)}</type_code>"
        "</order_document></order_documents></body>"
    )


# -- refunds ------------------------------------------------------------------------------


def refund_lines(
    reference: str,
    order: Mapping[str, Any],
    refund: RefundRequest,
    *,
    reason_code: str | None = None,
) -> list[dict[str, Any]]:
    """OR28's `refunds` for one order as OR11 shows it; empty when nothing is left to refund.

    Amounts follow the order's tax mode: the unit price times the quantity, the line's taxes
    and (when `refund.shipping`) its shipping price and taxes, in proportion to the quantity.
    """
    wanted = dict(refund.items) if refund.items is not None else None
    if wanted is not None:
        skus = {line.get("offer_sku") for line in _lines(order)}
        unknown = sorted(sku for sku in wanted if sku not in skus)
        if unknown:
            raise Rejected(f"Mirakl order {reference} has no line with offer_sku {unknown}")
    currency = order.get("currency_iso_code")
    out: list[dict[str, Any]] = []
    for line in _lines(order):
        line_id, sku = line.get("order_line_id"), line.get("offer_sku")
        ordered = _decimal(line.get("quantity"))
        if not isinstance(line_id, str) or not line_id or ordered is None or ordered <= 0:
            raise Rejected(f"Mirakl order {reference} has a line without id or quantity")
        done = sum(
            (_decimal(r.get("quantity")) or Decimal(0) for r in _dicts(line.get("refunds"))),
            Decimal(0),
        )
        unrefundable = line.get("order_line_state") in _UNREFUNDABLE_LINE_STATES
        remaining = Decimal(0) if unrefundable else ordered
        remaining = max(Decimal(0), remaining - done)
        if wanted is None:
            quantity = remaining
        else:
            asked = Decimal(wanted.get(sku, 0)) if isinstance(sku, str) else Decimal(0)
            quantity = min(asked, remaining)
            if isinstance(sku, str) and sku in wanted:
                wanted[sku] -= int(quantity)
        if quantity <= 0:
            continue
        share = quantity / ordered
        unit = _decimal(line.get("price_unit"))
        if unit is None:
            unit = (_decimal(line.get("price")) or Decimal(0)) / ordered
        shipping = _decimal(line.get("shipping_price")) or Decimal(0)
        entry: dict[str, Any] = {
            "order_line_id": line_id,
            "quantity": int(quantity),
            "amount": _wire(unit * quantity),
            "shipping_amount": _wire(shipping * share if refund.shipping else Decimal(0)),
            "taxes": _refund_taxes(line.get("taxes"), share),
            "shipping_taxes": _refund_taxes(
                line.get("shipping_taxes"), share if refund.shipping else Decimal(0)
            ),
        }
        if isinstance(currency, str) and currency:
            entry["currency_iso_code"] = currency
        if reason_code:
            entry["reason_code"] = reason_code
        out.append(entry)
    if wanted is not None and out:
        short = sorted(sku for sku, left in wanted.items() if left > 0)
        if short:
            raise Rejected(
                f"Mirakl order {reference}: more of {short} asked for than is left to refund"
            )
    return out


def _lines(order: Mapping[str, Any]) -> list[dict[str, Any]]:
    return _dicts(order.get("order_lines"))


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | float):
        return None
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    return number if number.is_finite() else None


def _refund_taxes(taxes: Any, share: Decimal) -> list[dict[str, Any]]:
    return [
        {"code": tax["code"], "amount": _wire((_decimal(tax.get("amount")) or Decimal(0)) * share)}
        for tax in _dicts(taxes)
        if isinstance(tax.get("code"), str)
    ]


def _wire(amount: Decimal) -> float:
    """An amount rounded to the cent, as a JSON number (the HTTP client writes floats)."""
    return float(amount.quantize(_CENT, ROUND_HALF_UP))


# -- reading orders -----------------------------------------------------------------------
#
# Each order is decoded on its own into typed structs: JSON numbers become exact Decimals, and a
# field of the wrong type or a missing required field fails that order alone, with its path.


class _Field(msgspec.Struct):
    """A Mirakl custom field (order_additional_fields, order_line_additional_fields)."""

    code: str
    value: msgspec.Raw = msgspec.Raw(b"null")


class _Tax(msgspec.Struct):
    amount: Decimal | None = None


class _EcoContribution(msgspec.Struct):
    total_amount: Decimal | None = None


class _Media(msgspec.Struct):
    media_url: str | None = None
    type: str | None = None


class _Line(msgspec.Struct):
    order_line_id: str
    offer_sku: str
    quantity: Quantity
    price_unit: Decimal | None = None
    price: Decimal | None = None
    shipping_price: Decimal | None = None
    product_title: str | None = None
    order_line_state: str | None = None
    total_commission: Decimal | None = None
    taxes: list[_Tax] | None = None
    shipping_taxes: list[_Tax] | None = None
    eco_contributions: list[_EcoContribution] | None = None
    product_medias: list[_Media] | None = None
    order_line_additional_fields: list[_Field] | None = None


class _Address(msgspec.Struct):
    """An address, its fields named as sfd's Address (Mirakl's own names in `name`)."""

    first_name: str | None = msgspec.field(default=None, name="firstname")
    last_name: str | None = msgspec.field(default=None, name="lastname")
    company: str | None = None
    street: str | None = msgspec.field(default=None, name="street_1")
    street2: str | None = msgspec.field(default=None, name="street_2")
    other: str | None = msgspec.field(default=None, name="additional_info")
    postal_code: str | None = msgspec.field(default=None, name="zip_code")
    city: str | None = None
    province: str | None = msgspec.field(default=None, name="state")
    country: str | None = None
    country_iso_code: str | None = None
    phone: str | None = None
    mobile_phone: str | None = msgspec.field(default=None, name="phone_secondary")


class _Organization(msgspec.Struct):
    name: str | None = None
    tax_identification_number: str | None = None


class _Customer(msgspec.Struct):
    firstname: str | None = None
    lastname: str | None = None
    billing_address: _Address | None = None
    shipping_address: _Address | None = None
    organization: _Organization | None = None


class _Channel(msgspec.Struct):
    code: str | None = None


class _Order(msgspec.Struct):
    order_id: str
    order_state: str
    created_date: datetime
    last_updated_date: datetime
    currency_iso_code: str
    shipping_price: Decimal
    total_price: Decimal
    order_lines: list[_Line]
    price: Decimal | None = None
    shipping_deadline: datetime | None = None
    payment_type: str | None = None
    payment_workflow: str | None = None
    commercial_id: str | None = None
    channel: _Channel | None = None
    customer: _Customer | None = None
    customer_notification_email: str | None = None
    shipping_type_code: str | None = None
    shipping_type_label: str | None = None
    shipping_zone_code: str | None = None
    shipping_pudo_id: str | None = None
    shipping_carrier_code: str | None = None
    shipping_company: str | None = None
    shipping_tracking: str | None = None
    shipping_tracking_url: str | None = None
    order_additional_fields: list[_Field] | None = None


class _Head(msgspec.Struct):
    """What can still be learnt from an order that does not decode."""

    order_id: Any = None
    order_state: Any = None
    last_updated_date: Any = None


_ORDER_DECODER: Final = msgspec.json.Decoder(_Order)
_HEAD_DECODER: Final = msgspec.json.Decoder(_Head)


_skipped: Final = skipper(_HEAD_DECODER, "order_id", "last_updated_date")


def parse_order(raw: bytes) -> MarketplaceOrder | None:
    """Normalize one OR11 order from its JSON; None for an order Mirakl has not released.

    Raise MalformedOrder, naming the field, when the order cannot be read.
    """
    try:
        data = _ORDER_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        found = head(_HEAD_DECODER, raw)
        if found is not None and found.order_state in UNRELEASED_STATES | PAYMENT_PENDING_STATES:
            # Mirakl may leave fields out before the debit; the order is read once released.
            return None
        raise malformed(exc) from None
    except msgspec.DecodeError as exc:
        raise MalformedOrder("order", f"not JSON ({exc})") from None
    if data.order_state in UNRELEASED_STATES:
        return None
    status = STATUS_BY_STATE.get(data.order_state)
    if status is None:
        raise MalformedOrder("order_state", f"unknown state {data.order_state!r}")
    for name in ("order_id", "currency_iso_code"):
        if not getattr(data, name).strip():
            raise MalformedOrder(name, "empty")
    for name in ("price", "shipping_price", "total_price"):
        finite(getattr(data, name), name)
    items = tuple(_item(line, f"order_lines[{n}]") for n, line in enumerate(data.order_lines))
    product_amount = data.price
    if product_amount is None:
        product_amount = sum(
            (
                line.price if line.price is not None else item.price * item.quantity
                for line, item in zip(data.order_lines, items, strict=True)
            ),
            Decimal(0),
        )
    customer = data.customer or _Customer()
    email = data.customer_notification_email or ""
    carrier = data.shipping_carrier_code or data.shipping_company or ""
    tracking = data.shipping_tracking or ""
    tracking_url = data.shipping_tracking_url or ""
    shipment = (
        Shipment(carrier=carrier, tracking_number=tracking, tracking_link=tracking_url)
        if carrier or tracking or tracking_url
        else None
    )
    return MarketplaceOrder(
        reference=data.order_id,
        status=status,
        created_at=utc(data.created_date),
        updated_at=utc(data.last_updated_date),
        currency=data.currency_iso_code,
        product_amount=product_amount,
        shipping_amount=data.shipping_price,
        total_amount=data.total_price,
        raw=raw,
        payment_method=data.payment_type or "",
        shipping_method=data.shipping_type_label or data.shipping_type_code or "",
        latest_ship_date=utc(data.shipping_deadline) if data.shipping_deadline else None,
        billing_address=_address(customer.billing_address, customer, email),
        shipping_address=_address(
            customer.shipping_address, customer, email, data.shipping_pudo_id or ""
        ),
        items=items,
        shipment=shipment,
        additional_fields=_order_fields(data, customer),
        payment_pending=data.order_state in PAYMENT_PENDING_STATES,
    )


_PAGES: Final = PageReader("Mirakl", PAGE_SIZE, parse_order, _skipped)


def _item(line: _Line, path: str) -> OrderItem:
    for name in ("price_unit", "price", "shipping_price", "total_commission"):
        finite(getattr(line, name), f"{path}.{name}")
    if not line.order_line_id.strip():
        raise MalformedOrder(f"{path}.order_line_id", "empty")
    if not line.offer_sku.strip():
        raise MalformedOrder(f"{path}.offer_sku", "empty")
    unit = line.price_unit
    if unit is None:
        if line.price is None:
            raise MalformedOrder(f"{path}.price_unit", "missing, and no price to derive it from")
        unit = line.price / line.quantity if line.quantity else line.price
    fields: dict[str, Any] = {}
    if line.shipping_price is not None:
        fields["shipping_price"] = str(line.shipping_price)
    if line.shipping_taxes:
        fields["shipping_tax_amount"] = str(_taxes(line.shipping_taxes))
    fields.update(_custom_fields(line.order_line_additional_fields))
    return OrderItem(
        reference=line.offer_sku,
        channel_reference=line.order_line_id,
        quantity=line.quantity,
        price=unit,
        name=line.product_title or "",
        status=line.order_line_state or "",
        commission=line.total_commission or Decimal(0),
        tax_amount=_taxes(line.taxes),
        ecotax_amount=sum(
            (e.total_amount or Decimal(0) for e in line.eco_contributions or ()), Decimal(0)
        ),
        image=_image(line.product_medias),
        additional_fields=fields,
    )


def _taxes(taxes: list[_Tax] | None) -> Decimal:
    return sum((t.amount or Decimal(0) for t in taxes or ()), Decimal(0))


def _image(medias: list[_Media] | None) -> str:
    urls = [m for m in medias or () if m.media_url]
    large = [m for m in urls if (m.type or "").upper() == "LARGE"]
    chosen = large or urls
    return chosen[0].media_url or "" if chosen else ""


def _address(
    found: _Address | None, customer: _Customer, email: str, relay_id: str = ""
) -> Address:
    if found is None:
        # Mirakl hides addresses until the order is accepted: keep the customer's name.
        return Address(
            first_name=customer.firstname or "",
            last_name=customer.lastname or "",
            email=email,
            relay_id=relay_id,
        )
    country = country_code(found.country_iso_code or found.country or "")
    return address(found, country=country, email=email, relay_id=relay_id)


def country_code(value: str) -> str:
    """A country as ISO 3166-1 alpha-2 when Mirakl gave an alpha-3 code; else unchanged."""
    code = value.strip()
    return _ALPHA3_TO_ALPHA2.get(code.upper(), code)


def _order_fields(data: _Order, customer: _Customer) -> dict[str, Any]:
    fields = _custom_fields(data.order_additional_fields)
    extra = {
        "channel_code": data.channel.code if data.channel else None,
        "commercial_id": data.commercial_id,
        "shipping_type_code": data.shipping_type_code,
        "shipping_zone_code": data.shipping_zone_code,
        "payment_workflow": data.payment_workflow,
    }
    organization = customer.organization
    if organization is not None:
        extra["organization_name"] = organization.name
        extra["vat_number"] = organization.tax_identification_number
    fields.update((key, value) for key, value in extra.items() if value)
    fields["order_state"] = data.order_state
    return fields


def _custom_fields(entries: list[_Field] | None) -> dict[str, Any]:
    """Mirakl custom fields as code → value; decimal numbers written as text."""
    fields: dict[str, Any] = {}
    for entry in entries or ():
        value = _ANY_DECODER.decode(entry.value)
        fields[entry.code] = str(value) if isinstance(value, Decimal) else value
    return fields


# -- wire helpers -------------------------------------------------------------------------


def _error_message(body: bytes) -> str | None:
    """Mirakl's own error message (`{"status": 400, "message": "..."}`), if there is one."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict):
        return None
    message = data.get("message")
    if isinstance(message, str) and message.strip():
        return message.strip()
    errors = data.get("errors")
    if isinstance(errors, list):
        texts = [e["message"] for e in errors if isinstance(e, dict) and e.get("message")]
        if texts:
            return "; ".join(str(t) for t in texts)
    return None


if TYPE_CHECKING:
    _conforms: type[MarketplaceConnector] = MiraklConnector
