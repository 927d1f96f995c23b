"""The contract suite's fixtures: every case runs once per connector, through its adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.connectors.conftest import http
from tests.contract.adapters import ADAPTERS, Adapter

__all__ = ["http"]


@pytest.fixture(params=ADAPTERS, ids=[a.name for a in ADAPTERS])
def adapter(request: pytest.FixtureRequest) -> Adapter:
    result: Adapter = request.param
    return result


@pytest.fixture
async def connector(adapter: Adapter) -> AsyncIterator[Any]:
    built = adapter.make()
    yield built
    await built.aclose()
