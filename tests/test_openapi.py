"""The OpenAPI document against the real API.

Schemathesis generates requests from `sfd/daemon/openapi.json` and sends them to the real aiohttp
app on 127.0.0.1: no request may crash the server, and every response must match the document.
The server runs on the test's event loop; the blocking schemathesis calls run in a thread.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jsonschema_rs
import msgspec
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sfd.connectors.shoppingfeed import render_order
from sfd.daemon.api import ShopApi
from sfd.daemon.http import build_app
from sfd.domain import EventSource, FulfilledBy, OperationKind, OrderStatus
from sfd.domain.rules import AcknowledgePayload, ReasonPayload, ShipPayload
from sfd.storage import OperationRequest, OrderFilter, Storage
from tests.conftest import NOW
from tests.factories import make_order

DOCUMENT = json.loads(resources.files("sfd.daemon").joinpath("openapi.json").read_bytes())
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config())
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
LABELS = list(OPERATIONS)
PUBLIC = {"GET /v1/ping", "POST /v1/auth", "GET /v1/openapi.json"}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]
#: Without `ignored_auth`, whose probes resend the request without the token.
RESPONSE_CHECKS = CHECKS[:-1]
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
RUN_LOG: dict[str, Counter[int]] = {}
"""Statuses of the generated requests, by operation and mode: for a summary after a run."""
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@dataclass
class Api:
    """The served app and what the generated requests are steered towards."""

    app: Any
    base_url: str
    token: str
    order_ids: list[int]
    """Orders of store 1, then one order of store 2."""
    item_ids: list[int]
    ticket_ids: list[str]
    batch_ids: list[str]
    statuses: Counter[int] = field(default_factory=Counter)
    """How many generated requests got each status."""


async def _seed(storage: Storage) -> tuple[str, list[int], list[int], list[str], list[str]]:
    """Orders in store 1 in every interesting state, one in store 2, and a few operations."""
    channels = {c.name: c.id for c in await storage.channels.states()}
    shipped_by_marketplace = msgspec.structs.replace(
        make_order("DEC-1006"), fulfilled_by=FulfilledBy.CHANNEL
    )
    await storage.orders.import_page(
        channels["decathlon"],
        1,
        [
            make_order("DEC-1001"),
            make_order("DEC-1002", relay_id="RELAIS-4417", lines=3),
            make_order("DEC-1003", OrderStatus.WAITING_STORE_ACCEPTANCE),
            make_order("DEC-1004", OrderStatus.SHIPPED),
            make_order("DEC-1005", OrderStatus.PARTIALLY_SHIPPED),
            shipped_by_marketplace,
            make_order("DEC-1007", OrderStatus.CANCELLED, lines=1),
        ],
        NOW,
    )
    await storage.orders.import_page(channels["ebay-de"], 2, [make_order("EB-2001")], NOW)
    orders = {
        o.reference: o for o in await storage.orders.find(OrderFilter(limit=1000), details=True)
    }
    own = [o.id for ref, o in sorted(orders.items()) if ref.startswith("DEC")]
    items = [i.id for o in orders.values() for i in o.items]
    ops = storage.operations
    batches = [
        await ops.submit(
            1,
            OperationKind.ACKNOWLEDGE,
            [
                OperationRequest(
                    AcknowledgePayload(status="success", store_reference="PS-1001"),
                    order_id=orders["DEC-1001"].id,
                ),
                OperationRequest(
                    AcknowledgePayload(status="error", message="SKU-0002 is unknown"),
                    order_id=orders["DEC-1002"].id,
                ),
            ],
            EventSource.API,
            NOW,
        ),
        await ops.submit(
            1,
            OperationKind.SHIP,
            [
                OperationRequest(
                    ShipPayload(
                        carrier="Colissimo",
                        tracking_number="6A12345678901",
                        tracking_link="https://www.laposte.fr/outils/suivre-vos-envois?code=6A12345678901",
                        items=((orders["DEC-1005"].items[0].id, 1),),
                    ),
                    order_id=orders["DEC-1005"].id,
                ),
                OperationRequest(ShipPayload(carrier=""), order_id=orders["DEC-1001"].id),
                OperationRequest(
                    ShipPayload(carrier="DHL"), reference="NOPE-1", channel="decathlon"
                ),
            ],
            EventSource.API,
            NOW,
        ),
        await ops.submit(
            1,
            OperationKind.ACCEPT,
            [OperationRequest(ReasonPayload(), order_id=orders["DEC-1003"].id)],
            EventSource.API,
            NOW,
        ),
    ]
    _, token = await storage.tokens.create(1, "prestashop", NOW)
    tickets = [t.id for b in batches for t in b.tickets]
    return token, [*own, orders["EB-2001"].id], items, tickets, [b.id for b in batches]


@pytest.fixture
async def api(storage: Storage) -> AsyncIterator[Api]:
    """The real app, seeded, served on 127.0.0.1 by the test's loop."""
    storage.orders.renderer = render_order
    token, order_ids, item_ids, ticket_ids, batch_ids = await _seed(storage)
    app = build_app(lambda: (True, {}), ShopApi(storage, lambda: NOW))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Api(
            app=app,
            base_url=str(server.make_url("")).rstrip("/"),
            token=token,
            order_ids=order_ids,
            item_ids=item_ids,
            ticket_ids=ticket_ids,
            batch_ids=batch_ids,
        )
    finally:
        await server.close()


