"""Token guessing and id guessing: refused alike, logged once per source, and another store's
orders are "not found" from every door (v1, /ws, the command line with a store's token)."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfd.config import load_config
from sfd.daemon.api import TokenRefusals
from sfd.daemon.cli import main
from sfd.daemon.runtime import sync_config
from sfd.domain.tokens import TOKEN_PREFIX
from sfd.logs import configure_logging
from sfd.sandbox.marketplace import channel_toml
from sfd.storage import Storage
from sfd.storage import tokens as token_module
from tests.conftest import NOW
from tests.factories import make_order
from tests.faults.conftest import Served
from tests.faults.reliability import record
from tests.support import write_config

GROUP = "hostile input"
TEST = "tests/faults/test_hostile_tokens.py"


def wrong_tokens(n: int, real: str) -> list[str]:
    """Guesses of every kind: well-formed random ones, one character off the real token,
    truncated, padded, malformed and empty-ish."""
    out: list[str] = []
    for i in range(n):
        match i % 5:
            case 0:
                out.append(TOKEN_PREFIX + secrets.token_urlsafe(32))
            case 1:
                flip = "A" if real[-1 - i % 40] != "A" else "B"
                pos = len(real) - 1 - i % 40
                out.append(real[:pos] + flip + real[pos + 1 :])
            case 2:
                out.append(real[: 5 + i % 40])
            case 3:
                out.append(real + "x")
            case _:
                out.append(f"sfd_{'é' * (i % 7 + 1)}' OR '1'='1")
    return out


async def test_a_thousand_wrong_tokens_are_refused_and_logged_once_per_source(
    served: Served,
) -> None:
    before = await served.snapshot()
    guesses = wrong_tokens(1000, served.token)
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as http:
        for n, guess in enumerate(guesses):
            if n % 10 == 9:  # the legacy webservice too: one count per client, whatever door
                form = {"TOKEN": guess, "CALL": "GetOrders", "MODE": "Production"}
                async with http.post(served.base_url + "/ws", data=form) as response:
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    assert "<Order>" not in await response.text()
                continue
            headers = {"Authorization": f"Bearer {guess}"}
            async with http.get(f"{served.base_url}/v1/store/1/order", headers=headers) as r:
                statuses[r.status] = statuses.get(r.status, 0) + 1
        # The real token still works, from the same source.
        headers = {"Authorization": f"Bearer {served.token}"}
        async with http.get(f"{served.base_url}/v1/store/1/order", headers=headers) as r:
            assert r.status == 200
    assert statuses == {401: 1000}
    [warning] = served.events("token_refused")
    assert warning["level"] == "warning"
    assert warning["source"] == "127.0.0.1"
    assert warning["count"] == 1
    assert served.api.refusals.count("127.0.0.1") == 1000
    assert served.token not in served.logs.getvalue()
    for guess in guesses[:50]:
        assert guess not in served.logs.getvalue() or len(guess) < 12
    assert await served.snapshot() == before
    record(GROUP, "1,000 wrong tokens in a row", tries=1000, lost=0, duplicated=0, test=TEST)


def test_refusals_warn_again_after_the_window_with_the_count_and_forget_old_sources() -> None:
    logs = io.StringIO()
    configure_logging("json", "info", stream=logs)
    now = [0.0]
    refusals = TokenRefusals(window=60, max_sources=3, clock=lambda: now[0])

    for _ in range(5):
        refusals.refused("10.0.0.1", "v1")
    now[0] = 61.0
    refusals.refused("10.0.0.1", "ws")
    warnings = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert [(w["source"], w["count"], w["since_last_warning"], w["where"]) for w in warnings] == [
        ("10.0.0.1", 1, 1, "v1"),
        ("10.0.0.1", 6, 5, "ws"),
    ]
    assert refusals.count("10.0.0.1") == 6
    for source in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        refusals.refused(source, "auth")
    assert refusals.count("10.0.0.1") == 0, "the least recent source is forgotten first"
    assert refusals.count("10.0.0.4") == 1


async def test_verification_does_the_same_work_for_every_wrong_token(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One hash, one lookup by digest and one constant-time comparison, whatever the token:
    nothing about a guess (its form, its closeness to a real token) changes the work done."""
    _, real = await storage.tokens.create(1, "real", NOW)
    _, revoked = await storage.tokens.create(1, "gone", NOW)
    await storage.tokens.revoke("gone", NOW)
    work: list[str] = []

    def counting_hash(token: str) -> str:
        work.append("hash")
        return hash_token(token)

    def counting_compare(a: Any, b: Any) -> bool:
        work.append("compare")
        return compare_digest(a, b)

    hash_token = token_module.hash_token
    compare_digest = token_module.hmac.compare_digest
    monkeypatch.setattr(token_module, "hash_token", counting_hash)
    monkeypatch.setattr(token_module.hmac, "compare_digest", counting_compare)
    original_fetch = storage.tokens.db.fetchrow

    async def counting_fetch(sql: str, params: Any = ()) -> Any:
        work.append("lookup")
        return await original_fetch(sql, params)

    monkeypatch.setattr(storage.tokens.db, "fetchrow", counting_fetch)

    cases = {
        "unknown well-formed": TOKEN_PREFIX + secrets.token_urlsafe(32),
        "one character off": real[:-1] + ("A" if real[-1] != "A" else "B"),
        "malformed": "not a token at all",
        "a lone surrogate": "sfd_\ud800",
        "revoked": revoked,
    }
    for name, token in cases.items():
        work.clear()
        assert await storage.tokens.verify(token) is None, name
        assert work == ["hash", "lookup", "compare"], (name, work)
    work.clear()
    assert await storage.tokens.verify(real) is not None
    assert work == ["hash", "lookup", "compare"]


