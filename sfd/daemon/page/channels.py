"""The store's channels, `/channels`, and asking one to poll now."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from sfd.daemon.page.base import PageBase, log


class ChannelPages(PageBase):
    """Each channel's polls, orders and operations."""

    async def channels(self, request: web.Request) -> web.StreamResponse:
        """Each channel of the store: its polls, its orders by status, its operations."""
        session = await self.require(request)
        states = await self.storage.channels.states(store_id=session.store_id)
        counts = await self.storage.orders.status_counts(session.store_id)
        polled = request.query.get("polled", "")[:100]
        # The mapping in force beside each channel; Mirakl's list comes from its cached SH21.
        carriers = {c.name: await self.carrier_view(c.name) for c in states}
        return self.render(
            "channels.html",
            200,
            session,
            channels=states,
            counts=counts,
            carriers=carriers,
            polled=polled if polled in {c.name for c in states} else "",
        )

    async def poll(self, request: web.Request) -> web.StreamResponse:
        """Ask a channel's poller to poll now."""
        session, values = await self.changing(request)
        name = request.match_info["name"]
        if name not in await self._channel_names(session.store_id):
            return self.problem(
                404, "Not found", f"There is no channel {name[:40]!r} in your store.", session
            )
        self._no_fields(values, session)
        if not self.poll_now(name):
            return self.problem(
                409, "Not running", f"Channel {name} has no running poller.", session
            )
        log.info("poll_requested", channel=name, source=f"page:{session.token_name}")
        return self.redirect("/channels?" + urlencode({"polled": name}))
