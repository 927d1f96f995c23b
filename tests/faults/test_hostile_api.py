"""Hostile input at the HTTP server: generated call sequences, oversized bodies, slow-loris
clients, control characters in headers, SQL metacharacters and Unicode in every string field,
path traversal in every path parameter. No 5xx, no crash, no change to stored data but what a
valid request asked for, and nothing of another store."""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from typing import Any

import aiohttp
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from sfd.daemon.api import MAX_BODY
from tests.faults.conftest import DEADLINE, Served
from tests.faults.reliability import record
from tests.test_openapi import DOCUMENT, RESPONSE_CHECKS, _whole_numbers

GROUP = "hostile input"
TEST = "tests/faults/test_hostile_api.py"


async def send(
    served: Served,
    method: str,
    path: str,
    *,
    token: str | None = None,
    **kwargs: Any,
) -> tuple[int, str, str]:
    """One request with store 1's token (or `token`): status, content type, body."""
    headers = {"Authorization": f"Bearer {token or served.token}", **kwargs.pop("headers", {})}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, served.base_url + path, headers=headers, **kwargs) as response,
    ):
        return response.status, response.content_type, await response.text()


# -- generated sequences ----------------------------------------------------------------------


def _stateful(served: Served) -> tuple[Counter[int], list[str]]:
    """Run schemathesis' state machine (the document's links) against the server (blocking)."""
    # A copy: the stateful run adds the links it infers to the document it is given.
    schema = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=schemathesis.Config())
    machine = schema.as_state_machine()
    session = requests.Session()
    statuses: Counter[int] = Counter()
    failures: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {served.token}"}

    class Sequences(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": served.base_url, "session": session, "headers": headers}

        def before_call(self, case: schemathesis.Case) -> None:
            case.body = _whole_numbers(case.body)

        def validate_response(
            self, response: Any, case: schemathesis.Case, *args: Any, **kwargs: Any
        ) -> None:
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=RESPONSE_CHECKS, headers=headers)
            except Exception as exc:  # every distinct failure is kept, then reported
                found = getattr(exc, "exceptions", None) or [exc]
                key = " + ".join(sorted({type(e).__name__ for e in found}))
                failures.setdefault(key, f"{case.method} {case.formatted_path}: {exc}")

    try:
        Sequences.run(
            settings=settings(
                max_examples=40,
                stateful_step_count=6,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
        )
    finally:
        session.close()
    return statuses, list(failures.values())


async def test_generated_call_sequences_follow_the_document_and_never_cross_stores(
    served: Served,
) -> None:
    """Sequences chained by the OpenAPI links (list → order → ship → tickets...)."""
    other_store = [r for r in await served.snapshot() if r[0] == "orders" and r[4] == "EB-1"]
    before = await served.storage.db.fetch("SELECT count(*), count(DISTINCT id) FROM orders")
    statuses, failures = await asyncio.to_thread(_stateful, served)
    assert not failures, "\n\n".join(failures)
    assert statuses[500] == 0
    assert any(200 <= s < 300 for s in statuses), statuses
    assert statuses[202] > 0, f"no operation was ever written: {statuses}"
    after = await served.storage.db.fetch("SELECT count(*), count(DISTINCT id) FROM orders")
    assert tuple(before[0]) == tuple(after[0]) == (5, 5)
    snapshot = await served.snapshot()
    assert [r for r in snapshot if r[0] == "orders" and r[4] == "EB-1"] == other_store
    assert served.integrity() == "ok"
    record(
        GROUP,
        "schemathesis stateful sequences (v1)",
        tries=sum(statuses.values()),
        lost=0,
        duplicated=0,
        test=TEST,
    )


# -- bodies over the limit, slow clients, control characters --------------------------------------


async def test_bodies_over_the_limit_are_refused_and_write_nothing(served: Served) -> None:
    before = await served.snapshot()
    big = b'{"order": [{"id": 1, "carrier": "' + b"x" * MAX_BODY + b'"}]}'

    async def chunks() -> Any:
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    cases = [
        ("POST", "/v1/store/1/order/ship", {"data": big}),
        ("POST", "/v1/store/1/order/ship", {"data": chunks()}),  # no Content-Length
        ("POST", "/v1/auth", {"data": big}),
    ]
    for method, path, kwargs in cases:
        status, content_type, body = await send(
            served, method, path, headers={"Content-Type": "application/json"}, **kwargs
        )
        assert status in (400, 413), (path, status, body[:200])
        assert content_type == "application/problem+json", body[:200]
        assert json.loads(body)["field"] == "body"
    assert await served.snapshot() == before
    record(GROUP, "bodies over the size limit", tries=len(cases), lost=0, duplicated=0, test=TEST)


async def test_slow_loris_clients_are_cut_off_and_others_are_served(served: Served) -> None:
    """Clients that trickle their headers, or stall in their body, hold nothing for long."""
    host, port = served.host_port
    before = await served.snapshot()
    streams = [await asyncio.open_connection(host, port) for _ in range(20)]
    for n, (_, writer) in enumerate(streams):
        if n % 2:
            writer.write(b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never end
        else:
            writer.write(
                b"POST /v1/store/1/order/ship HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {served.token}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                + b'{"order": ['
            )  # the body stalls
        await writer.drain()
    # Meanwhile another client is served at once.
    status, _, _ = await send(served, "GET", "/v1/store/1/order")
    assert status == 200
    answers: list[bytes] = []
    for reader, writer in streams:
        # The server closes each connection after its deadline: read until then, no longer.
        answers.append(await asyncio.wait_for(reader.read(), timeout=10 * DEADLINE + 5))
        writer.close()
    header_cut = [a for n, a in enumerate(answers) if n % 2]
    body_cut = [a for n, a in enumerate(answers) if not n % 2]
    assert all(a == b"" for a in header_cut), header_cut[:1]
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in body_cut), body_cut[:1]
    assert b"did not arrive within 0.5 s" in body_cut[0]
    assert await served.snapshot() == before
    assert served.levels("error", "critical") == []
    record(GROUP, "slow-loris clients", tries=len(streams), lost=0, duplicated=0, test=TEST)


HEADER_ATTACKS = [
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sfd_\x00abc\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x1b[31mred\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\rSet-Cookie: a=b\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\nX-Injected: 1\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Bell: \x07\x7f\x08\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfd\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\n\x01Bad-Name: 1\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
    b"GET /v1/me\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/store/1/order HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
]


async def test_headers_with_control_characters_are_refused_cleanly(served: Served) -> None:
    host, port = served.host_port
    before = await served.snapshot()
    for raw in HEADER_ATTACKS:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), timeout=5)
        writer.close()
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0
        assert status in (400, 401, 404, 431), (raw[:80], answer[:200])
        head = answer.partition(b"\r\n\r\n")[0]
        assert b"X-Injected" not in head and b"Set-Cookie" not in head
    status, _, _ = await send(served, "GET", "/v1/me")
    assert status == 200
    assert await served.snapshot() == before
    assert [e for e in served.levels("error", "critical")] == []
    record(
        GROUP,
        "headers with control characters",
        tries=len(HEADER_ATTACKS),
        lost=0,
        duplicated=0,
        test=TEST,
    )


