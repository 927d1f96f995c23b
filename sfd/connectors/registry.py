"""Builds a channel's connector from its typed settings."""

from __future__ import annotations

from sfd.connectors.base import MarketplaceConnector
from sfd.connectors.settings import (
    AmazonSettings,
    ConnectorSettings,
    EbaySettings,
    MiraklSettings,
    WooCommerceSettings,
)
from sfd.connectors.shop import ShopConnector


class ConnectorUnavailable(Exception):
    """This sfd has no implementation of the connector yet."""


def open_marketplace(
    channel: str, connector: str, settings: ConnectorSettings
) -> MarketplaceConnector:
    """A connector for one channel; raise ConnectorUnavailable for one not built yet."""
    if connector == "mirakl" and isinstance(settings, MiraklSettings):
        from sfd.connectors.mirakl import MiraklConnector

        return MiraklConnector(
            settings,
            name=channel,
            refund_reason_code=settings.refund_reason_code,
            timeout=settings.timeout,
        )
    if connector == "amazon" and isinstance(settings, AmazonSettings):
        from sfd.connectors.amazon import AmazonConnector

        return AmazonConnector(settings, name=channel, timeout=settings.timeout)
    if connector == "ebay" and isinstance(settings, EbaySettings):
        from sfd.connectors.ebay import EbayConnector

        return EbayConnector(settings, name=channel, timeout=settings.timeout)
    raise ConnectorUnavailable(
        f"connector {connector!r} is accepted in the config but not implemented in sfd "
        "yet; this channel is not polled"
    )


def open_shop(shop: str, connector: str, settings: ConnectorSettings) -> ShopConnector:
    """A connector for one push-mode shop; raise ConnectorUnavailable for one not built yet."""
    if connector == "woocommerce" and isinstance(settings, WooCommerceSettings):
        from sfd.connectors.woocommerce import WooCommerceConnector

        return WooCommerceConnector(settings, name=shop)
    raise ConnectorUnavailable(
        f"shop connector {connector!r} is accepted in the config but not implemented in sfd "
        "yet; this shop is not synced"
    )