# -- another store's orders, by id guessing -------------------------------------------------


async def test_guessing_ids_never_reaches_another_stores_order_or_ticket(served: Served) -> None:
    """Store 1's token walks every id: store 2's orders look exactly like ids that do not
    exist, on reads, on shipments and on operations."""
    others = {served.ids["EB-1"], served.ids["EB-2"]}
    highest = max(served.ids.values())
    headers = {"Authorization": f"Bearer {served.token}"}
    before = await served.snapshot()
    tries = 0
    async with aiohttp.ClientSession(headers=headers) as http:

        async def get(path: str) -> tuple[int, dict[str, Any]]:
            async with http.get(served.base_url + path) as response:
                return response.status, await response.json()

        for order_id in range(1, highest + 5):
            for path in (
                f"/v1/store/1/order/{order_id}",
                f"/v1/store/1/order/{order_id}/shipment",
                f"/v1/store/2/order/{order_id}",
            ):
                status, body = await get(path)
                tries += 1
                mine = order_id in served.ids.values() and order_id not in others
                if mine and path.startswith("/v1/store/1"):
                    assert status == 200, path
                else:
                    assert status == 404, (path, body)
                    assert "EB-" not in str(body)
                    if path.startswith("/v1/store/1/order/") and path.count("/") == 5:
                        assert body["detail"] == f"no order {order_id} in store 1"
        # Operations on store 2's orders, named by id: a failed ticket, "order not found".
        async with http.post(
            served.base_url + "/v1/store/1/order/ship",
            json={"order": [{"id": i, "carrier": "Colissimo"} for i in sorted(others)]},
        ) as response:
            assert response.status == 202
            batch = (await response.json())["id"]
        status, tickets = await get(f"/v1/store/1/ticket?batchId={batch}")
        results = [t["result"] for t in tickets["_embedded"]["ticket"]]
        assert results == [{"message": "order not found"}] * 2
        orders_before = [r for r in before if r[0] == "orders"]
        after = await served.snapshot()
        assert [r for r in after if r[0] == "orders"] == orders_before, "an order changed"
        # Store 2's tickets, by guessed id, are not found either.
        other_http = {"Authorization": f"Bearer {served.other}"}
        async with http.post(
            served.base_url + "/v1/store/2/order/acknowledge",
            json={"order": [{"id": served.ids["EB-1"]}]},
            headers=other_http,
        ) as response:
            assert response.status == 202
            other_batch = (await response.json())["id"]
        async with http.get(
            f"{served.base_url}/v1/store/2/ticket?batchId={other_batch}", headers=other_http
        ) as response:
            [ticket] = (await response.json())["_embedded"]["ticket"]
        for path in (
            f"/v1/store/1/ticket/{ticket['id']}",
            f"/v1/store/2/ticket/{ticket['id']}",
        ):
            status, _ = await get(path)
            tries += 1
            assert status == 404, path
        status, listed = await get(f"/v1/store/1/ticket?batchId={other_batch}")
        assert (status, listed["total"]) == (200, 0)
    assert served.integrity() == "ok"
    record(GROUP, "cross-store id guessing (v1)", tries=tries, lost=0, duplicated=0, test=TEST)