# -- SQL metacharacters and Unicode in every string field --------------------------------------

NASTY = [
    "' OR '1'='1",
    '"; DROP TABLE orders; --',
    "DEC-1' --",
    "%",
    "_",
    "DEC-%",
    "\\",
    "\x00",
    "🛒📦 commande n°1",
    "\u202eevil\u202c",
    "\uff21",  # a fullwidth A, which NFKC folds to A
    "e\u0301",
    "\ud83d",
    "x" * 5000,
]


def _query_fields() -> list[str]:
    return ["status", "channel", "reference", "storeReference", "since", "until",
            "acknowledgment", "channelId"]  # fmt: skip


async def test_sql_metacharacters_and_unicode_in_every_field_match_nothing_and_break_nothing(
    served: Served,
) -> None:
    """Query filters, ticket ids and every body field: a 4xx or an exact, empty match."""
    tries = 0
    before = await served.snapshot()
    for value in NASTY:
        for field in _query_fields():
            # aiohttp's client refuses a NUL in a URL; the raw-socket tests send those.
            if not value.replace("\x00", "") or value == "\ud83d":
                continue  # a lone surrogate cannot be put in a URL: the body fields take it
            status, _, body = await send(
                served, "GET", "/v1/store/1/order", params={field: value.replace("\x00", "")}
            )
            tries += 1
            assert status in (200, 400), (field, value[:20], status, body[:200])
            if status == 200:
                assert json.loads(body)["total"] in (0, 3), (field, value[:20])
                if field in ("reference", "storeReference", "channel"):
                    assert json.loads(body)["total"] == 0, (field, value[:20])
        for path in (f"/v1/store/1/ticket/{value[:200]}", "/v1/store/1/ticket"):
            params = {} if path.endswith("ticket") is False else {"batchId": value[:200]}
            status, _, body = await send(served, "GET", path.replace("\x00", ""), params=params)
            tries += 1
            assert status in (200, 400, 404), (path[:60], status, body[:200])
    # Body fields: written as given (a failed ticket for an unknown order), matched exactly.
    status, _, body = await send(
        served, "POST", "/v1/store/1/order/ship", json={"order": [{"reference": "\ud83d"}]}
    )
    assert (status, json.loads(body)["field"]) == (400, "body"), "a lone surrogate is not text"
    entries: list[dict[str, Any]] = []
    for value in (v for v in NASTY if v != "\ud83d"):
        entries += [
            {"reference": value, "channelName": "decathlon", "carrier": value},
            {"reference": "DEC-1", "channelName": value},
        ]
    status, _, body = await send(served, "POST", "/v1/store/1/order/ship", json={"order": entries})
    tries += len(entries)
    assert status == 202, body[:300]
    batch = json.loads(body)["id"]
    status, _, body = await send(served, "GET", f"/v1/store/1/ticket?batchId={batch}&limit=200")
    tickets = json.loads(body)["_embedded"]["ticket"]
    assert {t["state"] for t in tickets} == {"failed"}, "an entry reached an order"
    # A store reference full of metacharacters is kept exactly, and found exactly.
    nasty_ref = "'; DROP TABLE orders; -- 🛒 %_\\"
    status, _, _ = await send(
        served,
        "POST",
        "/v1/store/1/order/acknowledge",
        json={"order": [{"id": served.ids["DEC-2"], "storeReference": nasty_ref}]},
    )
    assert status == 202
    status, _, body = await send(
        served, "GET", "/v1/store/1/order", params={"storeReference": nasty_ref}
    )
    found = json.loads(body)["_embedded"]["order"]
    assert [(o["id"], o["storeReference"]) for o in found] == [(served.ids["DEC-2"], nasty_ref)]
    after = await served.snapshot()
    orders = {r[1] for r in after if r[0] == "orders"}
    assert orders == {r[1] for r in before if r[0] == "orders"}
    assert served.integrity() == "ok"
    assert served.levels("error", "critical") == []
    record(GROUP, "SQL metacharacters and Unicode", tries=tries, lost=0, duplicated=0, test=TEST)


