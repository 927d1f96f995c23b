"""Each connector's settings, as `[channels.settings]` and `[shops.settings]` give them."""

from __future__ import annotations

from typing import Annotated, ClassVar
from urllib.parse import urlsplit

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
        url = urlsplit(self.base_url.strip())
        if url.scheme == "http" and url.hostname not in LOOPBACK_HOSTS:
            # Basic auth sends the key and secret as they are: only TLS may carry them.
            raise ValueError(
                f"base_url: the consumer key and secret travel as HTTP Basic auth, so "
                f"https:// is required (http:// only for 127.0.0.1 or localhost), "
                f"got {self.base_url!r}"
            )


#: The statuses WooCommerce may create a pushed order with.
WOOCOMMERCE_CREATE_STATUSES = ("pending", "processing", "on-hold")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
