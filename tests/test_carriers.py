"""Carrier mapping: the pure matching, the config, Mirakl over real HTTP, the CLI and the page."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from sfd.config import ChannelConfig, ConfigError, parse_config
from sfd.connectors.amazon import AmazonConnector
from sfd.connectors.base import ShipmentRequest
from sfd.connectors.mirakl import MiraklConnector
from sfd.connectors.settings import AmazonSettings, MiraklSettings
from sfd.daemon.carriers import CarrierView, carrier_view
from sfd.daemon.http import build_app
from sfd.daemon.page import OrderPage
from sfd.daemon.ws import LegacyWebservice
from sfd.domain.carriers import (
    CarrierSource,
    MarketplaceCarrier,
    common_carrier,
    mapping_in_force,
    match_carrier,
)
from sfd.sandbox import SandboxMarketplace, run_sandbox
from sfd.sandbox.marketplace import channel_toml
from sfd.storage import Storage
from tests.conftest import NOW
from tests.page.conftest import PageClient
from tests.support import run_cli, write_config

KEY = "sandbox-key"
STORES = '[[stores]]\nid = 1\nname = "one"\n'


# -- the pure matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "carrier"),
    [
        ("Colissimo", "colissimo"),
        ("La Poste - Colissimo", "colissimo"),
        ("colissimo expert", "colissimo"),
        ("  COLISSIMO  ", "colissimo"),
        ("Chronopost Relais", "chronopost"),
        ("mondialrelay", "mondial_relay"),
        ("Mondial-Relay Point Relais", "mondial_relay"),
        ("Relais Colis", "relais_colis"),
        ("Colis Privé", "colis_prive"),
        ("COLIS-PRIVE", "colis_prive"),
        ("DPD Predict", "dpd"),
        ("GLS", "gls"),
        ("UPS Standard", "ups"),
        ("DHL Express", "dhl"),
        ("Fed Ex", "fedex"),
        ("TNT Express", "tnt"),
        ("La Poste", "la_poste"),
        ("Lettre suivie", "la_poste"),
        ("Royal Mail Tracked 24", "royal_mail"),
        ("PostNL", "postnl"),
        ("bpost", "bpost"),
        ("Correos", "correos"),
        ("Poste Italiane", "poste_italiane"),
        ("Deutsche Post", "deutsche_post"),
        ("Transports Martin", None),
        ("Groups", None),
        ("", None),
    ],
)
def test_common_carriers_are_recognised_by_their_usual_spellings(
    name: str, carrier: str | None
) -> None:
    assert common_carrier(name) == carrier


SH21 = [
    MarketplaceCarrier("COLI", "Colissimo"),
    MarketplaceCarrier("MR", "Mondial Relay"),
    MarketplaceCarrier("DHL-ECOM", "DHL eCommerce"),
    MarketplaceCarrier("DHLX", "DHL"),
]


def test_the_config_wins_then_the_marketplaces_own_names_then_common_carriers() -> None:
    table = {" La Poste - Colissimo ": "MR"}

    by_config = match_carrier("la poste - COLISSIMO", SH21, table)
    by_code = match_carrier("coli", SH21, table)
    by_name = match_carrier("Colissimo Expert", SH21, table)
    preferred = match_carrier("DHL Express", SH21)
    unknown = match_carrier(" Transports Martin ", SH21, table)

    assert (by_config.code, by_config.source) == ("MR", CarrierSource.CONFIG)
    assert (by_code.code, by_code.source) == ("COLI", CarrierSource.AUTOMATIC)
    assert (by_name.code, by_name.source) == ("COLI", CarrierSource.AUTOMATIC)
    assert preferred.code == "DHLX", "the carrier's own name wins over its sub-brands"
    assert (unknown.code, unknown.source, unknown.name) == (
        None,
        CarrierSource.UNMAPPED,
        "Transports Martin",
    )


def test_the_mapping_in_force_lists_the_config_then_every_common_carrier() -> None:
    rows = mapping_in_force(SH21, {"Mon relais": "MR", "Vieux": "GONE"})

    assert [(r.name, r.code, r.source, r.listed) for r in rows[:2]] == [
        ("Mon relais", "MR", CarrierSource.CONFIG, True),
        ("Vieux", "GONE", CarrierSource.CONFIG, False),
    ]
    automatic = {r.name: (r.code, r.source) for r in rows[2:]}
    assert automatic["Colissimo"] == ("COLI", CarrierSource.AUTOMATIC)
    assert automatic["DHL"] == ("DHLX", CarrierSource.AUTOMATIC)
    assert automatic["GLS"] == (None, CarrierSource.UNMAPPED)


# -- the config ---------------------------------------------------------------------------------


def _channel(connector: str, carriers: str) -> str:
    settings = {
        "amazon": 'client_id = "c"\nclient_secret = "s"\nrefresh_token = "r"\n'
        'marketplace_ids = ["A13V1IB3VIYZZH"]\n',
        "ebay": 'client_id = "c"\nclient_secret = "s"\nrefresh_token = "r"\n',
        "mirakl": 'base_url = "https://mirakl.test"\napi_key = "k"\n',
    }[connector]
    return (
        f'{STORES}\n[[channels]]\nname = "{connector}-fr"\nstore = 1\nconnector = "{connector}"\n'
        f"[channels.settings]\n{settings}[channels.carriers]\n{carriers}"
    )


def test_a_carrier_table_is_read_with_the_channel() -> None:
    config = parse_config(_channel("amazon", '"La Poste - Colissimo" = "Colissimo"\n'))
    assert config.channels[0].carriers == {"La Poste - Colissimo": "Colissimo"}


@pytest.mark.parametrize(
    ("connector", "carriers", "path", "message"),
    [
        (
            "amazon",
            '"La Poste - Colissimo" = "COLISSIMO"\n',
            'channels[0].carriers."La Poste - Colissimo"',
            "'COLISSIMO' is not one of amazon's carrier codes for channel 'amazon-fr'",
        ),
        (
            "ebay",
            'DPD = "DPD_FR"\n',
            "channels[0].carriers.DPD",
            "'DPD_FR' is not one of ebay's carrier codes for channel 'ebay-fr'",
        ),
        ("ebay", 'DPD = " "\n', "channels[0].carriers.DPD", "must not be empty"),
        (
            "mirakl",
            'dpd = "DPD"\n" DPD" = "DPD"\n',
            'channels[0].carriers." DPD"',
            "same carrier as dpd",
        ),
        ("mirakl", "DPD = 3\n", "channels[0].carriers", "expected a string"),
    ],
)
def test_a_bad_carrier_entry_is_refused_naming_the_channel_and_the_key(
    connector: str, carriers: str, path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_channel(connector, carriers))
    [(where, what)] = caught.value.problems
    assert where.startswith(path)
    assert message in what


def test_mirakl_codes_are_not_checked_offline() -> None:
    config = parse_config(_channel("mirakl", '"Mon relais" = "ANY_OPERATOR_CODE"\n'))
    assert config.channels[0].carriers == {"Mon relais": "ANY_OPERATOR_CODE"}


def test_check_config_refuses_an_amazon_code_amazon_does_not_list(tmp_path: Path) -> None:
    path = tmp_path / "sfd.toml"
    path.write_text(_channel("amazon", 'Coliposte = "Coliposte"\n'), encoding="utf-8")

    done = run_cli(path, "check-config")

    assert done.returncode == 2
    assert "channels[0].carriers.Coliposte: 'Coliposte' is not one of amazon's" in done.stderr


# -- Mirakl over real HTTP ----------------------------------------------------------------------


async def test_a_mapped_carrier_reaches_mirakl_or23_as_the_mapped_code() -> None:
    marketplace = SandboxMarketplace(KEY, seed=3)
    [mapped, automatic, unknown] = marketplace.add_orders(3, waiting_acceptance_ratio=0.0)
    async with run_sandbox(marketplace) as url:
        connector = MiraklConnector(MiraklSettings(base_url=url, api_key=KEY))
        table = {"Point relais du quartier": "MONDIAL_RELAY"}
        try:
            by_config = await connector.ship(
                mapped,
                ShipmentRequest(
                    carrier="point relais du QUARTIER", tracking_number="MR1", carriers=table
                ),
            )
            by_name = await connector.ship(
                automatic, ShipmentRequest(carrier="La Poste - Colissimo", tracking_number="6A1")
            )
            fallback = await connector.ship(
                unknown,
                ShipmentRequest(
                    carrier="Transports Martin",
                    tracking_number="TM1",
                    tracking_link="https://martin.test/t/TM1",
                    carriers=table,
                ),
            )
        finally:
            await connector.aclose()

    [or23] = marketplace.calls_to("OR23", mapped)
    assert or23.body == {"carrier_code": "MONDIAL_RELAY", "tracking_number": "MR1"}
    assert by_config.carrier_match is not None
    assert (by_config.carrier, by_config.carrier_match.source) == ("MONDIAL_RELAY", "config")
    [or23] = marketplace.calls_to("OR23", automatic)
    assert or23.body == {"carrier_code": "COLISSIMO", "tracking_number": "6A1"}
    assert by_name.carrier_match is not None and by_name.carrier_match.source == "automatic"
    # Mirakl's fallback: the carrier's name and tracking URL, without a code.
    [or23] = marketplace.calls_to("OR23", unknown)
    assert or23.body == {
        "carrier_name": "Transports Martin",
        "carrier_url": "https://martin.test/t/TM1",
        "tracking_number": "TM1",
    }
    assert fallback.carrier_match is not None and fallback.carrier_match.source == "unmapped"
    assert len(marketplace.calls_to("SH21")) == 1, "the operator's list is read once, cached"


# -- the CLI ------------------------------------------------------------------------------------


async def test_channels_carriers_prints_the_list_and_the_mapping_in_force(
    tmp_path: Path,
) -> None:
    marketplace = SandboxMarketplace(KEY, seed=4)
    async with run_sandbox(marketplace) as url:
        body = channel_toml(url, KEY, name="decathlon") + (
            '[channels.carriers]\n"La Poste - Colissimo" = "COLISSIMO"\n'
        )
        config = write_config(tmp_path, body)
        as_json = await asyncio.to_thread(
            run_cli, config, "channels", "carriers", "decathlon", "--json"
        )
        as_table = await asyncio.to_thread(run_cli, config, "channels", "carriers", "decathlon")
        missing = await asyncio.to_thread(run_cli, config, "channels", "carriers", "nope")

    assert as_json.returncode == 0, as_json.stderr
    view = json.loads(as_json.stdout)
    assert [c["code"] for c in view["listed"]] == [c["code"] for c in marketplace.carriers]
    rows = {r["name"]: (r["code"], r["source"], r["listed"]) for r in view["mapping"]}
    assert rows["La Poste - Colissimo"] == ("COLISSIMO", "config", True)
    assert rows["Mondial Relay"] == ("MONDIAL_RELAY", "automatic", True)
    assert rows["Correos"] == (None, "unmapped", False)
    assert as_table.returncode == 0, as_table.stderr
    assert "La Poste - Colissimo" in as_table.stdout and "config" in as_table.stdout
    assert "MONDIAL_RELAY" in as_table.stdout and "automatic" in as_table.stdout
    assert missing.returncode == 1 and "no channel named 'nope'" in missing.stderr


# -- the order page -----------------------------------------------------------------------------


async def test_the_channels_view_shows_each_channels_carrier_mapping(storage: Storage) -> None:
    channel = ChannelConfig(
        name="decathlon", store=1, connector="amazon", carriers={"Mon relais": "Mondial Relay"}
    )
    amazon = AmazonConnector(
        AmazonSettings(
            client_id="c", client_secret="s", refresh_token="r", marketplace_ids=["A13V1IB3VIYZZH"]
        )
    )

    async def views(name: str) -> CarrierView | None:
        return await carrier_view(channel, amazon) if name == channel.name else None

    _, token = await storage.tokens.create(1, "one", NOW)
    page = OrderPage(storage, lambda: NOW, carriers=views)
    app = build_app(lambda: (True, {}), legacy=LegacyWebservice(storage, lambda: NOW), page=page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = PageClient(str(server.make_url("")).rstrip("/"))
    try:
        await client.sign_in(token)
        status, text = await client.get("/channels")
    finally:
        await client.close()
        await server.close()
        await amazon.aclose()

    assert status == 200
    assert '<tr data-source="config"><td>Mon relais</td><td><code>Mondial Relay</code>' in text
    assert '<tr data-source="automatic"><td>Colis Privé</td><td><code>Colis Prive</code>' in text
    assert "amazon takes" in text and "<code>Other</code>" in text