def _steer(case: schemathesis.Case, draw: Callable[[Any], Any], api: Api) -> None:
    """Point most generated requests at things that exist, so the handlers' depths are reached.

    Left alone, nearly every storeId, orderId or ticketId would be a 404. The generated value
    is still kept some of the time, and store 2 (not the token's) is asked for too.
    """
    path = case.path_parameters or {}
    if "storeId" in path:
        path["storeId"] = draw(st.sampled_from([1, 1, 1, 1, 2, path["storeId"]]))
    if "orderId" in path and draw(st.booleans()):
        path["orderId"] = draw(st.sampled_from(api.order_ids))
    if "ticketId" in path and draw(st.booleans()):
        path["ticketId"] = draw(st.sampled_from(api.ticket_ids))
    if "channelId" in path and draw(st.booleans()):
        path["channelId"] = draw(st.sampled_from([1, 2]))  # decathlon (store 1), ebay-de (2)
    query = case.query or {}
    if "batchId" in query and draw(st.booleans()):
        query["batchId"] = draw(st.sampled_from(api.batch_ids))
    body = case.body = _whole_numbers(case.body)
    if isinstance(body, dict) and "files[]" in body and draw(st.booleans()):
        # upload-documents: real PDFs for real orders, one document each, as the SDK sends.
        ids = draw(st.lists(st.sampled_from(api.order_ids), min_size=1, max_size=3))
        body["files[]"] = [b"%PDF-1.4 steered " + str(draw(st.integers())).encode() for _ in ids]
        orders = [{"id": i, "documents": [{"type": "invoice"}]} for i in ids]
        body["body"] = json.dumps({"order": orders})
    if isinstance(body, dict) and "grant_type" in body and draw(st.booleans()):
        body |= {"username": "prestashop", "password": f" {api.token} "}
    if isinstance(body, dict) and isinstance(body.get("order"), list):
        for entry in body["order"]:
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("id"), int) and draw(st.booleans()):
                entry["id"] = draw(st.sampled_from(api.order_ids))
            items = entry.get("items")
            for item in items if isinstance(items, list) else []:
                if (
                    isinstance(item, dict)
                    and isinstance(item.get("id"), int)
                    and draw(st.booleans())
                ):
                    item["id"] = draw(st.sampled_from(api.item_ids))


def _whole_numbers(value: Any) -> Any:
    """`3.0` → `3`. JSON Schema counts 3.0 as an integer, so schemathesis sends it for ids and
    quantities; sfd, like the modules that call it, wants them written as integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    return value


def _fuzz(api: Api, label: str, mode: GenerationMode) -> list[str]:
    """Run one operation's generated cases; return the distinct failures (blocking)."""
    operation = OPERATIONS[label]
    failures: dict[str, str] = {}
    session = requests.Session()
    headers = {"Authorization": f"Bearer {api.token}"}
    sent: dict[str, Any] = {"headers": headers, "timeout": 10}
    cases = operation.as_strategy(generation_mode=mode)

    @given(data=st.data())
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(data: st.DataObject) -> None:
        case = data.draw(cases)
        _steer(case, data.draw, api)
        try:
            response = case.call(base_url=api.base_url, session=session, **sent)
            api.statuses[response.status_code] += 1
            case.validate_response(
                response,
                checks=CHECKS,
                headers=headers,
                transport_kwargs={"base_url": api.base_url, "session": session, **sent},
            )
        except (Exception, FailureGroup) as exc:  # every distinct failure is kept, then reported
            found = getattr(exc, "exceptions", None) or [exc]
            key = " + ".join(sorted({type(e).__name__ for e in found}))
            failures.setdefault(key, f"{key}\n{exc}")

    try:
        run()
    finally:
        session.close()
    return list(failures.values())


def _succeeds(operation: schemathesis.APIOperation) -> bool:
    """Whether the operation documents a success at all (the catalog stub does not)."""
    return any(code.startswith("2") for code in operation.definition.raw["responses"])


def _negatable(operation: schemathesis.APIOperation) -> bool:
    """Whether the operation takes any input besides the token, for negative cases to break."""
    names = {p.name for p in operation.iter_parameters()} - {"Authorization"}
    return bool(names) or bool(list(operation.body))


