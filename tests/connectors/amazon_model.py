"""Amazon's published models (copies under tests/fixtures/specs), to check requests against.

`check_request` finds the operation a request calls and refuses what its model refuses: an
unknown or missing parameter, a value outside its enum or type, an array not in the model's
default `csv` format, the notes the model writes in prose (exactly one of `createdAfter` and
`lastUpdatedAfter`, a `lastUpdatedBefore` at least two minutes before the request), and a body
that does not fit its schema.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from yarl import URL

SPECS = Path(__file__).resolve().parent.parent / "fixtures" / "specs"
MODELS = (
    "amazon-sp-api-orders-2026-01-01.json",
    "amazon-sp-api-orders-v0-confirm-shipment.json",
    "amazon-sp-api-feeds-2021-06-30.json",
)


@cache
def model(name: str) -> dict[str, Any]:
    """One model, parsed."""
    return json.loads((SPECS / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def operation(method: str, path: str) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, str]]:
    """(model name, model, operation, path parameters) of the request; AssertionError if none."""
    for name in MODELS:
        spec = model(name)
        for template, item in spec["paths"].items():
            pattern = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"
            found = re.match(pattern, path)
            if found and method.lower() in item:
                return name, spec, item[method.lower()], found.groupdict()
    raise AssertionError(f"{method} {path}: no operation of the models")


def check_request(method: str, url: URL, body: Any = None, *, now: datetime) -> str:
    """Check one request against its model; return the operationId."""
    _, spec, op, path_params = operation(method, url.path)
    declared = {p["name"]: p for p in op.get("parameters", [])}
    query = dict(url.query)
    assert len(query) == len(url.query), f"{url}: a parameter given twice"
    unknown = set(query) - {n for n, p in declared.items() if p["in"] == "query"}
    assert not unknown, f"{op['operationId']}: parameters not in the model: {sorted(unknown)}"
    for name, parameter in declared.items():
        where = parameter["in"]
        if where == "body":
            assert body is not None, f"{op['operationId']}: no body"
            check_schema(spec, parameter["schema"], body, "body")
            continue
        values = path_params if where == "path" else query
        if name not in values:
            assert not parameter.get("required"), f"{op['operationId']}: {name} is required"
            continue
        check_value(parameter, values[name], f"{op['operationId']} {name}")
    if op["operationId"] == "searchOrders":
        check_search_notes(query, now)
    return str(op["operationId"])


def check_value(parameter: dict[str, Any], text: str, where: str) -> None:
    """A query or path value of the parameter's type, its arrays comma-separated."""
    kind = parameter["type"]
    if kind == "array":
        assert parameter.get("collectionFormat", "csv") == "csv"
        items = text.split(",")
        assert all(items), f"{where}: an empty array element in {text!r}"
        assert len(items) <= parameter.get("maxItems", len(items)), f"{where}: too many items"
        for item in items:
            check_value(parameter["items"], item, where)
        return
    if "enum" in parameter:
        assert text in parameter["enum"], f"{where}: {text!r} not in {parameter['enum']}"
    if kind == "integer":
        assert re.fullmatch(r"-?\d+", text), f"{where}: {text!r} is not an integer"
    if parameter.get("format") == "date-time":
        datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_search_notes(query: dict[str, str], now: datetime) -> None:
    """What searchOrders' parameter descriptions require in prose."""
    assert ("createdAfter" in query) != ("lastUpdatedAfter" in query), (
        "exactly one of createdAfter and lastUpdatedAfter"
    )
    if "lastUpdatedAfter" in query:
        assert "createdBefore" not in query
    size = int(query.get("maxResultsPerPage", "100"))
    assert 1 <= size <= 100
    for after, before in (
        ("createdAfter", "createdBefore"),
        ("lastUpdatedAfter", "lastUpdatedBefore"),
    ):
        if before in query:
            moment = datetime.fromisoformat(query[before].replace("Z", "+00:00"))
            assert moment <= now - timedelta(minutes=2), f"{before} less than 2 minutes old"
            if after in query:
                assert moment >= datetime.fromisoformat(query[after].replace("Z", "+00:00"))


def check_schema(spec: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> None:
    """`value` fits `schema` (the subset of Swagger 2.0 the models use)."""
    if "$ref" in schema:
        schema = spec["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        assert isinstance(value, dict), f"{where}: expected an object"
        for name in schema.get("required", []):
            assert name in value, f"{where}.{name}: required"
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name not in properties and isinstance(extra, dict):
                check_schema(spec, extra, item, f"{where}.{name}")  # a map (feedOptions)
                continue
            assert name in properties, f"{where}.{name}: not in the model"
            check_schema(spec, properties[name], item, f"{where}.{name}")
    elif kind == "array":
        assert isinstance(value, list), f"{where}: expected an array"
        for n, item in enumerate(value):
            check_schema(spec, schema["items"], item, f"{where}[{n}]")
    elif kind == "string":
        assert isinstance(value, str), f"{where}: expected a string, got {value!r}"
        if "enum" in schema:
            assert value in schema["enum"], f"{where}: {value!r} not in the enum"
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: not an integer"
        if "minimum" in schema:
            assert value >= schema["minimum"], f"{where}: below {schema['minimum']}"
