"""Carrier matching: a shop's carrier name → a marketplace's carrier code (pure, no I/O).

Three steps, in order:
1. the channel's `[channels.carriers]` table (names matched ignoring case and surrounding
   spaces): source `config`;
2. the marketplace's own code or label written as is (ignoring case, accents and punctuation),
   else a common carrier recognised in the name ("La Poste - Colissimo", "mondialrelay", "DHL
   Express"...) and looked up in the marketplace's list: source `automatic`;
3. nothing: the connector sends its marketplace's documented fallback: source `unmapped`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class CarrierSource(StrEnum):
    """Where the code sent for a carrier came from."""

    CONFIG = "config"
    AUTOMATIC = "automatic"
    UNMAPPED = "unmapped"


@dataclass(frozen=True)
class MarketplaceCarrier:
    """One carrier a marketplace lists: the code it takes, and the name it shows."""

    code: str
    label: str = ""
    carrier: str | None = None
    """The common carrier it is (a key of COMMON_CARRIERS), when a connector's table says so;
    otherwise it is recognised from the code and label."""


@dataclass(frozen=True)
class CarrierMatch:
    """What a shop's carrier name becomes for one marketplace."""

    name: str
    """The shop's carrier name, as given (spaces trimmed)."""
    code: str | None
    """The marketplace's code, or None when unmapped (the connector's fallback applies)."""
    source: CarrierSource
    carrier: str | None = None
    """The common carrier recognised in the name, if any."""

    def describe(self) -> str:
        """One line for events and logs: `COLISSIMO (config: "La Poste - Colissimo")`."""
        if self.code is None:
            return f'"{self.name}" (unmapped)'
        return f'{self.code} ({self.source.value}: "{self.name}")'


#: Common carriers by key: (name shown, spellings). A spelling matches as whole words of the
#: normalised name; spellings are written normalised (lower case, no accents, words split).
#: The order matters: a service brand comes before its group ("La Poste - Colissimo" is
#: Colissimo, "Chronopost Relais" is Chronopost), and the first carrier that matches wins.
COMMON_CARRIERS: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "colissimo": ("Colissimo", ("colissimo", "so colissimo", "coliposte")),
    "chronopost": ("Chronopost", ("chronopost", "chrono post", "chrono relais")),
    "mondial_relay": ("Mondial Relay", ("mondial relay", "mondialrelay", "mondial relais")),
    "relais_colis": ("Relais Colis", ("relais colis", "relaiscolis")),
    "colis_prive": ("Colis Privé", ("colis prive", "colisprive")),
    "dpd": ("DPD", ("dpd", "dpd predict", "dpd pickup", "dynamic parcel distribution")),
    "gls": ("GLS", ("gls", "general logistics systems")),
    "ups": ("UPS", ("ups", "united parcel service")),
    "fedex": ("FedEx", ("fedex", "fed ex", "federal express")),
    "tnt": ("TNT", ("tnt", "tnt express")),
    "dhl": ("DHL", ("dhl", "dhl express", "dhl parcel", "dhl paket")),
    "royal_mail": ("Royal Mail", ("royal mail", "royalmail")),
    "postnl": ("PostNL", ("postnl", "post nl")),
    "bpost": ("Bpost", ("bpost", "b post", "belgian post")),
    "correos": ("Correos", ("correos",)),
    "poste_italiane": ("Poste Italiane", ("poste italiane", "posteitaliane")),
    "deutsche_post": ("Deutsche Post", ("deutsche post", "deutschepost")),
    "la_poste": ("La Poste", ("la poste", "laposte", "lettre suivie", "lettre recommandee")),
}

_SEPARATORS: Final = re.compile(r"[^0-9a-z]+")


def normalise(name: str) -> str:
    """Lower case, accents dropped, every run of punctuation or space made one space."""
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SEPARATORS.sub(" ", plain).strip()


def config_key(name: str) -> str:
    """How a `[channels.carriers]` key and a shop's name are compared: case and surrounding
    spaces ignored."""
    return name.strip().casefold()