async def test_the_legacy_webservice_never_touches_another_stores_order(served: Served) -> None:
    async def call(call: str, request: str) -> str:
        form = {"TOKEN": served.token, "CALL": call, "MODE": "Production", "REQUEST": request}
        async with (
            aiohttp.ClientSession() as http,
            http.post(served.base_url + "/ws", data=form) as response,
        ):
            assert response.status == 200
            return await response.text()

    before = await served.snapshot()
    offered = await call("GetOrders", "")
    assert "EB-" not in offered and "DEC-" in offered
    shipped = await call(
        "UpdateOrders",
        "<UpdateOrders><Order><IdOrder>EB-1</IdOrder><Marketplace>ebay-de</Marketplace>"
        "<MerchantIdOrder>1</MerchantIdOrder><Status>Shipped</Status>"
        "<CarrierName>DHL</CarrierName><TrackingNumber>1Z</TrackingNumber></Order>"
        "</UpdateOrders>",
    )
    assert "<StatusUpdated>False</StatusUpdated>" in shipped
    acknowledged = await call(
        "ValidOrders",
        "<ValidOrders><Order><IdOrder>EB-2</IdOrder><Marketplace>ebay-de</Marketplace>"
        "<MerchantIdOrder>7</MerchantIdOrder></Order></ValidOrders>",
    )
    assert "<Imported>False</Imported>" in acknowledged
    assert "<Imported>True</Imported>" not in acknowledged
    after = await served.snapshot()
    assert [r for r in after if r[0] == "orders"] == [r for r in before if r[0] == "orders"]
    record(GROUP, "cross-store access (/ws)", tries=3, lost=0, duplicated=0, test=TEST)


# -- the command line, scoped by a token ------------------------------------------------------


CHANNELS = channel_toml("http://127.0.0.1:9", "env:DECA_KEY", name="decathlon") + channel_toml(
    "http://127.0.0.1:9", "env:DECA_KEY", name="otto", store=2
)
ENV = {"DECA_KEY": "deca-secret-5521"}


async def _seed_two_stores(config: Path) -> tuple[dict[str, int], str]:
    storage = await Storage.open(config.parent / "sfd.db")
    try:
        await sync_config(storage, load_config(config, ENV), NOW)
        channels = await storage.channels.channel_ids()
        ids: dict[str, int] = {}
        for channel, store, reference in (("decathlon", 1, "DEC-9"), ("otto", 2, "OTTO-9")):
            result = await storage.orders.import_page(
                channels[channel], store, [make_order(reference)], NOW
            )
            ids |= {ref: order_id for order_id, ref, _ in result.created}
        _, token = await storage.tokens.create(1, "cli-one", NOW)
    finally:
        await storage.close()
    return ids, token


def test_the_command_line_with_a_stores_token_sees_only_that_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sfd orders ... --token T` (or $SFD_TOKEN): another store's order is "no order with id
    N", word for word what an id that does not exist gets; nothing is written."""
    config = write_config(tmp_path, CHANNELS)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    ids, token = asyncio.run(_seed_two_stores(config))

    def cli(*args: str) -> tuple[int, str, str]:
        status = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return status, out, err

    listed = cli("orders", "list", "--json", "--token", token)
    assert listed[0] == 0 and "DEC-9" in listed[1] and "OTTO-9" not in listed[1]
    other = cli("orders", "show", str(ids["OTTO-9"]), "--token", token)
    assert other == (1, "", f"sfd: no order with id {ids['OTTO-9']}\n")
    assert cli("orders", "show", "999999", "--token", token) == (
        1,
        "",
        "sfd: no order with id 999999\n",
    )
    mine = cli("orders", "show", str(ids["DEC-9"]), "--json", "--token", token)
    assert mine[0] == 0 and '"reference":"DEC-9"' in mine[1]
    wrong_store = cli("orders", "list", "--store", "2", "--token", token)
    assert wrong_store[0] == 2 and "--store 2" in wrong_store[2]
    assert cli("orders", "list", "--token", "sfd_wrong") == (
        1,
        "",
        "sfd: the token is not valid (or was revoked)\n",
    )
    monkeypatch.setenv("SFD_TOKEN", token)
    cancel = cli("orders", "cancel", str(ids["OTTO-9"]))
    assert cancel == (1, "", f"sfd: no order with id {ids['OTTO-9']}\n")
    monkeypatch.delenv("SFD_TOKEN")
    unscoped = cli("orders", "show", str(ids["OTTO-9"]), "--json")
    assert unscoped[0] == 0, "without a token the command line sees every store, as before"
    assert token not in "".join(out + err for _, out, err in (listed, other, mine, cancel))

    async def operations() -> list[Any]:
        storage = await Storage.open(tmp_path / "sfd.db")
        try:
            return list(await storage.operations.for_order(ids["OTTO-9"]))
        finally:
            await storage.close()

    assert asyncio.run(operations()) == []
    record(GROUP, "cross-store access (CLI)", tries=3, lost=0, duplicated=0, test=TEST)
