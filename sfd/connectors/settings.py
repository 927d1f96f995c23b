"""Each connector's settings, as `[channels.settings]` and `[shops.settings]` give them."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec


class ConnectorSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Settings common to every connector."""

    secret_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields whose values are credentials: required, never empty, redacted from logs."""
    url_fields: ClassVar[frozenset[str]] = frozenset()

    timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    """Seconds one HTTP call may take, answer read whole, before it counts as failed."""


class MiraklSettings(ConnectorSettings, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A Mirakl operator's shop API (Decathlon, Leroy Merlin, Carrefour, La Redoute...)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key"})
    url_fields: ClassVar[frozenset[str]] = frozenset({"base_url"})

    base_url: str
    api_key: str
    shop_id: str | None = None
    refund_reason_code: str | None = None
    """The operator's refund reason code (OR28); most operators require one for refunds."""
    invoice_type_code: str = "CUSTOMER_INVOICE"
    """The OR74 document type code invoices are sent with; operators may define their own."""


class RefreshTokenSettings(
    ConnectorSettings, kw_only=True, forbid_unknown_fields=True, frozen=True
):
    """The credentials of an OAuth refresh-token grant (Amazon LWA, eBay)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"client_secret", "refresh_token"})

    client_id: str
    client_secret: str
    refresh_token: str


class AmazonSettings(RefreshTokenSettings, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Amazon Selling Partner API: Orders v2026-01-01 reads, Orders v0 confirmShipment."""

    url_fields: ClassVar[frozenset[str]] = frozenset({"endpoint", "token_url"})

    marketplace_ids: list[str]
    endpoint: str = "https://sellingpartnerapi-eu.amazon.com"
    token_url: str = "https://api.amazon.com/auth/o2/token"
    import_afn: bool = False


