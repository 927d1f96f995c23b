"""The marketplace misbehaves while the daemon polls it: the daemon keeps running, the other
channel keeps its pace, nothing stored is lost or duplicated, the fault is logged once with the
channel and a precise reason, and the channel recovers by itself when the fault stops."""

from __future__ import annotations

import json
import shutil
import ssl
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import msgspec
import pytest

from sfd.config import ConfigError, parse_config
from sfd.connectors.base import Transient
from sfd.connectors.http import HttpClient
from sfd.connectors.mirakl import PAGE_SIZE
from tests.faults import injector as faults
from tests.faults.harness import (
    INTERVAL,
    TIMEOUT,
    Hub,
    make_certificates,
    running_hub,
    until,
)
from tests.faults.injector import HTML_ERROR, Fault, FaultInjector
from tests.faults.reliability import record

GROUP = "marketplace fault"
OR11 = "/api/orders"


def oversized_page(hub: Hub, count: int = 10_000) -> bytes:
    """A listing of `count` distinct, well-formed orders: OR11 asked for 100."""
    template = hub.flaky.order(next(iter(hub.flaky.orders)))
    template.pop("customer", None)  # about 3 KB an order then, as OR11 lists them
    orders = [{**template, "order_id": f"FLOOD{n:06d}-A"} for n in range(count)]
    return msgspec.json.encode({"orders": orders, "total_count": count})


def server_error(code: int, after: str | None) -> tuple[str, Callable[[Hub], Fault], str]:
    """A 5xx answer to OR11, with Retry-After when `after` is given: a transient failure."""
    label = f"HTTP {code}{' with Retry-After' if after else ''}"
    reason = f"Transient: Mirakl OR11 list orders (offset 0): HTTP {code}: <!DOCTYPE html>"
    return label, lambda hub: faults.status(code, after), reason


#: id, the fault (built from the running hub), what the logged reason must say.
FAULTS: list[tuple[str, Callable[[Hub], Fault], str]] = [
    (
        "slow answer past the client timeout",
        lambda hub: faults.slow(hub.injector, 30),
        f"Transient: Mirakl OR11 list orders (offset 0): no answer within {TIMEOUT:g} s",
    ),
    (
        "connection reset mid-body",
        lambda hub: faults.reset_mid_body,
        "Transient: Mirakl OR11 list orders (offset 0): ClientPayloadError: "
        "Response payload is not completed",
    ),
    (
        "truncated JSON",
        lambda hub: faults.truncated_json,
        "Transient: Mirakl OR11 list orders (offset 0): the answer is not JSON: ",
    ),
    (
        "invalid JSON",
        lambda hub: faults.replace_body(b"{'orders': [], total_count: NaN}"),
        "Transient: Mirakl OR11 list orders (offset 0): the answer is not JSON: "
        "{'orders': [], total_count: NaN}",
    ),
    (
        "valid JSON of the wrong shape (object)",
        lambda hub: faults.replace_body(b'{"data": {"orders": []}, "total_count": 0}'),
        "Transient: Mirakl OR11 list orders (offset 0): unexpected answer "
        "(Object missing required field `orders`)",
    ),
    (
        "valid JSON of the wrong shape (array)",
        lambda hub: faults.replace_body(b'[{"order_id": "SBX0000001-A"}]'),
        "Transient: Mirakl OR11 list orders (offset 0): unexpected answer "
        "(Expected `object`, got `array`)",
    ),
    (
        "200 with an HTML error page",
        lambda hub: faults.replace_body(HTML_ERROR, content_type="text/html"),
        "Transient: Mirakl OR11 list orders (offset 0): the answer is not JSON: <!DOCTYPE html>",
    ),
    # A server error is transient, with or without Retry-After; a 503 with it is a rate limit.
    *[
        server_error(code, after)
        for code, after in ((500, None), (500, "1"), (502, None), (502, "1"), (503, None))
    ],
    (
        "HTTP 503 with Retry-After",
        lambda hub: faults.status(503, "1"),
        "RateLimited: Mirakl OR11 list orders (offset 0): HTTP 503 unavailable, retry after 1 s",
    ),
    (
        "HTTP 429",
        lambda hub: faults.status(429),
        "RateLimited: Mirakl OR11 list orders (offset 0): HTTP 429 rate limited",
    ),
    (
        "HTTP 429 with Retry-After",
        lambda hub: faults.status(429, "1"),
        "RateLimited: Mirakl OR11 list orders (offset 0): HTTP 429 rate limited, retry after 1 s",
    ),
    (
        "10,000 orders where 100 were asked for",
        lambda hub: faults.replace_body(oversized_page(hub)),
        f"Transient: Mirakl OR11 list orders (offset 0): 10000 orders in a page where at most "
        f"{PAGE_SIZE} were asked for; page refused",
    ),
    (
        "redirect to another host",
        lambda hub: faults.redirect("https://elsewhere.invalid/api/orders"),
        "Transient: Mirakl OR11 list orders (offset 0): HTTP 302 redirect to elsewhere.invalid "
        "refused",
    ),
]