FUZZ = [
    pytest.param(label, mode, id=f"{label}-{mode.value}")
    for label, operation in OPERATIONS.items()
    for mode in GenerationMode
    if mode == GenerationMode.POSITIVE or _negatable(operation)
]


@pytest.mark.parametrize(("label", "mode"), FUZZ)
async def test_generated_requests_conform(api: Api, label: str, mode: GenerationMode) -> None:
    """No 5xx, and every status, content type, header and body as documented."""
    failures = await asyncio.to_thread(_fuzz, api, label, mode)
    RUN_LOG[f"{label} ({mode.value})"] = api.statuses
    assert not failures, "\n\n".join(failures)
    if mode == GenerationMode.POSITIVE and _succeeds(OPERATIONS[label]):
        # Steered cases must reach the handlers' success paths, not only 404s.
        assert any(200 <= status < 300 for status in api.statuses), api.statuses


def test_document_is_valid_openapi_3_1() -> None:
    """The document passes the OpenAPI 3.1 meta-schema, and each schema its JSON Schema one."""
    assert DOCUMENT["openapi"].startswith("3.1")
    SCHEMA.validate()
    for name, schema in DOCUMENT["components"]["schemas"].items():
        try:
            jsonschema_rs.meta.validate(schema)
        except jsonschema_rs.ValidationError as exc:  # pragma: no cover - reported
            pytest.fail(f"components.schemas.{name}: {exc}")
    ids = [
        op["operationId"]
        for item in DOCUMENT["paths"].values()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]
    assert len(ids) == len(set(ids))


def _shape(path: str) -> str:
    """`/v1/store/{store_id:\\d+}/order` and `/v1/store/{storeId}/order` → `/v1/store/{}/order`."""
    return re.sub(r"\{[^{}]*(\{[^{}]*\}[^{}]*)*\}", "{}", path)