# -- path traversal -------------------------------------------------------------------------

TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "..%2f2",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..\\..\\windows\\win.ini",
    "1%2F..%2F..%2F2",
    "%252e%252e%252f",
    "..;%2F",
    "%00",
    "1%00",
    "..%c0%af",
]


async def test_path_traversal_in_every_path_parameter_finds_nothing(served: Served) -> None:
    other = served.ids["EB-1"]
    templates = [
        "/v1/store/{}",
        "/v1/store/{}/order",
        "/v1/store/1/order/{}",
        "/v1/store/1/order/{}/shipment",
        "/v1/store/1/ticket/{}",
        "/v1/channel/{}",
        "/v1/catalog/1/{}",
        "/v1/catalog/{}/inventory",
        "/v1/store/1/order/{}",
    ]
    raw_paths = [t.format(x) for t in templates for x in TRAVERSALS] + [
        f"/v1/store/1/order/../../store/2/order/{other}",
        f"/v1/store/1/order/%2e%2e/%2e%2e/store/2/order/{other}",
        "/v1/store/1/../2/order",
        "/ws/../v1/store/2/order",
        "/../../../../etc/passwd",
    ]
    host, port = served.host_port
    tries = 0
    for path in raw_paths:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        tries += 1
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert status in (400, 404, 405), (path, head[:100], body[:200])
        assert b"root:" not in body and b"EB-1" not in body and b"[fonts]" not in body, path
    assert served.levels("error", "critical") == []
    record(GROUP, "path traversal", tries=tries, lost=0, duplicated=0, test=TEST)
