"""The contract suite's fixtures: every case runs once per connector, through its adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import stamina

from tests.connectors.conftest import http
from tests.contract.adapters import ADAPTERS, Adapter

__all__ = ["http"]


@pytest.fixture(autouse=True)
def one_attempt() -> Iterator[None]:
    """Shops retry reads on Transient: here each failure is judged on its first attempt."""
    with stamina.set_testing(True, attempts=1):
        yield


@pytest.fixture(params=ADAPTERS, ids=[a.name for a in ADAPTERS])
def adapter(request: pytest.FixtureRequest) -> Adapter:
    result: Adapter = request.param
    return result


@pytest.fixture
async def connector(adapter: Adapter) -> AsyncIterator[Any]:
    built = adapter.make()
    yield built
    await built.aclose()
