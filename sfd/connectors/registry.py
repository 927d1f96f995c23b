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
    WooCommerceSettings,
)

if TYPE_CHECKING:
    from sfd.connectors.base import MarketplaceConnector
    from sfd.connectors.shop import ShopConnector
    from sfd.domain.carriers import MarketplaceCarrier

_C = TypeVar("_C")


class ConnectorUnavailable(Exception):
    """This sfd has no implementation of the connector yet."""


@dataclass(frozen=True)
class Entry(Generic[_C]):
    """One connector: its settings class, and how to open it for a channel or shop name."""

    settings: type[ConnectorSettings]
    open: Callable[[str, ConnectorSettings], _C]
    carriers: Callable[[], Sequence[MarketplaceCarrier]] | None = None
    """The marketplace's carrier codes where they are known offline (documented lists)."""


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


def _woocommerce(name: str, settings: ConnectorSettings) -> ShopConnector:
    from sfd.connectors.woocommerce import WooCommerceConnector

    assert isinstance(settings, WooCommerceSettings)
    return WooCommerceConnector(settings, name=name)


#: Marketplace connectors by the name a channel's `connector` key gives.
MARKETPLACES: Mapping[str, Entry[MarketplaceConnector]] = MappingProxyType(
    {
        "mirakl": Entry(MiraklSettings, _mirakl),
        "amazon": Entry(AmazonSettings, _amazon, _amazon_carriers),
        "ebay": Entry(EbaySettings, _ebay, _ebay_carriers),
    }
)

#: Shop connectors by the name a shop's `connector` key gives.
SHOPS: Mapping[str, Entry[ShopConnector]] = MappingProxyType(
    {"woocommerce": Entry(WooCommerceSettings, _woocommerce)}
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


def _open(entries: Mapping[str, Entry[_C]], name: str, connector: str, settings: Any) -> _C:
    entry = entries.get(connector)
    if entry is None or not isinstance(settings, entry.settings):
        raise ConnectorUnavailable(connector)
    return entry.open(name, settings)


def open_marketplace(
    channel: str, connector: str, settings: ConnectorSettings
) -> MarketplaceConnector:
    """A connector for one channel; raise ConnectorUnavailable for one not built yet."""
    try:
        return _open(MARKETPLACES, channel, connector, settings)
    except ConnectorUnavailable:
        raise ConnectorUnavailable(
            f"connector {connector!r} is accepted in the config but not implemented in sfd "
            "yet; this channel is not polled"
        ) from None


def open_shop(shop: str, connector: str, settings: ConnectorSettings) -> ShopConnector:
    """A connector for one push-mode shop; raise ConnectorUnavailable for one not built yet."""
    try:
        return _open(SHOPS, shop, connector, settings)
    except ConnectorUnavailable:
        raise ConnectorUnavailable(
            f"shop connector {connector!r} is accepted in the config but not implemented in "
            "sfd yet; this shop is not synced"
        ) from None
