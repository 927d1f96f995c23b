"""The local admin endpoint: a Unix socket beside the database, for the CLI to nudge the daemon.

Only processes that can reach the database's directory can reach the socket (mode 0600), so
it needs no token: it can only make the daemon do sooner what it would do anyway.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

#: sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 107


class AdminUnavailable(Exception):
    """The daemon is not running, or cannot be reached; the message says which."""


def socket_path(database: Path) -> Path:
    """Where the admin socket of the daemon using `database` lives."""
    return database.with_name(database.name + ".sock")


def admin_app(poll: Callable[[str], bool], wake_worker: Callable[[], None]) -> web.Application:
    """The admin routes: poll a channel now, and wake the operations worker."""
    app = web.Application()

    async def poll_channel(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not poll(name):
            return web.json_response({"error": f"no channel named {name!r}"}, status=404)
        return web.json_response({"polling": name})

    async def wake(_request: web.Request) -> web.Response:
        wake_worker()
        return web.json_response({"woken": "operations-worker"})

    app.router.add_post("/channels/{name}/poll", poll_channel)
    app.router.add_post("/operations/wake", wake)
    return app


async def start_admin(runner: web.AppRunner, path: Path) -> bool:
    """Serve the admin app on `path`; False when the path is too long for a socket."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return False
    # We hold the database's run lock, so a socket left here is a dead daemon's.
    path.unlink(missing_ok=True)
    site = web.UnixSite(runner, str(path))
    await site.start()
    os.chmod(path, 0o600)
    return True


async def admin_call(database: Path, path: str) -> dict[str, str]:
    """POST to the running daemon's admin endpoint; raise AdminUnavailable if it is not there."""
    sock = socket_path(database)
    if not sock.exists():
        raise AdminUnavailable(f"no running sfd for {database} (no admin socket at {sock})")
    connector = aiohttp.UnixConnector(path=str(sock))
    try:
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post("http://sfd" + path, timeout=aiohttp.ClientTimeout(total=10)) as response,
        ):
            body: dict[str, str] = await response.json()
            if response.status != 200:
                raise AdminUnavailable(body.get("error", f"admin answered {response.status}"))
            return body
    except (aiohttp.ClientConnectionError, TimeoutError):
        raise AdminUnavailable(f"no running sfd answers on {sock}") from None