def common_carrier(name: str) -> str | None:
    """The common carrier (a COMMON_CARRIERS key) a shop's carrier name names, or None."""
    words = f" {normalise(name)} "
    if not words.strip():
        return None
    compact = words.replace(" ", "")
    for key, (_shown, spellings) in COMMON_CARRIERS.items():
        for spelling in spellings:
            if f" {spelling} " in words or spelling.replace(" ", "") == compact:
                return key
    return None


def carrier_of(listed: MarketplaceCarrier) -> str | None:
    """The common carrier a marketplace's entry is: its table's word, else its label or code."""
    if listed.carrier is not None:
        return listed.carrier
    return common_carrier(listed.label) or common_carrier(listed.code)


def config_entries(mapping: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """The channel's table by comparison key: key → (name as written, code)."""
    return {config_key(name): (name.strip(), code.strip()) for name, code in mapping.items()}


def match_carrier(
    name: str,
    listed: Sequence[MarketplaceCarrier],
    mapping: Mapping[str, str] | None = None,
) -> CarrierMatch:
    """What `name` becomes for a marketplace that lists `listed`, the channel's table first."""
    shown = name.strip()
    entry = config_entries(mapping or {}).get(config_key(name))
    if entry is not None:
        return CarrierMatch(shown, entry[1], CarrierSource.CONFIG, common_carrier(name))
    wanted = normalise(name)
    if wanted:
        for known in listed:
            if wanted in (normalise(known.code), normalise(known.label)):
                return CarrierMatch(shown, known.code, CarrierSource.AUTOMATIC, carrier_of(known))
    carrier = common_carrier(name)
    if carrier is not None:
        code = code_for(carrier, listed)
        if code is not None:
            return CarrierMatch(shown, code, CarrierSource.AUTOMATIC, carrier)
    return CarrierMatch(shown, None, CarrierSource.UNMAPPED, carrier)


def code_for(carrier: str, listed: Iterable[MarketplaceCarrier]) -> str | None:
    """The marketplace's code for a common carrier, or None if it lists none.

    Of several entries for one carrier ("DHL", "DHL eCommerce"), the one whose code or label
    is the carrier's own name wins, else the first listed."""
    shown = normalise(COMMON_CARRIERS[carrier][0])
    first: str | None = None
    for known in listed:
        if carrier_of(known) != carrier:
            continue
        if shown in (normalise(known.code), normalise(known.label)):
            return known.code
        first = first or known.code
    return first


@dataclass(frozen=True)
class MappingRow:
    """One line of the mapping in force, as `sfd channels carriers` and the page show it."""

    name: str
    code: str | None
    source: CarrierSource
    listed: bool | None
    """Whether the marketplace lists the code (None: its list is not known)."""


def mapping_in_force(
    listed: Sequence[MarketplaceCarrier] | None, mapping: Mapping[str, str]
) -> list[MappingRow]:
    """The channel's table, then every common carrier the marketplace takes automatically."""
    codes = {known.code for known in listed or ()}
    rows = [
        MappingRow(name, code, CarrierSource.CONFIG, code in codes if listed is not None else None)
        for name, code in config_entries(mapping).values()
    ]
    taken = {config_key(row.name) for row in rows}
    for carrier, (shown, _spellings) in COMMON_CARRIERS.items():
        if config_key(shown) in taken:
            continue
        code = code_for(carrier, listed or ())
        rows.append(
            MappingRow(
                shown,
                code,
                CarrierSource.AUTOMATIC if code is not None else CarrierSource.UNMAPPED,
                None if listed is None else code is not None,
            )
        )
    return rows


def unknown_codes(mapping: Mapping[str, str], listed: Sequence[MarketplaceCarrier]) -> list[str]:
    """The table's keys whose code the marketplace does not list (codes compared exactly)."""
    codes = {known.code for known in listed}
    return [name for name, code in mapping.items() if code.strip() not in codes]
