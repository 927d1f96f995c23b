"""The one list of connectors: name → (settings class, factory), marketplaces and shops.

Config validation reads the settings classes from it, the daemon opens connectors through it;
a new connector is one entry here. Factories import their module on first use, so reading a
config does not load every connector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sfd.connectors.settings import (
    AmazonSettings,
    ConnectorSettings,
    EbaySettings,
    MiraklSettings,
    PrestaShopSettings,
    ShopifySettings,
    WooCommerceSettings,
)
from sfd.connectors.shop import DEFAULT_RETRY, Retry

if TYPE_CHECKING:
    from sfd.connectors.base import MarketplaceConnector
    from sfd.connectors.shop import ShopConnector
    from sfd.domain.carriers import MarketplaceCarrier

_F = TypeVar("_F")


class ConnectorUnavailable(Exception):
    """This sfd has no implementation of the connector yet."""


@dataclass(frozen=True)
class Entry(Generic[_F]):
    """One connector: its settings class, and how to open it for a channel or shop name."""

    settings: type[ConnectorSettings]
    open: _F
    carriers: Callable[[], Sequence[MarketplaceCarrier]] | None = None
    """The marketplace's carrier codes where they are known offline (documented lists)."""


#: Opens a marketplace connector: (channel name, settings).
MarketplaceFactory = Callable[[str, ConnectorSettings], "MarketplaceConnector"]
#: Opens a shop connector: (shop name, settings, how its calls are retried).
ShopFactory = Callable[[str, ConnectorSettings, Retry], "ShopConnector"]


def _mirakl(name: str, settings: ConnectorSettings) -> MarketplaceConnector:
    from sfd.connectors.mirakl import MiraklConnector

    assert isinstance(settings, MiraklSettings)
    return MiraklConnector(
        settings,
        name=name,
        refund_reason_code=settings.refund_reason_code,
        timeout=settings.timeout,
    )


def _amazon(name: str, settings: ConnectorSettings) -> MarketplaceConnector:
    from sfd.connectors.amazon import AmazonConnector

    assert isinstance(settings, AmazonSettings)
    return AmazonConnector(settings, name=name, timeout=settings.timeout)


def _ebay(name: str, settings: ConnectorSettings) -> MarketplaceConnector:
    from sfd.connectors.ebay import EbayConnector

    assert isinstance(settings, EbaySettings)
    return EbayConnector(settings, name=name, timeout=settings.timeout)


def _amazon_carriers() -> Sequence[MarketplaceCarrier]:
    from sfd.connectors.amazon import CARRIERS

    return CARRIERS


def _ebay_carriers() -> Sequence[MarketplaceCarrier]:
    from sfd.connectors.ebay import CARRIERS

    return CARRIERS


def _woocommerce(name: str, settings: ConnectorSettings, retry: Retry) -> ShopConnector:
    from sfd.connectors.woocommerce import WooCommerceConnector

    assert isinstance(settings, WooCommerceSettings)
    return WooCommerceConnector(settings, name=name, retry=retry)


def _prestashop(name: str, settings: ConnectorSettings, retry: Retry) -> ShopConnector:
    from sfd.connectors.prestashop import PrestaShopConnector

    assert isinstance(settings, PrestaShopSettings)
    return PrestaShopConnector(settings, name=name, retry=retry)


def _shopify(name: str, settings: ConnectorSettings, retry: Retry) -> ShopConnector:
    from sfd.connectors.shopify import ShopifyConnector

    assert isinstance(settings, ShopifySettings)
    return ShopifyConnector(settings, name=name, retry=retry)


#: Marketplace connectors by the name a channel's `connector` key gives.
MARKETPLACES: Mapping[str, Entry[MarketplaceFactory]] = MappingProxyType(
    {
        "mirakl": Entry(MiraklSettings, _mirakl),
        "amazon": Entry(AmazonSettings, _amazon, _amazon_carriers),
        "ebay": Entry(EbaySettings, _ebay, _ebay_carriers),
    }
)

#: Shop connectors by the name a shop's `connector` key gives.
SHOPS: Mapping[str, Entry[ShopFactory]] = MappingProxyType(
    {
        "woocommerce": Entry(WooCommerceSettings, _woocommerce),
        "prestashop": Entry(PrestaShopSettings, _prestashop),
        "shopify": Entry(ShopifySettings, _shopify),
    }
)

#: The settings classes alone, as config validation reads them.
MARKETPLACE_SETTINGS: Mapping[str, type[ConnectorSettings]] = MappingProxyType(
    {name: entry.settings for name, entry in MARKETPLACES.items()}
)
SHOP_SETTINGS: Mapping[str, type[ConnectorSettings]] = MappingProxyType(
    {name: entry.settings for name, entry in SHOPS.items()}
)


def offline_carriers(connector: str) -> Sequence[MarketplaceCarrier] | None:
    """A marketplace connector's carrier codes known without a call (Amazon, eBay); None for
    one whose list is read from the marketplace (Mirakl's SH21) or not known at all."""
    entry = MARKETPLACES.get(connector)
    return entry.carriers() if entry is not None and entry.carriers is not None else None


def _entry(entries: Mapping[str, Entry[_F]], connector: str, settings: Any) -> _F:
    entry = entries.get(connector)
    if entry is None or not isinstance(settings, entry.settings):
        raise ConnectorUnavailable(connector)
    return entry.open


def open_marketplace(
    channel: str, connector: str, settings: ConnectorSettings
) -> MarketplaceConnector:
    """A connector for one channel; raise ConnectorUnavailable for one not built yet."""
    try:
        factory = _entry(MARKETPLACES, connector, settings)
    except ConnectorUnavailable:
        raise ConnectorUnavailable(
            f"connector {connector!r} is accepted in the config but not implemented in sfd "
            "yet; this channel is not polled"
        ) from None
    return factory(channel, settings)


def open_shop(
    shop: str, connector: str, settings: ConnectorSettings, *, retry: Retry = DEFAULT_RETRY
) -> ShopConnector:
    """A connector for one push-mode shop, its calls retried per `retry`; raise
    ConnectorUnavailable for one not built yet."""
    try:
        factory = _entry(SHOPS, connector, settings)
    except ConnectorUnavailable:
        raise ConnectorUnavailable(
            f"shop connector {connector!r} is accepted in the config but not implemented in "
            "sfd yet; this shop is not synced"
        ) from None
    return factory(shop, settings, retry)
