"""The daemon's HTTP server: /healthz, /metrics, the v1 shop API and the legacy webservice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from sfd.daemon.api import MAX_BODY, ShopApi
from sfd.daemon.metrics import Metrics
from sfd.daemon.ws import LegacyWebservice

HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]

_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON response encoded by msgspec (datetimes in ISO 8601 with their offset)."""
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def build_app(
    health: HealthProbe,
    api: ShopApi | None = None,
    legacy: LegacyWebservice | None = None,
    *,
    metrics: Metrics | None = None,
    client_max_size: int = MAX_BODY,
) -> web.Application:
    """The aiohttp application the daemon serves."""
    app = web.Application(client_max_size=client_max_size)
    if api is not None:
        api.routes(app)
    if legacy is not None:
        legacy.routes(app)

    async def healthz(_request: web.Request) -> web.Response:
        ok, detail = health()
        return json_response(
            {"status": "ok" if ok else "unhealthy", **detail}, status=200 if ok else 503
        )

    app.router.add_get("/healthz", healthz)
    if metrics is not None:
        app.router.add_get("/metrics", metrics.handler)
    return app