class EbaySettings(RefreshTokenSettings, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """eBay Sell Fulfillment API v1."""

    url_fields: ClassVar[frozenset[str]] = frozenset({"base_url", "token_url"})

    base_url: str = "https://api.ebay.com"
    token_url: str = "https://api.ebay.com/identity/v1/oauth2/token"


def _require_tls(field: str, value: str, carried: str, *, other_schemes: bool = True) -> None:
    """Refuse a plain http:// `value` of `field` but on loopback: `carried` says what it would
    expose. `other_schemes`: whether a scheme neither http nor https passes (the config's URL
    check refuses it later)."""
    url = urlsplit(value.strip())
    loopback_http = url.scheme == "http" and url.hostname in LOOPBACK_HOSTS
    insecure = url.scheme == "http" if other_schemes else url.scheme != "https"
    if insecure and not loopback_http:
        raise ValueError(
            f"{field}: {carried}, so https:// is required "
            f"(http:// only for 127.0.0.1 or localhost), got {value!r}"
        )


class WooCommerceSettings(ConnectorSettings, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A WooCommerce shop's REST API v3, for push mode."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"consumer_key", "consumer_secret"})
    url_fields: ClassVar[frozenset[str]] = frozenset({"base_url"})

    base_url: str
    consumer_key: str
    consumer_secret: str
    order_status: str = "processing"
    """The status orders are created with: pending, processing or on-hold."""
    tracking_number_meta: str = "_tracking_number"
    """Order meta keys read for the tracking when the Shipment Tracking extension is absent."""
    carrier_meta: str = "_tracking_provider"
    tracking_link_meta: str = "_tracking_link"
    customer_emails: bool = False
    """Whether the buyer's email goes on the order's billing, where WooCommerce mails it.
    Off: marketplaces forbid writing to their buyers; it is kept in `_sfd_buyer_email`."""

    def __post_init__(self) -> None:
        if self.order_status not in WOOCOMMERCE_CREATE_STATUSES:
            choices = ", ".join(repr(s) for s in WOOCOMMERCE_CREATE_STATUSES)
            raise ValueError(f"order_status: expected one of {choices}, got {self.order_status!r}")
        # Basic auth sends the key and secret as they are: only TLS may carry them.
        _require_tls(
            "base_url", self.base_url, "the consumer key and secret travel as HTTP Basic auth"
        )


#: The Admin API version the Shopify connector is written and tested against.
SHOPIFY_API_VERSION = "2026-01"
#: `inventory` values, as the lower-case names of Shopify's OrderCreateInputsInventoryBehavior.
SHOPIFY_INVENTORY = ("bypass", "decrement_ignoring_policy", "decrement_obeying_policy")


class ShopifySettings(ConnectorSettings, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A Shopify shop's Admin GraphQL API, for push mode, through a custom app's token."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"access_token"})
    url_fields: ClassVar[frozenset[str]] = frozenset({"shop_url"})

    shop_url: str
    """The shop's admin address, `https://my-shop.myshopify.com`."""
    access_token: str
    """The custom app's Admin API access token (`shpat_...`)."""
    api_version: str = SHOPIFY_API_VERSION
    """The Admin API version the requests name; the default is the one sfd is tested against."""
    inventory: str = "decrement_obeying_policy"
    """How a created order claims stock: bypass, decrement_ignoring_policy or
    decrement_obeying_policy (refused when a product is out of stock and may not be oversold)."""
    customer_emails: bool = False
    """Whether the buyer's email goes on the order. Off (the default): marketplaces forbid
    writing to their buyers, and Shopify mails an order's email on many events."""

    def __post_init__(self) -> None:
        if self.inventory not in SHOPIFY_INVENTORY:
            choices = ", ".join(repr(s) for s in SHOPIFY_INVENTORY)
            raise ValueError(f"inventory: expected one of {choices}, got {self.inventory!r}")
        if not re.fullmatch(r"\d{4}-\d{2}|unstable", self.api_version):
            raise ValueError(
                f"api_version: expected a version such as {SHOPIFY_API_VERSION!r}, "
                f"got {self.api_version!r}"
            )
        # The token goes in a header as it is: only TLS may carry it.
        _require_tls(
            "shop_url",
            self.shop_url,
            "the access token travels in a request header",
            other_schemes=False,
        )


#: The statuses WooCommerce may create a pushed order with.
WOOCOMMERCE_CREATE_STATUSES = ("pending", "processing", "on-hold")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class PrestaShopSettings(ConnectorSettings, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A PrestaShop shop's Webservice API (1.7 and 8), for push mode."""

    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key"})
    url_fields: ClassVar[frozenset[str]] = frozenset({"base_url"})

    base_url: str
    api_key: str
    """The webservice key, sent as the HTTP Basic user with an empty password."""
    payment_module: str
    """The technical name of an installed payment module orders are created with."""
    carrier_id: Annotated[int, msgspec.Meta(ge=1)]
    """The carrier orders are created with: a free one, so the cart totals the marketplace's."""
    id_lang: Annotated[int, msgspec.Meta(ge=1)] = 1
    id_shop: Annotated[int, msgspec.Meta(ge=1)] = 1
    paid_state: Annotated[int, msgspec.Meta(ge=1)] = 2
    """The order state a created order is moved to (PrestaShop's "Payment accepted": 2)."""
    shipped_states: list[int] = msgspec.field(default_factory=lambda: [4, 5])
    """States read back as shipped (PrestaShop's "Shipped" 4 and "Delivered" 5)."""
    cancelled_states: list[int] = msgspec.field(default_factory=lambda: [6])
    timezone: str = "Europe/Paris"
    """The shop's time zone (its PS_TIMEZONE): PrestaShop writes its dates in it, unzoned."""
    customer_emails: bool = False
    """Whether the customer gets the buyer's marketplace email, where PrestaShop mails it.
    Off: marketplaces forbid writing to their buyers; the customer's email is unreachable."""

    def __post_init__(self) -> None:
        _require_tls("base_url", self.base_url, "the webservice key travels as HTTP Basic auth")
        overlap = set(self.shipped_states) & set(self.cancelled_states)
        if overlap:
            raise ValueError(
                f"shipped_states and cancelled_states: state {min(overlap)} is in both"
            )
        if self.paid_state in set(self.shipped_states) | set(self.cancelled_states):
            raise ValueError(
                f"paid_state: state {self.paid_state} is also read back as shipped or cancelled"
            )
        try:
            ZoneInfo(self.timezone)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None