async def endure(
    hub: Hub,
    name: str,
    start: Callable[[], None],
    stop: Callable[[], None],
    reason: str,
    *,
    failures: int = 3,
    tries: Callable[[], int] | None = None,
) -> None:
    """Start a fault, watch it hold for `failures` polls of `flaky`, stop it, watch recovery;
    then check every promise and record the figures."""
    flaky, steady = hub.poller("flaky"), hub.poller("steady")
    before = hub.stored("flaky")
    steady_before = hub.stored("steady")
    mark = hub.mark()  # only what the fault caused is judged
    start()
    await until(lambda: flaky.failures >= failures, what=f"{failures} failed polls of flaky")

    # Meanwhile the other channel keeps its pace: it polls, and imports what is new.
    ticks = steady.status.ticks
    fresh = set(hub.steady.add_orders(5, waiting_acceptance_ratio=0.0))
    await until(
        lambda: fresh <= hub.stored("steady").keys() and steady.status.ticks >= ticks + 2,
        what="steady imports its new orders during the fault",
    )
    assert steady.status.condition == "ok"
    assert flaky.failures >= failures, "the fault stopped by itself"
    assert hub.running, "the daemon stopped"
    assert hub.stored("flaky") == before, "an order of the failing channel changed"
    assert hub.integrity() == "ok"

    # Recovery by itself: no restart, no wake-up.
    added = set(hub.flaky.add_orders(7, waiting_acceptance_ratio=0.0))
    stop()
    await until(
        lambda: flaky.status.condition == "ok" and added <= hub.stored("flaky").keys(),
        what="flaky recovers and imports its new orders",
    )
    failed = hub.events("poll_failed", mark, channel="flaky")
    assert len(failed) == 1, [e["reason"] for e in failed]
    assert failed[0]["reason"].startswith(reason), failed[0]["reason"]
    assert failed[0]["level"] == "error" and failed[0]["condition"] == "failing"
    assert len(hub.events("poll_recovered", mark, channel="flaky")) == 1
    assert hub.events("poll_failed", mark, channel="steady") == []
    others = [e for e in hub.levels("error", "critical", since=mark) if e["event"] != "poll_failed"]
    assert others == []

    stored = hub.stored("flaky")
    expected = before.keys() | added
    lost = len(expected - stored.keys()) + len(steady_before.keys() - hub.stored("steady").keys())
    duplicated = hub.duplicates()
    assert {k: stored[k] for k in before} == before, "an order stored before the fault changed"
    assert stored.keys() == expected, "an order is missing, or one came from nowhere"
    assert hub.integrity() == "ok"
    assert hub.running
    record(
        GROUP,
        name,
        tries=tries() if tries else hub.injector.hits,
        lost=lost,
        duplicated=duplicated,
        test="tests/faults/test_marketplace_faults.py",
    )
    assert (lost, duplicated) == (0, 0)


@pytest.mark.parametrize(("name", "make", "reason"), [pytest.param(*f, id=f[0]) for f in FAULTS])
async def test_a_marketplace_fault_is_survived_logged_once_and_recovered_from(
    tmp_path: Path, name: str, make: Callable[[Hub], Fault], reason: str
) -> None:
    # 30 MB take longer than the usual short timeout to cross even the loopback.
    timeout = 10.0 if name.startswith("10,000") else TIMEOUT
    async with running_hub(tmp_path, timeout=timeout) as hub:
        fault = make(hub)
        await endure(
            hub,
            name,
            lambda: hub.injector.inject(fault, path=OR11),
            hub.injector.heal,
            reason,
            failures=2 if "Retry-After" in name else 3,
        )
        assert hub.injector.hits >= 2


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_on_a_429_or_503_sets_the_next_poll(tmp_path: Path, code: int) -> None:
    """The poller waits as long as the marketplace asked, not its own interval."""
    async with running_hub(tmp_path) as hub:
        flaky = hub.poller("flaky")
        hub.injector.inject(faults.status(code, "2"), path=OR11)
        await until(lambda: flaky.failures >= 1)
        assert hub.daemon.storage is not None
        # As stored by the failed poll: its time, and the next poll it scheduled.
        await until(lambda: flaky.status.state == "idle")
        [state] = [c for c in await hub.daemon.storage.channels.states() if c.name == "flaky"]
        assert state.last_error_at is not None and state.next_poll_at is not None
        assert state.next_poll_at - state.last_error_at == timedelta(seconds=2)
        assert INTERVAL < 2
        hub.injector.heal()


