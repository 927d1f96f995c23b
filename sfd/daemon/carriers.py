"""A channel's carriers as `sfd channels carriers` and the order page show them: the
marketplace's list, and the mapping in force with where each entry comes from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sfd.config import ChannelConfig
from sfd.connectors.base import CarrierCatalogue, ConnectorError
from sfd.domain.carriers import MappingRow, MarketplaceCarrier, mapping_in_force

#: Channel name → its carriers view, or None for a channel the store does not have.
CarrierViews = Callable[[str], Awaitable["CarrierView | None"]]


@dataclass(frozen=True)
class CarrierView:
    """One channel's carriers."""

    channel: str
    connector: str
    listed: list[MarketplaceCarrier] | None
    """The codes the marketplace takes; None when they could not be read (`unavailable`)."""
    unavailable: str
    mapping: list[MappingRow]
    """The channel's table (source config), then each common carrier (automatic, unmapped)."""


async def carrier_view(channel: ChannelConfig, connector: object | None) -> CarrierView:
    """Read the marketplace's carrier list through `connector` (Mirakl: SH21, cached)."""
    listed: list[MarketplaceCarrier] | None = None
    unavailable = ""
    if isinstance(connector, CarrierCatalogue):
        try:
            listed = await connector.carrier_catalogue()
        except ConnectorError as exc:
            unavailable = f"the carrier list could not be read: {type(exc).__name__}: {exc}"
    elif connector is None:
        unavailable = f"channel {channel.name} has no working connector"
    else:
        unavailable = f"the {channel.connector} connector cannot list its marketplace's carriers"
    return CarrierView(
        channel=channel.name,
        connector=channel.connector,
        listed=listed,
        unavailable=unavailable,
        mapping=mapping_in_force(listed, channel.carriers),
    )
