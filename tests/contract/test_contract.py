"""What every connector must do alike, run against each through its adapter (adapters.py).

Marketplaces (Mirakl, Amazon, eBay) and shops (WooCommerce): the failures every service means
alike, paging, skipping what cannot be read, idempotent repeats, secrets and sessions.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from sfd.connectors.base import AuthFailed, ConnectorError, RateLimited, Transient
from sfd.connectors.http import MAX_RETRY_AFTER
from tests.connectors.conftest import sent
from tests.contract.adapters import Adapter


def answer_listing(http: aioresponses, adapter: Adapter, **answer: Any) -> None:
    """Authenticate, then answer the order listing with `answer`."""
    adapter.auth(http)
    http.add(adapter.list_url, adapter.list_method, **answer)


async def read_failing(adapter: Adapter, connector: Any) -> ConnectorError:
    with pytest.raises(ConnectorError) as caught:
        await adapter.read(connector)
    return caught.value


async def test_429_is_rate_limited_with_its_retry_after(
    http: aioresponses, adapter: Adapter, connector: Any
) -> None:
    answer_listing(http, adapter, status=429, headers={"Retry-After": "12"})

    error = await read_failing(adapter, connector)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 12.0
    assert "429" in str(error)


async def test_a_retry_after_of_days_is_capped(
    http: aioresponses, adapter: Adapter, connector: Any
) -> None:
    answer_listing(http, adapter, status=429, headers={"Retry-After": str(7 * 86400)})

    error = await read_failing(adapter, connector)

    assert isinstance(error, RateLimited)
    assert error.retry_after == MAX_RETRY_AFTER


@pytest.mark.parametrize(("status", "kind"), [(500, Transient), (429, RateLimited)])
async def test_an_error_names_the_request_and_the_answer_status(
    http: aioresponses, adapter: Adapter, connector: Any, status: int, kind: type[ConnectorError]
) -> None:
    answer_listing(http, adapter, status=status, body="no")

    error = await read_failing(adapter, connector)

    assert type(error) is kind
    assert (error.method, error.status) == (adapter.list_method, status)
    assert error.url is not None
    assert adapter.list_url.match(error.url), error.url
    assert adapter.secret not in error.url


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_server_error_is_transient_with_its_status(
    http: aioresponses, adapter: Adapter, connector: Any, status: int
) -> None:
    answer_listing(http, adapter, status=status, body="upstream broke")

    error = await read_failing(adapter, connector)

    assert type(error) is Transient
    assert f"HTTP {status}" in str(error)
    assert "upstream broke" in str(error)


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (TimeoutError(), "no answer within"),
        (aiohttp.ServerDisconnectedError(), "ServerDisconnectedError"),
        (aiohttp.ClientConnectionError("Connection reset by peer"), "reset by peer"),
    ],
    ids=["timeout", "disconnected", "reset"],
)
async def test_no_answer_is_transient(
    http: aioresponses, adapter: Adapter, connector: Any, failure: Exception, said: str
) -> None:
    answer_listing(http, adapter, exception=failure)

    error = await read_failing(adapter, connector)

    assert type(error) is Transient
    assert said in str(error)


async def test_an_html_page_with_200_is_transient(
    http: aioresponses, adapter: Adapter, connector: Any
) -> None:
    answer_listing(http, adapter, status=200, body="<html><body>Maintenance</body></html>")

    error = await read_failing(adapter, connector)

    assert type(error) is Transient
    assert "Maintenance" in str(error) or "unexpected answer" in str(error)


@pytest.mark.parametrize("status", [301, 302, 307])
async def test_a_redirect_is_refused_not_followed(
    http: aioresponses, adapter: Adapter, connector: Any, status: int
) -> None:
    answer_listing(http, adapter, status=status, headers={"Location": "https://elsewhere.test/x"})

    error = await read_failing(adapter, connector)

    assert type(error) is Transient
    assert f"HTTP {status} redirect to elsewhere.test refused" in str(error)
    assert all("elsewhere" not in str(url) for _, url, _ in sent(http))


async def test_a_401_is_auth_failed(http: aioresponses, adapter: Adapter, connector: Any) -> None:
    adapter.auth(http)
    adapter.auth(http)  # a connector with a token renews it once before giving up
    http.add(
        adapter.list_url,
        adapter.list_method,
        status=401,
        body='{"message": "Unauthorized"}',
        repeat=True,
    )

    error = await read_failing(adapter, connector)

    assert isinstance(error, AuthFailed)
    assert (
        len([c for c in sent(http, adapter.list_method) if adapter.list_url.match(str(c[1]))]) <= 2
    )


async def test_a_secret_echoed_in_an_error_is_scrubbed(
    http: aioresponses, adapter: Adapter, connector: Any
) -> None:
    answer_listing(http, adapter, status=500, body=f"bad credential {adapter.secret} given")

    error = await read_failing(adapter, connector)

    assert adapter.secret not in str(error)
    assert "***" in str(error)


async def test_a_malformed_order_is_named_by_its_field(
    http: aioresponses, adapter: Adapter, connector: Any
) -> None:
    adapter.auth(http)
    broken, field = adapter.malformed
    http.add(adapter.list_url, adapter.list_method, **adapter.page([broken], True))
    http.add(adapter.list_url, adapter.list_method, **adapter.page([], True))

    if not adapter.skips_malformed:
        # A shop's page is read whole: it is refused, naming the field, and nothing is lost.
        with pytest.raises(Transient, match=field):
            await adapter.read(connector)
        return
    references, skipped = await adapter.read(connector)

    assert references == []
    [reason] = skipped
    assert reason.startswith(f"{field}: ")


async def test_pages_are_followed_to_the_end(
    http: aioresponses, adapter: Adapter, connector: Any
) -> None:
    adapter.auth(http)
    first = [f"{n}-A" for n in range(adapter.first_page_size)]
    http.add(
        adapter.list_url,
        adapter.list_method,
        **adapter.page([adapter.order(r) for r in first], False),
    )
    http.add(adapter.list_url, adapter.list_method, **adapter.page([adapter.order("900-A")], True))
    http.add(adapter.list_url, adapter.list_method, **adapter.page([], True))

    references, skipped = await adapter.read(connector)

    assert skipped == []
    assert references == [*first, "900-A"]


async def test_an_already_done_write_succeeds(
    http: aioresponses, adapter: Adapter, connector: Any
) -> None:
    adapter.auth(http)
    adapter.already(http)

    result = await adapter.ship(connector)

    assert result is not None  # a receipt, or the shop's id of the order found


async def test_an_opened_session_is_closed_by_aclose(http: aioresponses, adapter: Adapter) -> None:
    connector = adapter.make()
    answer_listing(http, adapter, **adapter.page([], True), repeat=True)
    await adapter.read(connector)
    session = connector._session
    assert session is not None

    await connector.aclose()

    assert session.closed


async def test_a_lent_session_is_used_and_left_open(http: aioresponses, adapter: Adapter) -> None:
    async with aiohttp.ClientSession() as session:
        connector = adapter.make(session)
        adapter.auth(http)
        http.add(adapter.list_url, adapter.list_method, **adapter.page([], True), repeat=True)
        await adapter.read(connector)
        assert connector._session is session
        await connector.aclose()
        assert not session.closed