async def test_document_is_served_without_token_and_lists_every_route(api: Api) -> None:
    """`/v1/openapi.json` is public, is this file, and documents every /v1 route the app has."""

    def fetch() -> requests.Response:
        return requests.get(f"{api.base_url}/v1/openapi.json", timeout=10)

    response = await asyncio.to_thread(fetch)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    served = response.json()
    assert served["openapi"].startswith("3.1")
    assert served == DOCUMENT

    registered: set[tuple[str, str]] = set()
    for route in api.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path") or ""
        if route.method == "HEAD" or not path.startswith("/v1/"):
            continue  # aiohttp adds HEAD to every GET; OpenAPI leaves it implicit
        if path.endswith("/order/{operation}") and route.method == "POST":
            # One route serves every operation; the document lists each, with its own body.
            base = _shape(path).rsplit("/", 1)[0]
            # upload_document has its own route and body: upload-documents, as the SDK names it.
            registered.update(
                ("POST", f"{base}/{kind.value}")
                for kind in OperationKind
                if kind != OperationKind.UPLOAD_DOCUMENT
            )
        else:
            registered.add((route.method, _shape(path)))
    documented = {
        (method.upper(), _shape(path))
        for path, item in served["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    # A route for every method ("*") is documented with the methods clients use on it.
    for _, path in [r for r in registered if r[0] == "*"]:
        registered.discard(("*", path))
        assert any(p == path for _, p in documented), path
        registered.update(r for r in documented if r[1] == path)
    assert documented == registered


async def test_secured_operations_refuse_a_missing_or_wrong_token(api: Api) -> None:
    """401 with a problem body on every operation but ping, auth and openapi.json."""

    def probe() -> int:
        session = requests.Session()
        seen = 0
        for operation in OPERATIONS.values():
            if operation.label in PUBLIC:
                continue
            path = {
                "storeId": 1,
                "orderId": api.order_ids[0],
                "ticketId": api.ticket_ids[0],
                "channelId": 1,
                "resource": "inventory",
            }
            names = set(re.findall(r"\{(\w+)\}", operation.path))
            body = {"order": [{"id": api.order_ids[0]}]} if operation.method == "post" else None
            kwargs: dict[str, Any] = {"path_parameters": {k: path[k] for k in names}}
            if body is not None:
                kwargs |= {"body": body, "media_type": "application/json"}
            for headers in ({}, {"Authorization": "Bearer sfd_not-a-token"}):
                case = operation.Case(**kwargs)
                response = case.call(base_url=api.base_url, session=session, headers=headers)
                assert response.status_code == 401, (operation.label, response.text)
                case.validate_response(response, checks=RESPONSE_CHECKS)
                seen += 1
        session.close()
        return seen

    assert await asyncio.to_thread(probe) == 2 * (len(OPERATIONS) - len(PUBLIC))


async def test_authenticate_with_token_name_and_token(api: Api) -> None:
    """The password grant answers the token, from a JSON or a form body."""
    operation = OPERATIONS["POST /v1/auth"]

    def grant() -> None:
        body = {"grant_type": "password", "username": "prestashop", "password": api.token}
        for media_type in ("application/json", "application/x-www-form-urlencoded"):
            case = operation.Case(body=body, media_type=media_type)
            response = case.call(base_url=api.base_url)
            assert response.status_code == 200, response.text
            assert response.json() == {"token_type": "Bearer", "access_token": api.token}
            case.validate_response(response, checks=RESPONSE_CHECKS)

    await asyncio.to_thread(grant)


#: Requests found to crash the server (500), found by hand or by the generated run.
HOSTILE: list[tuple[str, str, str, dict[str, str], bytes | None]] = [
    (
        "since-offset-out-of-range",
        "GET",
        "/v1/store/1/order?since=2026-01-01T10:00:00%2B99:00",
        {},
        None,
    ),
    ("since-before-year-1", "GET", "/v1/store/1/order?since=0001-01-01T00:00:00%2B01:00", {}, None),
    ("until-after-year-9999", "GET", "/v1/store/1/order?until=9999-12-31T23:00:00-05:00", {}, None),
    ("channelId-superscript-digit", "GET", "/v1/store/1/order?channelId=%C2%B2", {}, None),
    ("channelId-over-int64", "GET", "/v1/store/1/order?channelId=99999999999999999999", {}, None),
    ("orderId-over-int64", "GET", "/v1/store/1/order/99999999999999999999", {}, None),
    (
        "orderId-over-int64-shipments",
        "GET",
        "/v1/store/1/order/99999999999999999999/shipment",
        {},
        None,
    ),
    (
        "entry-id-over-int64",
        "POST",
        "/v1/store/1/order/acknowledge",
        {},
        b'{"order":[{"id":99999999999999999999}]}',
    ),
    (
        "acknowledgedAt-offset-out-of-range",
        "POST",
        "/v1/store/1/order/acknowledge",
        {},
        b'{"order":[{"id":1,"acknowledgedAt":"2026-01-01T10:00:00+99:00"}]}',
    ),
    (
        "acknowledgedAt-before-year-1",
        "POST",
        "/v1/store/1/order/acknowledge",
        {},
        b'{"order":[{"id":1,"acknowledgedAt":"0001-01-01T00:00:00+01:00"}]}',
    ),
    (
        "auth-lone-surrogate",
        "POST",
        "/v1/auth",
        {"Content-Type": "application/json"},
        b'{"grant_type":"password","username":"x","password":"\\ud800"}',
    ),
    (
        "auth-deeply-nested-json",
        "POST",
        "/v1/auth",
        {"Content-Type": "application/json"},
        b"[" * 100_000,
    ),
    (
        "operation-deeply-nested-json",
        "POST",
        "/v1/store/1/order/ship",
        {"Content-Type": "application/json"},
        b'{"order":' + b"[" * 100_000,
    ),
    (
        "auth-multipart-without-boundary",
        "POST",
        "/v1/auth",
        {"Content-Type": "multipart/form-data"},
        b"x",
    ),
    (
        "auth-multipart-bad-boundary",
        "POST",
        "/v1/auth",
        {"Content-Type": "multipart/form-data; boundary=abc"},
        b"x",
    ),
    ("bearer-not-utf8", "GET", "/v1/me", {"Authorization": "Bearer \xff\xfe"}, None),
]


@pytest.mark.parametrize(
    ("method", "target", "headers", "body"),
    [pytest.param(*h[1:], id=h[0]) for h in HOSTILE],
)
async def test_hostile_request_is_refused_not_crashed(
    api: Api, method: str, target: str, headers: dict[str, str], body: bytes | None
) -> None:
    """Each of these once gave a 500. A 4xx problem is the answer, or a 202 whose ticket failed."""

    def send() -> requests.Response:
        auth = {} if target == "/v1/auth" else {"Authorization": f"Bearer {api.token}"}
        return requests.request(
            method, api.base_url + target, headers=auth | headers, data=body, timeout=10
        )

    response = await asyncio.to_thread(send)
    assert response.status_code < 500, (response.status_code, response.text[:200])
    if response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert response.json()["status"] == response.status_code


async def test_wrong_method_gives_405_problem_with_allow(api: Api) -> None:
    """RFC 9110: a 405 names the allowed methods in `Allow`."""
    response = await asyncio.to_thread(requests.post, f"{api.base_url}/v1/ping", timeout=10)
    assert response.status_code == 405
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["status"] == 405
    assert "GET" in response.headers.get("Allow", ""), dict(response.headers)
