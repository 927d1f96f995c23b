"""Fixtures for connector tests: aioresponses, mended for the aiohttp we run."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from aioresponses import core as aioresponses_core
from yarl import URL


class _MockedResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the `stream_writer` aiohttp 3.14 requires."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    """Every outgoing aiohttp call answered by aioresponses; none leaves the process."""
    monkeypatch.setattr(aioresponses_core, "ClientResponse", _MockedResponse)
    with aioresponses() as mocked:
        yield mocked


def sent(http: aioresponses, method: str | None = None) -> list[tuple[str, URL, dict[str, Any]]]:
    """Every request made, as (method, url, keyword arguments)."""
    return [
        (m, url, call.kwargs)
        for (m, url), calls in http.requests.items()
        for call in calls
        if method is None or m == method
    ]
