"""The `sfd` command line, run as a real process, also while the daemon runs."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sfd.domain.clock import utcnow
from sfd.sandbox.marketplace import channel_toml
from sfd.storage import Storage
from tests.factories import make_order
from tests.support import SfdProcess, run_cli, write_config

CHANNELS = channel_toml(
    "http://127.0.0.1:9", "env:DECA_KEY", name="decathlon", require_tracking=True
)
#: The same channel with the default settings: a shipment needs no carrier nor tracking.
DEFAULT_CHANNELS = channel_toml("http://127.0.0.1:9", "env:DECA_KEY", name="decathlon")
ENV = {"DECA_KEY": "deca-secret-7781"}


async def seed(config: Path, tmp_path: Path) -> None:
    """Orders written through the storage layer, as an import would."""
    run_cli(config, "db", "migrate", env=ENV)
    storage = await Storage.open(tmp_path / "sfd.db")
    now = utcnow()
    cid = (await storage.channels.channel_ids())["decathlon"]
    await storage.orders.import_page(
        cid,
        1,
        [
            make_order("DEC-LATE", updated_at=now, ship_by=now - timedelta(hours=2)),
            make_order("DEC-OK", updated_at=now, ship_by=now + timedelta(days=2)),
        ],
        now,
    )
    await storage.close()


def test_token_create_prints_only_the_token(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli(config, "token", "create", "--store", "1", "--name", "prestashop")
    assert result.returncode == 0, result.stderr
    token = result.stdout
    assert token.startswith("sfd_") and token.endswith("\n") and token.count("\n") == 1
    listed = run_cli(config, "token", "list")
    assert "prestashop" in listed.stdout
    assert token.strip() not in listed.stdout + listed.stderr


def test_token_revoke_and_its_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run_cli(config, "token", "create", "--store", "2", "--name", "old")
    revoked = run_cli(config, "token", "revoke", "old")
    assert revoked.returncode == 0
    assert revoked.stderr == "sfd: token 'old' revoked\n"
    again = run_cli(config, "token", "revoke", "old")
    assert (again.returncode, again.stderr) == (1, "sfd: no active token named 'old'\n")
    unknown_store = run_cli(config, "token", "create", "--store", "5")
    assert unknown_store.returncode == 1
    assert unknown_store.stderr.startswith("sfd: no store with id 5")
    assert json.loads(run_cli(config, "token", "list", "--json").stdout) == []


async def test_orders_list_and_show(tmp_path: Path) -> None:
    config = write_config(tmp_path, CHANNELS)
    await seed(config, tmp_path)
    listed = json.loads(run_cli(config, "orders", "list", "--json", env=ENV).stdout)
    assert [o["reference"] for o in listed] == ["DEC-LATE", "DEC-OK"]
    assert listed[0]["total_amount"] == 69.87  # 20.99 + 2 x 21.99 + 4.90 shipping
    late = json.loads(run_cli(config, "orders", "list", "--late", "--json", env=ENV).stdout)
    assert [o["reference"] for o in late] == ["DEC-LATE"]
    table = run_cli(config, "orders", "list", "--unacknowledged", "--channel", "decathlon", env=ENV)
    assert "DEC-OK" in table.stdout and "waiting_shipment" in table.stdout
    shown = json.loads(
        run_cli(config, "orders", "show", str(listed[0]["id"]), "--json", env=ENV).stdout
    )
    assert [(e["source"], e["kind"]) for e in shown["events"]] == [("marketplace", "imported")]
    assert shown["shipping_address"]["city"] == "Lyon"
    text = run_cli(config, "orders", "show", str(listed[0]["id"]), env=ENV).stdout
    assert "imported" in text and "SKU-0001" in text
    missing = run_cli(config, "orders", "show", "999", env=ENV)
    assert (missing.returncode, missing.stderr) == (1, "sfd: no order with id 999\n")
    bad = run_cli(config, "orders", "list", "--status", "lost", env=ENV)
    assert bad.returncode == 2 and "invalid choice: 'lost'" in bad.stderr


async def test_commands_work_while_the_daemon_runs(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    config = write_config(tmp_path, CHANNELS)
    await seed(config, tmp_path)
    sfd = sfd_processes(config, tmp_path, env=ENV)
    sfd.wait_ready()
    created = run_cli(config, "token", "create", "--store", "1", env=ENV)
    assert created.returncode == 0
    channels = json.loads(run_cli(config, "channels", "--json", env=ENV).stdout)
    assert [(c["name"], c["connector"], c["orders"]) for c in channels] == [
        ("decathlon", "mirakl", 2)
    ]
    table = run_cli(config, "channels", env=ENV).stdout
    assert "decathlon" in table and "mirakl" in table
    orders = json.loads(run_cli(config, "orders", "list", "--json", env=ENV).stdout)
    assert len(orders) == 2
    assert sfd.terminate() == 0


async def test_channels_poll_asks_the_running_daemon_to_poll_now(
    tmp_path: Path, sfd_processes: Callable[..., SfdProcess]
) -> None:
    import asyncio

    from sfd.sandbox.marketplace import SandboxMarketplace, run_sandbox

    marketplace = SandboxMarketplace("poll-key", seed=5)
    async with run_sandbox(marketplace) as base_url:
        config = write_config(tmp_path, CHANNELS.replace("http://127.0.0.1:9", base_url))
        env = {"DECA_KEY": "poll-key"}
        not_running = await asyncio.to_thread(
            run_cli, config, "channels", "poll", "decathlon", env=env
        )
        assert not_running.returncode == 1
        assert "no running sfd" in not_running.stderr
        sfd = sfd_processes(config, tmp_path, env=env)
        await asyncio.to_thread(sfd.wait_ready)
        for _ in range(200):  # the poll at start-up finds nothing yet
            if any(e["event"] == "poll_done" for e in sfd.log_events()):
                break
            await asyncio.sleep(0.05)
        marketplace.add_orders(7, waiting_acceptance_ratio=0.0)
        polled = await asyncio.to_thread(run_cli, config, "channels", "poll", "decathlon", env=env)
        assert polled.returncode == 0, polled.stderr
        assert polled.stderr == "sfd: channel 'decathlon' is polling now\n"
        unknown = await asyncio.to_thread(run_cli, config, "channels", "poll", "nope", env=env)
        assert (unknown.returncode, unknown.stderr) == (1, "sfd: no channel named 'nope'\n")
        for _ in range(200):
            listed = await asyncio.to_thread(run_cli, config, "orders", "list", "--json", env=env)
            if len(json.loads(listed.stdout)) == 7:
                break
            await asyncio.sleep(0.1)
        assert len(json.loads(listed.stdout)) == 7
        assert await asyncio.to_thread(sfd.terminate) == 0
    assert not (tmp_path / "sfd.db.sock").exists()


async def test_orders_ship_needs_no_carrier_and_show_lists_every_tracking_number(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, DEFAULT_CHANNELS)
    await seed(config, tmp_path)
    orders = json.loads(run_cli(config, "orders", "list", "--json", env=ENV).stdout)
    order = next(o for o in orders if o["reference"] == "DEC-OK")
    bare = run_cli(config, "orders", "ship", str(order["id"]), env=ENV)
    assert bare.returncode == 0, bare.stderr
    assert bare.stderr.endswith(" is scheduled\n")
    shown = json.loads(
        run_cli(config, "orders", "show", str(order["id"]), "--json", env=ENV).stdout
    )
    [operation] = shown["operations"]
    assert (operation["kind"], operation["state"], operation["payload"]) == (
        "ship",
        "scheduled",
        {},
    )
    late = next(o for o in orders if o["reference"] == "DEC-LATE")
    several = run_cli(
        config,
        "orders",
        "ship",
        str(late["id"]),
        "--carrier",
        "Colissimo",
        "--tracking-number",
        "6A1,6A2 6A3",
        env=ENV,
    )
    assert several.returncode == 0, several.stderr
    # Delivered as the worker would: the order keeps the field as given, shows every number.
    storage = await Storage.open(tmp_path / "sfd.db")
    now = utcnow()
    for claim in await storage.queue.claim(now, timedelta(minutes=1), 10):
        await storage.queue.delivered(claim, now, now + timedelta(minutes=1))
    await storage.close()
    text = run_cli(config, "orders", "show", str(late["id"]), env=ENV).stdout
    assert "6A1, 6A2, 6A3" in text and "Colissimo" in text
    shown = json.loads(run_cli(config, "orders", "show", str(late["id"]), "--json", env=ENV).stdout)
    assert shown["tracking_number"] == "6A1,6A2 6A3"


async def test_orders_ship_accept_and_cancel_follow_the_api_rules(tmp_path: Path) -> None:
    config = write_config(tmp_path, CHANNELS)
    await seed(config, tmp_path)
    orders = json.loads(run_cli(config, "orders", "list", "--json", env=ENV).stdout)
    order = next(o for o in orders if o["reference"] == "DEC-OK")
    no_tracking = run_cli(config, "orders", "ship", str(order["id"]), "--carrier", "DPD", env=ENV)
    assert no_tracking.returncode == 1
    assert no_tracking.stderr == (
        "sfd: ship of order DEC-OK refused: channel decathlon requires a tracking number\n"
    )
    shipped = run_cli(
        config,
        "orders",
        "ship",
        str(order["id"]),
        "--carrier",
        "DPD",
        "--tracking-number",
        "250123456",
        "--tracking-url",
        "https://trace.dpd.fr/fr/trace/250123456",
        env=ENV,
    )
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stderr.startswith("sfd: ship of order DEC-OK: ticket ")
    assert shipped.stderr.endswith(" is scheduled\n")
    bad_item = run_cli(
        config, "orders", "ship", str(order["id"]), "--carrier", "DPD", "--item", "x:1", env=ENV
    )
    assert (bad_item.returncode, bad_item.stderr) == (
        1,
        "sfd: --item 'x:1': expected ITEM_ID:QUANTITY, e.g. 4401:2\n",
    )
    accept = run_cli(config, "orders", "accept", str(order["id"]), env=ENV)
    assert accept.returncode == 1
    assert "accept needs waiting_store_acceptance" in accept.stderr
    shown = json.loads(
        run_cli(config, "orders", "show", str(order["id"]), "--json", env=ENV).stdout
    )
    assert [(o["kind"], o["state"], o["source"]) for o in shown["operations"]] == [
        ("ship", "failed", "cli"),
        ("ship", "scheduled", "cli"),
        ("accept", "failed", "cli"),
    ]
    assert [e["kind"] for e in shown["events"]][1:] == [
        "ship_refused",
        "ship_requested",
        "accept_refused",
    ]
    # Who: the system user that ran the command.
    assert {e["actor"] for e in shown["events"][1:]} == {getpass.getuser()}
    listed = json.loads(
        run_cli(config, "operations", "list", "--state", "scheduled", "--json", env=ENV).stdout
    )
    assert [(o["kind"], o["order_reference"]) for o in listed] == [("ship", "DEC-OK")]


async def test_operations_retry_makes_a_failed_operation_due_again(tmp_path: Path) -> None:
    config = write_config(tmp_path, CHANNELS)
    await seed(config, tmp_path)
    storage = await Storage.open(tmp_path / "sfd.db")
    [row] = await storage.db.fetch("SELECT id FROM orders WHERE reference = 'DEC-OK'")
    await storage.close()
    run_cli(config, "orders", "cancel", str(row["id"]), env=ENV)
    storage = await Storage.open(tmp_path / "sfd.db")
    async with storage.db.write() as tx:
        await tx.execute("UPDATE operations SET state = 'failed', last_error = 'Mirakl: 400'")
    [op] = await storage.db.fetch("SELECT id FROM operations")
    refused = run_cli(config, "operations", "retry", str(op["id"]), env=ENV)
    assert refused.returncode == 1, "never sent: the rules refused it, a retry would too"
    assert "was refused by the rules (Mirakl: 400), not by the marketplace" in refused.stderr
    async with storage.db.write() as tx:
        await tx.execute("UPDATE operations SET attempts = 2")
    await storage.close()
    retried = run_cli(config, "operations", "retry", str(op["id"]), env=ENV)
    assert retried.returncode == 0, retried.stderr
    assert retried.stderr == (f"sfd: operation {op['id']} (cancel of order DEC-OK) is due again\n")
    again = run_cli(config, "operations", "retry", str(op["id"]), env=ENV)
    assert again.returncode == 1
    assert again.stderr == (
        f"sfd: operation {op['id']} is scheduled; only a failed operation can be retried\n"
    )
    shown = json.loads(run_cli(config, "orders", "show", str(row["id"]), "--json", env=ENV).stdout)
    assert shown["events"][-1]["kind"] == "cancel_retried"
    assert shown["events"][-1]["source"] == "cli"