def _openssl_or_skip() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no `openssl` command to make test certificates (cryptography not installed)")


@pytest.mark.parametrize(
    ("name", "which", "reason"),
    [
        (
            "TLS: self-signed certificate",
            "self_signed",
            "certificate verify failed: self-signed certificate",
        ),
        (
            "TLS: certificate for another host",
            "wrong_host",
            "certificate verify failed: IP address mismatch",
        ),
    ],
)
async def test_a_certificate_error_is_survived_logged_once_and_recovered_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, which: str, reason: str
) -> None:
    """The marketplace presents a certificate the client must not trust; then a good one.

    The test CA stands for the system's trust store: aiohttp's verifying context is swapped
    for one that trusts it (and only it), for this test.
    """
    _openssl_or_skip()
    certificates = make_certificates(tmp_path)
    trusting = ssl.create_default_context(cafile=str(certificates.ca))
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", trusting)
    async with running_hub(tmp_path, certificate=certificates.good) as hub:
        assert hub.flaky_url.startswith("https://")
        flaky = hub.poller("flaky")
        handshakes: list[int] = []
        """Failed polls, each a refused handshake, counted when the fault stops."""

        def stop() -> None:
            handshakes.append(flaky.failures)
            hub.injector.use_certificate(*certificates.good)

        await endure(
            hub,
            name,
            lambda: hub.injector.use_certificate(*getattr(certificates, which)),
            stop,
            "Transient: Mirakl OR11 list orders (offset 0): ClientConnectorCertificateError: ",
            tries=lambda: handshakes[0],
        )
        failed = hub.events("poll_failed", channel="flaky")[-1]
        assert reason in failed["reason"], failed["reason"]


async def test_an_answer_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """Whatever the marketplace sends, one answer never holds more than the limit in memory."""
    injector = FaultInjector()
    app = aiohttp.web.Application()

    async def huge(_request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        return aiohttp.web.Response(body=b"[" + b"1," * 4096 + b"1]")

    async def chunked(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        stream = aiohttp.web.StreamResponse()
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        for _ in range(64):
            await stream.write(b"x" * 1024)
        return stream

    app.router.add_get("/huge", huge)
    app.router.add_get("/chunked", chunked)
    async with injector.serve(app) as url:
        client = HttpClient("Test", secrets=lambda: (), max_body=4096)
        try:
            with pytest.raises(Transient, match=r"answer of 8195 bytes refused"):
                await client.send("GET", f"{url}/huge", op="huge", headers={})
            with pytest.raises(Transient, match=r"answer refused past 4096 bytes"):
                await client.send("GET", f"{url}/chunked", op="chunked", headers={})
        finally:
            await client.aclose()
    record(GROUP, "answer over the size limit", tries=2, lost=0, duplicated=0,
           test="tests/faults/test_marketplace_faults.py")  # fmt: skip


def test_the_figures_are_written_as_json(tmp_path: Path) -> None:
    """What `bench/reliability_table.py` reads: every row, merged with earlier runs."""
    from tests.faults import reliability

    out = tmp_path / "reliability.json"
    out.write_text(json.dumps({"rows": [{"group": "g", "fault": "old", "tries": 1, "lost": 0,
                                         "duplicated": 0, "test": "t"}]}))  # fmt: skip
    saved = dict(reliability.RESULTS)
    try:
        reliability.RESULTS.clear()
        reliability.record("g", "new", tries=3, lost=0, duplicated=0, test="t")
        reliability.record("g", "new", tries=2, lost=0, duplicated=0, test="t")
        reliability.write(out)
    finally:
        reliability.RESULTS.clear()
        reliability.RESULTS.update(saved)
    rows = {r["fault"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows.keys() == {"old", "new"}
    assert rows["new"]["tries"] == 5


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "expected a number > 0.0"),
        ("1000", "expected a number <= 600.0"),
        ('"30s"', "expected a number, got a string"),
    ],
)
def test_a_channel_timeout_outside_its_range_is_refused_naming_it(value: str, problem: str) -> None:
    text = (
        '[[stores]]\nid = 1\nname = "One"\n\n[[channels]]\nname = "deca"\nstore = 1\n'
        'connector = "mirakl"\n[channels.settings]\nbase_url = "http://127.0.0.1:9"\n'
        f'api_key = "k"\ntimeout = {value}\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "sfd.toml")
    assert caught.value.lines() == [f"sfd.toml: channels[0].settings.timeout: {problem}"]
